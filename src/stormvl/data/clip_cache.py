"""Decoded clips kept on disk and shared by every process that reads the same videos.

Why: the demo trains 25 runs and evaluates each on the same few thousand short clips. Each
run decoded every clip again in its first epoch (~40 ms per 8-frame clip on a loaded 2-core
box, against ~0.3 ms to read it back), and each evaluation did the same for its splits.

An entry is keyed by the file's resolved path, size and modification time plus the sampling
arguments, and holds exactly what ``read_clip`` / ``probe`` returned, so a cached read equals
a fresh one, and a file rewritten in place is decoded again. Entries are written atomically
(two processes writing one key leave one complete file). Errors are never cached: a missing
or corrupt file raises the same ``VideoError`` every time. Meant for small clips: 16 frames of
448 x 448 are ~10 MB an entry.

An entry is one JSON header line (each array's dtype and shape) and the arrays' raw bytes.
Not ``.npz``: numpy parses each array's header with ``ast.literal_eval``, and CPython 3.11.7
raised ``SystemError: AST constructor recursion depth mismatch`` in our CI when two threads
parsed at once (the evaluation's two decode threads reading this folder); the AST
constructor's recursion counter is interpreter-wide state, not per thread.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from stormvl.data.video import DECODER_VERSION, Clip, OpenVideo, VideoInfo
from stormvl.io import write_bytes_atomic


class ClipReader:
    """``probe`` and ``read_clip`` through an optional disk cache (``root`` None: no cache).

    A caller that probes a file to plan its clip and then reads it opens it once with
    ``open`` (``ClipSource``). ``check`` sees every probe, cached or fresh, before its
    caller does (a server applies its limits there).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else None

    def check(self, path: str | Path, info: VideoInfo) -> None:
        """Refuse a video by its probe (raise ``VideoError``); every video passes here."""

    def _entry(self, path: str | Path, kind: str, args: list) -> Path | None:
        if self.root is None:
            return None
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return None  # the reader raises its own error for a missing file
        key = json.dumps([str(p.resolve()), st.st_size, st.st_mtime_ns, kind, args, DECODER_VERSION])
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.clip"

    def open(self, path: str | Path, timeout_s: float | None = 60.0) -> ClipSource:
        """One file's probe and read, opening it at most once (not at all when both are
        cached); use as a context manager."""
        return ClipSource(self, path, timeout_s)

    def probe(self, path: str | Path, timeout_s: float | None = 30.0) -> VideoInfo:
        with ClipSource(self, path, timeout_s, threads=False) as src:
            return src.info

    def read_clip(self, path: str | Path, timeout_s: float | None = 60.0, **sampling) -> Clip:
        """``video.read_clip(path, **sampling)``: num_frames / sample_fps, start, end, max_frames."""
        with ClipSource(self, path, timeout_s) as src:
            return src.read_clip(**sampling)


class ClipSource:
    """One video file of a ``ClipReader``: its probe (``info``), then one read."""

    def __init__(self, reader: ClipReader, path: str | Path, timeout_s: float | None,
                 threads: bool = True):
        self.reader, self.path, self.timeout_s, self.threads = reader, path, timeout_s, threads
        self._video: OpenVideo | None = None
        self._info: VideoInfo | None = None

    def __enter__(self) -> ClipSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None

    def _opened(self) -> OpenVideo:
        if self._video is None:
            self._video = OpenVideo(self.path, self.timeout_s, self.threads)
        return self._video

    @property
    def info(self) -> VideoInfo:
        """The probe (cached, or from the opened file), passed by the reader's ``check``."""
        if self._info is None:
            entry = self.reader._entry(self.path, "probe", [])
            got = _load(entry)
            if got is not None:
                info = VideoInfo(int(got["num_frames"]), float(got["fps"]), int(got["width"]),
                                 int(got["height"]), bool(got["exact"]))
            else:
                info = self._opened().info
                _save(entry, num_frames=info.num_frames, fps=info.fps, width=info.width,
                      height=info.height, exact=info.exact)
            self.reader.check(self.path, info)
            self._info = info
        return self._info

    def read_clip(self, **sampling) -> Clip:
        """``video.read_clip``'s sampling arguments: num_frames / sample_fps, start, end,
        max_frames. A clip decoded here was first passed by the reader's ``check``."""
        args = [sampling.get(k) for k in ("num_frames", "sample_fps", "start", "end", "max_frames")]
        entry = self.reader._entry(self.path, "clip", args)
        got = _load(entry)
        if got is not None:
            return Clip(got["frames"], got["indices"], got["timestamps"], float(got["fps"]))
        video = self._opened()
        if self._info is None:  # checked once, as ``info`` does (no probe entry written)
            self.reader.check(self.path, video.info)
            self._info = video.info
        clip = video.read(**sampling)
        _save(entry, frames=clip.frames, indices=clip.indices, timestamps=clip.timestamps,
              fps=clip.fps)
        return clip


def _load(entry: Path | None) -> dict | None:
    """An entry's arrays, or None when absent or unreadable (it is then rewritten)."""
    if entry is None or not entry.is_file():
        return None
    try:
        data = bytearray(entry.read_bytes())
        end = data.index(b"\n")
        header = json.loads(data[:end])
        arrays, at = {}, end + 1
        for name, (dtype, shape) in header.items():
            dt = np.dtype(dtype)
            n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
            if n < 0 or at + n > len(data):
                return None  # damaged or truncated
            arrays[name] = np.frombuffer(data, dt, count=n // dt.itemsize, offset=at).reshape(shape)
            at += n
        return arrays if at == len(data) else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _save(entry: Path | None, **arrays) -> None:
    """Write an entry: a header line {name: [dtype, shape]}, then each array's C-order bytes."""
    if entry is None:
        return
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    header = {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}
    parts = [json.dumps(header).encode() + b"\n"] + [a.tobytes() for a in arrays.values()]
    write_bytes_atomic(entry, b"".join(parts))
