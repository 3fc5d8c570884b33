"""Training-step cost of the methods: ratios measured side by side in one run.

    python benchmarks/train_step.py                              # small tiny-config model, CPU
    python benchmarks/train_step.py --size 7b --device cuda --dtype bf16 --lora --batch 2

Same batch (videos, questions, answers) for every row; one step = forward + backward +
AdamW update through the training module the loop uses (``stormvl.training.loop``). Frames
keep ``--frame-size`` (as training's default pixel bound, 224 x 224, keeps them).
A repeat times every row once, in turn; each ratio is the median of its per-repeat values,
printed with the 25th-75th percentile range (goal in brackets):
  1. storm stage 2 (K=8) / direct                                  time [<= 1.6]
  2. storm stage 1 (cached targets, CE + align) / stage 2          time [<= 1.15]
  3. naive recompute training step / latent engine step (K=8)      time [>= 2]
  4. direct, frozen tower run / its output from the tower cache     time [>= 1.05]
     (``data.tower_cache_gb``: epochs after the first skip a frozen tower)
Memory: peak CUDA memory on GPU; on CPU the bytes autograd saves for backward (activation
memory, the part that differs between methods), counted in one extra untimed step per row
(the counting hook runs Python per saved tensor, which would slow the many-op K=8 steps).

``--breakdown`` also profiles the direct step (tower cached, as after the first epoch) and
prints where its time goes: matrix products, attention, element-wise ops, the optimizer.
It says whether a faster step needs fewer FLOPs (matmul-bound) or less overhead. It then
times one of storm's K one-position passes (forward, backward) against the arithmetic
it holds: its matrix products replayed alone, its mask / position / rotary set-up, and
K positions' share of the direct pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager, nullcontext
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
    """One optimizer step of ``module``; returns a closure ``run(count=False) -> (seconds,
    bytes)``: bytes = peak CUDA memory, or on CPU the bytes saved for backward when ``count``
    (0 otherwise: the counting hook is left out of timed steps)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    mask = None if targets is None else torch.ones(targets.shape[0], dtype=torch.bool, device=targets.device)
    dev = targets.device if targets is not None else batch.input_ids.device

    def run(count: bool = False) -> tuple[float, int]:
        counter = [0]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t = time.perf_counter()
        with saved_bytes(counter) if count else nullcontext():
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

    def cached(count: bool = False) -> tuple[float, int]:
        bb.tower_cache = cache
        try:
            return run(count)
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
        "_batches": (direct, latent),
    }


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def one_position_pass(bb, direct, latent, repeats: int = 31) -> dict:
    """Seconds of one of storm's one-position passes (all rows x 1 column, gradients on,
    the cache's prefix keys / values needing gradients as in training) and of what it holds.

    ``matmul``: the pass's linear layers replayed alone at its shapes (forward + backward);
    ``attention``: its sdpa calls; ``setup``: positions, the mask and the rotary tables;
    ``k_share``: K positions' share of the direct pass (forward + backward), the arithmetic
    K extra positions would cost inside one pass.
    """
    from transformers.masking_utils import create_causal_mask

    lm = bb.language_model
    s = latent.latent_col
    with torch.no_grad():
        ctx = bb.prepare(latent)
        prefix = bb.new_cache()
        h0 = bb.run(ctx, prefix, 0, ctx.inputs_embeds[:, :s])[:, -1:]  # (B, 1, D)
    past = [(layer.keys, layer.values) for layer in prefix.layers]

    def fresh_cache():
        cache = bb.new_cache()
        for i, (k, v) in enumerate(past):
            cache.update(k.detach().requires_grad_(), v.detach().requires_grad_(), i)
        return cache

    def fwd():
        return bb.run(ctx, fresh_cache(), s, h0.detach().requires_grad_())

    def fwd_bwd():
        fwd().sum().backward()

    linears = [m for m in lm.layers.modules() if isinstance(m, nn.Linear)]
    xs = [torch.randn(latent.size, 1, m.in_features, device=h0.device, dtype=h0.dtype,
                      requires_grad=True) for m in linears]

    def matmul():  # one graph, one backward, as in the pass
        sum(m(x).sum() for m, x in zip(linears, xs, strict=True)).backward()

    cfg = lm.config
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    q = torch.randn(latent.size, heads, 1, hd, dtype=h0.dtype, device=h0.device, requires_grad=True)
    kv = [t.detach().requires_grad_() for t in past[0]]

    def attention():
        for _ in lm.layers:
            torch.nn.functional.scaled_dot_product_attention(q, *kv, enable_gqa=True).sum().backward()

    def setup():
        pos = bb.positions(ctx, s, 1)
        mask = latent.attention_mask[:, : s + 1]
        create_causal_mask(config=cfg, inputs_embeds=h0, attention_mask=mask,
                           past_key_values=prefix, position_ids=None)
        lm.rotary_emb(h0, pos)

    dctx = bb.prepare(direct)

    def direct_pass():
        bb.run(dctx, None, 0, dctx.inputs_embeds.detach().requires_grad_()).sum().backward()

    t_fwd = _median_time(fwd, repeats)
    out = {"forward": t_fwd, "pass": _median_time(fwd_bwd, repeats)}
    out.update(matmul=_median_time(matmul, repeats), attention=_median_time(attention, repeats),
               setup=_median_time(setup, repeats))
    out["k_share"] = _median_time(direct_pass, max(5, repeats // 4)) * K / direct.length
    out.update(n_linear=len(linears), n_layers=len(lm.layers), keys=s + 1)
    return out


def spread(values: list[float]) -> str:
    """``median (25th-75th percentile)`` of per-repeat values."""
    if len(values) < 2:
        return f"{values[0]:5.2f}"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{statistics.median(values):5.2f} ({q1:.2f}-{q3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "7b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=112, help="square frame side in pixels (kept)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters only (7B on one GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--breakdown", action="store_true",
                    help="where the direct step's time goes, by op kind, and one K pass's parts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # frames keep their size, as under training's default bound (video.max_pixels 224 x 224)
    video = VideoSettings(min_pixels=28 * 28, max_pixels=args.frame_size**2)
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
    batches = rows.pop("_batches")
    for fn in rows.values():  # warm-up (allocator, kernels)
        fn()
    times: dict = {k: [] for k in rows}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every row alike
        for name, fn in rows.items():
            times[name].append(fn()[0])
    mem = {name: fn(count=True)[1] for name, fn in rows.items()}  # untimed
    med = {k: statistics.median(v) for k, v in times.items()}
    unit = "peak CUDA MiB" if dev.type == "cuda" else "saved-for-backward MiB"
    print(f"device={dev} size={args.size} dtype={args.dtype} lora={args.lora} batch={args.batch} "
          f"frames={args.frames}x{args.frame_size}px threads={torch.get_num_threads()}")
    print(f"sequence: direct {shape[0]} tokens, K=8 {shape[1]} tokens, {shape[2]} video tokens/sample; "
          f"medians of {args.repeats} interleaved repeats, ratios as median (25th-75th percentile)")
    print(f"{'step':<12}{'ms':>10}{unit:>26}{'samples/s':>12}")
    for k in rows:
        print(f"{k:<12}{1e3 * med[k]:>10.1f}{mem[k] / 2**20:>26.1f}{args.batch / med[k]:>12.1f}")

    def ratio(num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(times[num], times[den], strict=True)]

    checks = [
        ("ratio 1  storm stage 2 (K=8) / direct     ", "storm2_k8", "direct", "<=", 1.6),
        ("ratio 2  storm stage 1 (cached) / stage 2 ", "storm1_k8", "storm2_k8", "<=", 1.15),
        ("ratio 3  naive recompute / latent engine  ", "naive_k8", "storm2_k8", ">=", 2.0),
        ("ratio 4  direct, tower run / tower cached ", "direct", "direct_tc", ">=", 1.05),
    ]
    for label, num, den, op, goal in checks:
        r = ratio(num, den)
        m = statistics.median(r)
        ok = m <= goal if op == "<=" else m >= goal
        print(f"{label} time {spread(r):<18} memory {mem[num] / mem[den]:5.2f}   "
              f"goal time {op} {goal:<4}  {'ok' if ok else 'MISSED'}")
    if args.breakdown and dev.type != "cpu":
        print("--breakdown profiles CPU time only; on CUDA use torch.profiler with CUDA activity")
    elif args.breakdown:
        shares, wall = breakdown(rows["direct_tc"])
        print(f"direct step (tower cached), {1e3 * wall:.1f} ms under the profiler; self time by op kind:")
        for kind, share in shares.items():
            print(f"  {kind:<13}{100 * share:6.1f}%")
        p = one_position_pass(bb, *batches)
        rest = p["pass"] - p["matmul"] - p["attention"] - p["setup"]
        ms = {k: 1e3 * v for k, v in p.items() if isinstance(v, float)}
        print(f"one of storm's K one-position passes ({args.batch} rows x 1 column, {p['n_layers']} layers, "
              f"{p['keys']} keys, gradients on), medians:")
        print(f"  forward + backward     {ms['pass']:6.2f} ms (forward {ms['forward']:.2f})")
        print(f"  matrix products        {ms['matmul']:6.2f} ms ({p['n_linear']} linear layers replayed alone)")
        print(f"  attention              {ms['attention']:6.2f} ms ({p['n_layers']} sdpa calls)")
        print(f"  mask/position/rotary   {ms['setup']:6.2f} ms")
        print(f"  the rest               {1e3 * rest:6.2f} ms (Python in the model code, the small "
              f"element-wise ops and their autograd nodes)")
        print(f"  a K=8 step runs K such passes (K-1 latent slots, then the rest of the sequence) "
              f"~{K * ms['pass']:.1f} ms; the arithmetic of K extra positions inside one pass "
              f"would be ~{ms['k_share']:.1f} ms (K/{shape[0]} of the direct pass)")


if __name__ == "__main__":
    main()
