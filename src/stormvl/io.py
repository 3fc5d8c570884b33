"""File IO at the edges: atomic writes, and reads that fail with the file named.

Every job that writes a result (JSON summaries, reports, manifests) writes a temporary file
``.<name>.<pid>[.<thread>].tmp`` beside the target and renames it over the target; the rename
is atomic on POSIX, so a killed process never leaves a half-written result behind, and a
resumed job removes the temporaries a killed one left (``remove_stale_temps``). A full disk is
one ``DiskFullError`` naming the folder and the file (``writing``), never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stormvl.errors import DiskFullError, UserError

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(exc: BaseException) -> bool:
    """True for the ways a full disk (or quota) surfaces: ``OSError`` ENOSPC / EDQUOT from
    Python and PyAV, torch's zip writer (``RuntimeError: [enforce fail at inline_container.cc
    ...] PytorchStreamWriter failed writing file``), safetensors' Rust writer (its message
    carries the OS error)."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text or "StorageFull" in text:
        return True
    return "inline_container.cc" in text and "PytorchStreamReader" not in text


def disk_full_message(path: str | Path) -> str:
    path = Path(path)
    return f"{path.parent}: no space left on device (while writing {path.name})"


@contextmanager
def writing(path: str | Path, partial: str | Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into ``DiskFullError`` naming it.

    ``partial``: what the failed write leaves (a temp file or folder), removed so that nothing
    half-written stays behind to take the little space there is.
    """
    try:
        yield
    except Exception as exc:  # OSError, torch's RuntimeError, safetensors' own error type
        if isinstance(exc, UserError) or not is_disk_full(exc):
            raise
        if partial is not None:
            p = Path(partial)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise DiskFullError(disk_full_message(path)) from None


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temp file + rename; creates parent folders.

    The temp name carries the process and thread, so concurrent writers of one path (decode
    threads, training workers) each rename a complete file over it. ``durable``: fsync before
    the rename (a file a resume trusts, such as a manifest, survives a power cut).

    Raises:
        DiskFullError: the disk filled (nothing is left at ``path`` or beside it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with writing(path), tmp.open("wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; creates parent folders."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (numpy / torch scalars become floats), atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=float) + "\n")


def decode_utf8(data: bytes, where: str, error: type[Exception] = UserError) -> str:
    """``data`` as UTF-8 text; ``error`` "where:LINE: not valid UTF-8" at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{where}:{line}: not valid UTF-8") from None


def read_text(path: str | Path, error: type[Exception] = UserError) -> str:
    """A UTF-8 text file's content; a bad byte is ``error`` naming the file and line."""
    return decode_utf8(Path(path).read_bytes(), str(path), error)


def read_json(path: str | Path, what: str = "file", error: type[Exception] = UserError) -> Any:
    """The value of a JSON file; ``error`` naming the file when it is missing or unreadable
    (a user's annotation file, or a record a user edited by hand), never a bare traceback."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return json.loads(read_text(path, error))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _temp_owner(entry: str, names: set[str]) -> int | None:
    """The pid in ``.<name>.<pid>[.<thread>].tmp`` when ``name`` is one of ``names``."""
    if not (entry.startswith(".") and entry.endswith(".tmp")):
        return None
    parts = entry[1:-4].split(".")
    for k in (1, 2):  # .<name>.<pid>.tmp or .<name>.<pid>.<thread>.tmp
        if len(parts) > k and all(p.isdigit() for p in parts[-k:]) and ".".join(parts[:-k]) in names:
            return int(parts[-k])
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> int:
    """Delete the temporaries that killed writers of ``folder/<name>`` left; returns how many.

    A job passes the names it writes itself, so the live temporaries of a concurrent job in
    the same folder (another shard) are never touched; neither is the temporary of a process
    still running on this machine.
    """
    folder, names = Path(folder), set(names)
    if not folder.is_dir() or not names:
        return 0
    removed = 0
    for entry in os.listdir(folder):
        pid = _temp_owner(entry, names)
        if pid is not None and not _alive(pid):
            (folder / entry).unlink(missing_ok=True)
            removed += 1
    return removed


class CreatedHere:
    """The entries of ``folder`` that did not exist when this was made.

    A job that fails on bad input before doing any work takes them away again (``remove``):
    a folder holding only a lock, a config copy and an empty log looks like a run.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.before = set(os.listdir(self.folder)) if self.folder.is_dir() else None

    def remove(self) -> None:
        if not self.folder.is_dir():
            return
        if self.before is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for name in set(os.listdir(self.folder)) - self.before:
            p = self.folder / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


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
