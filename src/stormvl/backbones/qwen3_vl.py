"""Qwen3-VL adapter (``Qwen3VLForConditionalGeneration``, transformers 5.23).

What differs from Qwen2.5-VL:

- Time is given as text: every temporal grid step of a video is written as
  ``<{t:.1f} seconds><|vision_start|>`` + placeholders + ``<|vision_end|>``, where t is the
  mean time of the frames merged into that step (the HF Qwen3-VL processor's layout).
- Positions: each grid step is its own vision block with temporal id 0 (time lives in the
  timestamp tokens), height / width = merged row / column, and text continues at
  (largest id so far) + 1. With one temporal step per block this equals start +
  max(h, w) / merge, so transformers 5.23's rule and the original code agree here; we still
  compute it ourselves and pass it on every call.
- DeepStack: features from intermediate tower layers are added to the hidden states of the
  first language-model layers at the visual positions. They must reach EVERY slice that
  contains visual positions, or the logits drift with no error; ``_lm_extra_kwargs`` slices
  them for each call.
- Pixel bounds cover the whole clip (frames x height x width), mean/std are 0.5, patch 16.
"""

from __future__ import annotations

import numpy as np
import torch

from stormvl.backbones import video_processing as vp
from stormvl.backbones.base import Backbone, Context, VideoInputs, VideoSettings


def grid_timestamps(ts: np.ndarray, temporal_patch: int) -> list[float]:
    """Mean of the first and last frame time in each temporal patch (padded timestamps)."""
    return [(float(ts[i]) + float(ts[i + temporal_patch - 1])) / 2 for i in range(0, len(ts), temporal_patch)]


def qwen3_frame_positions(grid_hw: tuple[int, int], merge: int) -> torch.Tensor:
    """Relative (3, h*w/merge^2) ids of one temporal step: (0, row, col)."""
    gh, gw = grid_hw[0] // merge, grid_hw[1] // merge
    hh = torch.arange(gh).view(-1, 1).expand(gh, gw)
    ww = torch.arange(gw).view(1, -1).expand(gh, gw)
    return torch.stack([torch.zeros_like(hh), hh, ww]).reshape(3, -1)


class Qwen3_VL(Backbone):
    family = "qwen3_vl"
    default_system = None
    processor_class, video_processor_class = "Qwen3VLProcessor", "Qwen3VLVideoProcessor"
    # Qwen3VLProcessor writes each frame as "<t seconds><|vision_start|>...<|vision_end|>"
    template_video = "<|video_pad|>"
    image_mean, image_std = vp.IMAGENET_STANDARD_MEAN, vp.IMAGENET_STANDARD_STD
    default_min_pixels, default_max_pixels = 128 * 32 * 32, 768 * 32 * 32  # per clip (HF defaults)

    @staticmethod
    def model_class():
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    @classmethod
    def tiny_video_settings(cls) -> VideoSettings:
        return VideoSettings(min_pixels=4 * 32 * 32, max_pixels=64 * 64 * 16)

    def _resized(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        lo, hi = self._pixel_bounds()  # per clip
        t = max(num_frames, self.temporal_patch)  # a single frame is padded to one temporal patch
        return vp.smart_resize_video(t, height, width, self.temporal_patch, self.patch * self.merge, lo, hi)

    def _video_items(self, v: VideoInputs) -> list:
        per_step = int(v.grid_thw[1] * v.grid_thw[2]) // self.merge**2
        items: list = []
        for t in grid_timestamps(v.timestamps, self.temporal_patch):
            items += [f"<{t:.1f} seconds>", self.vision_start_id, ("video", per_step), self.vision_end_id]
        return items

    def _vision_blocks(self, v: VideoInputs) -> list[torch.Tensor]:
        block = qwen3_frame_positions((int(v.grid_thw[1]), int(v.grid_thw[2])), self.merge)
        return [block] * int(v.grid_thw[0])

    def _vision_forward(self, videos: list[VideoInputs]) -> tuple[torch.Tensor, dict]:
        visual = self.model.model.visual
        pv = torch.cat([v.pixel_values for v in videos]).to(self.device, visual.dtype)
        grid = torch.stack([v.grid_thw for v in videos]).to(self.device)
        out = visual(pv, grid_thw=grid, return_dict=True)
        return out.pooler_output, {"deepstack": list(out.deepstack_features)}

    def _lm_extra_kwargs(self, ctx: Context, start: int, n: int) -> dict:
        deepstack = ctx.extras.get("deepstack")
        b = ctx.batch
        if not deepstack or start >= b.length:
            return {}
        visual = b.input_ids == self.video_token_id  # (B, L)
        end = min(start + n, b.length)
        m = visual[:, start:end]
        if not bool(m.any()):
            return {}
        # ordinal of each visual position in row-major order = its row in the tower output
        order = visual.flatten().cumsum(0).view(b.size, b.length) - 1
        sel = order[:, start:end][m]
        if end - start < n:
            m = torch.cat([m, m.new_zeros(b.size, n - (end - start))], dim=1)
        return {"visual_pos_masks": m, "deepstack_visual_embeds": [d[sel] for d in deepstack]}
