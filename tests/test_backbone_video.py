"""Video preprocessing against the Hugging Face processor pieces that run without torchvision.

What can be compared here: HF's smart_resize functions (both families), the PIL image
processor's full path for Qwen2.5-VL (normalisation, patch layout, grid) on frames that need
no resize, the Qwen3-VL video processor's own ``patchify`` and token count, and the Qwen3-VL
processor's timestamp rule. What cannot: HF's video resize itself (torchvision bicubic);
ours is torch's antialiased bicubic, the kernel torchvision uses on tensors, and against
PIL's bicubic (a different implementation) only a small mean difference is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as hf_smart_resize,
)
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
    smart_resize as hf_smart_resize_video,
)

from stormvl.backbones import Prompt, VideoSettings
from stormvl.backbones import video_processing as vp
from stormvl.backbones.qwen3_vl import grid_timestamps
from stormvl.backbones.tiny import build_tiny, random_clip

SIZES = [(28, 28), (56, 84), (60, 90), (100, 50), (240, 320), (720, 1280), (17, 900), (1080, 1920)]


@pytest.fixture(scope="module")
def q25():
    return build_tiny("qwen2_5_vl", "tiny")


@pytest.fixture(scope="module")
def q3():
    return build_tiny("qwen3_vl", "tiny")


@pytest.mark.parametrize("h,w", SIZES)
def test_smart_resize_matches_hf(h, w):
    for lo, hi in [(56 * 56, 28 * 28 * 1280), (28 * 28, 56 * 56), (128 * 28 * 28, 768 * 28 * 28)]:
        assert vp.smart_resize_frame(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)
    for t in (2, 5, 16, 64):
        for lo, hi in [(128 * 32 * 32, 32 * 32 * 768), (4 * 32 * 32, 64 * 64 * 16)]:
            ours = vp.smart_resize_video(t, h, w, 2, 32, lo, hi)
            assert ours == hf_smart_resize_video(t, h, w, 2, 32, lo, hi)


@pytest.mark.parametrize("h,w", [(56, 56), (28, 84), (84, 56)])
def test_qwen2_5_matches_hf_image_processor_without_resize(h, w):
    """Two identical frames == one image (HF tiles an image over the temporal patch)."""
    q25 = build_tiny("qwen2_5_vl", "tiny", video=VideoSettings(28 * 28, h * w))
    frames, _ = random_clip(1, h, w, seed=h + w)
    hf = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=h * w)(images=[frames[0]], return_tensors="pt")
    ours = q25.preprocess_video(np.concatenate([frames, frames]), [0.0, 0.5])
    assert ours.grid_thw.tolist() == hf["image_grid_thw"][0].tolist()
    assert ours.n_tokens == int(hf["image_grid_thw"][0].prod()) // 4
    torch.testing.assert_close(ours.pixel_values, hf["pixel_values"].float(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("h,w", [(60, 90), (100, 50), (240, 320)])
def test_qwen2_5_resized_close_to_hf_pil_path(h, w):
    bb = build_tiny("qwen2_5_vl", "tiny", video=VideoSettings(28 * 28, 84 * 84))
    frames, _ = random_clip(1, h, w, seed=3)
    hf = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=84 * 84)(images=[frames[0]], return_tensors="pt")
    ours = bb.preprocess_video(np.concatenate([frames, frames]), [0.0, 0.5])
    assert ours.grid_thw.tolist() == hf["image_grid_thw"][0].tolist()
    diff = (ours.pixel_values - hf["pixel_values"].float()).abs()
    assert float(diff.mean()) < 0.01  # PIL's bicubic vs torch's antialiased bicubic on noise


def test_qwen3_patchify_and_token_count_match_hf(q3):
    hf = Qwen3VLVideoProcessor()
    frames, ts = random_clip(5, 64, 96, seed=4)
    ours = q3.preprocess_video(frames, ts)
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    h, w = q3._resized(5, 64, 96)
    x = vp.normalize(vp.resize_frames(x.to(torch.uint8), h, w), q3.image_mean, q3.image_std)
    patches, gt, gh, gw = hf.patchify(x[None], patch_size=16, merge_size=2, temporal_patch_size=2)
    assert [gt, gh, gw] == ours.grid_thw.tolist()
    torch.testing.assert_close(patches[0], ours.pixel_values, atol=0, rtol=0)
    kw = {"size": {"shortest_edge": q3.video.min_pixels, "longest_edge": q3.video.max_pixels}}
    for t, hh, ww in [(5, 64, 96), (16, 240, 320), (2, 32, 32)]:
        n = hf.get_num_of_video_patches(t, hh, ww, kw) // 4
        assert q3.video_token_count(t, hh, ww) == n


def test_qwen3_timestamps_match_hf_processor(q3):
    fps = 6.0
    idx = [0, 3, 6, 9, 12]
    hf = Qwen3VLProcessor._calculate_timestamps(None, list(idx), fps, 2)
    ts = np.asarray(idx, dtype=np.float64) / fps
    _, padded = vp.pad_time(torch.zeros(5, 3, 2, 2), ts, 2)
    assert grid_timestamps(padded, 2) == pytest.approx(hf)
    frames, _ = random_clip(5, 64, 64)
    v = q3.preprocess_video(frames, ts)
    enc = q3.encode(Prompt([v], "q"))
    text = q3.tokenizer.decode(enc.input_ids)
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text and "<2.0 seconds>" in text


def test_second_per_grid_comes_from_sampled_timestamps(q25):
    frames, _ = random_clip(4, 56, 56)
    v = q25.preprocess_video(frames, [0.0, 0.4, 0.8, 1.2])
    assert v.second_per_grid == pytest.approx(0.8)
    v = q25.preprocess_video(frames[:3], [1.0, 1.5, 2.0])  # odd count: last frame repeated
    assert v.grid_thw.tolist()[0] == 2 and v.timestamps.tolist() == [1.0, 1.5, 2.0, 2.0]
    assert v.second_per_grid == pytest.approx(1.0)


def test_bad_frames_raise(q25):
    frames, ts = random_clip(4, 56, 56)
    with pytest.raises(ValueError, match="uint8"):
        q25.preprocess_video(frames.astype(np.float32), ts)
    with pytest.raises(ValueError, match="timestamps for"):
        q25.preprocess_video(frames, ts[:3])
    with pytest.raises(ValueError, match="increasing"):
        q25.preprocess_video(frames, ts[::-1])
    with pytest.raises(ValueError, match="aspect ratio"):
        q25.preprocess_video(np.zeros((2, 1, 400, 3), np.uint8), [0, 1])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_linear_patch_embed_equals_conv3d(family):
    bb = build_tiny(family, "tiny")
    pe = bb.model.model.visual.patch_embed
    v = bb.preprocess_video(*random_clip(4, 64, 64))
    conv = type(pe).forward(pe, v.pixel_values)  # transformers' Conv3d path
    torch.testing.assert_close(pe(v.pixel_values), conv, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("h,w", [(112, 112), (56, 168)])  # (56, 168): unequal windows -> fallback
def test_batched_vision_attention_equals_transformers_loop(family, h, w):
    bb = build_tiny(family, "tiny", video=VideoSettings(28 * 28, 112 * 112 * 4))
    v = bb.preprocess_video(*random_clip(4, h, w))
    visual = bb.model.model.visual
    with torch.no_grad():
        ours = bb.encode_vision([v, v])[0]
        for mod in visual.modules():
            if "forward" in vars(mod) and type(mod).__name__.endswith("VisionAttention"):
                del mod.forward  # back to transformers' per-chunk loop
        ref = bb.encode_vision([v, v])[0]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
