"""MMVU validation split (HF ``yale-nlp/MMVU``), read from a local copy.

Layout (``DIR`` = the dataset repo)::

    DIR/validation.json                 1,000 questions (625 multiple-choice, 375 open-ended)
    DIR/videos/{Subject}/{n}.mp4

A row names its video by ``video_path`` ("videos/Art/0.mp4", lmms-eval's copy) or by
``video`` (the hub URL ".../resolve/main/videos/Art/0.mp4", the original file); either maps
to ``DIR/videos/...``. The subject is the video's parent folder; disciplines group subjects
as lmms-eval does. Multiple choice is rule-scored; open-ended needs a judge.
"""

from __future__ import annotations

from pathlib import Path

from stormvl.data.manifest import resolve_media
from stormvl.errors import UserError
from stormvl.io import read_json
from stormvl.tasks.base import EvalItem, PromptConfig, require_fields, require_video

NAME = "mmvu"
BREAKDOWNS = ("discipline", "subject", "question_type")

DISCIPLINES = {
    "Science": ("Biology", "Chemistry", "Modern_Physics", "Astronomy", "Geography",
                "Materials_Science", "Neurobiology", "Electromagnetism", "Thermodynamics",
                "Mechanics"),
    "Engineering": ("Civil_Engineering", "Electrical_Engineering", "Mechanical_Engineering",
                    "Biomedical_Engineering", "Electronics_and_Communication",
                    "Computer_Science"),
    "Healthcare": ("Clinical_Medicine", "Basic_Medicine", "Preventive_Medicine", "Pharmacy",
                   "Dentistry"),
    "Humanities_and_Social_Science": ("Art", "Literature", "History", "Law", "Economics",
                                      "Management"),
}
_SUBJECT_TO_DISCIPLINE = {s: d for d, subs in DISCIPLINES.items() for s in subs}

# lmms-eval 0.7.3 default (non-CoT) instructions.
VISUAL_LINE = "Visual Information: processed video\n"
MC_INSTRUCTION = ("Do not generate any intermediate reasoning process. Answer directly with "
                  "the option letter from the\ngiven choices.\n")
OPEN_INSTRUCTION = ("Do not generate any intermediate reasoning process. Directly output the "
                    "final answer.\n")


def load(data: Path, prompt: PromptConfig | None = None, check_media: bool = True
         ) -> list[EvalItem]:
    """Read the validation questions."""
    prompt = prompt or PromptConfig()
    data = Path(data)
    path = data / "validation.json"
    rows = read_json(path, "annotation file")
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of question rows")
    items = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        require_fields(row, ("id", "question_type", "question", "answer"), where)
        qtype = str(row["question_type"])
        if qtype not in ("multiple-choice", "open-ended"):
            raise UserError(f"{where}: field 'question_type' {qtype!r} is not "
                            f"'multiple-choice' or 'open-ended'")
        rel = _video_rel(row, where)
        video = resolve_media(data, rel, where)
        if check_media:
            require_video(video, f"{where} (id {row['id']!r})")
        subject = Path(rel).parent.name
        choices = {k: str(v) for k, v in (row.get("choices") or {}).items()}
        is_mc = qtype == "multiple-choice"
        if is_mc:
            missing = [k for k in "ABCDE" if k not in choices]
            if missing or str(row["answer"]).strip() not in choices:
                raise UserError(f"{where}: field 'choices' needs keys A-E and must contain "
                                f"the answer {row['answer']!r}")
        items.append(EvalItem(
            id=str(row["id"]),
            benchmark=NAME,
            video=video,
            prompt=_prompt(str(row["question"]), choices if is_mc else None, prompt),
            answer=str(row["answer"]).strip(),
            format="mc" if is_mc else "open_ended",
            question=str(row["question"]),
            options=[choices[k] for k in "ABCDE" if choices.get(k)] if is_mc else [],
            categories={"discipline": _SUBJECT_TO_DISCIPLINE.get(subject, "Other"),
                        "subject": subject, "question_type": qtype},
            meta={"choices": choices} if is_mc else {},
        ))
    return items


def _video_rel(row: dict, where: str) -> str:
    if row.get("video_path"):
        return str(row["video_path"]).lstrip("/")
    url = str(row.get("video") or "")
    if "/resolve/" in url:  # hub URL: .../resolve/<revision>/videos/Art/0.mp4
        return url.split("/resolve/", 1)[1].split("/", 1)[1]
    if url and "://" not in url:
        return url.lstrip("/")
    raise UserError(f"{where}: missing field 'video_path' (or a hub 'video' URL)")


def _prompt(question: str, choices: dict[str, str] | None, cfg: PromptConfig) -> str:
    body = f"\nQuestion:{question}\n"
    if choices is not None:
        body += "".join(f"{k}: {choices[k]}\n" for k in "ABCDE")
    default = MC_INSTRUCTION if choices is not None else OPEN_INSTRUCTION
    post = default if cfg.post_prompt is None else cfg.post_prompt
    return f"{cfg.pre_prompt or ''}{body}{VISUAL_LINE}{post}"
