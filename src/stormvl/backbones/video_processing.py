"""Frames -> vision-tower inputs, re-implemented without torchvision.

The Hugging Face Qwen video processors need torchvision, which cannot be installed beside the
CPU torch wheel this project installs, so the pieces are rebuilt here from the processor's
published steps and tested against the HF code that does run (smart resize, the PIL image
processor's patch layout and normalisation):

1. smart resize: both sides multiples of ``patch * merge`` with the pixel count inside a budget;
2. bicubic antialiased resize of uint8 frames, clamped and rounded back to uint8 levels
   (what ``torchvision.transforms.v2.functional.resize`` does for uint8 tensors);
3. fused rescale + normalise: ``(x - 255 * mean) / (255 * std)``;
4. pad the frame count to a multiple of ``temporal_patch`` by repeating the last frame;
5. patchify into rows of ``C * temporal_patch * patch * patch`` in merge-window order.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)


def smart_resize_frame(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2/2.5-VL rule: per-frame pixel budget, sides rounded to multiples of ``factor``."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_video(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """Qwen3-VL rule: the pixel budget covers the whole clip (frames x height x width)."""
    if num_frames < temporal_factor:
        raise ValueError(f"{num_frames} frames is fewer than the temporal patch {temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_frames(frames: np.ndarray, timestamps) -> tuple[torch.Tensor, np.ndarray]:
    """Validate (T, H, W, 3) uint8 frames and their (T,) timestamps; returns (T, 3, H, W) uint8."""
    if not isinstance(frames, np.ndarray | torch.Tensor):
        raise ValueError(f"frames must be an array, got {type(frames).__name__}")
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError("a video needs at least one frame")
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.shape[0] != x.shape[0]:
        raise ValueError(f"{ts.shape[0]} timestamps for {x.shape[0]} frames")
    if ts.shape[0] > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("timestamps must be strictly increasing")
    return x.permute(0, 3, 1, 2).contiguous(), ts


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of (T, 3, H, W) uint8 frames; returns float32 uint8 levels."""
    x = frames.to(torch.float32)
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0, 255).round_()
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Fused rescale + normalise of (T, 3, H, W) uint8 levels, as the HF fast processors do."""
    m = torch.tensor(mean, dtype=torch.float32) * 255.0
    s = torch.tensor(std, dtype=torch.float32) * 255.0
    return (x - m.view(1, 3, 1, 1)) / s.view(1, 3, 1, 1)


def pad_time(x: torch.Tensor, ts: np.ndarray, temporal_patch: int) -> tuple[torch.Tensor, np.ndarray]:
    """Repeat the last frame (and its timestamp) up to a multiple of ``temporal_patch``."""
    pad = -x.shape[0] % temporal_patch
    if pad:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
        ts = np.concatenate([ts, np.repeat(ts[-1:], pad)])
    return x, ts


def patchify(
    x: torch.Tensor, patch: int, merge: int, temporal_patch: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) -> (grid_t*grid_h*grid_w, C*tp*p*p) in the tower's merge-window order."""
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal_patch, h // patch, w // patch
    x = x.view(gt, temporal_patch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p): merge windows contiguous, channel-first inside a patch
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal_patch * patch * patch), (gt, gh, gw)


# Largest denominator kept when a float time becomes a fraction (see ``exact_seconds``).
MAX_DENOMINATOR = 1_000_000


def exact_seconds(t: float | Fraction) -> Fraction:
    """The rational a decoded float time stands for.

    Decoders give times as pts x time_base, an exact rational (1/12800 s ticks in an mp4,
    1/90000 in MPEG-TS, 1/1000 in mkv / webm, steps of 1001/30000 s at 29.97 fps) that
    reaches us rounded to float64. The closest fraction with denominator <= 10**6 recovers
    it exactly: the true p/q is at least 1/(q * 10**6) from any other candidate and float64
    is off by at most 1.2e-16 * t, so times up to ~1.2 h (q = 10**6) or ~14 h (q = 90000)
    come back exact. A float with no such source (hand-made times) becomes the closest
    fraction with denominator <= 10**6, within a microsecond of it.
    """
    return t if isinstance(t, Fraction) else Fraction(float(t)).limit_denominator(MAX_DENOMINATOR)


def grid_interval(ts: np.ndarray, temporal_patch: int) -> Fraction:
    """Exact seconds spanned by one temporal grid step, from the frames actually sampled.

    ``temporal_patch`` x the mean interval of the (unpadded) timestamps, taken from their
    exact fractions so that ``floor(grid_index * tokens_per_second * interval)`` is decided
    in exact arithmetic; a single frame counts as 0.5 s (HF's default of 2 fps).
    """
    if len(ts) < 2:
        return temporal_patch * Fraction(1, 2)
    return temporal_patch * (exact_seconds(ts[-1]) - exact_seconds(ts[0])) / (len(ts) - 1)
