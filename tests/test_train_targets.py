"""Thought-video targets (encoders, reductions, cache) and the alignment losses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import train_fixtures  # noqa: F401  (one torch thread)
from stormvl.data.manifest import Sample
from stormvl.data.video import write_video
from stormvl.training.config import TargetConfig
from stormvl.training.losses import Projector, align_loss, answer_ce
from stormvl.training.targets import (
    RandomProjectionEncoder,
    TargetCache,
    build_targets,
    reduce_targets,
    segment_bounds,
)


def test_segments_cover_time_and_reuse_when_short():
    assert segment_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert segment_bounds(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]


def test_reductions_mean_and_multi():
    feats = torch.arange(8 * 4 * 2, dtype=torch.float32).reshape(8, 4, 2)  # (T', N, D)
    mean = reduce_targets(feats, 4)
    assert mean.shape == (4, 1, 2)
    torch.testing.assert_close(mean[1, 0], feats[2:4].mean(dim=(0, 1)))
    multi = reduce_targets(feats, 4, "multi", per_step=2)
    assert multi.shape == (4, 2, 2)
    torch.testing.assert_close(multi[0, 1], feats[0:2, 2:4].mean(dim=(0, 1)))
    # finer targets carry more information: the two spatial halves differ
    assert not torch.allclose(multi[:, 0], multi[:, 1])


def test_random_projection_is_fixed_and_seeded():
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    a, b = RandomProjectionEncoder(16, 8, 2, seed=1), RandomProjectionEncoder(16, 8, 2, seed=1)
    out = a.encode(frames, np.arange(4.0))
    assert out.shape == (4, 4, 16)
    torch.testing.assert_close(out, b.encode(frames, np.arange(4.0)))
    assert a.weights_hash() == b.weights_hash() != RandomProjectionEncoder(16, 8, 2, seed=2).weights_hash()


def _thought(tmp_path, name, seed):
    frames = np.random.default_rng(seed).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / name, frames, fps=4, lossless=True)


def test_target_cache_reused_and_invalidated(tmp_path):
    _thought(tmp_path, "t0.mp4", 0)
    _thought(tmp_path, "t1.mp4", 1)
    samples = [Sample("a", "v.mp4", "q", ["x", "y"], "A", thought_video="t0.mp4"),
               Sample("b", "v.mp4", "q", ["x", "y"], "A", thought_video="t1.mp4"),
               Sample("c", "v.mp4", "q", ["x", "y"], "A"),
               Sample("d", "v.mp4", "q", ["x", "y"], "A", thought_video="gone.mp4")]
    cfg = TargetConfig(frames=4, pixels=8, grid=2)
    cache = TargetCache(tmp_path / "cache")
    enc = RandomProjectionEncoder(16, 8, 2, seed=0)
    r1 = build_targets(samples, tmp_path, enc, cache, cfg, k=2)
    assert (r1.built, r1.hits, r1.missing, len(r1.failed)) == (2, 0, 1, 1)
    assert "gone.mp4" in r1.failed[0][0] and "not found" in r1.failed[0][1]
    first = cache.get(r1.parts["a"])
    assert first.shape == (2, 1, 16)
    r2 = build_targets(samples, tmp_path, enc, cache, cfg, k=2)
    assert (r2.built, r2.hits) == (0, 2)  # reused, nothing re-encoded
    # another encoder (weights), K or reduction -> different entries, never the old ones
    r3 = build_targets(samples, tmp_path, RandomProjectionEncoder(16, 8, 2, seed=5), cache, cfg, k=2)
    r4 = build_targets(samples, tmp_path, enc, cache, cfg, k=4)
    assert r3.built == 2 and r4.built == 2
    # the thought video changes on disk -> stale entry is not used
    _thought(tmp_path, "t0.mp4", 7)
    r5 = build_targets(samples, tmp_path, enc, cache, cfg, k=2)
    assert r5.built == 1 and r5.hits == 1
    assert not torch.allclose(cache.get(r5.parts["a"]), first)
    # a foreign entry copied under this key is refused (metadata names other parts)
    shutil.copy(cache.path(cache.key(r1.parts["b"])), cache.path(cache.key(r5.parts["a"])))
    assert cache.get(r5.parts["a"]) is None
    # a torn file is a miss, not a crash
    cache.path(cache.key(r5.parts["b"])).write_bytes(b"torn")
    assert cache.get(r5.parts["b"]) is None


def test_align_losses():
    torch.manual_seed(0)
    t = torch.randn(4, 3, 2, 8)
    for kind in ("cosine", "mse", "infonce"):
        assert align_loss(t.clone(), t, kind) < align_loss(torch.randn(4, 3, 2, 8), t, kind)
    assert align_loss(t.clone(), t, "cosine").abs() < 1e-6
    # infonce penalises latents identical across the batch even if each is near its target
    same = t[:1].expand(4, -1, -1, -1) + 0.0
    assert align_loss(same, t, "infonce") > align_loss(t.clone(), t, "infonce") + 0.5
    mask = torch.tensor([True, False, False, False])
    assert align_loss(torch.randn(4, 3, 2, 8).index_copy(0, torch.tensor([0]), t[:1]), t, mask=mask) < 1e-6
    with pytest.raises(ValueError, match="unknown align loss"):
        align_loss(t, t, "l7")


def test_projector_and_ce():
    assert Projector(8, 8, 1).proj is None  # same width, one target: raw hidden states
    p = Projector(8, 4, 3)
    assert p(torch.randn(2, 5, 8)).shape == (2, 5, 3, 4)
    with pytest.raises(ValueError, match="projector=none"):
        Projector(8, 4, 1, mode="none")
    logits = torch.zeros(1, 3, 5)
    labels = torch.tensor([[-100, 2, 3]])
    torch.testing.assert_close(answer_ce(logits, labels), torch.tensor(np.log(5.0), dtype=torch.float32))


def test_partial_and_unfinished_checkpoints_are_never_picked(tmp_path):
    from stormvl.training.checkpoint import TRAINER_STATE, clear_partial, latest_checkpoint, prune

    root = tmp_path / "checkpoints"
    for name, finished in (("step-000002", True), ("step-000004", True), ("step-000006", False),
                           (".step-000008.partial", True), (".step-000008.partial.tmp", False)):
        (root / name).mkdir(parents=True)
        if finished:
            (root / name / TRAINER_STATE).write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "step-000004"  # 6 has no state, 8 is partial
    clear_partial(tmp_path)
    assert not list(root.glob(".step-*"))
    prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000004", "step-000006"]


def test_projector_centres_targets_and_saves_the_centre():
    import torch

    p = Projector(8, 8, 1)
    t = torch.randn(3, 2, 1, 8)
    assert torch.equal(p.center_targets(t), t)  # no centre yet: unchanged
    center = t.mean(0)  # (K, P, D)
    p.set_center(center)
    assert torch.allclose(p.center_targets(t).mean(0), torch.zeros(2, 1, 8), atol=1e-6)
    q = Projector(8, 8, 1)
    q.load_saved({k: v.clone() for k, v in p.state_dict().items()})
    assert torch.equal(q.target_center, center)


def test_set_target_center_is_the_mean_of_cached_targets(tmp_path):
    import torch

    from stormvl.config import from_dict
    from stormvl.training.config import TrainConfig
    from stormvl.training.loop import set_target_center
    from stormvl.training.targets import TargetCache

    cache = TargetCache(tmp_path)
    ts = [torch.randn(2, 1, 8) for _ in range(4)]
    parts = {}
    for i, t in enumerate(ts):
        parts[f"s{i}"] = TargetCache.key_parts(f"v{i}", "random_projection", "h", {"k": 2})
        cache.put(parts[f"s{i}"], t)
    cfg = from_dict(TrainConfig, {"data": {"train": "x.jsonl"}})
    p = Projector(8, 8, 1)
    set_target_center(p, cfg, parts, cache)
    assert torch.allclose(p.target_center, torch.stack(ts).mean(0), atol=1e-6)
    off = from_dict(TrainConfig, {"data": {"train": "x.jsonl"}, "align": {"center": False}})
    p2 = Projector(8, 8, 1)
    set_target_center(p2, off, parts, cache)
    assert not p2.target_center.any()
