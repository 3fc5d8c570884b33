"""The sample schema (versions 1 and 2) and its JSONL manifest.

One JSON object per line. Media paths are relative to the manifest's folder (or an explicit
media root) and may not escape it. See docs/manifest.md for the field table.

Required: ``id``, ``video``, ``question``, ``answer``; in version 1 also ``options`` (option
texts, no letters) with ``answer`` a letter A.. within them. Version 2 (``"schema": 2``)
makes ``options`` optional: a row without options is an open-ended question whose ``answer``
is the answer text. A row without ``schema`` is version 1, so a multiple-choice row that lost
its options is still an error, never silently open-ended.
Optional: ``thought_video``, ``rationale``, ``family``, ``split``, ``difficulty``, ``seed``,
``start`` / ``end`` (seconds: the part of the video the question is about), ``state``
(per-frame scene state: a list of dicts, one per frame, whose ``probe`` entry is the hidden
state a linear probe should read), ``meta`` (free-form dict), ``schema`` (1 or 2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stormvl.errors import ManifestError
from stormvl.io import write_text_atomic, writing

SCHEMA_VERSION = 2  # the newest version read; rows are written in the lowest that holds them
SCHEMA_VERSIONS = (1, 2)
LETTERS = "ABCDEFGHIJ"
MAX_OPTIONS = len(LETTERS)


@dataclass
class Sample:
    """One video question. Paths are stored as written in the manifest (relative).

    ``options`` empty = open-ended: ``answer`` is then the answer text, not a letter.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: str  # a letter within the options, or (open-ended) the answer text
    thought_video: str | None = None
    rationale: str | None = None
    family: str | None = None
    split: str | None = None
    difficulty: str | None = None
    seed: int | None = None
    start: float | None = None
    end: float | None = None
    state: list[dict] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def open_ended(self) -> bool:
        return not self.options

    @property
    def answer_index(self) -> int:
        if self.open_ended:
            raise ValueError(f"sample {self.id}: an open-ended question has no option index")
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.answer if self.open_ended else self.options[self.answer_index]

    def to_json(self) -> dict[str, Any]:
        # version 1 for multiple choice, so those manifests stay readable by older readers
        row: dict[str, Any] = {"schema": 2 if self.open_ended else 1}
        for k, v in self.__dict__.items():
            if v is None or (k == "meta" and not v):
                continue
            row[k] = v
        return row


_TEXT_FIELDS = ("id", "video", "question", "answer")
_REQUIRED = {1: ("id", "video", "question", "options", "answer"), 2: _TEXT_FIELDS}
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "thought_video": (str,),
    "rationale": (str,),
    "family": (str,),
    "split": (str,),
    "difficulty": (str,),
    "seed": (int,),
    "start": (int, float),
    "end": (int, float),
    "state": (list,),
    "meta": (dict,),
}


def parse_row(row: Any, where: str) -> Sample:
    """Validate one decoded JSON object; ``where`` is "file:line" for the message.

    Raises:
        ManifestError: naming the file, line and field.
    """
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: a row must be a JSON object")
    schema = row.get("schema", 1)  # unversioned rows are version 1, as they always were
    if schema not in SCHEMA_VERSIONS:
        raise ManifestError(f"{where}: field 'schema': version {schema!r} is not supported "
                            f"(known: {', '.join(map(str, SCHEMA_VERSIONS))})")
    for key in _REQUIRED[schema]:
        if key not in row:
            raise ManifestError(f"{where}: missing field '{key}'")
    for key in _TEXT_FIELDS:
        if not isinstance(row[key], str) or not row[key].strip():
            raise ManifestError(f"{where}: field '{key}' must be a non-empty string")
    options = row.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ManifestError(f"{where}: field 'options' must be a list of strings")
    if (schema == 1 or options) and not 2 <= len(options) <= MAX_OPTIONS:
        raise ManifestError(
            f"{where}: field 'options' has {len(options)} options (2..{MAX_OPTIONS} allowed"
            + (", or none for an open-ended question)" if schema > 1 else ")")
        )
    answer = row["answer"].strip()
    allowed = LETTERS[: len(options)]
    if options and (len(answer) != 1 or answer not in allowed):
        raise ManifestError(
            f"{where}: field 'answer' {row['answer']!r} is not among the "
            f"{len(options)} options ({allowed[0]}-{allowed[-1]})"
        )
    kwargs: dict[str, Any] = {k: row[k] for k in _TEXT_FIELDS}
    kwargs.update(options=options, answer=answer)
    for key, types_ in _OPTIONAL_TYPES.items():
        if row.get(key) is None:
            continue
        value = row[key]
        if not isinstance(value, types_) or isinstance(value, bool):
            names = "/".join(t.__name__ for t in types_)
            raise ManifestError(f"{where}: field '{key}' must be {names}, got {value!r}")
        kwargs[key] = value
    start, end = kwargs.get("start"), kwargs.get("end")
    if start is not None and end is not None and end < start:
        raise ManifestError(f"{where}: field 'end' is before 'start'")
    known = set(_REQUIRED[1]) | set(_OPTIONAL_TYPES) | {"schema"}
    unknown = sorted(set(row) - known)
    if unknown:
        raise ManifestError(
            f"{where}: unknown field(s) {unknown} (put extra data under 'meta')"
        )
    return Sample(**kwargs)


def iter_manifest(path: str | Path) -> Iterator[Sample]:
    """Yield validated samples; raises ManifestError naming file and line."""
    seen: set[str] = set()
    for where, row in iter_jsonl(path, "manifest", ManifestError):
        sample = parse_row(row, where)
        if sample.id in seen:
            raise ManifestError(f"{where}: field 'id': duplicate id {sample.id!r}")
        seen.add(sample.id)
        yield sample


def iter_jsonl(
    path: str | Path, what: str = "file", error: type[Exception] = ManifestError,
    torn_tail: bool = False,
) -> Iterator[tuple[str, Any]]:
    """Yield ("file:line", decoded row) for each non-empty line of a JSONL file.

    The one JSONL reader: lines end at "\n" only (JSON text may hold U+2028 and other
    characters ``str.splitlines`` would split at). ``torn_tail``: the file is an append-only
    log (``JsonlAppender``), so an unreadable last line is what a killed writer left, and is
    dropped.

    Raises:
        ``error``: the file is missing, or a line is not valid UTF-8 or not valid JSON (file
            and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:  # (a UTF-8 byte-order mark, as Windows editors write, is allowed)
                row = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if torn_tail and not fh.read().strip():
                    return
                why = ("not valid UTF-8" if isinstance(exc, UnicodeDecodeError)
                       else f"not valid JSON ({exc.msg})")
                raise error(f"{where}: {why}") from None
            yield where, row


def read_manifest(path: str | Path) -> list[Sample]:
    """All samples of a manifest, validated."""
    return list(iter_manifest(path))


def write_manifest(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write a whole manifest atomically (temp file + rename), fsynced: resumes trust it."""
    text = "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples)
    write_text_atomic(path, text, durable=True)


def resolve_media(root: str | Path, rel: str, where: str = "") -> Path:
    """Resolve a manifest media path under ``root``; refuse paths that escape it.

    Raises:
        ManifestError: the path is absolute outside root or climbs out with "..".
    """
    root_p = Path(root).resolve()
    p = (root_p / rel).resolve()
    if p != root_p and root_p not in p.parents:
        raise ManifestError(f"{where or rel}: media path {rel!r} escapes the media root {root_p}")
    return p


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Rows of an append-only JSONL log; a torn last line (killed writer) is dropped.

    Used by every resumable job (generation, evaluation): rows are appended and flushed one
    at a time, so at most the final line can be incomplete.
    """
    path = Path(path)
    if not path.exists():
        return []
    return [row for _, row in iter_jsonl(path, torn_tail=True)]


def truncate_torn_tail(path: str | Path) -> None:
    """Cut a partial last line left by a killed writer, so appends start on a fresh line.

    A last line that is a whole row and lacks only its newline (the writer stopped just
    before it) is kept, as ``read_jsonl_tolerant`` reads it: a resume that counted it done
    must find it.
    """
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:].decode("utf-8"))
        except ValueError:  # torn: not UTF-8 or not JSON
            with path.open("r+b") as fh:
                fh.truncate(cut)
        else:
            with path.open("ab") as fh:
                fh.write(b"\n")


class JsonlAppender:
    """Append rows to a JSONL log durably (flush + fsync per row) for resumable jobs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._fh = self.path.open("a")

    def write(self, row: dict) -> None:
        with writing(self.path):  # a torn line is dropped on resume (truncate_torn_tail)
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with writing(self.path):
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
