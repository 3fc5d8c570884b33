"""3-D position ids: the adapters against independent implementations and worked examples."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from stormvl.backbones import Prompt
from stormvl.backbones.base import mrope_positions
from stormvl.backbones.qwen2_5_vl import qwen2_5_video_positions
from stormvl.backbones.tiny import build_tiny, derive_mrope_section, random_clip
from stormvl.backbones.video_processing import exact_seconds


def reference_qwen2_5(tokens: list[str], videos: list[dict], tps: float, merge: int) -> list[list[int]]:
    """The published original Qwen2.5-VL rule, written as a plain per-token loop.

    tokens: "t" for text, "v" for a video placeholder; videos: {"grid": (t, h, w), "spg": s}
    with s an exact ``Fraction`` of seconds per temporal grid step.
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
            tid = math.floor(g * Fraction(tps) * v["spg"])  # exact until this truncation
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


@pytest.mark.parametrize("spg", [Fraction(1, 2), Fraction(4, 5), Fraction(1), Fraction(1, 3),
                                 Fraction(2)])
def test_qwen2_5_adapter_matches_reference(spg):
    bb = build_tiny("qwen2_5_vl", "tiny")
    frames, _ = random_clip(6, 56, 84)
    exact = [i * spg / 2 for i in range(6)]  # 2 frames per temporal grid step
    ts = [float(t) for t in exact]
    v1 = bb.preprocess_video(frames, ts)
    v2 = bb.preprocess_video(frames[:3], ts[:3])
    assert v1.second_per_grid == pytest.approx(float(spg), abs=1e-12)
    enc = bb.encode(Prompt([v1, v2], "question", k=2))
    toks = ["v" if m == 2 else "t" for m in enc.mm_token_type_ids]
    # the reference's seconds per grid come from the exact timestamps, not from the adapter
    ref = reference_qwen2_5(toks, [{"grid": tuple(v.grid_thw.tolist()),
                                    "spg": 2 * (t[-1] - t[0]) / (len(t) - 1)}
                                   for v, t in ((v1, exact), (v2, exact[:3]))], tps=2, merge=2)
    assert enc.position_ids.tolist() == ref


def test_issue_repro_sixteen_frames_at_6_fps_ids_follow_the_exact_rule():
    bb = build_tiny("qwen2_5_vl", "tiny")
    v = bb.preprocess_video(*random_clip(8, 56, 56, fps=6.0))  # 4 temporal grids of 1/3 s
    e = bb.encode(Prompt([v], "Q?"))
    t = e.position_ids[0, [i for i, tok in enumerate(e.input_ids) if tok == bb.video_token_id]]
    assert (t - t[0]).view(4, -1)[:, 0].tolist() == [0, 0, 1, 2]  # floor(g * 2 * 1/3)


# 19 frame rates: sampled fps values whose grid interval is a repeating decimal (6, 1.5, 24,
# 15, 60), NTSC rates as decoders report them (30000/1001, 24000/1001), and plain ones.
SWEEP_FPS = [Fraction(x) for x in ("1/2", "1", "3/2", "2", "3", "4", "5", "6", "15/2", "8", "10",
                                   "12", "15", "24", "25", "30", "60", "30000/1001", "24000/1001")]
SWEEP_FRAMES = [1, 2, 3, 4, 7, 8, 16, 17, 32]
SWEEP_TPS = [2, 4, 25]


def _temporal_ids(bb, v) -> list[int]:
    """The adapter's temporal id per grid step of one video, relative to the block start."""
    e = bb.encode(Prompt([v], "q"))
    vid = [i for i, tok in enumerate(e.input_ids) if tok == bb.video_token_id]
    t = e.position_ids[0, vid]
    return (t - t[0]).view(int(v.grid_thw[0]), -1)[:, 0].tolist()


def _exact_ids(times: list[Fraction], grid_t: int, tps: int) -> list[int]:
    """floor(g * tps * temporal_patch * mean interval), all in Fractions from the timestamps."""
    interval = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else Fraction(1, 2)
    return [math.floor(g * tps * 2 * interval) for g in range(grid_t)]


@pytest.fixture(scope="module")
def q25_small():
    return build_tiny("qwen2_5_vl", "tiny")  # 28x28 frames: one token per temporal grid step


def _sweep(bb, clips) -> tuple[int, int]:
    """(cases, cases the old 6-digit rounding got wrong); asserts every case is exact."""
    cfg = bb.model.config.vision_config
    old_tps, cases, old_wrong = cfg.tokens_per_second, 0, 0
    try:
        for times in clips:
            frames, _ = random_clip(len(times), 28, 28)
            v = bb.preprocess_video(frames, [float(t) for t in times])  # what a decoder hands us
            gt = int(v.grid_thw[0])
            for tps in SWEEP_TPS:
                cfg.tokens_per_second = tps
                want = _exact_ids(times, gt, tps)
                assert _temporal_ids(bb, v) == want, (times[:3], len(times), tps)
                spg6 = round(2 * float((times[-1] - times[0]) / max(1, len(times) - 1)), 6)
                old = [math.floor(g * tps * spg6 + 1e-9) for g in range(gt)] if len(times) > 1 \
                    else want
                cases, old_wrong = cases + 1, old_wrong + (old != want)
    finally:
        cfg.tokens_per_second = old_tps
    return cases, old_wrong


def test_qwen2_5_temporal_ids_exact_over_fps_frames_and_tokens_per_second(q25_small):
    clips = [[i / fps for i in range(n)] for fps in SWEEP_FPS for n in SWEEP_FRAMES]
    cases, old_wrong = _sweep(q25_small, clips)
    assert cases == 19 * 9 * 3
    assert old_wrong > 0  # the sweep holds cases a rounded float interval gets wrong


def test_qwen2_5_temporal_ids_exact_for_uniform_sampling_of_long_clips(q25_small):
    from stormvl.data.video import sample_indices

    clips = []
    for fps in (Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(24)):
        total = int(30 * fps)  # a 30 s clip
        for n in (8, 16, 32):
            idx = sample_indices(total, float(fps), num_frames=n)
            clips.append([int(i) / fps for i in idx])
    cases, _ = _sweep(q25_small, clips)
    assert cases == 4 * 3 * 3


def test_exact_seconds_recovers_decoder_time_bases():
    for base in (Fraction(1, 12800), Fraction(1, 90000), Fraction(1, 1000), Fraction(1001, 30000),
                 Fraction(1, 11988)):
        for pts in (0, 1, 7, 12345, int(3600 / base)):  # up to an hour in
            t = pts * base
            assert exact_seconds(float(t)) == t
    assert abs(exact_seconds(0.1234567891) - Fraction(0.1234567891)) < Fraction(1, 10**6)
    assert exact_seconds(np.float64(1 / 3)) == Fraction(1, 3)


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
