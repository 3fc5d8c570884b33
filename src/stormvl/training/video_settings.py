"""Fit frames and resolution to a visual-token budget, without ever cutting a visual span.

Other trainers cap the *sequence* and truncate, which can cut a video's placeholder span in
half and crash the placeholder/feature merge. Here the budget is met *before* tokenisation:
the pixel bound goes down first (to ``min_pixels``), then the frame count in whole temporal
groups, so every video's span is whole and the sample's visual tokens never exceed
``video.max_visual_tokens``.

Token counting is the backbone's own (``Backbone.video_token_count`` under a given pixel
bound), so the plan is exact for every family: Qwen2.5-VL bounds pixels per frame, Qwen3-VL
per clip.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace

from stormvl.errors import UserError
from stormvl.training.config import VideoConfig

# (num_frames, height, width, max_pixels) -> visual tokens of that clip
TokenCounter = Callable[[int, int, int, int], int]


@dataclass(frozen=True)
class VideoPlan:
    """What to decode and the pixel bound to preprocess it with."""

    num_frames: int  # frames to decode: whole temporal groups, or every frame of a short clip
    max_pixels: int  # pixel bound handed to the backbone's preprocessing
    tokens: int  # visual tokens this video will occupy


def with_max_pixels(bb, max_pixels: int):
    """A shallow copy of a backbone whose preprocessing uses another upper pixel bound (same
    model and tokenizer; the original is untouched, so data workers can plan per sample)."""
    if bb.video.max_pixels == max_pixels:
        return bb
    out = copy.copy(bb)
    out.video = replace(bb.video, max_pixels=max_pixels)
    return out


def backbone_counter(bb) -> TokenCounter:
    """The backbone's exact token count under a chosen pixel bound."""

    def count(frames: int, height: int, width: int, max_pixels: int) -> int:
        return with_max_pixels(bb, max_pixels).video_token_count(frames, height, width)

    return count


def wanted_frames(settings: VideoConfig, num_total: int, fps: float) -> int:
    """Frames the settings ask for on a video (or window) of ``num_total`` frames at ``fps``."""
    if settings.num_frames is not None:
        return settings.num_frames
    count = max(1, int(num_total / (fps / settings.fps)))
    return min(count, settings.max_frames)


def plan_video(
    height: int,
    width: int,
    frames: int,
    settings: VideoConfig,
    count: TokenCounter,
    temporal_patch: int,
    budget: int | None = None,
    available: int | None = None,
) -> VideoPlan:
    """Choose frame count and pixel bound for one video within ``budget`` visual tokens.

    Args:
        height, width: source frame size.
        frames: frames wanted (``wanted_frames``); rounded up to whole temporal groups.
        count: the backbone's token counter.
        budget: visual tokens allowed (default ``settings.max_visual_tokens``).
        available: frames the clip (or its window) has (``data.video.window_frames``); a
            shorter clip is planned at all of its frames, which the sampler returns once each
            and the backbone pads to its temporal patch. 0 or None = unknown.

    Returns:
        a plan with ``tokens <= budget``; the largest pixel bound that fits at the wanted
        frame count, else the fewest dropped temporal groups at ``min_pixels``.

    Raises:
        UserError: not even one temporal group at ``min_pixels`` fits the budget.
    """
    budget = settings.max_visual_tokens if budget is None else budget
    lo, hi = settings.min_pixels, settings.max_pixels
    frames = max(temporal_patch, -(-frames // temporal_patch) * temporal_patch)
    if available:
        frames = min(frames, available)
    if count(frames, height, width, hi) <= budget:
        return VideoPlan(frames, hi, count(frames, height, width, hi))
    if count(frames, height, width, lo) <= budget:
        while hi - lo > 1:  # largest bound that fits; tokens grow with the bound
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if count(frames, height, width, mid) <= budget else (lo, mid)
        return VideoPlan(frames, lo, count(frames, height, width, lo))
    while frames > temporal_patch and count(frames, height, width, lo) > budget:
        frames = (frames - 1) // temporal_patch * temporal_patch  # drop one temporal group
    tokens = count(frames, height, width, lo)
    if tokens > budget:
        raise UserError(
            f"video.max_visual_tokens={budget} is below one frame group at video.min_pixels "
            f"({tokens} tokens); raise the budget or lower min_pixels"
        )
    return VideoPlan(frames, lo, tokens)


def split_budget(total: int, frames: list[int]) -> list[int]:
    """Share a sample's token budget between its videos in proportion to their frames."""
    n = sum(frames)
    shares = [total * f // n for f in frames]
    shares[0] += total - sum(shares)
    return shares
