"""Evaluation speed, measured side by side in one run on the small backbone.

Prints:
  1. throughput (questions / s) of the latent method (K = 8) at batch 8 vs batch 1
     (goal: >= 2x);
  2. per-question latency ratios at batch 1: latent K = 8 / direct (same short reply), and
     latent K = 8 / textcot with a 64-token reply.

Everything goes through ``stormvl.evaluation.Runner`` (the code ``stormvl eval`` runs); the
videos are decoded and encoded once up front so the numbers are the model's. A random
backbone stops at arbitrary tokens, so end-of-sequence is switched off here and every reply
runs to its budget: each method then pays exactly the decode length the comparison names.

    PYTHONPATH=src python benchmarks/eval_speed.py [--size small] [--device cpu] [--items 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stormvl.backbones.tiny import build_tiny
from stormvl.data.video import write_video
from stormvl.evaluation import EvalSettings, LoadedModel, Runner
from stormvl.tasks.base import EvalItem
from stormvl.training.config import VideoConfig

SHORT_REPLY = 4  # tokens: a letter and a little more (direct, latent)
COT_REPLY = 64  # tokens: a short rationale (textcot)


def make_items(root: Path, n: int, frames: int = 16, size: int = 112) -> list[EvalItem]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        video = rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8)
        path = root / f"v{i}.mp4"
        write_video(path, video, fps=4)
        prompt = f"Question {i}: where is the ball?\nA. left\nB. right\nC. up\nD. down\n" \
                 "Answer with the option's letter from the given choices directly."
        items.append(EvalItem(f"q{i}", "speed", path, prompt, "A"))
    return items


def runner(bb, method: str, k: int, tokens: int, batch: int, video: VideoConfig) -> Runner:
    model = LoadedModel(bb, method, k, video, 0, "<in-memory>")
    return Runner(model, EvalSettings(k=k if method == "latent" else None, batch_size=batch,
                                      max_new_tokens=tokens))


def timed_pass(r: Runner, prepared: list) -> tuple[float, float]:
    """(wall, process CPU) seconds per question for one pass in the runner's batch size."""
    bs = r.settings.batch_size
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(prepared), bs):
        r.run(prepared[s: s + bs])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    n = len(prepared)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def report(t: dict[str, float], what: str) -> None:
    lat1, lat8 = t["latent K=8, batch 1"], t["latent K=8, batch 8"]
    print(f"{what}: throughput latent batch 8 / batch 1 = {lat1 / lat8:.2f}x (goal >= 2x); "
          f"latency latent K=8 / direct = {lat1 / t['direct, batch 1']:.2f}; "
          f"latent K=8 / textcot ({COT_REPLY} tokens) = {lat1 / t['textcot, batch 1']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time = work)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    bb = build_tiny("qwen2_5_vl", args.size, seed=0)
    bb.model.to(args.device)
    bb.eos_ids = set()  # every reply runs to its budget (see the module docstring)
    video = VideoConfig(num_frames=8, max_pixels=112 * 112, max_visual_tokens=4096)
    configs = {  # name -> (method, K, reply tokens, batch size)
        "latent K=8, batch 1": ("latent", 8, SHORT_REPLY, 1),
        "latent K=8, batch 8": ("latent", 8, SHORT_REPLY, 8),
        "direct, batch 1": ("direct", 0, SHORT_REPLY, 1),
        "textcot, batch 1": ("textcot", 0, COT_REPLY, 1),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        items = make_items(Path(tmp), args.items)
        runs = {}
        for name, (method, k, tokens, bs) in configs.items():
            r = runner(bb, method, k, tokens, bs, video)
            prepared = [r.prepare(it) for it in items]
            r.run(prepared[:bs])  # warm-up
            runs[name] = (r, prepared)
        for _ in range(args.repeats):  # interleaved rounds: load changes hit every config alike
            for name, (r, prepared) in runs.items():
                times[name].append(timed_pass(r, prepared))
    # the fastest round is the least disturbed by other load (as timeit reports)
    wall = {name: min(w for w, _ in v) for name, v in times.items()}
    cpu = {name: min(c for _, c in v) for name, v in times.items()}
    print(f"backbone qwen2_5_vl/{args.size} on {args.device}, {args.items} questions, "
          f"8 frames of 112x112, best of {args.repeats} interleaved rounds")
    for name, (_, _, tokens, _) in configs.items():
        print(f"{name:20s} {wall[name] * 1000:8.1f} ms/q wall  {1 / wall[name]:6.2f} q/s  "
              f"{cpu[name] * 1000:8.1f} ms/q CPU  ({tokens}-token reply)")
    report(wall, "wall")
    if args.device == "cpu":  # on a shared machine CPU time is the steadier measure of work
        report(cpu, "CPU ")


if __name__ == "__main__":
    main()
