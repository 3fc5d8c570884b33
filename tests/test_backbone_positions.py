"""3-D position ids: the adapters against independent implementations and worked examples."""

from __future__ import annotations

import math

import pytest
import torch

from stormvl.backbones import Prompt
from stormvl.backbones.base import mrope_positions
from stormvl.backbones.qwen2_5_vl import qwen2_5_video_positions
from stormvl.backbones.tiny import build_tiny, derive_mrope_section, random_clip


def reference_qwen2_5(tokens: list[str], videos: list[dict], tps: float, merge: int) -> list[list[int]]:
    """The published original Qwen2.5-VL rule, written as a plain per-token loop.

    tokens: "t" for text, "v" for a video placeholder; videos: {"grid": (t, h, w), "spg": s}.
    """
    out, nxt, i, vi = [], 0, 0, 0
    while i < len(tokens):
        if tokens[i] == "t":
            out.append([nxt, nxt, nxt])
            nxt += 1
            i += 1
            continue
        v = videos[vi]
        vi += 1
        gt, gh, gw = v["grid"][0], v["grid"][1] // merge, v["grid"][2] // merge
        start, biggest = nxt, nxt
        for g in range(gt):
            tid = math.floor(g * tps * v["spg"] + 1e-9)  # fraction kept until this truncation
            for r in range(gh):
                for c in range(gw):
                    p = [start + tid, start + r, start + c]
                    out.append(p)
                    biggest = max(biggest, *p)
        i += gt * gh * gw
        nxt = biggest + 1  # text after a video: largest id so far + 1
    return [list(col) for col in zip(*out, strict=True)]


def test_worked_example_fractional_interval():
    # 2 text tokens, a video of grid (3, 4, 4) -> 3 x 2 x 2 merged tokens, 2 text tokens.
    # tokens_per_second 2, 0.75 s per grid -> temporal steps 0, floor(1.5)=1, floor(3.0)=3.
    pos = mrope_positions([0, 0] + [2] * 12 + [0, 0], [qwen2_5_video_positions((3, 4, 4), 2, 2, 0.75)])
    t = [0, 1] + [2] * 4 + [3] * 4 + [5] * 4 + [6, 7]
    h = [0, 1] + [2, 2, 3, 3] * 3 + [6, 7]
    w = [0, 1] + [2, 3, 2, 3] * 3 + [6, 7]
    assert pos.tolist() == [t, h, w]
    # a version that casts 0.75 s to an integer first would give temporal ids all 2
    assert pos[0, 2:14].unique().numel() == 3


def test_worked_example_text_after_long_video_continues_after_temporal_max():
    # grid (8, 2, 2) at 1 s per grid, 2 tokens/s: temporal ids 0, 2, ..., 14 (start 1)
    pos = mrope_positions([0] + [2] * 8 + [0], [qwen2_5_video_positions((8, 2, 2), 2, 2, 1.0)])
    assert pos[0, 1:9].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert pos[:, 9].tolist() == [16, 16, 16]  # not start + max(h, w)/merge = 2


@pytest.mark.parametrize("spg", [0.5, 0.8, 1.0, 1 / 3, 2.0])
def test_qwen2_5_adapter_matches_reference(spg):
    bb = build_tiny("qwen2_5_vl", "tiny")
    frames, _ = random_clip(6, 56, 84)
    ts = [i * spg / 2 for i in range(6)]
    v1 = bb.preprocess_video(frames, ts)
    v2 = bb.preprocess_video(frames[:3], ts[:3])
    assert v1.second_per_grid == pytest.approx(spg, abs=1e-6)
    enc = bb.encode(Prompt([v1, v2], "question", k=2))
    toks = ["v" if m == 2 else "t" for m in enc.mm_token_type_ids]
    ref = reference_qwen2_5(toks, [{"grid": tuple(v.grid_thw.tolist()), "spg": v.second_per_grid}
                                   for v in (v1, v2)], tps=2, merge=2)
    assert enc.position_ids.tolist() == ref


def test_qwen2_5_differs_from_transformers_rule_after_video():
    """Documents why we compute positions ourselves (REFERENCES.md section 3)."""
    bb = build_tiny("qwen2_5_vl", "tiny")
    frames, ts = random_clip(8, 28, 28, fps=1.0)  # grid (4, 2, 2): temporal ids 0, 4, 8, 12
    v = bb.preprocess_video(frames, ts)
    enc = bb.encode(Prompt([v], "q"))
    ids = torch.tensor([enc.input_ids])
    mm = torch.tensor([enc.mm_token_type_ids])
    hf, _ = bb.model.model.get_rope_index(ids, mm, video_grid_thw=v.grid_thw[None],
                                          second_per_grid_ts=torch.tensor([v.second_per_grid]))
    ours = enc.position_ids
    vid = mm[0] == 2
    assert torch.equal(hf[:, 0, vid], ours[:, vid])  # the video block itself agrees
    after = int(vid.nonzero().max()) + 1
    assert int(ours[0, after]) == int(ours[:, vid].max()) + 1
    assert int(hf[0, 0, after]) < int(ours[0, after])  # transformers overlaps the video's ids


def test_qwen3_matches_transformers_rope_index_with_padding():
    bb = build_tiny("qwen3_vl", "tiny")
    f1, t1 = random_clip(4, 64, 96, seed=1)
    f2, t2 = random_clip(2, 64, 64, seed=2)
    encs = [bb.encode(Prompt([bb.preprocess_video(f1, t1)], "a longer question here", k=1)),
            bb.encode(Prompt([bb.preprocess_video(f2, t2)], "q", k=1))]
    batch = bb.collate(encs)
    grids = torch.stack([v.grid_thw for v in batch.videos])
    hf, delta = bb.model.model.get_rope_index(batch.input_ids, batch.mm_token_type_ids,
                                              video_grid_thw=grids, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    assert torch.equal(hf[:, real], batch.position_ids[:, real])
    assert torch.equal(batch.next_position, (delta[:, 0] + batch.attention_mask.sum(1)))


def test_text_only_prompt_is_plain_positions():
    bb = build_tiny("qwen2_5_vl", "tiny")
    enc = bb.encode(Prompt([], "no video here", k=3, target="A"))
    n = len(enc.input_ids)
    assert enc.position_ids.tolist() == [list(range(n))] * 3


def test_mismatched_blocks_raise():
    block = qwen2_5_video_positions((2, 2, 2), 2, 2, 1.0)  # 2 tokens
    with pytest.raises(ValueError, match="does not match"):
        mrope_positions([0, 2, 0, 2, 0], [block])  # a 2-token block across a text token
    with pytest.raises(ValueError, match="more video placeholder"):
        mrope_positions([0, 2, 2, 0], [])
    with pytest.raises(ValueError, match="fewer video placeholder"):
        mrope_positions([0, 0], [block])


@pytest.mark.parametrize("head_dim", [8, 16, 32, 64, 128])
def test_derived_mrope_sections_are_valid(head_dim):
    for inter in (False, True):
        sec = derive_mrope_section(head_dim, interleaved=inter)
        assert sum(sec) == head_dim // 2 and min(sec) > 0
        if inter:
            assert 3 * sec[1] <= head_dim // 2
    assert derive_mrope_section(128, interleaved=False) == [16, 24, 24]  # Qwen2.5-VL-7B
    assert derive_mrope_section(128, interleaved=True) == [24, 20, 20]  # Qwen3-VL
