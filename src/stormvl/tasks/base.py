"""The uniform evaluation item every benchmark reader yields, and the shared helpers.

A reader turns a local copy of a benchmark (in the layout its dataset repo has after
download) into a list of ``EvalItem``. The evaluator runs any benchmark the same way: sample
frames from ``item.video`` (with ``item.start`` / ``item.end``), build the text with
``item.render_prompt(timestamps)``, generate, then hand the reply to ``stormvl.tasks.score``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stormvl.data.clip_cache import ClipSource
from stormvl.data.video import Clip, read_clip, sample_indices
from stormvl.errors import UserError

# Reply formats; each has its own rule scorer in score.py.
FORMATS = ("mc", "yes_no", "caption_matching", "captioning", "open_ended")


@dataclass
class PromptConfig:
    """Overrides for a benchmark's default prompt (None keeps lmms-eval's default)."""

    pre_prompt: str | None = None  # text put before the question block
    post_prompt: str | None = None  # text put after the options (the answer instruction)


@dataclass
class EvalItem:
    """One benchmark question, ready for any model.

    ``answer`` is the gold in the benchmark's own form: a letter for multiple choice, "yes" /
    "no", TempCompass's full gold line ("Sentence A: ..." / "B. text"), or free text.
    """

    id: str
    benchmark: str
    video: Path  # a video file, or a folder of frames when ``frames_fps`` is set
    prompt: str  # the exact text lmms-eval builds by default (no subtitles)
    answer: str
    format: str = "mc"  # one of FORMATS
    question: str = ""  # the bare question (what a judge is shown)
    options: list[str] = field(default_factory=list)  # option texts, no letters
    categories: dict[str, str] = field(default_factory=dict)  # breakdown key -> value
    start: float | None = None  # seconds; the part of the video the question is about
    end: float | None = None
    frames_fps: float | None = None  # frame-folder media: the rate the frames were taken at
    subtitles: Callable[[Sequence[float]], list[str]] | None = None  # timestamps -> lines
    subtitle_prompt: Callable[[Sequence[float]], str] | None = None  # timestamps -> prompt
    meta: dict[str, Any] = field(default_factory=dict)

    def render_prompt(self, timestamps: Sequence[float] | None = None) -> str:
        """The prompt for the frames actually sampled (subtitled variants need them)."""
        if self.subtitle_prompt is None:
            return self.prompt
        if timestamps is None:
            raise ValueError(f"{self.id}: this prompt needs the sampled frame timestamps")
        return self.subtitle_prompt(timestamps)


def load_clip(
    item: EvalItem,
    num_frames: int | None = 16,
    sample_fps: float | None = None,
    max_frames: int | None = None,
    source: ClipSource | None = None,
) -> Clip:
    """Sample an item's frames (video file or frame folder), honouring its start / end.

    ``source``: the item's video file, already opened (``ClipReader.open``: its probe
    planned this read, and a disk cache may hold the clip).
    """
    if item.frames_fps is None:
        if source is None:
            return read_clip(item.video, num_frames=num_frames, sample_fps=sample_fps,
                             start=item.start, end=item.end, max_frames=max_frames)
        return source.read_clip(num_frames=num_frames, sample_fps=sample_fps, start=item.start,
                                end=item.end, max_frames=max_frames)
    return _read_frame_folder(item.video, item.frames_fps, num_frames, sample_fps,
                              item.start, item.end, max_frames)


_IMAGE_EXT = (".jpg", ".jpeg", ".png")


def frame_folder_files(folder: Path) -> list[Path]:
    """The image files of a frame-folder video, in frame order; an error if there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT) \
        if folder.is_dir() else []
    if not files:
        raise UserError(f"{folder}: frame folder missing or has no .jpg/.png frames")
    return files


def _read_frame_folder(folder: Path, fps: float, num_frames, sample_fps, start, end,
                       max_frames) -> Clip:
    """MVBench's episodic-reasoning media: a folder of frames taken at ``fps``."""
    from PIL import Image

    files = frame_folder_files(folder)
    idx = sample_indices(len(files), fps, num_frames, sample_fps, start, end, max_frames)
    frames = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in idx])
    return Clip(frames, idx, idx.astype(np.float64) / fps, fps)


# ----------------------------------------------------------------------------------------
# Small readers shared by the benchmark modules; errors name the file and the field.

def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    return path


def read_parquet_rows(folder: Path, what: str) -> tuple[list[dict], str]:
    """All rows of the ``*.parquet`` shards in ``folder`` (sorted), and a label for errors."""
    import pyarrow.parquet as pq

    shards = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not shards:
        raise UserError(f"{folder}: no {what} parquet file (expected {folder}/test-*.parquet)")
    rows: list[dict] = []
    for shard in shards:
        try:
            rows.extend(pq.read_table(shard).to_pylist())
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise UserError(f"{shard}: cannot read parquet ({exc})") from None
    return rows, str(shards[0]) if len(shards) == 1 else f"{folder}/*.parquet"


def require_fields(row: Any, fields: Sequence[str], where: str) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a row must be an object, got {type(row).__name__}")
    for key in fields:
        if key not in row or row[key] is None:
            raise UserError(f"{where}: missing field '{key}'")


def require_video(path: Path, where: str) -> Path:
    if not path.exists():
        raise UserError(f"{where}: video not found at {path}")
    return path
