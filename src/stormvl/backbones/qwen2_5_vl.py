"""Qwen2.5-VL adapter (``Qwen2_5_VLForConditionalGeneration``, transformers 5.23).

Position ids follow the ORIGINAL Qwen2.5-VL scheme, the one the released checkpoints were
trained with: a video's temporal id is ``floor(grid_index * tokens_per_second *
second_per_grid)``, decided in exact rational arithmetic (``VideoInputs.grid_interval``; a
float product such as 3 * 0.1 * 10 = 2.9999999999999996 lands below a whole number), height / width ids
are the merged-grid row / column, all offset by the block start, and text after a video
continues at (largest id so far) + 1. transformers 5.23's ``get_rope_index`` instead
advances text after a video by ``max(grid_h, grid_w) / merge``, so its text ids overlap the
video's temporal ids; we never let the model compute positions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from stormvl.backbones import video_processing as vp
from stormvl.backbones.base import Backbone, VideoInputs, VideoSettings


def qwen2_5_video_positions(
    grid_thw: tuple[int, int, int],
    merge: int,
    tokens_per_second: float,
    second_per_grid: Fraction | float,
) -> torch.Tensor:
    """Relative (3, t*h*w/merge^2) ids of one video block (original Qwen2.5-VL formula).

    ``second_per_grid`` is taken as an exact fraction (a float through
    ``video_processing.exact_seconds``), so each temporal id is an exact floor.
    """
    gt, gh, gw = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    step = Fraction(tokens_per_second) * vp.exact_seconds(second_per_grid)  # ids per grid step
    t = torch.tensor([math.floor(g * step) for g in range(gt)])
    tt = t.view(-1, 1, 1).expand(gt, gh, gw)
    hh = torch.arange(gh).view(1, -1, 1).expand(gt, gh, gw)
    ww = torch.arange(gw).view(1, 1, -1).expand(gt, gh, gw)
    return torch.stack([tt, hh, ww]).reshape(3, -1)


class Qwen2_5_VL(Backbone):
    family = "qwen2_5_vl"
    default_system = "You are a helpful assistant."
    processor_class, video_processor_class = "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"
    image_mean, image_std = vp.OPENAI_CLIP_MEAN, vp.OPENAI_CLIP_STD
    default_min_pixels, default_max_pixels = 128 * 28 * 28, 768 * 28 * 28  # per frame (HF video defaults)

    @staticmethod
    def model_class():
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def tiny_video_settings(cls) -> VideoSettings:
        return VideoSettings(min_pixels=28 * 28, max_pixels=56 * 56)

    def _resized(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        lo, hi = self._pixel_bounds()  # per frame
        return vp.smart_resize_frame(height, width, self.patch * self.merge, lo, hi)

    def _video_items(self, v: VideoInputs) -> list:
        return [self.vision_start_id, ("video", v.n_tokens), self.vision_end_id]

    def _vision_blocks(self, v: VideoInputs) -> list[torch.Tensor]:
        tps = self.model.config.vision_config.tokens_per_second
        grid = tuple(int(g) for g in v.grid_thw)
        return [qwen2_5_video_positions(grid, self.merge, tps, v.grid_interval)]

    def _vision_forward(self, videos: list[VideoInputs]) -> tuple[torch.Tensor, dict]:
        visual = self.model.model.visual
        pv = torch.cat([v.pixel_values for v in videos]).to(self.device, visual.dtype)
        grid = torch.stack([v.grid_thw for v in videos]).to(self.device)
        out = visual(pv, grid_thw=grid, return_dict=True)
        return out.pooler_output, {}
