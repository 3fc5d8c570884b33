"""Training data cost per item: the in-memory sample cache (``data.cache_decoded``) off vs on,
a new run's first epoch without vs with a warm shared clip folder (``data.clip_cache``), and
a kept sample's next latent-curriculum variant without vs with its kept tower inputs.

    python benchmarks/data_loading.py [--n 64] [--epochs 4] [--frames 8] [--size 48]

Builds a small shell-game suite in a temporary folder, then reads every item ``--epochs``
times through the dataset the training loop uses (decode + tokenise + pixel preprocessing
of the tiny Qwen2.5-VL backbone), alternating the two settings epoch by epoch so machine
noise hits both. Prints mean ms per item and the ratios: sample cache off / on (goal >= 2
from the second epoch on, when the cache holds every clip), and a fresh dataset's first
epoch decoding / reading the clip folder another run filled (goal >= 2: the demo's runs
each began by decoding the whole training split), and a kept sample met with the latent
curriculum's next variant (``method.internalize_at``), prepared from its kept frames
(resize + tokenise) / from its kept tower inputs (tokenise) (goal >= 1.5: each stage of the
curriculum re-prepared the whole training split).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stormvl.data.clip_cache import ClipReader
from stormvl.synth import build_suite
from stormvl.training.config import MethodConfig, TrainConfig
from stormvl.training.data import VideoQADataset, load_samples
from stormvl.training.loop import make_prepare, make_prepare_media
from stormvl.training.video_settings import backbone_counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from stormvl.backbones.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        build_suite(Path(tmp), args.n, families=["shell_game"], frames=args.frames,
                    size=args.size, progress=False)
        cfg = TrainConfig()
        cfg.data.train, cfg.video.num_frames = str(Path(tmp) / "manifest.jsonl"), args.frames
        cfg.video.max_pixels = (args.size + 16) ** 2
        samples, root, _ = load_samples(cfg.data)
        bb = build_tiny("qwen2_5_vl", "tiny")
        sets = {
            keep: VideoQADataset(samples, root, cfg.video, backbone_counter(bb), bb.temporal_patch,
                                 make_prepare(bb, cfg), keep_decoded=keep)
            for keep in (False, True)
        }
        times: dict[bool, list[float]] = {False: [], True: []}
        for epoch in range(args.epochs):
            for keep in (False, True) if epoch % 2 == 0 else (True, False):
                t0 = time.perf_counter()
                for i in range(len(samples)):
                    sets[keep][i]
                if epoch > 0:  # the first epoch decodes with either setting
                    times[keep].append((time.perf_counter() - t0) / len(samples))
        off, on = statistics.median(times[False]), statistics.median(times[True])

        # a new run's first epoch (a new dataset each time): decode, or read the shared folder
        def first_epoch(clips: ClipReader | None) -> float:
            ds = VideoQADataset(samples, root, cfg.video, backbone_counter(bb), bb.temporal_patch,
                                make_prepare(bb, cfg), clips=clips)
            t0 = time.perf_counter()
            for i in range(len(samples)):
                ds[i]
            return (time.perf_counter() - t0) / len(samples)

        folder = ClipReader(Path(tmp) / "clips")
        first_epoch(folder)  # the run that fills it
        firsts: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.epochs):
            for shared in (False, True) if rep % 2 == 0 else (True, False):
                firsts[shared].append(first_epoch(folder if shared else None))

        # the latent curriculum: every kept sample is asked for variant 1, 2, ... in turn
        latent = TrainConfig(method=MethodConfig("latent", internalize_at=[1, 2, 3]))
        latent.data, latent.video = cfg.data, cfg.video
        curriculum = {
            media: VideoQADataset(samples, root, cfg.video, backbone_counter(bb), bb.temporal_patch,
                                  make_prepare(bb, latent), keep_decoded=True, clips=folder,
                                  prepare_media=make_prepare_media(bb) if media else None)
            for media in (False, True)
        }
        for ds in curriculum.values():
            for i in range(len(samples)):
                ds[(i, 0)]  # the first stage: decoded and prepared with either setting
        stages: dict[bool, list[float]] = {False: [], True: []}
        for variant in range(1, args.epochs + 1):
            for media in (False, True) if variant % 2 else (True, False):
                t0 = time.perf_counter()
                for i in range(len(samples)):
                    curriculum[media][(i, variant)]
                stages[media].append((time.perf_counter() - t0) / len(samples))
        # memory: what a kept entry holds, and the decoded frames it no longer holds
        kept_kb = curriculum[True].kept_bytes / len(samples) / 1024
        frames_kb = sum(curriculum[True].load(i).frames.nbytes for i in range(len(samples)))
        frames_kb /= len(samples) * 1024
    fresh, warm = statistics.median(firsts[False]), statistics.median(firsts[True])
    frames_only, kept = statistics.median(stages[False]), statistics.median(stages[True])
    print(f"{len(samples)} clips of {args.frames} x {args.size}px, epochs 2..{args.epochs}:")
    print(f"  cache off  {off * 1e3:7.2f} ms/item")
    print(f"  cache on   {on * 1e3:7.2f} ms/item")
    print(f"  ratio off / on = {off / on:.1f}  [goal >= 2]")
    print("a new run's first epoch:")
    print(f"  decoding              {fresh * 1e3:7.2f} ms/item")
    print(f"  from the clip folder  {warm * 1e3:7.2f} ms/item")
    print(f"  ratio decoding / folder = {fresh / warm:.1f}  [goal >= 2]")
    print("a kept sample's next latent-curriculum variant:")
    print(f"  from kept frames       {frames_only * 1e3:7.2f} ms/item")
    print(f"  from kept tower inputs {kept * 1e3:7.2f} ms/item")
    print(f"  ratio frames / inputs = {frames_only / kept:.1f}  [goal >= 1.5]")
    print(f"  kept per item {kept_kb:.1f} KiB; its frames, not kept once the inputs are made, "
          f"would add {frames_kb:.1f} KiB ({frames_kb / (kept_kb + frames_kb):.0%})")


if __name__ == "__main__":
    main()
