"""Synth suite throughput: samples/s at 16 frames of 112x112 for 1 and 2 workers.

Each sample includes generation and both lossless mp4 encodes (input + thought video) and
the durable manifest append. Goal (issue 2): >= 20 samples/s per worker.

    python benchmarks/synth_speed.py [--n 240] [--frames 16] [--size 112]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from stormvl.synth import FAMILIES, build_suite
from stormvl.synth.registry import generate


def run(n: int, frames: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_suite(os.path.join(tmp, "s"), n, frames=frames, size=size, workers=workers, progress=False)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="items per run (spread over all families)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=112)
    a = ap.parse_args()
    print(f"synth speed: {a.n} items, {a.frames} frames of {a.size}x{a.size}, "
          f"{len(FAMILIES)} families, {os.cpu_count()} CPUs")
    t0 = time.perf_counter()  # generation alone, no IO, for reference
    for i in range(a.n // len(FAMILIES)):
        for fam in FAMILIES:
            generate(fam, i, frames=a.frames, size=a.size, difficulty="mixed")
    gen = (a.n // len(FAMILIES)) * len(FAMILIES) / (time.perf_counter() - t0)
    one = run(a.n, a.frames, a.size, 1)
    two = run(a.n, a.frames, a.size, 2)
    print(f"{'':<28}{'1 worker':>12}{'2 workers':>12}")
    print(f"{'samples/s (with 2 encodes)':<28}{one:>12.1f}{two:>12.1f}")
    print(f"{'samples/s per worker':<28}{one:>12.1f}{two / 2:>12.1f}")
    print(f"generation only (no IO): {gen:.1f} samples/s; 2-worker speed-up: {two / one:.2f}x; "
          f"goal >= 20 samples/s per worker: {'met' if min(one, two / 2) >= 20 else 'NOT met'}")


if __name__ == "__main__":
    main()
