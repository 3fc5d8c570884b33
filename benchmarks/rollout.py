"""Latent rollout speed (issue 3): four ratios measured side by side in one run.

    python benchmarks/rollout.py                       # small tiny-config model, CPU, 16 + 64 frames
    python benchmarks/rollout.py --size 7b --device cuda --dtype bf16 --frame-size 448

Ratios (goal in brackets), batch 1, greedy. Each time is a MINIMUM over interleaved
repeats (answer latencies: the sum of the minima of their prefill / rollout / decode
phases as generate() reports them): on a shared machine the minimum estimates the
uncontended cost, medians drift with other jobs' load.
  1. one latent step / one decoded token                               [<= 1.1]
  2. (answer latency with K=8 - direct answer latency) / (8 x decode)  [<= 1.1]
     where decode = (64-token CoT latency - direct latency) / 64, as generate() pays it
  3. naive recompute rollout / cached rollout, K=8 (prefix + steps)    [>= 3]
  4. answer latency with K=8 / answer latency after a 64-token CoT     [<= 0.3]
An answer is 2 tokens (letter + <|im_end|>); stop tokens are ignored so lengths are fixed.
"""

from __future__ import annotations

import argparse
import time

import torch

from stormvl.backbones import Prompt, VideoSettings
from stormvl.backbones.tiny import build_tiny, random_clip
from stormvl.latent import generate, naive_rollout, rollout

K = 8
ANSWER_TOKENS = 2
COT_TOKENS = 64


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


def _min_times(fns: dict, repeats: int, dev: torch.device) -> dict:
    """Minimum seconds of each function, calls interleaved so load drift hits all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, dev))
    return {name: min(t) for name, t in times.items()}


def _batch(bb, video, k: int):
    text = "Which cup hides the ball at the end?\nA. left\nB. middle\nC. right\nD. none"
    return bb.collate([bb.encode(Prompt([video], text, k=k))]).to(bb.device)


@torch.no_grad()
def step_times(bb, batch, repeats: int, steps: int = 16) -> tuple[float, float]:
    """Seconds of one latent step (no LM head) and one decode step (LM head + argmax):
    the minimum over every individually timed step."""
    ctx = bb.prepare(batch)
    dev = bb.device

    def run(decode: bool) -> list[float]:
        cache = bb.new_cache()
        h = bb.run(ctx, cache, 0, ctx.inputs_embeds)[:, -1:]
        out = []
        for i in range(steps):
            _sync(dev)
            t = time.perf_counter()
            if decode:
                tok = bb.lm_head(h[:, -1]).argmax(-1)
                h = bb.run(ctx, cache, batch.length + i, bb.embed_tokens(tok)[:, None])
            else:
                h = bb.run(ctx, cache, batch.length + i, h)
            _sync(dev)
            out.append(time.perf_counter() - t)
        return out

    lat, dec = [], []
    for _ in range(repeats):  # interleaved so drifting machine load hits both alike
        lat += run(False)
        dec += run(True)
    return min(lat), min(dec)


@torch.no_grad()
def measure(bb, frames: int, frame_size: int, repeats: int) -> dict:
    clip, ts = random_clip(frames, frame_size, frame_size, fps=2.0)
    video = bb.preprocess_video(clip, ts)
    dev = bb.device
    direct, latent = _batch(bb, video, 0), _batch(bb, video, K)
    t_latent, t_decode = step_times(bb, direct, repeats)
    ctx = bb.prepare(latent)
    t = _min_times({
        "cached": lambda: rollout(bb, ctx, bb.new_cache()),
        "naive": lambda: naive_rollout(bb, ctx),
    }, max(3, repeats // 2), dev)
    cached, naive = t["cached"], t["naive"]
    runs = {"direct": (direct, ANSWER_TOKENS), "k8": (latent, ANSWER_TOKENS),
            "cot": (direct, COT_TOKENS + ANSWER_TOKENS)}
    phases = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved
        for name, (b, n) in runs.items():
            phases[name].append(generate(bb, b, max_new_tokens=n).timings)
    # latency = sum over phases (prefill / rollout / decode) of each phase's minimum
    lat = {name: sum(min(r[p] for r in rs) for p in rs[0]) for name, rs in phases.items()}
    lat_direct, lat_k, lat_cot = lat["direct"], lat["k8"], lat["cot"]
    dec_gen = (lat_cot - lat_direct) / COT_TOKENS  # one decode step as generate() pays it
    return {
        "frames": frames, "video_tokens": video.n_tokens, "prompt_len": direct.length,
        "t_latent_ms": 1e3 * t_latent, "t_decode_ms": 1e3 * t_decode,
        "direct_ms": 1e3 * lat_direct, "k8_ms": 1e3 * lat_k, "cot64_ms": 1e3 * lat_cot,
        "cached_ms": 1e3 * cached, "naive_ms": 1e3 * naive,
        "r1_latent_over_decode": t_latent / t_decode,
        "decode_in_generate_ms": 1e3 * dec_gen,
        "r2_rollout_overhead": (lat_k - lat_direct) / (K * dec_gen),
        "r3_naive_over_cached": naive / cached,
        "r4_k8_over_cot64": lat_k / lat_cot,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "7b"])
    ap.add_argument("--frames", default="16,64", help="comma-separated frame counts")
    ap.add_argument("--frame-size", type=int, default=112, help="square frame side in pixels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0 = torch default); 1 keeps a shared machine's load "
                         "from stalling multi-threaded kernels")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    side = args.frame_size
    # Qwen2.5-VL bounds pixels per frame, Qwen3-VL per clip: let frames keep their size
    per_clip = 1 if args.family == "qwen2_5_vl" else max(int(f) for f in args.frames.split(","))
    video = VideoSettings(min_pixels=28 * 28, max_pixels=side * side * per_clip)
    bb = build_tiny(args.family, args.size, video=video, dtype=dtype, device=args.device)
    bb.eos_ids = set()  # fixed answer lengths on random weights
    print(f"{args.family} size={args.size} device={args.device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} frame={side}x{side} K={K} answer={ANSWER_TOKENS} tok "
          f"cot={COT_TOKENS} tok, min of {args.repeats} interleaved repeats")
    header = (f"{'frames':>6} {'vtok':>5} {'latent ms':>9} {'decode ms':>9} {'dec(gen)':>8} {'direct ms':>9} "
              f"{'K=8 ms':>8} {'cot64 ms':>9} | {'r1 lat/dec':>10} {'r2 ovh':>7} {'r3 naive/cached':>15} "
              f"{'r4 K8/cot':>9}")
    print(header)
    for f in (int(x) for x in args.frames.split(",")):
        m = measure(bb, f, side, args.repeats)
        print(f"{m['frames']:>6} {m['video_tokens']:>5} {m['t_latent_ms']:>9.2f} {m['t_decode_ms']:>9.2f} "
              f"{m['decode_in_generate_ms']:>8.2f} "
              f"{m['direct_ms']:>9.1f} {m['k8_ms']:>8.1f} {m['cot64_ms']:>9.1f} | "
              f"{m['r1_latent_over_decode']:>10.2f} {m['r2_rollout_overhead']:>7.2f} "
              f"{m['r3_naive_over_cached']:>15.2f} {m['r4_k8_over_cot64']:>9.2f}")
    print("goals: r1 <= 1.1, r2 <= 1.1, r3 >= 3, r4 <= 0.3")


if __name__ == "__main__":
    main()
