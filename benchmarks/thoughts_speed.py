"""Seconds per thought video, per generator, measured side by side in one run.

    python benchmarks/thoughts_speed.py [--n 8] [--diffusers-config GEN.yaml] [--json out.json]

`procedural` renders the built-in suite's thought videos exactly. `diffusers` uses
``--diffusers-config`` when given (a real model, on a GPU); otherwise a tiny random-init
LTX-Video pipeline, whose figure is labelled as such: it measures the pipeline's overhead,
not a real model's cost. Each figure is the generator's own time per video (decode and
encode excluded) and the end-to-end wall time per video of ``run_thoughts``.

STORM's claim is that inference needs no thought video at all: divide these figures by
the latent rollout's time per answer (``--rollout-seconds``, from the engine's benchmark)
to get the overhead a generate-then-answer pipeline would pay.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from stormvl.synth import build_suite
from stormvl.thoughts import build_generator, run_thoughts


def measure(name: str, manifest: Path, out: Path, config: str | None, sets: list[str]) -> dict:
    gen = build_generator(name, config, sets)
    gen.load()
    # overwrite: suite rows already carry a thought video; the first run pays lazy init.
    run_thoughts(manifest, out / "warmup", gen, overwrite=True, progress=False)
    stats = run_thoughts(manifest, out / "timed", gen, overwrite=True, progress=False)
    s = stats.summary()
    return {"generator": name, "videos": s["generated"], "seconds_per_video": s["seconds_per_video"],
            "wall_seconds_per_video": s["wall_seconds"] / max(1, s["generated"]), "gpu": s["gpu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="thought videos per generator")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--diffusers-config", default=None, help="a real model's generator YAML")
    ap.add_argument("--rollout-seconds", type=float, default=None,
                    help="latent rollout seconds per answer, to print the overhead ratio")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = build_suite(tmp / "suite", args.n, frames=args.frames, size=args.size,
                               progress=False)
        r = measure("procedural", manifest, tmp / "proc", None, [])
        results.append({**r, "label": "procedural (exact, CPU)"})
        if args.diffusers_config:
            r = measure("diffusers", manifest, tmp / "diff", args.diffusers_config, [])
            results.append({**r, "label": f"diffusers ({args.diffusers_config})"})
        else:
            from stormvl.thoughts.diffusers_gen import save_tiny_pipeline

            device = "cuda" if torch.cuda.is_available() else "cpu"
            tiny = save_tiny_pipeline(tmp / "tiny")
            sets = [f"model={tiny}", f"device={device}", "height=64", "width=64", "num_frames=17",
                    "steps=4", "guidance_scale=1.0", "batch_size=1",
                    f"dtype={'bfloat16' if device == 'cuda' else 'float32'}"]
            r = measure("diffusers", manifest, tmp / "diff", None, sets)
            results.append({**r, "label": f"diffusers TINY random-init LTX pipeline on {device.upper()} "
                                          "(pipeline overhead only, not a real model)"})
    for r in results:
        line = f"{r['label']}: {r['seconds_per_video']:.4f} s/video generate, " \
               f"{r['wall_seconds_per_video']:.4f} s/video end to end ({r['videos']} videos)"
        if r["gpu"].get("max_allocated_bytes"):
            line += f", peak GPU {r['gpu']['max_allocated_bytes'] / 2**30:.2f} GiB"
        print(line)
    if len(results) == 2:
        ratio = results[1]["seconds_per_video"] / results[0]["seconds_per_video"]
        print(f"ratio diffusers / procedural: {ratio:.1f}x")
    if args.rollout_seconds:
        for r in results:
            print(f"{r['generator']} / latent rollout: {r['seconds_per_video'] / args.rollout_seconds:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
