"""Clips with fewer frames than the checkpoint samples: a 1-frame file, 2 / 3 / 7 frames with
an 8-frame checkpoint, and a 0.1 s window of a 25 fps video.

Each gives every frame it has once (true timestamps, strictly increasing), padded to the
temporal patch by repeating the last frame as the HF Qwen processors do; training and
evaluation sample it identically; ``answer``, ``eval`` and ``train`` run on it, both families.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stormvl.cli import main
from stormvl.data.manifest import Sample, write_manifest
from stormvl.data.video import write_video

FPS = 25.0
WANT = 8  # the checkpoints' num_frames
# sample id -> (file, frames in the file, start, end, source frame indices expected). The
# window follows MVBench's official bound rule: frames round(start * fps) .. round(end * fps).
CLIPS = {
    "f1": ("f1.mp4", 1, None, None, [0]),
    "f2": ("f2.mp4", 2, None, None, [0, 1]),
    "f3": ("f3.mp4", 3, None, None, [0, 1, 2]),
    "f7": ("f7.mp4", 7, None, None, list(range(7))),
    "win": ("long.mp4", 75, 1.0, 1.1, [25, 26, 27, 28]),
}
VIDEO = {
    "qwen2_5_vl": dict(num_frames=WANT, min_pixels=28 * 28, max_pixels=56 * 56, max_visual_tokens=64),
    "qwen3_vl": dict(num_frames=WANT, min_pixels=32 * 32, max_pixels=64 * 64 * 16,
                     max_visual_tokens=64),
}


def grey(k: int) -> int:
    return 10 + 3 * k  # frame k of every file is filled with this level


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A suite (stormvl manifest, also the synth benchmark's layout) of short clips."""
    root = tmp_path_factory.mktemp("short")
    for name, n in {"f1.mp4": 1, "f2.mp4": 2, "f3.mp4": 3, "f7.mp4": 7, "long.mp4": 75}.items():
        frames = np.zeros((n, 32, 32, 3), np.uint8)
        frames[:] = np.array([grey(k) for k in range(n)], np.uint8)[:, None, None, None]
        write_video(root / name, frames, fps=FPS, lossless=True)
    rows = [Sample(sid, f, "Which colour?", ["red", "blue"], "AB"[i % 2], start=s, end=e,
                   family="short", split="test", difficulty="1")
            for i, (sid, (f, _, s, e, _)) in enumerate(CLIPS.items())]
    write_manifest(root / "manifest.jsonl", rows)
    return root


def save_checkpoint(family: str, path: Path) -> Path:
    from stormvl.backbones import VideoSettings
    from stormvl.backbones.tiny import build_tiny
    from stormvl.training.build import Built, run_meta, save_model
    from stormvl.training.config import MethodConfig, TrainConfig, VideoConfig

    cfg = TrainConfig(method=MethodConfig(name="direct"), video=VideoConfig(**VIDEO[family]))
    bb = build_tiny(family, "tiny", seed=0)
    bb.video = VideoSettings(min_pixels=cfg.video.min_pixels, max_pixels=cfg.video.max_pixels)
    save_model(Built(bb), path, run_meta(cfg, 0))
    return path


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def family_ckpt(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, save_checkpoint(request.param, tmp_path_factory.mktemp("ckpt") / "m")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_training_and_evaluation_sample_short_clips_alike(media, family_ckpt):
    from stormvl.data.manifest import read_manifest
    from stormvl.evaluation import EvalSettings, Runner, load_model
    from stormvl.tasks import load_benchmark
    from stormvl.training.data import VideoQADataset
    from stormvl.training.loop import _preprocess
    from stormvl.training.video_settings import backbone_counter

    family, ckpt = family_ckpt
    runner = Runner(load_model(ckpt, "cpu"), EvalSettings())
    bb = runner.model.backbone
    assert runner.video.num_frames == WANT
    ds = VideoQADataset(read_manifest(media / "manifest.jsonl"), media, runner.video,
                        backbone_counter(bb), bb.temporal_patch)
    items = {it.id: it for it in load_benchmark("synth", media)}
    for i, (sid, (_, _, _, _, idx)) in enumerate(CLIPS.items()):
        x = ds.load(i)
        assert x.sample.id == sid and x.plan.num_frames == len(idx)
        # every frame of the clip once, with its own time: true to the source
        np.testing.assert_allclose(x.timestamps, np.array(idx) / FPS, rtol=0, atol=1e-12)
        levels = x.frames[:, 0, 0, 0].astype(int)
        assert np.abs(levels - [grey(k) for k in idx]).max() <= 2
        vi = _preprocess(bb, x.frames, x.timestamps, x.plan)
        groups = math.ceil(len(idx) / bb.temporal_patch)
        assert int(vi.grid_thw[0]) == groups and vi.n_tokens == x.plan.tokens
        padded = list(np.array(idx) / FPS) + [idx[-1] / FPS] * (groups * 2 - len(idx))
        np.testing.assert_allclose(vi.timestamps, padded, rtol=0, atol=1e-12)
        # evaluation samples the same frames and makes the same tower inputs
        p = runner.prepare(items[sid])
        assert p.frame_indices == idx
        (got,) = p.encoded.videos
        torch.testing.assert_close(got.pixel_values, vi.pixel_values, rtol=0, atol=0)
        assert got.grid_thw.tolist() == vi.grid_thw.tolist()
        np.testing.assert_array_equal(got.timestamps, vi.timestamps)


def test_answer_runs_on_short_clips(media, family_ckpt, capsys):
    _, ckpt = family_ckpt
    for name in ("f7.mp4", "f1.mp4"):
        code = run_cli("answer", "--model", ckpt, "--video", media / name, "--question", "Which?",
                       "--option", "red", "--option", "blue", "--max-new-tokens", "2",
                       "--device", "cpu")
        assert code == 0, capsys.readouterr().err


def test_eval_runs_on_short_clips(media, family_ckpt, tmp_path):
    _, ckpt = family_ckpt
    out = tmp_path / "o"
    code = run_cli("eval", "--model", ckpt, "--benchmark", "synth", "--data", media, "--out", out,
                   "--no-progress", "--device", "cpu", "--max-new-tokens", "2")
    assert code == 0
    rows = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert {sid: r["frame_indices"] for sid, r in rows.items()} == {
        sid: c[4] for sid, c in CLIPS.items()}
    assert not (out / "failed.jsonl").exists() or not (out / "failed.jsonl").read_text().strip()


def test_train_runs_on_short_clips(media, family_ckpt, tmp_path):
    from dataclasses import replace

    from stormvl.training.config import VideoConfig
    from stormvl.training.loop import train
    from train_fixtures import tiny_config

    family, _ = family_ckpt
    cfg = tiny_config(tmp_path / "run", media / "manifest.jsonl", "direct", max_steps=2,
                      batch_size=len(CLIPS), every=2)
    cfg = replace(cfg, model=replace(cfg.model, backbone=f"tiny:{family}"),
                  video=VideoConfig(**VIDEO[family]))
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_media"] == 0 and sum(r["samples"] for r in rows) == 2 * len(CLIPS)
