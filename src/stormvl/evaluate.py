"""Run a trained model over a benchmark: resumable predictions, cost, reproducible results.

``run_eval`` is what ``stormvl eval`` and the demo call. The loop is:

    pending items (ids not yet in predictions.jsonl)
      -> sample frames (settings from the checkpoint unless overridden)
      -> Prompt (method layout: K latents, oracle's second video, textcot's longer reply)
      -> latent engine ``generate`` in batches
      -> one durable line per item: reply, latency split, tokens, latent steps
    -> score with the benchmark's own rules -> results.json + results.md

Everything needed to reproduce the number is written beside it: package versions, backbone,
a checkpoint fingerprint, video settings, a hash of the sampled frame indices, the prompt
template and the generation settings. Re-running after a kill skips what is done; re-running
with different settings into the same folder is refused (mixed settings give a number that
describes nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stormvl.data.manifest import JsonlAppender, read_jsonl_tolerant
from stormvl.errors import UserError

METHODS = ("direct", "textcot", "latent", "storm", "oracle")


@dataclass
class EvalSettings:
    """How a model is run over a benchmark (None = take it from the checkpoint)."""

    num_frames: int | None = None  # uniform frames per video
    sample_fps: float | None = None  # or: frames per second (with max_frames as the cap)
    max_frames: int | None = None  # cap for fps sampling
    k: int | None = None  # latent steps (default: the checkpoint's K)
    batch_size: int = 8  # questions per generate call
    max_new_tokens: int | None = None  # default: 16, or 160 for textcot
    do_sample: bool = False  # greedy by default, as the harnesses score
    temperature: float = 1.0
    top_p: float = 1.0
    limit: int | None = None  # first N items only (smoke runs)
    subtitles: bool = False  # VideoMME with subtitles
    seed: int = 0  # sampling seed (only used when do_sample)


@dataclass
class LoadedModel:
    """A backbone plus what its checkpoint says about how it was trained."""

    backbone: Any  # stormvl.backbones.base.Backbone
    method: str
    k: int
    video: dict  # the checkpoint's video sampling settings (num_frames / sample_fps / ...)
    path: str
    meta: dict = field(default_factory=dict)
    projector: torch.nn.Module | None = None


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a stormvl checkpoint (or a plain HF Qwen-VL directory = ``direct``)."""
    from stormvl.backbones import load_backbone, read_stormvl_meta

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: checkpoint not found")
    meta = read_stormvl_meta(p) or {}
    bb = load_backbone(str(p), dtype=dtype, device=device)
    method = meta.get("method", "direct")
    if method not in METHODS:
        raise UserError(f"{p}/stormvl.json: field 'method' {method!r} is not one of {METHODS}")
    video = dict(meta.get("sampling") or {"num_frames": 16})
    return LoadedModel(bb, method, int(meta.get("k", 0) or 0), video, str(p), meta)


# ----------------------------------------------------------------------------------------
# Pure pieces


def resolve_sampling(model: LoadedModel, s: EvalSettings) -> tuple[dict, list[str]]:
    """Frame sampling for this run and warnings where it departs from training's."""
    trained = {k: model.video.get(k) for k in ("num_frames", "sample_fps", "max_frames")}
    asked = {"num_frames": s.num_frames, "sample_fps": s.sample_fps, "max_frames": s.max_frames}
    if s.num_frames is None and s.sample_fps is None:
        return trained, []
    out = {"num_frames": s.num_frames, "sample_fps": s.sample_fps, "max_frames": s.max_frames}
    if out != trained and any(v is not None for v in trained.values()):
        return out, [f"video sampling {asked} differs from the checkpoint's {trained}"]
    return out, []


def generation_settings(model: LoadedModel, s: EvalSettings) -> dict:
    k = model.k if s.k is None else s.k
    if model.method in ("direct", "textcot", "oracle") and k:
        raise UserError(f"--k {k}: a {model.method} checkpoint has no latent steps")
    default_tokens = 160 if model.method == "textcot" else 16
    return {
        "k": k,
        "max_new_tokens": s.max_new_tokens or default_tokens,
        "do_sample": s.do_sample,
        "temperature": s.temperature,
        "top_p": s.top_p,
    }


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over the small files and each weight file's size plus first and last MiB.

    Hashing 15 GB of 7B weights would take minutes per eval; size + both ends identify a
    checkpoint file in practice and cost milliseconds.
    """
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    for f in files:
        if f.name.startswith(".") or "optimizer" in f.name or f.suffix == ".log":
            continue
        h.update(str(f.relative_to(p)).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("stormvl", "torch", "transformers", "accelerate", "av", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----------------------------------------------------------------------------------------
# The run


def _prepare(model: LoadedModel, item, sampling: dict, k: int):
    """Decode one item's frames and build its Prompt (runs in a worker thread)."""
    from stormvl.backbones.base import Prompt
    from stormvl.tasks.base import load_clip

    clip = load_clip(item, sampling.get("num_frames"), sampling.get("sample_fps"),
                     sampling.get("max_frames"))
    bb = model.backbone
    videos = [bb.preprocess_video(clip.frames, clip.timestamps)]
    if model.method == "oracle":
        thought = item.meta.get("thought_video")
        if not thought:
            raise UserError(f"{item.id}: the oracle needs a thought video; this benchmark has none")
        from stormvl.data.video import read_clip

        tclip = read_clip(thought, sampling.get("num_frames"), sampling.get("sample_fps"),
                          max_frames=sampling.get("max_frames"))
        videos.append(bb.preprocess_video(tclip.frames, tclip.timestamps))
    prompt = Prompt(videos=videos, text=item.render_prompt(clip.timestamps), k=k)
    return bb.encode(prompt), clip.indices


def run_eval(
    model: LoadedModel,
    benchmark: str,
    items: Sequence,
    out_dir: str | Path,
    settings: EvalSettings,
    breakdown_keys: Sequence[str] = (),
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict | None:
    """Evaluate ``items``; resumable. Returns the results dict on rank 0 (None elsewhere).

    With ``world`` > 1 (``accelerate launch``), rank r takes items r, r + world, ... and
    writes ``predictions.rank{r}.jsonl``; rank 0 merges once every rank has finished.
    """
    from stormvl.latent import generate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sampling, warnings = resolve_sampling(model, settings)
    gen = generation_settings(model, settings)
    items = list(items)[: settings.limit] if settings.limit else list(items)
    run_info = {
        "benchmark": benchmark,
        "checkpoint": model.path,
        "checkpoint_sha": checkpoint_fingerprint(model.path),
        "backbone": model.backbone.family,
        "method": model.method,
        "video_sampling": sampling,
        "video_pixels": asdict(model.backbone.video) if hasattr(model.backbone, "video") else {},
        "generation": gen,
        "subtitles": settings.subtitles,
        "n_items": len(items),
        "world_size": world,
    }
    _check_resume(out / "run.json", run_info)
    shard_path = out / (f"predictions.rank{rank}.jsonl" if world > 1 else "predictions.jsonl")
    done = {r["id"] for r in read_jsonl_tolerant(shard_path)}
    mine = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
    bb = model.backbone
    torch_gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    n_done = len(items) // world - len(mine)
    with JsonlAppender(shard_path) as log, ThreadPoolExecutor(max_workers=2) as pool:
        for batch_items in _batches(mine, settings.batch_size):
            prepared = list(pool.map(lambda it: _prepare(model, it, sampling, gen["k"]), batch_items))
            batch = bb.collate([p[0] for p in prepared]).to(bb.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                res = generate(
                    bb, batch, max_new_tokens=gen["max_new_tokens"], do_sample=gen["do_sample"],
                    temperature=gen["temperature"], top_p=gen["top_p"],
                    generator=torch_gen if gen["do_sample"] else None, projector=model.projector,
                )
            wall = time.perf_counter() - t0
            for it, (_, idx), text, n_tok in zip(batch_items, prepared, res.texts, res.n_generated, strict=True):
                log.write({
                    "id": it.id,
                    "response": text,
                    "latency": {k: round(v, 6) for k, v in res.timings.items()},
                    "latency_total": round(wall, 6),
                    "batch_size": len(batch_items),
                    "generated_tokens": int(n_tok),
                    "latent_steps": gen["k"],
                    "frame_indices": [int(i) for i in idx],
                })
            n_done += len(batch_items)
            if progress:
                progress(n_done, len(items) // world)
    if rank != 0:
        return None
    return finalize(out, benchmark, items, run_info, warnings, breakdown_keys, world)


def _check_resume(path: Path, run_info: dict) -> None:
    key = {k: v for k, v in run_info.items() if k not in ("n_items",)}
    if path.exists():
        old = json.loads(path.read_text())
        old_key = {k: v for k, v in old.items() if k not in ("n_items",)}
        if old_key != key:
            diff = sorted(k for k in key if key.get(k) != old_key.get(k))
            raise UserError(
                f"{path.parent}: holds predictions made with other settings ({', '.join(diff)}); "
                "use another --out or delete it"
            )
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(run_info, indent=2))
    os.replace(tmp, path)


def finalize(out: Path, benchmark: str, items: Sequence, run_info: dict, warnings: list[str],
             breakdown_keys: Sequence[str], world: int = 1) -> dict:
    """Merge rank files, score, and write results.json / results.md."""
    from stormvl.tasks.score import Predictions, render_table, score, write_results

    rows: list[dict] = []
    if world > 1:
        for r in range(world):
            rows += read_jsonl_tolerant(out / f"predictions.rank{r}.jsonl")
        merged = out / "predictions.jsonl"
        tmp = merged.with_name(".predictions.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, merged)
    else:
        rows = read_jsonl_tolerant(out / "predictions.jsonl")
    preds = Predictions({r["id"]: r["response"] for r in rows})
    result = score(benchmark, items, preds, breakdown_keys)
    frame_hash = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["id"]):
        frame_hash.update(f"{r['id']}:{r.get('frame_indices')}".encode())
    n = max(1, len(rows))
    result["cost"] = {
        "mean_latency_s": {k: sum(r["latency"].get(k, 0) for r in rows) / n
                           for k in ("prefill", "rollout", "decode")},
        "mean_batch_latency_s": sum(r["latency_total"] for r in rows) / n,
        "mean_generated_tokens": sum(r["generated_tokens"] for r in rows) / n,
        "latent_steps": run_info["generation"]["k"],
        "peak_memory_mb": _peak_memory_mb(),
    }
    result["reproducibility"] = {
        **run_info,
        "frame_indices_sha256": frame_hash.hexdigest()[:16],
        "prompt_example": items[0].prompt if items else None,
        "packages": package_versions(),
        "warnings": warnings,
    }
    write_results(out / "results.json", result)
    md = [f"# {benchmark}: {run_info['method']} ({run_info['checkpoint']})", "", "```",
          render_table(result), "```", "",
          f"mean latency (s): {result['cost']['mean_latency_s']}, tokens "
          f"{result['cost']['mean_generated_tokens']:.1f}, K = {run_info['generation']['k']}"]
    tmp = out / ".results.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out / "results.md")
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
