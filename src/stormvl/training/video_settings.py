"""Fit frames and resolution to a visual-token budget, without ever cutting a visual span.

Qwen-style video towers turn ``temporal_patch`` frames of ``factor x factor`` pixels
(``factor = patch * merge``) into one language token. A sample's visual cost is therefore
``ceil(T / temporal_patch) * (H / factor) * (W / factor)`` tokens. Other trainers cap the
*sequence* and truncate, which can cut a video's placeholder span in half and crash the
placeholder/feature merge. Here the budget is met *before* tokenisation by lowering the
resolution first (down to ``min_pixels``) and then the frame count, so every video's span is
whole and the total never exceeds ``max_visual_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stormvl.errors import UserError
from stormvl.training.config import VideoConfig


@dataclass(frozen=True)
class VisualGeometry:
    """Patch geometry of a backbone's vision tower (Qwen2.5-VL / Qwen3-VL defaults)."""

    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2

    @property
    def factor(self) -> int:
        return self.patch * self.merge

    @classmethod
    def from_model_config(cls, config) -> VisualGeometry:
        """Read the geometry from an HF Qwen-VL config (never typed by hand)."""
        v = config.vision_config
        return cls(v.patch_size, v.spatial_merge_size, v.temporal_patch_size)


@dataclass(frozen=True)
class VideoPlan:
    """What to sample and how large: the adapter resizes to (height, width) exactly."""

    num_frames: int  # frames to decode (a multiple of temporal_patch)
    height: int
    width: int
    max_pixels: int  # per-frame pixel cap to hand to the adapter's preprocessing
    tokens: int  # visual tokens this video will occupy


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule: sides multiple of ``factor``, area within [min, max], aspect kept."""
    if height < 1 or width < 1:
        raise UserError(f"video frame size {height}x{width} is empty")
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"video aspect ratio {width}x{height} is more extreme than 200:1")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def video_tokens(num_frames: int, height: int, width: int, geo: VisualGeometry) -> int:
    """Language tokens of one video span after patching and merging."""
    groups = math.ceil(num_frames / geo.temporal_patch)
    return groups * (height // geo.factor) * (width // geo.factor)


def wanted_frames(settings: VideoConfig, num_total: int, fps: float) -> int:
    """Frames the settings ask for on a video of ``num_total`` frames at ``fps``."""
    if settings.num_frames is not None:
        return settings.num_frames
    count = max(1, int(num_total / (fps / settings.fps)))
    return min(count, settings.max_frames)


def plan_video(
    height: int,
    width: int,
    frames: int,
    settings: VideoConfig,
    geo: VisualGeometry = VisualGeometry(),
    budget: int | None = None,
) -> VideoPlan:
    """Choose frame count and resolution for one video within ``budget`` visual tokens.

    Resolution goes down first (to ``settings.min_pixels``), then frames (in whole temporal
    groups). The result always satisfies ``tokens <= budget``.

    Args:
        height, width: source frame size.
        frames: frames wanted (``wanted_frames``).
        budget: visual tokens allowed (default ``settings.max_visual_tokens``).

    Raises:
        UserError: not even one temporal group at ``min_pixels`` fits the budget.
    """
    budget = settings.max_visual_tokens if budget is None else budget
    tp, f2 = geo.temporal_patch, geo.factor**2
    frames = max(tp, math.ceil(frames / tp) * tp)  # whole temporal groups
    min_h, min_w = smart_resize(height, width, geo.factor, settings.min_pixels, settings.min_pixels)
    per_group_min = (min_h // geo.factor) * (min_w // geo.factor)
    if per_group_min > budget:
        raise UserError(
            f"video.max_visual_tokens={budget} is below one frame group at video.min_pixels "
            f"({per_group_min} tokens); raise the budget or lower min_pixels"
        )
    groups = min(frames // tp, budget // per_group_min)
    cap = min(settings.max_pixels, (budget // groups) * f2)
    while True:  # rounding in smart_resize can overshoot the cap by one factor step
        h, w = smart_resize(height, width, geo.factor, min(settings.min_pixels, cap), cap)
        tokens = video_tokens(groups * tp, h, w, geo)
        if tokens <= budget or cap <= settings.min_pixels:
            break
        cap -= f2
    if tokens > budget:  # at min resolution still too many groups: drop whole groups
        groups = budget // ((h // geo.factor) * (w // geo.factor))
        tokens = video_tokens(groups * tp, h, w, geo)
    return VideoPlan(groups * tp, h, w, cap, tokens)


def split_budget(total: int, frames: list[int]) -> list[int]:
    """Share a sample's token budget between its videos in proportion to their frames."""
    n = sum(frames)
    shares = [total * f // n for f in frames]
    shares[0] += total - sum(shares)
    return shares
