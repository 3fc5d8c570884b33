"""File IO at the edges: atomic writes, and JSON reads that fail with the file named.

Every job that writes a result (JSON summaries, reports, manifests) writes a temporary file
beside the target and renames it over the target; the rename is atomic on POSIX, so a killed
process never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stormvl.errors import UserError


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file + rename; creates parent folders.

    The temp name carries the process and thread, so concurrent writers of one path (decode
    threads, training workers) each rename a complete file over it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; creates parent folders."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (numpy / torch scalars become floats), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=float) + "\n")


def read_json(path: str | Path, what: str = "file", error: type[Exception] = UserError) -> Any:
    """The value of a JSON file; ``error`` naming the file when it is missing or unreadable
    (a user's annotation file, or a record a user edited by hand), never a bare traceback."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None


@contextmanager
def exclusive_folder(folder: str | Path, what: str = "a job") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the duration (``folder/.lock``).

    Resumable jobs trust what is on disk; two processes writing the same folder (a job
    started twice, a worker orphaned by a killed parent) would interleave checkpoints of two
    different runs. The second one stops here instead. The lock is released when the process
    exits, however it exits. Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder}: another process is running {what} here; wait for it "
                            "to finish or stop it, then run again (it resumes)") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def quiet_libraries() -> None:
    """Our own progress bars say what runs; per-checkpoint "Loading weights" bars are noise.

    Per process: the CLI calls it, and so does every spawned demo worker.
    """
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
