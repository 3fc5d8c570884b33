"""The speed scripts: equal work on both sides of a ratio, medians inside their printed spread."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rollout as rollout_bench  # noqa: E402
import train_step  # noqa: E402
from stormvl.backbones import VideoSettings  # noqa: E402
from stormvl.backbones.tiny import build_tiny, random_clip  # noqa: E402
from stormvl.latent import generate  # noqa: E402


@pytest.fixture(scope="module")
def bb():
    b = build_tiny("qwen2_5_vl", "tiny", video=VideoSettings(min_pixels=28 * 28, max_pixels=56 * 56))
    b.eos_ids = set()  # fixed lengths on random weights
    return b


def test_r2_divides_equal_numbers_of_model_calls(bb):
    # r2 = rollout phase / decode phase of one K=8 request decoding K+1 tokens: each phase
    # must hold K language-model calls (K-1 latent steps + the last slot; K fed-back tokens)
    k = rollout_bench.K
    video = bb.preprocess_video(*random_clip(4, 56, 56))
    batch = rollout_bench._batch(bb, video, k)
    calls, heads = [], []
    run, head = bb.run, bb.lm_head
    bb.run = lambda *a, **kw: calls.append(a[2]) or run(*a, **kw)
    bb.lm_head = lambda h: heads.append(1) or head(h)
    try:
        out = generate(bb, batch, max_new_tokens=k + 1)
    finally:
        del bb.run, bb.lm_head
    assert len(out.token_ids[0]) == k + 1
    prefix, rest = calls[:1], calls[1:]
    assert prefix == [0] and len(rest) == 2 * k  # K rollout calls, then K decode calls
    assert rest[k - 1] == batch.latent_col + k - 1  # the rollout's last call: the last slot
    assert rest[k] == batch.length  # the decode phase starts after the prompt
    assert len(heads) == k + 1


def test_rollout_measure_reports_medians_inside_their_spread(bb):
    m = rollout_bench.measure(bb, 4, 56, repeats=3)
    for name in ("r1", "r2", "r3", "r4"):
        med, lo, hi = m[name]
        assert 0 < lo <= med <= hi, name
    assert rollout_bench.summary([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)


def test_train_step_pass_breakdown_runs(bb):
    clips = [random_clip(4, 56, 56, seed=i) for i in range(2)]
    direct, latent = train_step.make_batch(bb, clips, 0), train_step.make_batch(bb, clips, train_step.K)
    bb.model.train()
    try:
        p = train_step.one_position_pass(bb, direct, latent, repeats=3)
    finally:
        bb.model.eval()
        bb.model.zero_grad(set_to_none=True)
    assert p["pass"] > p["forward"] > 0 and p["matmul"] > 0 and p["attention"] > 0
    assert p["n_layers"] == len(bb.language_model.layers) and p["keys"] == latent.latent_col + 1
    assert torch.is_grad_enabled()
