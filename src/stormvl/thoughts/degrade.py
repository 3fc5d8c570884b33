"""`degrade`: another generator's output with controlled corruption.

The paper names its reliance on generated thought videos as the main limitation; this wrapper
lets a user measure how much Stage I depends on their quality. Each corruption is a pure
function of (frames, rng); the rng is seeded per sample, so a run is deterministic however it
is sharded or batched. Corruptions apply in a fixed order: wrong intermediate state, shuffle,
drop, blur, noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

from stormvl.data.manifest import Sample
from stormvl.data.video import VideoInfo
from stormvl.thoughts.base import (
    GenConfig,
    Generator,
    InputClip,
    build_from_dict,
    check_video,
    generator_names,
    sample_seed,
)


@dataclass
class DegradeConfig(GenConfig):
    """Which generator to wrap and how to corrupt its frames (all off by default)."""

    inner: str = "procedural"  # the wrapped generator's name
    inner_config: dict[str, Any] = field(default_factory=dict)  # its config (same keys as its YAML)
    noise_sigma: float = 0.0  # std of additive gaussian noise, in pixel levels (0..255)
    blur_sigma: float = 0.0  # spatial gaussian blur radius in pixels
    drop_p: float = 0.0  # each frame is removed with this probability (one is always kept)
    shuffle_p: float = 0.0  # each frame joins a random permutation with this probability
    wrong_state_p: float = 0.0  # probability that a middle segment shows a wrong state
    wrong_state_frac: float = 0.34  # length of that segment as a fraction of the video
    wrong_state_mode: Literal["reverse", "input"] = "reverse"  # time-reversed, or input frames

    def validate(self) -> list[str]:
        problems = super().validate()
        for name in ("drop_p", "shuffle_p", "wrong_state_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name}: must be in [0, 1], got {v}")
        if not 0.0 < self.wrong_state_frac <= 1.0:
            problems.append(f"wrong_state_frac: must be in (0, 1], got {self.wrong_state_frac}")
        for name in ("noise_sigma", "blur_sigma"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0")
        if self.inner == "degrade":
            problems.append("inner: degrade cannot wrap itself")
        elif self.inner not in generator_names():
            problems.append(f"inner: unknown generator {self.inner!r} (choose from {generator_names()})")
        return problems


def add_noise(frames: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 plus N(0, sigma^2) per pixel, clipped."""
    noisy = frames.astype(np.float32) + rng.normal(0.0, sigma, frames.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Spatial gaussian blur of every frame (PIL; deterministic, no rng)."""
    filt = ImageFilter.GaussianBlur(radius=sigma)
    return np.stack([np.asarray(Image.fromarray(f).filter(filt)) for f in frames])


def drop_frames(frames: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Remove each frame with probability p; returns (T', H, W, 3), 1 <= T' <= T."""
    keep = rng.random(len(frames)) >= p
    if not keep.any():
        keep[rng.integers(len(frames))] = True
    return frames[keep]


def shuffle_frames(frames: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Permute a random subset of frames (each chosen with prob p) among their own slots.

    The permutation is never the identity when >= 2 frames are chosen, so the corruption
    always moves something.
    """
    chosen = np.flatnonzero(rng.random(len(frames)) < p)
    if len(chosen) < 2:
        return frames
    perm = rng.permutation(len(chosen))
    if np.array_equal(perm, np.arange(len(chosen))):
        perm = np.roll(perm, 1)
    order = np.arange(len(frames))
    order[chosen] = chosen[perm]
    return frames[order]


def wrong_state(
    frames: np.ndarray, frac: float, mode: str, clip: InputClip | None
) -> np.ndarray:
    """Replace the middle ``frac`` of the video with a wrong intermediate state.

    ``reverse`` plays that segment backwards (states in the wrong order); ``input`` shows
    frames of the input video there instead (the observed state, not the hidden one).
    """
    t = len(frames)
    n = max(1, int(round(frac * t)))
    lo = (t - n) // 2
    out = frames.copy()
    if mode == "reverse":
        out[lo : lo + n] = frames[lo : lo + n][::-1]
    elif mode == "input":
        assert clip is not None
        src = clip.frames[np.linspace(0, len(clip.frames) - 1, n).round().astype(int)]
        if src.shape[1:] != frames.shape[1:]:
            h, w = frames.shape[1:3]
            src = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in src])
        out[lo : lo + n] = src
    else:
        raise ValueError(f"unknown wrong_state mode {mode!r}")
    return out


def corrupt(
    frames: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator, clip: InputClip | None = None
) -> np.ndarray:
    """All configured corruptions in order; (T, H, W, 3) uint8 -> (T', H, W, 3) uint8."""
    # Draw every random decision, even for disabled corruptions, so turning one on does not
    # change what the others do to the same sample.
    do_wrong = rng.random() < cfg.wrong_state_p
    rngs = rng.spawn(3)
    if do_wrong:
        frames = wrong_state(frames, cfg.wrong_state_frac, cfg.wrong_state_mode, clip)
    if cfg.shuffle_p > 0:
        frames = shuffle_frames(frames, cfg.shuffle_p, rngs[0])
    if cfg.drop_p > 0:
        frames = drop_frames(frames, cfg.drop_p, rngs[1])
    if cfg.blur_sigma > 0:
        frames = blur(frames, cfg.blur_sigma)
    if cfg.noise_sigma > 0:
        frames = add_noise(frames, cfg.noise_sigma, rngs[2])
    return frames


class DegradeGenerator(Generator):
    name = "degrade"
    config_cls = DegradeConfig

    def __init__(self, config: DegradeConfig):
        super().__init__(config)
        self.inner = build_from_dict(config.inner, config.inner_config, "degrade.inner_config")
        self.config.batch_size = self.inner.config.batch_size  # batching is the inner's

    def load(self) -> None:
        self.inner.load()

    def frame_indices(self, sample: Sample, info: VideoInfo) -> np.ndarray:
        # The inner generator decides; the `input` mode reuses whatever frames it asked for.
        return self.inner.frame_indices(sample, info)

    def generate_batch(self, samples: Sequence[Sample], clips: Sequence[InputClip]) -> list[np.ndarray]:
        outs = self.inner.generate_batch(samples, clips)
        result = []
        for s, c, frames in zip(samples, clips, outs, strict=True):
            frames = check_video(frames, f"{self.inner.name}({s.id})")
            rng = np.random.default_rng(sample_seed(self.config.seed, s.id))
            result.append(corrupt(frames, self.config, rng, c))
        return result

    def generate(self, sample: Sample, clip: InputClip) -> np.ndarray:
        return self.generate_batch([sample], [clip])[0]

    def output_fps(self, sample: Sample, clip: InputClip) -> float:
        return self.inner.output_fps(sample, clip)

    def memory_stats(self) -> dict[str, Any]:
        return self.inner.memory_stats()
