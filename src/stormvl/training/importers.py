"""Importers: the video QA data users already have -> foundation ``Sample``s.

Two public formats are read as they are written by their own tools:

- LLaMA-Factory ``sharegpt`` records (``conversations`` with from/value, or OpenAI-style
  ``messages`` with role/content) carrying a ``videos`` list and ``<video>`` placeholders,
  optionally through its ``dataset_info.json`` registry (file_name, formatting, columns, tags).
- Video-R1's schema: ``problem``, ``options`` ("A. ..."), ``process`` (``<think>`` rationale),
  ``solution`` (``<answer>X</answer>``), ``path``, ``problem_type``, ``data_type``.

A video question with lettered options becomes a multiple-choice sample (its answer a
letter); one without becomes an open-ended sample (manifest schema 2) whose answer is the
reply's text, as LLaMA-Factory's own ``mllm_video_demo.json`` and Video-R1's numerical /
OCR / free-form / regression rows are. Rows that are not one video question (no video, an
image, several turns, an unknown Video-R1 problem type) are counted in
``ImportReport.skipped`` with their reason, never dropped silently. A malformed row (missing
field, answer outside its options, an empty answer) is a ``ManifestError`` naming the file,
row and field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stormvl.data.manifest import LETTERS, MAX_OPTIONS, Sample, iter_jsonl, parse_row
from stormvl.errors import ManifestError
from stormvl.io import read_json, read_text

# "A. text", "(A) text", "A) text", "A: text" at the start of a line.
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s*(.+?)\s*$")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_THINK_TAG = re.compile(r"<think>\s*(.*?)\s*</think>", re.S)
_BARE_LETTER = re.compile(r"^\(?([A-J])\)?(?:[.):]|\s|$)")


@dataclass
class ImportReport:
    """What an importer did: samples made and rows skipped (reason -> count)."""

    samples: list[Sample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{len(self.samples)} samples"]
        parts += [f"skipped {n} ({why})" for why, n in sorted(self.skipped.items())]
        return ", ".join(parts)


def read_records(path: str | Path) -> list[dict]:
    """A JSON list or a JSONL file of objects (both are used by LLaMA-Factory and Video-R1)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: data file not found")
    text = read_text(path, ManifestError)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        rows = [row for _, row in iter_jsonl(path, "data file")]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ManifestError(f"{path}: row {i}: a record must be a JSON object")
    return rows


def split_options(text: str) -> tuple[str, list[str]]:
    """Split "question\\nA. x\\nB. y" into the question and the option texts (no letters).

    Options must be consecutive letters from A; otherwise no options are returned.
    """
    question_lines, options = [], []
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2))
        elif not options:
            question_lines.append(line)
        elif line.strip():  # a wrapped option line
            options[-1] = f"{options[-1]} {line.strip()}"
    question = "\n".join(question_lines).strip()
    if question.lower().endswith("options:"):
        question = question[: -len("options:")].rstrip()
    return question, options


def split_reply(text: str) -> tuple[str, str | None]:
    """(answer text, rationale) of an assistant reply or a Video-R1 solution.

    The answer is the ``<answer>`` tag's text, else the reply without its ``<think>`` part;
    the rationale is the ``<think>`` text, or what precedes an ``<answer>`` tag.
    """
    rationale = None
    think = _THINK_TAG.search(text)
    tagged = _ANSWER_TAG.search(text)
    if think:
        rationale = think.group(1).strip() or None
    elif tagged and text[: tagged.start()].strip():
        rationale = text[: tagged.start()].strip()
    answer = (tagged.group(1) if tagged else _THINK_TAG.sub("", text)).strip()
    return answer, rationale


def parse_answer(text: str, options: list[str]) -> tuple[str | None, str | None]:
    """(letter, rationale) from an assistant reply or a Video-R1 solution.

    Accepts ``<think>..</think><answer>X</answer>``, a bare letter ("B", "(B)", "B. text"),
    or the exact text of one option (see ``split_reply`` for the rationale).
    """
    answer, rationale = split_reply(text)
    m = _BARE_LETTER.match(answer)
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1), rationale
    lowered = [o.strip().lower() for o in options]
    if answer.lower() in lowered:
        return LETTERS[lowered.index(answer.lower())], rationale
    return None, rationale


def _to_sample(row: dict[str, Any], where: str) -> Sample:
    """Validate through the manifest schema so imported rows obey the same rules."""
    return parse_row({k: v for k, v in row.items() if v is not None}, where)


# --- LLaMA-Factory -------------------------------------------------------------------------

_SHAREGPT_DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}


@dataclass
class LlamaFactorySpec:
    """The parts of a dataset_info.json entry this importer uses."""

    file: Path
    messages: str = "conversations"  # column holding the turns
    videos: str = "videos"  # column holding the video paths
    tags: dict = field(default_factory=lambda: dict(_SHAREGPT_DEFAULT_TAGS))


def spec_from_dataset_info(info_path: str | Path, name: str) -> LlamaFactorySpec:
    """Resolve dataset ``name`` in a LLaMA-Factory ``dataset_info.json``.

    Raises:
        ManifestError: the registry is missing, has no such entry, the entry is not a local
            sharegpt file, or names no messages column.
    """
    info_path = Path(info_path)
    registry = read_json(info_path, "dataset_info.json", ManifestError)
    if name not in registry:
        raise ManifestError(f"{info_path}: no dataset named {name!r} (have {sorted(registry)})")
    entry = registry[name]
    where = f"{info_path}: {name}"
    if entry.get("formatting", "alpaca") != "sharegpt":
        raise ManifestError(f"{where}: field 'formatting' must be 'sharegpt' for video data")
    if "file_name" not in entry:
        raise ManifestError(f"{where}: field 'file_name' missing (hub datasets are not fetched)")
    columns = entry.get("columns", {})
    tags = dict(_SHAREGPT_DEFAULT_TAGS)
    tags.update(entry.get("tags", {}))
    return LlamaFactorySpec(
        file=info_path.parent / entry["file_name"],
        messages=columns.get("messages", "conversations"),
        videos=columns.get("videos", "videos"),
        tags=tags,
    )


def _llamafactory_row(rec: dict, i: int, spec: LlamaFactorySpec) -> tuple[dict | None, str]:
    where = f"{spec.file}: row {i}"
    turns = rec.get(spec.messages)
    if not isinstance(turns, list):
        raise ManifestError(f"{where}: field '{spec.messages}' must be a list of turns")
    t = spec.tags
    role_of = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t.get("system_tag"): "system"}
    talk = [(role_of.get(m.get(t["role_tag"])), m.get(t["content_tag"], "")) for m in turns]
    talk = [(r, c) for r, c in talk if r in ("user", "assistant")]
    videos = rec.get(spec.videos) or []
    if not videos:
        return None, "no video"
    if len(talk) != 2 or talk[0][0] != "user" or talk[1][0] != "assistant":
        return None, "not a single user/assistant exchange"
    prompt, reply = talk[0][1], talk[1][1]
    if not isinstance(prompt, str) or not isinstance(reply, str):
        raise ManifestError(f"{where}: field '{t['content_tag']}' must be a string")
    if prompt.count("<video>") != len(videos):
        raise ManifestError(
            f"{where}: {prompt.count('<video>')} <video> placeholders for {len(videos)} videos"
        )
    if len(videos) != 1:
        return None, "more than one video"
    text = prompt.replace("<video>", "").strip()
    question, options = split_options(text)
    if len(options) >= 2:
        answer, rationale = parse_answer(reply, options)
        if answer is None:
            raise ManifestError(f"{where}: assistant reply {reply[:60]!r} names no option")
    else:  # open-ended: the reply is the answer (its <think> part the rationale)
        question, options = text, []
        answer, rationale = split_reply(reply)
        if not answer:
            raise ManifestError(f"{where}: field '{t['content_tag']}': the assistant reply "
                                "has no answer text")
    row = {
        "schema": 1 if options else 2,
        "id": str(rec.get("id", f"{spec.file.stem}-{i}")),
        "video": videos[0],
        "question": question,
        "options": options[:MAX_OPTIONS],
        "answer": answer,
        "rationale": rationale,
        "thought_video": rec.get("thought_video"),
    }
    return row, ""


def import_llamafactory(
    path: str | Path, dataset_info: str | Path | None = None
) -> ImportReport:
    """Read LLaMA-Factory sharegpt / ``messages`` video records.

    Args:
        path: the data file, or (with ``dataset_info``) the dataset's name in the registry.
        dataset_info: a ``dataset_info.json``; its columns/tags override the defaults.
            Without it, ``messages`` with role/content is detected from the first record.

    Returns:
        ImportReport with samples (video paths as written, relative to the data file) and
        skip counts.
    """
    if dataset_info is not None:
        spec = spec_from_dataset_info(dataset_info, str(path))
    else:
        spec = LlamaFactorySpec(file=Path(path))
    records = read_records(spec.file)
    if dataset_info is None and records and "messages" in records[0]:
        spec.messages = "messages"
        spec.tags.update(role_tag="role", content_tag="content", user_tag="user",
                         assistant_tag="assistant")
    report = ImportReport()
    for i, rec in enumerate(records):
        row, why = _llamafactory_row(rec, i, spec)
        if row is None:
            report.skipped[why] += 1
        else:
            report.samples.append(_to_sample(row, f"{spec.file}: row {i}"))
    return report


# --- Video-R1 ------------------------------------------------------------------------------

# Video-R1's answer types besides multiple choice (its GRPO reward scores each its own way:
# numbers, word error rate, ROUGE, relative error); all are supervised as answer text here.
VIDEO_R1_OPEN_TYPES = ("numerical", "OCR", "free-form", "regression")


def _video_r1_answer(rec: dict, kind: str, where: str) -> tuple[list[str], str]:
    """(options, answer) of a Video-R1 row: option texts and a letter, or (open types) no
    options and the ``<answer>`` text."""
    solution = str(rec["solution"])
    if kind != "multiple choice":
        answer, _ = split_reply(solution)
        if not answer:
            raise ManifestError(f"{where}: field 'solution' {solution!r} has no answer text")
        return [], answer
    if "options" not in rec:
        raise ManifestError(f"{where}: missing field 'options'")
    raw = rec["options"]
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise ManifestError(f"{where}: field 'options' must be a list of strings")
    _, options = split_options("\n".join(raw))
    if len(options) != len(raw):  # options given without letters
        options = [o.strip() for o in raw]
    letter, _ = parse_answer(solution, options)
    if letter is None:
        raise ManifestError(f"{where}: field 'solution' {solution!r} names no option")
    return options, letter


def import_video_r1(path: str | Path) -> ImportReport:
    """Read Video-R1-style rows; ``data_type == "video"`` rows of a known problem type convert.

    ``process`` becomes the rationale (its ``<think>`` text), ``path`` the video (relative
    to the data file's folder). A multiple-choice row's answer is ``solution``'s
    ``<answer>`` letter; a numerical / OCR / free-form / regression row is open-ended, its
    answer the ``<answer>`` text and its ``problem_type`` kept in ``meta``.
    """
    path = Path(path)
    report = ImportReport()
    for i, rec in enumerate(read_records(path)):
        where = f"{path}: row {i}"
        if rec.get("data_type", "video") != "video":
            report.skipped["not a video"] += 1
            continue
        kind = rec.get("problem_type", "multiple choice")
        if kind != "multiple choice" and kind not in VIDEO_R1_OPEN_TYPES:
            report.skipped[f"problem_type {kind}"] += 1
            continue
        for key in ("problem", "solution", "path"):
            if key not in rec:
                raise ManifestError(f"{where}: missing field '{key}'")
        options, answer = _video_r1_answer(rec, kind, where)
        process = rec.get("process")
        rationale = None
        if isinstance(process, str):
            m = _THINK_TAG.search(process)
            rationale = (m.group(1) if m else process).strip() or None
        rel = str(rec["path"])
        meta = {"problem_type": kind} if not options else {}
        if rec.get("data_source"):
            meta["data_source"] = rec["data_source"]
        row = {
            "schema": 1 if options else 2,
            "id": str(rec.get("problem_id", i)),
            "video": rel[2:] if rel.startswith("./") else rel,
            "question": str(rec["problem"]).strip(),
            "options": options,
            "answer": answer,
            "rationale": rationale,
            "thought_video": rec.get("thought_video"),
            "meta": meta or None,
        }
        report.samples.append(_to_sample(row, where))
    return report
