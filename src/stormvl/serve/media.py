"""A request's video, made into what the evaluator's runner reads: a video file, or a folder
of frames with the rate they were taken at (as MVBench's frame-folder media).

Accepted (docs/serving.md):
- ``video_url``: a path (absolute, or relative to ``--media-root``) or ``file://`` URL under
  ``--media-root``; a ``data:video/...;base64,`` URL; ``http(s)://`` only when remote fetching
  is on (off by default);
- ``image_url`` frames: ``data:image/png|jpeg;base64,`` URLs (or paths under the root), in
  order, taken at ``frames_fps`` frames per second (default 2, Qwen's usual video rate).

Runs in the worker pool, never on the event loop. Every failure is an ``ApiError`` (400)
naming the request field; nothing outside ``--media-root`` is ever opened, symlinks included
(paths are resolved before the check).
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from stormvl.data.clip_cache import ClipReader
from stormvl.data.video import VideoInfo
from stormvl.errors import VideoError
from stormvl.serve.schema import ApiError, VideoRef

DEFAULT_FRAMES_FPS = 2.0
_IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


@dataclass(frozen=True)
class MediaLimits:
    """What a request's media may be."""

    root: Path | None = None  # local paths resolve under here (None: local paths refused)
    allow_remote: bool = False  # fetch http(s) video URLs
    max_video_s: float = 3600.0  # source video duration
    max_frames: int = 512  # image_url frames in one request
    max_pixels: int = 4096 * 4096  # width x height of a source frame
    max_remote_bytes: int = 256 << 20  # a fetched video
    timeout_s: float = 30.0  # remote fetch and decode deadline


@dataclass
class Staged:
    """Where the runner reads the video: a file, or a frame folder (``frames_fps`` set)."""

    path: Path
    frames_fps: float | None
    hide: Path  # the server-side path error messages must not show (a temp folder, ...)
    shown: str  # ... and what they show instead: what the client sent


def _bad(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param)


def local_path(given: str, root: Path | None, param: str) -> Path:
    """A path or ``file://`` URL -> a regular file under ``root`` (after resolving symlinks).

    The check runs on the resolved path, so ``..`` and symlinks that leave the root are
    refused alike, and whether such a file exists is never revealed.
    """
    if root is None:
        raise _bad(param, "local paths are off (start the server with --media-root DIR)")
    if given.startswith("file:"):
        u = urlparse(given)
        if u.netloc not in ("", "localhost"):
            raise _bad(param, f"file URL with a host ({u.netloc!r}) is not supported")
        given = unquote(u.path)
    try:
        raw = Path(given)
        real = (raw if raw.is_absolute() else root / raw).resolve()
    except (OSError, RuntimeError, ValueError):
        raise _bad(param, "not a valid path") from None
    if not real.is_relative_to(root):
        raise _bad(param, "the path is outside --media-root")
    if not real.is_file():
        raise _bad(param, f"{given}: file not found under --media-root")
    return real


def decode_data_url(url: str, param: str, kinds: tuple[str, ...]) -> tuple[str, bytes]:
    """``data:<type>;base64,<data>`` -> (type, bytes); ``kinds`` are accepted type prefixes."""
    head, sep, data = url.partition(",")
    meta = head[5:].split(";")
    if not sep or "base64" not in meta[1:]:
        raise _bad(param, "a data URL must be base64 (data:<type>;base64,...)")
    mime = meta[0].lower()
    if not mime.startswith(kinds):
        raise _bad(param, f"data URL type {mime!r} is not one of {', '.join(kinds)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(param, "the data URL is not valid base64") from None
    if not raw:
        raise _bad(param, "the data URL is empty")
    return mime, raw


def _fetch(url: str, limits: MediaLimits, param: str, dest: Path) -> None:
    """Download within the size limit and the deadline (httpx's timeout bounds each read; a
    server that trickles bytes is stopped by the deadline on the whole download)."""
    import httpx

    deadline = time.monotonic() + limits.timeout_s
    try:
        with httpx.stream("GET", url, timeout=limits.timeout_s, follow_redirects=True) as r:
            if r.status_code != 200:
                raise _bad(param, f"fetching the URL gave HTTP {r.status_code}")
            got = 0
            with dest.open("wb") as f:
                for chunk in r.iter_bytes():
                    got += len(chunk)
                    if got > limits.max_remote_bytes:
                        raise _bad(param, f"the remote video is over {limits.max_remote_bytes} "
                                   "bytes")
                    if time.monotonic() > deadline:
                        raise _bad(param, f"fetching the URL took over {limits.timeout_s:g} s "
                                   "(--decode-timeout-s)")
                    f.write(chunk)
    except httpx.HTTPError as exc:
        raise _bad(param, f"cannot fetch the URL ({type(exc).__name__})") from None


class Scratch:
    """A request's temporary folder, made on first use: media sent in the request (a data
    URL, a fetched video, image frames) is written there; a local file is read in place, so
    most requests make no folder. Deleted on exit."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __call__(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="stormvl-serve-")
        return Path(self._tmp.name)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _video_file(ref: VideoRef, limits: MediaLimits, scratch: Scratch) -> Staged:
    url, param = ref.url or "", ref.param
    scheme = urlparse(url).scheme.lower() if ":" in url[:12] else ""
    if scheme == "data":
        _, raw = decode_data_url(url, param, ("video/", "application/octet-stream"))
        path = scratch() / "video"
        path.write_bytes(raw)
        return Staged(path, None, path, "the data URL's video")
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise _bad(param, "remote URLs are off (start the server with --allow-remote-media)")
        path = scratch() / "video"
        _fetch(url, limits, param, path)
        return Staged(path, None, path, "the fetched video")
    if scheme not in ("", "file"):
        raise _bad(param, f"unsupported URL scheme {scheme!r} (use a path, file://, data: or "
                   "http(s)://)")
    real = local_path(url, limits.root, param)
    return Staged(real, None, real, url)


def _frame_folder(ref: VideoRef, limits: MediaLimits, scratch: Scratch, fps: float) -> Staged:
    """Check every frame (type, size, all alike) and write them as 00000.png, ... in order."""
    from PIL import Image, UnidentifiedImageError

    if len(ref.frames) > limits.max_frames:
        raise _bad(ref.param, f"{len(ref.frames)} image_url frames; the server allows at most "
                   f"{limits.max_frames}")
    size, tmp = None, scratch()
    for i, url in enumerate(ref.frames):
        param = f"{ref.param}: frame {i} (image_url)"
        if url.startswith("data:"):
            _, raw = decode_data_url(url, param, tuple(_IMAGE_TYPES))
        else:
            raw = local_path(url, limits.root, param).read_bytes()
        try:
            with Image.open(io.BytesIO(raw)) as im:
                fmt, this = im.format, im.size
                if fmt not in ("PNG", "JPEG"):
                    raise _bad(param, f"a {fmt} image; frames must be PNG or JPEG")
                if this[0] * this[1] > limits.max_pixels:
                    raise _bad(param, f"{this[0]}x{this[1]} pixels; the server allows at most "
                               f"{limits.max_pixels} per frame")
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise _bad(param, "not a decodable PNG or JPEG image") from None
        if size is not None and this != size:
            raise _bad(param, f"{this[0]}x{this[1]} pixels, unlike frame 0 ({size[0]}x{size[1]})")
        size = this
        (tmp / f"{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(raw)
    return Staged(tmp, fps, tmp, "the image_url frames")


def stage(ref: VideoRef, limits: MediaLimits, scratch: Scratch, frames_fps: float | None) -> Staged:
    """Put a request's video where the runner can read it (a video file's duration and size
    are checked when the runner probes it, through ``LimitedClips``).

    Args:
        scratch: this request's temporary folder (the caller deletes it afterwards).
    Raises:
        ApiError: 400 naming ``ref.param``.
    """
    if ref.url is None:
        return _frame_folder(ref, limits, scratch, frames_fps or DEFAULT_FRAMES_FPS)
    if frames_fps is not None:
        raise _bad("frames_fps", "only for a video given as image_url frames")
    return _video_file(ref, limits, scratch)


class LimitedClips(ClipReader):
    """The runner's clip reader with the server's duration / pixel limits applied to each
    probe, which comes before any frame is decoded (one open of the file per request)."""

    def __init__(self, limits: MediaLimits):
        super().__init__(None)
        self.limits = limits

    def check(self, path: str | Path, info: VideoInfo) -> None:
        lim = self.limits
        if info.duration > lim.max_video_s:
            raise VideoError(f"{path}: the video is {info.duration:.1f} s long; the server "
                             f"allows at most {lim.max_video_s:g} s")
        if info.width * info.height > lim.max_pixels:
            raise VideoError(f"{path}: {info.width}x{info.height} pixels; the server allows at "
                             f"most {lim.max_pixels} per frame")


def shown_error(exc: Exception, staged: Staged) -> str:
    """A media error's message with the server's own paths replaced by what the client sent."""
    return str(exc).replace(str(staged.hide), staged.shown)
