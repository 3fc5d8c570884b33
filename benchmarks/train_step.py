"""Training-step cost of the methods (issue 4): ratios measured side by side in one run.

    python benchmarks/train_step.py                              # small tiny-config model, CPU
    python benchmarks/train_step.py --size 7b --device cuda --dtype bf16 --lora --batch 2

Same batch (videos, questions, answers) for every row; one step = forward + backward +
AdamW update through the training module the loop uses (``stormvl.training.loop``).
Ratios (goal in brackets), medians over interleaved repeats:
  1. storm stage 2 (K=8) / direct                                  time [<= 1.6]
  2. storm stage 1 (cached targets, CE + align) / stage 2          time [<= 1.15]
  3. naive recompute training step / latent engine step (K=8)      time [>= 2]
  4. direct, frozen tower run / its output from the tower cache     time [>= 1.05]
     (``data.tower_cache_gb``: epochs after the first skip a frozen tower)
Memory: peak CUDA memory on GPU; on CPU the bytes autograd saves for backward (activation
memory, the part that differs between methods).

``--breakdown`` also profiles the direct step (tower cached, as after the first epoch) and
prints where its time goes: matrix products, attention, element-wise ops, the optimizer.
It says whether a faster step needs fewer FLOPs (matmul-bound) or less overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from stormvl.backbones import Prompt, VideoSettings
from stormvl.backbones.tiny import build_tiny, random_clip
from stormvl.backbones.tower_cache import TowerCache
from stormvl.latent import LatentModel, format_question, forward_naive
from stormvl.training.config import AlignConfig, MethodConfig, TargetConfig, TrainConfig
from stormvl.training.loop import TrainModule
from stormvl.training.losses import Projector
from stormvl.training.targets import RandomProjectionEncoder, reduce_targets

K = 8
QUESTION = "Which cup hides the ball at the end?"
OPTIONS = ["left", "middle", "right", "none"]


class NaiveEngine(nn.Module):
    """The latent chain by full recompute per latent step (Coconut's reference scheme)."""

    def __init__(self, bb):
        super().__init__()
        self.bb, self.model = bb, bb.model

    def forward(self, batch):
        return forward_naive(self.bb, batch)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextmanager
def saved_bytes(counter: list):
    """Count the bytes autograd keeps for backward (CPU stand-in for peak memory)."""

    def pack(t):
        counter[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def make_batch(bb, clips, k: int, answer: str = "B"):
    vids = [replace(bb.preprocess_video(f, ts), key=str(i)) for i, (f, ts) in enumerate(clips)]
    return bb.collate([bb.encode(Prompt([v], format_question(QUESTION, OPTIONS), k=k, target=answer))
                       for v in vids]).to(bb.device)


def make_targets(bb, batch_size: int, frames: int, dev) -> torch.Tensor:
    """(B, K, 1, D) targets as a stage-1 batch carries them from the cache."""
    enc = RandomProjectionEncoder(bb.hidden_size)
    out = []
    for i in range(batch_size):
        clip, ts = random_clip(frames, 64, 64, seed=100 + i)
        out.append(reduce_targets(enc.encode(clip, ts), K))
    return torch.stack(out).to(dev, bb.dtype)


def step_fn(module: nn.Module, batch, targets=None):
    """One optimizer step of ``module``; returns a closure measuring (seconds, bytes)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    mask = None if targets is None else torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    dev = targets.device if targets is not None else batch.input_ids.device

    def run() -> tuple[float, int]:
        counter = [0]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t = time.perf_counter()
        with saved_bytes(counter):
            loss = module(batch, targets, mask)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        mem = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else counter[0]
        return time.perf_counter() - t, mem

    return run


def with_tower_cache(bb, run):
    """``run`` with the backbone's frozen-tower cache on (filled by the warm-up call)."""
    cache = TowerCache(1 << 34)

    def cached() -> tuple[float, int]:
        bb.tower_cache = cache
        try:
            return run()
        finally:
            bb.tower_cache = None

    return cached


# profiler op name -> share of the step it is counted in (first match wins)
OP_KINDS = (
    ("optimizer", ("Optimizer.", "adamw", "_foreach", "lerp", "addcdiv", "aten::sqrt")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("element-wise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::silu",
                      "aten::neg", "aten::rsqrt", "aten::mean", "aten::sum", "aten::cos", "aten::sin")),
    ("copies", ("aten::copy_", "aten::cat", "aten::fill_", "aten::zero_", "aten::_to_copy",
                "aten::index", "aten::masked", "aten::embedding")),
)


def op_kind(name: str) -> str:
    """The OP_KINDS share a profiler op ``name`` falls in ("other" when none)."""
    low = name.lower()
    for kind, keys in OP_KINDS:
        if any(k.lower() in low for k in keys):
            return kind
    return "other"


def breakdown(run, steps: int = 4) -> tuple[dict, float]:
    """Self time of ``steps`` calls of ``run`` by op kind -> ({kind: share}, seconds per step).

    Self times add up to the whole profiled time, so the shares sum to 1; "other" holds the
    rest (Python between ops, autograd bookkeeping, small ops not named above).
    """
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up outside the profile
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    wall = (time.perf_counter() - t) / steps
    kinds: dict = {}
    for ev in prof.key_averages():
        kind = op_kind(ev.key)
        kinds[kind] = kinds.get(kind, 0.0) + ev.self_cpu_time_total
    total = sum(kinds.values()) or 1.0
    return {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}, wall


def build_rows(bb, args, dev) -> dict:
    clips = [random_clip(args.frames, args.frame_size, args.frame_size, seed=i) for i in range(args.batch)]
    direct, latent = make_batch(bb, clips, 0), make_batch(bb, clips, K)
    targets = make_targets(bb, args.batch, args.frames, dev)

    def cfg(stage: int) -> TrainConfig:
        return TrainConfig(method=MethodConfig(name="storm", stage=stage, k=K,
                                               stage1_checkpoint="x" if stage == 2 else None),
                           targets=TargetConfig(), align=AlignConfig())

    engine = LatentModel(bb)
    stage1 = TrainModule(engine, Projector(bb.hidden_size, bb.hidden_size).to(dev, bb.dtype), cfg(1))
    stage2 = TrainModule(engine, None, cfg(2))
    naive = TrainModule(NaiveEngine(bb), None, cfg(2))
    return {
        "direct": step_fn(stage2, direct),
        "direct_tc": with_tower_cache(bb, step_fn(stage2, direct)),
        "storm2_k8": step_fn(stage2, latent),
        "storm1_k8": step_fn(stage1, latent, targets),
        "naive_k8": step_fn(naive, latent),
        "_shape": (direct.length, latent.length, sum(v.n_tokens for v in direct.videos) // args.batch),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "7b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters only (7B on one GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--breakdown", action="store_true", help="where the direct step's time goes, by op kind")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    video = None if args.size != "7b" else VideoSettings(min_pixels=3136, max_pixels=448 * 448)
    # the 7B shape is built directly on the device in its dtype; small ones are moved after
    big = {"dtype": dtype, "device": dev} if args.size == "7b" else {}
    bb = build_tiny("qwen2_5_vl", args.size, seed=0, video=video, **big)
    bb.model.to(dev, dtype)
    bb.model.model.visual.requires_grad_(False)  # frozen tower, as in every recipe
    if args.lora:
        from peft import LoraConfig, get_peft_model

        from stormvl.training.build import lora_target_regex

        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        get_peft_model(bb.model, LoraConfig(r=64, lora_alpha=128, target_modules=lora_target_regex(names)))
    bb.model.train()
    rows = build_rows(bb, args, dev)
    shape = rows.pop("_shape")
    for fn in rows.values():  # warm-up (allocator, kernels)
        fn()
    times: dict = {k: [] for k in rows}
    mem: dict = {}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every row alike
        for name, fn in rows.items():
            t, m = fn()
            times[name].append(t)
            mem[name] = max(mem.get(name, 0), m)
    med = {k: statistics.median(v) for k, v in times.items()}
    unit = "peak CUDA MiB" if dev.type == "cuda" else "saved-for-backward MiB"
    print(f"device={dev} size={args.size} dtype={args.dtype} lora={args.lora} batch={args.batch} "
          f"frames={args.frames}x{args.frame_size}px threads={torch.get_num_threads()}")
    print(f"sequence: direct {shape[0]} tokens, K=8 {shape[1]} tokens, {shape[2]} video tokens/sample")
    print(f"{'step':<12}{'ms':>10}{unit:>26}{'samples/s':>12}")
    for k in rows:
        print(f"{k:<12}{1e3 * med[k]:>10.1f}{mem[k] / 2**20:>26.1f}{args.batch / med[k]:>12.1f}")
    r1 = med["storm2_k8"] / med["direct"]
    r2 = med["storm1_k8"] / med["storm2_k8"]
    r3 = med["naive_k8"] / med["storm2_k8"]
    print(f"ratio 1  storm stage 2 (K=8) / direct        time {r1:5.2f}  memory "
          f"{mem['storm2_k8'] / mem['direct']:5.2f}   goal time <= 1.6   {'ok' if r1 <= 1.6 else 'MISSED'}")
    print(f"ratio 2  storm stage 1 (cached) / stage 2    time {r2:5.2f}  memory "
          f"{mem['storm1_k8'] / mem['storm2_k8']:5.2f}   goal time <= 1.15  {'ok' if r2 <= 1.15 else 'MISSED'}")
    print(f"ratio 3  naive recompute / latent engine     time {r3:5.2f}  memory "
          f"{mem['naive_k8'] / mem['storm2_k8']:5.2f}   goal time >= 2     {'ok' if r3 >= 2 else 'MISSED'}")
    r4 = med["direct"] / med["direct_tc"]
    print(f"ratio 4  direct, tower run / tower cached    time {r4:5.2f}  memory "
          f"{mem['direct'] / mem['direct_tc']:5.2f}   goal time >= 1.05  {'ok' if r4 >= 1.05 else 'MISSED'}")
    if args.breakdown and dev.type != "cpu":
        print("--breakdown profiles CPU time only; on CUDA use torch.profiler with CUDA activity")
    elif args.breakdown:
        shares, wall = breakdown(rows["direct_tc"])
        print(f"direct step (tower cached), {1e3 * wall:.1f} ms under the profiler; self time by op kind:")
        for kind, share in shares.items():
            print(f"  {kind:<13}{100 * share:6.1f}%")


if __name__ == "__main__":
    main()
