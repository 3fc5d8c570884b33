"""The thought-video generator interface and its registry.

A generator turns one sample (question, answer, rationale, the input clip) into a "thought
video": frames that show the hidden intermediate states the question is about (STORM Stage I
aligns latent tokens to features of these frames). Every backend (a diffusion model, the
procedural renderer, a corruption wrapper) implements the same three steps:

1. build from a typed config (cheap, no IO),
2. ``load()`` once, failing at start with a ``UserError`` (missing weights, no GPU) before the
   runner touches any row,
3. ``generate_batch(samples, clips)`` -> one (T', H, W, 3) uint8 array per sample.

Randomness is seeded per sample (``sample_seed``), never per batch or per shard, so a
sharded, resumed or re-batched run writes the same videos as one straight run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from stormvl.config import from_dict, load_config
from stormvl.data.manifest import Sample
from stormvl.data.video import VideoInfo
from stormvl.errors import ConfigError, UserError


@dataclass
class GenConfig:
    """Settings every generator shares (the runner reads these)."""

    seed: int = 0  # base seed; each sample's seed is derived from it and the sample id
    batch_size: int = 1  # samples per generate_batch call
    input_frames: int = 8  # input-video frames given to the generator (first..last, evenly)
    fps: float = 8.0  # frame rate written into the thought-video file
    lossless: bool = False  # encode thought videos losslessly (yuv444 qp0)

    def validate(self) -> list[str]:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.input_frames < 1:
            problems.append(f"input_frames: must be >= 1, got {self.input_frames}")
        if self.fps <= 0:
            problems.append(f"fps: must be > 0, got {self.fps}")
        return problems


@dataclass(frozen=True)
class InputClip:
    """The frames of a sample's input video that a generator may condition on."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) float64 seconds
    info: VideoInfo  # the whole input video (size, fps, length)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the input video."""
        return self.info.height, self.info.width


class Generator:
    """Base class: subclasses set ``name`` / ``config_cls`` and implement ``generate``."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[GenConfig]] = GenConfig

    def __init__(self, config: GenConfig):
        self.config = config

    def load(self) -> None:
        """Load weights / check requirements; raise UserError before any row is processed."""

    def frame_indices(self, sample: Sample, info: VideoInfo) -> np.ndarray:
        """Which input-video frames to decode: ``input_frames`` evenly from first to last.

        Endpoints are included (unlike centre-of-segment sampling) because the last frame
        is the natural keyframe for a video that continues into its thought.
        """
        n = max(1, info.num_frames)
        return np.unique(np.linspace(0, n - 1, self.config.input_frames).round().astype(np.int64))

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        """One thought video, (T', H, W, 3) uint8, H and W those of ``clip``."""
        raise NotImplementedError

    def generate_batch(self, samples: Sequence[Sample], clips: Sequence[InputClip]) -> list[np.ndarray]:
        """Default: one sample at a time. Backends that batch override this."""
        return [self.generate(s, c) for s, c in zip(samples, clips, strict=True)]

    def output_fps(self, sample: Sample, clip: InputClip) -> float:
        """Frame rate of the written thought video (the config's, unless a backend knows)."""
        return self.config.fps

    def memory_stats(self) -> dict[str, Any]:
        """Peak accelerator memory (bytes) since load, or empty when on CPU."""
        return {}


_REGISTRY: dict[str, Callable[[], type[Generator]]] = {}


def register(name: str, loader: Callable[[], type[Generator]]) -> None:
    """Register a generator class lazily (so `diffusers` is imported only when used)."""
    _REGISTRY[name] = loader


def generator_names() -> list[str]:
    return sorted(_REGISTRY)


def generator_class(name: str) -> type[Generator]:
    if name not in _REGISTRY:
        raise UserError(f"--generator: unknown generator {name!r} (choose from {generator_names()})")
    return _REGISTRY[name]()


def build_generator(
    name: str, config_path: str | None = None, overrides: Sequence[str] = ()
) -> Generator:
    """Generator ``name`` with its config loaded from YAML + ``key=value`` overrides."""
    cls = generator_class(name)
    return cls(load_config(cls.config_cls, config_path, overrides))


def build_from_dict(name: str, data: dict, source: str) -> Generator:
    """Generator ``name`` from a plain config mapping (used by wrappers such as `degrade`)."""
    cls = generator_class(name)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {data!r}")
    return cls(from_dict(cls.config_cls, data, source))


def sample_seed(base: int, sample_id: str) -> int:
    """A 63-bit seed from the base seed and the sample id (stable across processes)."""
    digest = hashlib.sha256(f"{base}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_video(frames: Any, where: str) -> np.ndarray:
    """Check a generator's output is (T, H, W, 3) uint8 with T >= 1 (a bug otherwise)."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1:
        raise RuntimeError(f"{where}: generator returned {arr.shape} {arr.dtype}, want (T,H,W,3) uint8")
    return arr
