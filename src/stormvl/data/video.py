"""Video decode / sample / encode with PyAV (never torchvision).

Rules every caller relies on:

1. Errors name the file: a missing, corrupt, empty or too-slow video raises ``VideoError``
   whose message starts with the path.
2. Timestamps come from the frames actually sampled (``Clip.timestamps``: each frame's
   presentation time, so VFR files keep their real times), and a model's temporal positions
   never assume a frame rate the sampler did not use.
3. A clip shorter than asked for gives each of its frames once (never a repeated index, so
   timestamps strictly increase); the backbone pads to its temporal patch, as the Hugging
   Face Qwen processors do.
4. Frames come out as displayed: the container's rotation (display matrix) is applied.
5. Writes are atomic: a killed encode leaves no half-written file at the final path.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from stormvl.errors import VideoError

# What a decoded clip holds changed with it (2: rotation applied, presentation times); disk
# caches of decoded clips are keyed by it, so a cache written before is not reused.
DECODER_VERSION = 2


# Decoder threads pay for starting only when frames are costly to decode, which the stream's
# bytes per frame predict: on 2 cores, 16 frames of a flat 64 x 64 clip (~340 B a frame)
# decoded 28% slower with threads, 64 x 64 noise (~3.5 KB a frame) 16% faster, 360p noise 36%.
THREADED_BYTES_PER_FRAME = 2048


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video stream."""

    num_frames: int  # decoded frame count (exact when ``exact`` else estimated)
    fps: float  # average frame rate
    width: int  # as displayed (after the container's rotation)
    height: int
    exact: bool

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class Clip:
    """Sampled frames and where they came from."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) int64 frame index in the source video
    timestamps: np.ndarray  # (T,) float64 presentation times in seconds, strictly increasing
    fps: float  # the source video's average frame rate


def _open(path: str | Path, timeout_s: float | None):
    """(the opened container, the file's size in bytes): one stat for both checks."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise VideoError(f"{p}: video file not found")
    if st.st_size == 0:
        raise VideoError(f"{p}: video file is empty")
    try:
        kwargs = {"timeout": (timeout_s, timeout_s)} if timeout_s else {}
        container = av.open(str(p), **kwargs)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{p}: cannot open video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: no video stream")
    return container, st.st_size


def probe(path: str | Path, timeout_s: float | None = 30.0) -> VideoInfo:
    """Read stream metadata (frame count, fps, displayed size).

    Decodes the first frame only: PyAV exposes the display matrix (rotation) on frames, not
    on streams, and the displayed size decides the token budget. A caller that reads frames
    after its probe should use ``OpenVideo`` (one open, the first frame decoded once).

    Raises:
        VideoError: the file is missing, empty or not a video.
    """
    with OpenVideo(path, timeout_s, threads=False) as video:
        return video.info


class OpenVideo:
    """A video file opened once for both its probe (``info``) and one read (``read``).

    Why: planning a clip needs the probe (frame count, rate, displayed size) before the
    frames are chosen; probing and reading apart opened the file twice and decoded its first
    frame twice, a quarter of preparing a short clip. The first frame decoded for the probe
    is kept and the read continues the same decoder.

    Args:
        timeout_s: the deadline for opening, probing and decoding together.
        threads: let the decoder use frame / slice threads for a read, when its frames are
            heavy enough to pay for them (``THREADED_BYTES_PER_FRAME``); a probe alone
            decodes one frame, which threads only delay.
    Raises:
        VideoError: the file is missing, empty or not a video (``read``: corrupt, short or
            too slow).
    """

    def __init__(self, path: str | Path, timeout_s: float | None = 30.0, threads: bool = True):
        self.path, self.timeout_s = path, timeout_s
        self._deadline = time.monotonic() + timeout_s if timeout_s else None
        self._container, size = _open(path, timeout_s)
        try:
            stream = self._container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            n = int(stream.frames or 0)
            exact = n > 0
            if not exact and stream.duration and stream.time_base:
                n = int(round(float(stream.duration * stream.time_base) * fps))
            if n <= 0 and self._container.duration:
                n = int(round(self._container.duration / av.time_base * fps))
            if threads and size >= THREADED_BYTES_PER_FRAME * max(n, 1):
                stream.thread_type = "AUTO"  # set before the first decode opens the codec
            w, h = stream.codec_context.width, stream.codec_context.height
            self._time_base = stream.time_base
            self._frames = self._container.decode(stream)
            try:
                self._first = next(self._frames, None)
            except av.error.FFmpegError as exc:
                raise VideoError(f"{path}: corrupt video stream at frame index 0 (the first; "
                                 f"{exc})") from None
            if self._first is not None and _quarter_turns(self._first) % 2:
                w, h = h, w
            self.info = VideoInfo(n, fps, w, h, exact)
        except BaseException:
            self._container.close()
            raise
        self._read = False

    def __enter__(self) -> OpenVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def read(
        self,
        num_frames: int | None = None,
        sample_fps: float | None = None,
        start: float | None = None,
        end: float | None = None,
        max_frames: int | None = None,
    ) -> Clip:
        """Sample and decode a clip (``read_clip``'s arguments); once per opened file."""
        n = self.info.num_frames
        if n <= 0:  # unknown length: decode everything once and sample from memory
            frames, times = self.frames_at(None)
            idx = sample_indices(len(frames), self.info.fps, num_frames, sample_fps, start, end,
                                 max_frames)
            return Clip(frames[idx], idx, times[idx], self.info.fps)
        idx = sample_indices(n, self.info.fps, num_frames, sample_fps, start, end, max_frames)
        frames, times = self.frames_at(idx)
        return Clip(frames, idx, times, self.info.fps)

    def frames_at(self, indices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Frames at ``indices`` (all when None), upright, and their presentation times.

        Frames are counted in the decoder's output order, which is display order. Decoding
        stops after the last wanted index, so a short clip of a long video does not pay for
        the rest.
        """
        if self._read:
            raise RuntimeError(f"{self.path}: an OpenVideo is read once (open it again)")
        self._read = True
        path, fps, deadline = self.path, self.info.fps, self._deadline
        want = None if indices is None else np.asarray(indices, dtype=np.int64)
        last = None if want is None else int(want.max())
        wanted = None if want is None else set(want.tolist())
        picked: dict[int, np.ndarray] = {}
        pts: dict[int, int | None] = {}
        # one converter for the whole clip: ``frame.to_ndarray(format=...)`` builds a new
        # swscale context per frame, ~9x the cost of the conversion itself (same pixels)
        rgb = VideoReformatter()
        origin = None if self._first is None else self._first.pts
        frames = itertools.chain([self._first] if self._first is not None else [], self._frames)
        i = -1
        try:
            for i, frame in enumerate(frames):
                if deadline is not None and time.monotonic() > deadline:
                    raise VideoError(f"{path}: decoding took longer than {self.timeout_s:.0f}s")
                if wanted is None or i in wanted:
                    img = rgb.reformat(frame, format="rgb24").to_ndarray()
                    turns = _quarter_turns(frame)
                    picked[i] = np.rot90(img, turns) if turns else img
                    pts[i] = frame.pts
                if last is not None and i >= last:
                    break
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: corrupt video stream at frame index {i + 1} (from 0; "
                             f"{i + 1} frames decoded before it) ({exc})") from None
        if not picked:
            raise VideoError(f"{path}: no decodable frames")
        order = sorted(picked) if want is None else [int(k) for k in want]
        missing = [k for k in order if k not in picked]
        if missing:
            # Container frame counts can overstate; reuse the last decoded frame for a tail
            # that is at most 2 frames short, anything else is a truncated file.
            got = max(picked)
            if min(missing) < got or max(missing) - got > 2:
                raise VideoError(
                    f"{path}: only {got + 1} frames decodable, frame index {min(missing)} (from 0) "
                    "requested"
                )
            for k in missing:
                picked[k] = picked[got]
        times = _presentation_times(order, pts, origin, self._time_base, fps)
        return np.stack([picked[k] for k in order]), times


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright (its display matrix).

    PyAV's ``VideoFrame.rotation`` is the matrix's counter-clockwise angle in degrees (e.g.
    -90 for a phone video shot upright, whose pixels are stored sideways); angles that are
    not a multiple of 90 are rounded to the nearest quarter turn, and mirror flips in the
    matrix are not applied.
    """
    return round(frame.rotation / 90) % 4


def _window(num_total: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """First and last frame index of the ``[start, end]`` seconds window (at the average
    rate); a bound outside the video falls back to the whole clip."""
    if num_total <= 0:
        raise ValueError("video has no frames")
    lo = 0 if start is None else max(0, int(round(start * fps)))
    hi = num_total - 1 if end is None else min(num_total - 1, int(round(end * fps)))
    if hi < lo:
        lo, hi = 0, num_total - 1
    return lo, hi


def window_frames(num_total: int, fps: float, start: float | None = None,
                  end: float | None = None) -> int:
    """Frames inside the ``[start, end]`` window, the most ``sample_indices`` returns; 0 when
    the length is unknown (``probe``'s ``num_frames <= 0``)."""
    if num_total <= 0:
        return 0
    lo, hi = _window(num_total, fps, start, end)
    return hi - lo + 1


def sample_indices(
    num_total: int,
    fps: float,
    num_frames: int | None = None,
    sample_fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Choose which source frames to use.

    Uniform ``num_frames`` picks the centre of ``num_frames`` equal segments of the window
    (the convention of MVBench / lmms-eval); ``sample_fps`` takes one frame every
    ``1 / sample_fps`` seconds, capped at ``max_frames``. ``start`` / ``end`` (seconds)
    restrict the window (MVBench bounds). Frames are chosen by index, seconds map to indices
    at the average frame rate. A window with fewer frames than asked for gives every frame
    once, as the Hugging Face Qwen processors cap the count at the frames there are.

    Returns:
        (T,) int64 strictly increasing frame indices, 1 <= T <= ``window_frames``.
    """
    if (num_frames is None) == (sample_fps is None):
        raise ValueError("give exactly one of num_frames or sample_fps")
    lo, hi = _window(num_total, fps, start, end)
    span = hi - lo + 1
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        if num_frames >= span:
            return np.arange(lo, hi + 1, dtype=np.int64)
        seg = span / num_frames  # > 1, so the picks are distinct
        idx = lo + np.floor(seg / 2 + seg * np.arange(num_frames)).astype(np.int64)
    else:
        if sample_fps <= 0:
            raise ValueError("sample_fps must be > 0")
        step = fps / sample_fps
        count = min(span, max(1, int(span / step)))
        if max_frames is not None and count > max_frames:
            return sample_indices(num_total, fps, num_frames=max_frames, start=start, end=end)
        if count == span:
            return np.arange(lo, hi + 1, dtype=np.int64)
        idx = lo + np.floor(step / 2 + step * np.arange(count)).astype(np.int64)
    return np.clip(idx, lo, hi)


def decode_frames(
    path: str | Path, indices: np.ndarray | None = None, timeout_s: float | None = 60.0
) -> tuple[np.ndarray, float]:
    """Decode the frames at ``indices`` (all frames when None), in order, upright.

    Returns:
        (frames (T, H, W, 3) uint8, source fps); ``read_clip`` also gives their times.

    Raises:
        VideoError: unreadable file, fewer frames than asked for, or decoding that takes
            longer than ``timeout_s`` seconds.
    """
    with OpenVideo(path, timeout_s) as video:
        frames, _ = video.frames_at(indices)
        return frames, video.info.fps


def _presentation_times(order: list[int], pts: dict, origin, time_base, fps: float) -> np.ndarray:
    """Seconds since the first frame, from each frame's pts x time_base (an exact rational,
    rounded once to float64); a reused tail frame continues at the average rate. A stream
    without usable pts (missing, or not increasing) falls back to index / fps."""
    if origin is not None and time_base and all(v is not None for v in pts.values()):
        got = max(pts)

        def sec(k: int) -> float:
            return float((pts[k] - origin) * time_base)

        ts = np.asarray([sec(k) if k in pts else sec(got) + (k - got) / fps for k in order])
        if np.all(np.diff(ts) > 0):
            return ts
    return np.asarray(order, dtype=np.float64) / fps


def read_clip(
    path: str | Path,
    num_frames: int | None = None,
    sample_fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
    timeout_s: float | None = 60.0,
) -> Clip:
    """Sample and decode a clip; timestamps are the presentation times of the frames used.

    One open of the file: the frame count and rate that choose the frames come from the
    same decoder that then decodes them (``OpenVideo``).
    """
    with OpenVideo(path, timeout_s) as video:
        return video.read(num_frames, sample_fps, start, end, max_frames)


def write_video(
    path: str | Path, frames: np.ndarray, fps: float = 8.0, lossless: bool = False, crf: int = 18
) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 mp4, atomically.

    ``lossless`` uses 4:4:4 chroma at qp 0, so decoded pixels equal the input exactly
    (used for the synthetic suite, whose small objects would smear under 4:2:0).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"need >= 1 frame and even height/width, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=_rate(fps))
            stream.width, stream.height = w, h
            if lossless:
                stream.pix_fmt = "yuv444p"
                stream.options = {"qp": "0", "preset": "ultrafast", "threads": "1"}
            else:
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
            # One encoder thread (x264's own option and the codec context's) keeps the
            # bitstream identical across machines and runs.
            stream.codec_context.thread_count = 1
            for img in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
