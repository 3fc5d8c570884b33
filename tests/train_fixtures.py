"""Tiny on-disk video QA suites for the training tests (written per test, never committed).

Each sample's video is a coloured square whose colour names the answer, so a tiny model can
learn it in a few steps; its thought video shows the square moving (distinct per sample).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stormvl.data.manifest import Sample, write_manifest
from stormvl.data.video import write_video
from stormvl.training.config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    VideoConfig,
)

# Tiny models gain nothing from intra-op threads; on a loaded 2-core machine the OpenMP
# workers spin and cost ~30x the CPU time (measured: 19 s vs 0.6 s for 5 storm steps).

COLOURS = [(230, 40, 40), (40, 40, 230), (40, 200, 40)]


def make_suite(root: Path, n: int = 8, frames: int = 4, size: int = 32, thought: bool = True) -> Path:
    """Write ``n`` samples (videos + thought videos) and a manifest; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = i % len(COLOURS)
        vid = np.full((frames, size, size, 3), 20, np.uint8)
        vid[:, 8:24, 8:24] = COLOURS[a]
        write_video(root / f"v{i}.mp4", vid, fps=4)
        tv = None
        if thought:
            th = np.zeros((frames, 2 * size, 2 * size, 3), np.uint8)  # 4 tower tokens per group
            for t in range(frames):
                x = int(rng.integers(0, 2 * size - 16))
                th[t, 8:24, x : x + 16] = 255
            write_video(root / f"t{i}.mp4", th, fps=4, lossless=True)
            tv = f"t{i}.mp4"
        rows.append(Sample(f"s{i}", f"v{i}.mp4", "Which colour is the square?", ["red", "blue", "green"],
                           "ABC"[a], thought_video=tv, rationale=f"The square is {['red', 'blue', 'green'][a]}.",
                           difficulty=str(1 + i % 2), split="train"))
    write_manifest(root / "train.jsonl", rows)
    return root / "train.jsonl"


def tiny_config(out: Path, manifest: Path, method: str = "direct", **kw) -> TrainConfig:
    """A few-step CPU run of ``method`` on the tiny Qwen2.5-VL backbone."""
    cfg = TrainConfig(
        out_dir=str(out),
        seed=0,
        model=ModelConfig(backbone="tiny:qwen2_5_vl"),
        method=MethodConfig(name=method, k=2, stage=kw.pop("stage", 1),
                            stage1_checkpoint=kw.pop("stage1_checkpoint", None)),
        data=DataConfig(train=str(manifest), split=None),
        video=VideoConfig(num_frames=4, min_pixels=28 * 28, max_pixels=56 * 56, max_visual_tokens=64),
        optim=OptimConfig(lr=kw.pop("lr", 5e-3), max_steps=kw.pop("max_steps", 6),
                          batch_size=kw.pop("batch_size", 4), grad_accum=kw.pop("grad_accum", 1),
                          warmup_steps=0, min_lr_ratio=1.0),
        checkpoint=CheckpointConfig(every=kw.pop("every", 3), keep_last=3),
        log=LogConfig(progress=False, tensorboard=kw.pop("tensorboard", False)),
    )
    assert not kw, kw
    return cfg


def free_port() -> int:
    """An unused localhost port for a torch.distributed rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(out: Path, key: str = "loss") -> list[float]:
    """One metric of every logged step of a run."""
    import json

    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]
