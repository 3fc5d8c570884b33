"""Atomic file writes: a killed process never leaves a half-written result behind.

Every job that writes a result (JSON summaries, reports, manifests) writes a temporary file
beside the target and renames it over the target; the rename is atomic on POSIX.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + rename; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (numpy / torch scalars become floats), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=float) + "\n")
