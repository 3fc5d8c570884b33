"""The sample schema (version 1) and its JSONL manifest.

One JSON object per line. Media paths are relative to the manifest's folder (or an explicit
media root) and may not escape it. See docs/manifest.md for the field table.

Required: ``id``, ``video``, ``question``, ``options`` (option texts, no letters),
``answer`` (a letter A.. within the options).
Optional: ``thought_video``, ``rationale``, ``family``, ``split``, ``difficulty``, ``seed``,
``start`` / ``end`` (seconds: the part of the video the question is about), ``state``
(per-frame scene state: a list of dicts, one per frame, whose ``probe`` entry is the hidden
state a linear probe should read), ``meta`` (free-form dict), ``schema`` (= 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stormvl.errors import ManifestError

SCHEMA_VERSION = 1
LETTERS = "ABCDEFGHIJ"
MAX_OPTIONS = len(LETTERS)


@dataclass
class Sample:
    """One video question. Paths are stored as written in the manifest (relative)."""

    id: str
    video: str
    question: str
    options: list[str]
    answer: str  # letter
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
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for k, v in self.__dict__.items():
            if v is None or (k == "meta" and not v):
                continue
            row[k] = v
        return row


_REQUIRED = ("id", "video", "question", "options", "answer")
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
    schema = row.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"{where}: field 'schema': version {schema!r} is not supported")
    for key in _REQUIRED:
        if key not in row:
            raise ManifestError(f"{where}: missing field '{key}'")
    for key in ("id", "video", "question", "answer"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise ManifestError(f"{where}: field '{key}' must be a non-empty string")
    options = row["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ManifestError(f"{where}: field 'options' must be a list of strings")
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise ManifestError(
            f"{where}: field 'options' has {len(options)} options (2..{MAX_OPTIONS} allowed)"
        )
    answer = row["answer"].strip()
    allowed = LETTERS[: len(options)]
    if len(answer) != 1 or answer not in allowed:
        raise ManifestError(
            f"{where}: field 'answer' {row['answer']!r} is not among the "
            f"{len(options)} options ({allowed[0]}-{allowed[-1]})"
        )
    kwargs: dict[str, Any] = {k: row[k] for k in _REQUIRED}
    kwargs["answer"] = answer
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
    known = set(_REQUIRED) | set(_OPTIONAL_TYPES) | {"schema"}
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
    path: str | Path, what: str = "file", error: type[Exception] = ManifestError
) -> Iterator[tuple[str, Any]]:
    """Yield ("file:line", decoded row) for each non-empty line of a JSONL file.

    Raises:
        ``error``: the file is missing or a line is not valid JSON (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None


def read_manifest(path: str | Path) -> list[Sample]:
    """All samples of a manifest, validated."""
    return list(iter_manifest(path))


def write_manifest(path: str | Path, samples: Iterable[Sample]) -> None:
    """Write a whole manifest atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        for s in samples:
            fh.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ManifestError(f"{path}:{i + 1}: not valid JSON") from None
    return rows


def truncate_torn_tail(path: str | Path) -> None:
    """Cut a partial last line left by a killed writer, so appends start on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(cut)


class JsonlAppender:
    """Append rows to a JSONL log durably (flush + fsync per row) for resumable jobs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._fh = self.path.open("a")

    def write(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
