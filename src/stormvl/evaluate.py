"""Run a trained model over a benchmark: resumable predictions, cost, reproducible results.

``stormvl eval``, ``stormvl answer`` and the lmms-eval plug-in all answer through one
``Runner``:

    item -> frames planned exactly as training planned them (``training.data.plan_clips``:
            the checkpoint's frame count / fps, pixel bounds and visual-token budget; the
            oracle's thought video shares the budget as in training)
         -> Prompt (method layout: K latents, the oracle's second video)
         -> latent engine ``generate`` in batches (greedy by default)

``run_eval`` adds the bookkeeping: one durable JSONL line per item (reply, latency split,
tokens, latent steps, frame indices), a settings record that refuses a re-run with other
settings into the same folder (mixed settings give a number that describes nothing),
resume by skipping ids already written, data-parallel shards, then scoring with the
benchmark's own rules into results.json / results.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from stormvl.config import from_dict, to_dict
from stormvl.data.manifest import JsonlAppender, read_jsonl_tolerant
from stormvl.errors import UserError
from stormvl.io import write_text_atomic
from stormvl.tasks.base import EvalItem, frame_folder_files, load_clip
from stormvl.training.config import METHODS, VideoConfig

LATENT_METHODS = ("latent", "storm")
PLAIN_MAX_VISUAL_TOKENS = 32768  # budget for checkpoints without stormvl.json


@dataclass
class EvalSettings:
    """How a model is run (None = take it from the checkpoint)."""

    num_frames: int | None = None  # uniform frames per video (overrides the checkpoint's)
    fps: float | None = None  # or: frames per second (overrides the checkpoint's)
    k: int | None = None  # latent steps (latent / storm checkpoints only)
    batch_size: int = 8  # questions per generate call
    max_new_tokens: int | None = None  # default: 16, or 256 for textcot
    do_sample: bool = False  # greedy by default, as the harnesses score
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # sampling seed (only used when do_sample)
    limit: int | None = None  # first N items only (smoke runs)
    subtitles: bool = False  # VideoMME with subtitles


@dataclass
class LoadedModel:
    """A backbone plus what its checkpoint says about how it was trained."""

    backbone: Any  # stormvl.backbones.base.Backbone
    method: str
    k: int  # latent steps it was trained with (0 for non-latent methods)
    video: VideoConfig  # the frame / pixel / budget settings it was trained with
    oracle_frames: int  # oracle: thought-video frames appended (0 otherwise)
    path: str
    meta: dict = field(default_factory=dict)


def _device(device: str | None) -> str:
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def load_model(path: str | Path, device: str | None = None, dtype: str = "auto") -> LoadedModel:
    """Load a stormvl checkpoint (or a plain HF Qwen-VL folder, evaluated as ``direct``).

    Raises:
        UserError: missing folder, unknown method, LoRA adapters that need ``stormvl export``.
    """
    from stormvl.backbones import load_backbone, read_stormvl_meta

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: checkpoint folder not found")
    if (p / "adapter_config.json").is_file():
        raise UserError(f"{p}: a LoRA checkpoint (adapters only); merge it first with "
                        f"'stormvl export {p} MERGED' and evaluate MERGED")
    meta = read_stormvl_meta(p) or {}
    method = meta.get("method", "direct")
    if method not in METHODS:
        raise UserError(f"{p}/stormvl.json: field 'method' {method!r} is not one of {METHODS}")
    oracle = 0
    if method == "oracle":
        oracle = int(((meta.get("config") or {}).get("method") or {}).get("oracle_frames", 4))
    dev = _device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    bb = load_backbone(str(p), dtype=getattr(torch, dtype), device=dev)
    if meta.get("video_config"):
        video = from_dict(VideoConfig, meta["video_config"], f"{p}/stormvl.json video_config")
    else:  # not trained by stormvl: the default of 16 uniform frames, a loose budget
        bounds = {k: v for k, v in bb.video.to_dict().items() if v is not None}
        video = VideoConfig(num_frames=16, max_visual_tokens=PLAIN_MAX_VISUAL_TOKENS, **bounds)
    k = int(meta.get("k") or 0) if method in LATENT_METHODS else 0
    bb.bottleneck = bool(meta.get("bottleneck")) and k > 0  # as it was trained
    return LoadedModel(bb, method, k, video, oracle, str(p.resolve()), meta)


# ----------------------------------------------------------------------------------------
# Pure pieces


def resolve_video(trained: VideoConfig, s: EvalSettings) -> tuple[VideoConfig, list[str]]:
    """The video settings of this run: the checkpoint's, unless frames / fps are overridden
    (with a warning, since the model then sees inputs unlike its training inputs)."""
    if s.num_frames is not None and s.fps is not None:
        raise UserError("--frames and --fps: give one, not both")
    if s.num_frames is not None:
        out = replace(trained, num_frames=s.num_frames, fps=None)
    elif s.fps is not None:
        out = replace(trained, num_frames=None, fps=s.fps)
    else:
        return trained, []
    problems = out.validate()
    if problems:
        raise UserError("; ".join(problems))
    if out == trained:
        return out, []
    was = f"num_frames={trained.num_frames}, fps={trained.fps}"
    now = f"num_frames={out.num_frames}, fps={out.fps}"
    return out, [f"video sampling overridden: {now} (the checkpoint was trained with {was})"]


def generation_settings(model: LoadedModel, s: EvalSettings) -> dict:
    """K and decoding settings; ``--k`` only makes sense for a latent checkpoint."""
    if s.k is not None and model.method not in LATENT_METHODS:
        raise UserError(f"--k {s.k}: {model.path} is a {model.method} checkpoint, which has no "
                        "latent steps")
    k = model.k if s.k is None else s.k
    if not 0 <= k <= model.backbone.max_latents:
        raise UserError(f"--k {k}: must be in [0, {model.backbone.max_latents}]")
    if s.batch_size < 1:
        raise UserError(f"--batch-size {s.batch_size}: must be >= 1")
    tokens = s.max_new_tokens or (256 if model.method == "textcot" else 16)
    return {"k": k, "max_new_tokens": tokens, "do_sample": s.do_sample,
            "temperature": s.temperature, "top_p": s.top_p,
            "seed": s.seed if s.do_sample else None}


_FINAL = re.compile(r"the answer is", re.IGNORECASE)


def answer_part(method: str, text: str) -> str:
    """The part of a reply that is scored: textcot replies are ``rationale\\nThe answer is X.``
    (the training target), so the rationale's stray letters must not be read as the answer."""
    if method != "textcot":
        return text
    hits = list(_FINAL.finditer(text))
    return text[hits[-1].end():].strip() if hits else text


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over every file's name and size plus its first and last MiB.

    Hashing 15 GB of 7B weights would take minutes per eval; size + both ends identify a
    checkpoint file in practice and cost milliseconds.
    """
    h = hashlib.sha256()
    p = Path(path)
    for f in sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")):
        if f.name.startswith(("trainer_state", "rng_rank")):
            continue  # resume state: not part of the model
        size = f.stat().st_size
        h.update(f"{f.relative_to(p)}:{size}".encode())
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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# The runner: item -> Prompt -> reply


@dataclass
class Prepared:
    """One item ready for the model."""

    item: EvalItem
    encoded: Any  # the adapter's Encoded
    frame_indices: list[int]  # source frames of the input video
    thought_indices: list[int] | None  # oracle: source frames of the thought video
    load_s: float  # decode + preprocessing seconds


def _source(item: EvalItem, timeout_s: float) -> tuple[int, float, int, int]:
    """(frames, fps, height, width) of an item's media: a video file or a frame folder."""
    from stormvl.data.video import probe

    if item.frames_fps is None:
        info = probe(item.video, timeout_s)
        return info.num_frames, info.fps, info.height, info.width
    from PIL import Image

    files = frame_folder_files(item.video)
    with Image.open(files[0]) as im:
        w, h = im.size
    return len(files), item.frames_fps, h, w


class Runner:
    """A loaded model with this run's resolved video and generation settings."""

    def __init__(self, model: LoadedModel, settings: EvalSettings):
        from stormvl.training.video_settings import backbone_counter

        self.model, self.settings = model, settings
        self.video, self.warnings = resolve_video(model.video, settings)
        self.gen = generation_settings(model, settings)
        self._count = backbone_counter(model.backbone)
        self._torch_gen = torch.Generator().manual_seed(settings.seed)
        # prepare() runs in decode threads; a fast tokenizer must not be entered concurrently
        # (its Rust state is borrowed per call: "Already borrowed" errors under contention)
        self._encode_lock = threading.Lock()

    @property
    def method(self) -> str:
        return self.model.method

    def prepare(self, item: EvalItem) -> Prepared:
        """Decode and encode one item, planning frames exactly as training did.

        Raises:
            UserError / VideoError: missing or unreadable media (the caller records it).
        """
        from stormvl.backbones import Prompt
        from stormvl.data.video import read_clip
        from stormvl.training.data import plan_clips
        from stormvl.training.video_settings import wanted_frames, with_max_pixels

        t0 = time.perf_counter()
        bb, v = self.model.backbone, self.video
        n, fps, h, w = _source(item, v.timeout_s)
        shapes = [(h, w, wanted_frames(v, n, fps))]
        thought = None
        if self.model.oracle_frames:
            thought = item.meta.get("thought_video")
            if not thought:
                raise UserError(f"item {item.id}: the oracle method needs a thought video")
            _, _, th, tw = _source(EvalItem("", "", Path(thought), "", ""), v.timeout_s)
            shapes.append((th, tw, self.model.oracle_frames))
        plans = plan_clips(shapes, v, self._count, bb.temporal_patch)
        clip = load_clip(item, num_frames=plans[0].num_frames)
        videos = [with_max_pixels(bb, plans[0].max_pixels).preprocess_video(clip.frames, clip.timestamps)]
        t_idx = None
        if thought:
            tclip = read_clip(thought, num_frames=plans[1].num_frames, timeout_s=v.timeout_s)
            videos.append(with_max_pixels(bb, plans[1].max_pixels)
                          .preprocess_video(tclip.frames, tclip.timestamps))
            t_idx = [int(i) for i in tclip.indices]
        prompt = Prompt(videos=videos, text=item.render_prompt(clip.timestamps), k=self.gen["k"])
        with self._encode_lock:
            encoded = bb.encode(prompt)
        return Prepared(item, encoded, [int(i) for i in clip.indices], t_idx,
                        time.perf_counter() - t0)

    def run(self, prepared: Sequence[Prepared], projector: torch.nn.Module | None = None,
            **overrides):
        """Generate for a batch of prepared items; returns the engine's ``GenerateOutput``.

        Args:
            projector: maps each latent state before it is fed back (the engine's hook;
                diagnostics use it to swap / zero / perturb latents). None for evaluation.
            overrides: generation settings for this call (max_new_tokens, do_sample, ...).
        """
        from stormvl.latent import generate

        g = {**self.gen, **overrides}
        bb = self.model.backbone
        batch = bb.collate([p.encoded for p in prepared]).to(bb.device)
        return generate(bb, batch, max_new_tokens=g["max_new_tokens"], do_sample=g["do_sample"],
                        temperature=g["temperature"], top_p=g["top_p"],
                        generator=self._torch_gen if g["do_sample"] else None,
                        projector=projector)

    def generate(self, batch: Sequence[tuple[Sequence[str], str]], max_new_tokens: int = 16,
                 do_sample: bool = False, temperature: float = 0.0) -> list[str]:
        """lmms-eval's hook: ``[(video_paths, prompt_text), ...]`` -> replies (same path as eval).

        Raises:
            UserError: a request without exactly one video, or a video that cannot be read.
        """
        prepared = []
        for i, (videos, text) in enumerate(batch):
            if len(videos) != 1:
                raise UserError(f"request {i}: stormvl takes one video per question, got {len(videos)}")
            prepared.append(self.prepare(EvalItem(str(i), "lmms-eval", Path(videos[0]), text, "")))
        sample = bool(do_sample) and temperature > 0
        out = self.run(prepared, max_new_tokens=int(max_new_tokens), do_sample=sample,
                       temperature=float(temperature) if sample else 1.0)
        return [answer_part(self.method, t) for t in out.texts]

    def describe(self, example_text: str = "") -> dict:
        """What makes this run's numbers reproducible (minus the per-item frame hash)."""
        bb = self.model.backbone
        return {
            "checkpoint": self.model.path,
            "checkpoint_sha": checkpoint_fingerprint(self.model.path),
            "backbone": bb.family,
            "method": self.method,
            "trained_k": self.model.k,
            "oracle_frames": self.model.oracle_frames,
            "video": to_dict(self.video),
            "video_pixels": bb.video.to_dict(),
            "generation": self.gen,
            "chat_template_example": self._template(example_text),
        }

    def _template(self, text: str) -> str:
        """The chat layout around a question (no video: the placeholder span is elided)."""
        from stormvl.backbones import Prompt

        bb = self.model.backbone
        enc = bb.encode(Prompt(videos=[], text=text or "{question}", k=self.gen["k"]))
        return bb.tokenizer.decode(enc.input_ids, skip_special_tokens=False)


def load_runner(pretrained: str, **settings: Any) -> Runner:
    """The lmms-eval plug-in's entry: a checkpoint plus ``--model_args`` -> ``Runner``.

    Known settings: num_frames, fps, k, max_new_tokens, device, dtype (others are refused).
    """
    known = {"num_frames", "fps", "k", "max_new_tokens", "device", "dtype"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"unknown stormvl model_args {unknown}; known: {sorted(known)}")
    num = lambda key, cast: None if settings.get(key) in (None, "") else cast(settings[key])  # noqa: E731
    s = EvalSettings(num_frames=num("num_frames", int), fps=num("fps", float), k=num("k", int),
                     max_new_tokens=num("max_new_tokens", int), batch_size=1)
    model = load_model(pretrained, settings.get("device"), settings.get("dtype") or "auto")
    return Runner(model, s)


# ----------------------------------------------------------------------------------------
# The benchmark run: resumable, sharded, scored


@dataclass
class Shards:
    """Where this process writes and which share of the items it answers."""

    out: Path
    rank: int = 0
    world: int = 1

    def shard(self, kind: str, rank: int | None = None) -> Path:
        """``predictions.jsonl`` / ``failed.jsonl`` (one process) or per-rank shards."""
        r = self.rank if rank is None else rank
        return self.out / (f"{kind}.jsonl" if self.world == 1 else f"{kind}.rank{r}.jsonl")


def _done_ids(out: Path) -> set[str]:
    """Ids answered or failed in any earlier run, whatever its process count was."""
    done = set()
    for kind in ("predictions", "failed"):
        for f in [out / f"{kind}.jsonl", *sorted(out.glob(f"{kind}.rank*.jsonl"))]:
            done |= {str(r["id"]) for r in read_jsonl_tolerant(f)}
    return done


def check_settings(out: Path, key: dict, write: bool) -> None:
    """Refuse an OUTDIR holding predictions made with other settings; record ours."""
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        if diff:
            raise UserError(
                f"{out}: holds predictions made with other settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} there, {[key.get(k) for k in diff]} now); "
                "use another --out or delete it")
        return
    if write:
        write_text_atomic(path, json.dumps(key, indent=2, sort_keys=True) + "\n")


def _row(p: Prepared, text: str, res, i: int, bsz: int, k: int, method: str) -> dict:
    row = {"id": p.item.id, "response": answer_part(method, text),
           "latency_s": {name: round(t, 6) for name, t in res.timings.items()},
           "batch_size": bsz, "load_s": round(p.load_s, 6),
           "generated_tokens": int(res.n_generated[i]), "latent_steps": k,
           "frame_indices": p.frame_indices}
    if text != row["response"]:
        row["raw_response"] = text
    if p.thought_indices is not None:
        row["thought_frame_indices"] = p.thought_indices
    return row


def _prepared_batches(runner: Runner, items: Sequence[EvalItem], pool: ThreadPoolExecutor):
    """Yield batches of (item, Prepared | error text); worker threads decode at most one
    batch ahead of the model (bounded, so a 3,000-item benchmark never sits in memory)."""

    def job(it: EvalItem):
        try:
            return it, runner.prepare(it)
        except (UserError, OSError) as exc:  # VideoError, corrupt frames: recorded, no crash
            return it, str(exc)

    bs = runner.settings.batch_size
    todo, window = iter(items), deque()
    while True:
        while len(window) < 2 * bs and (it := next(todo, None)) is not None:
            window.append(pool.submit(job, it))
        if not window:
            return
        yield [window.popleft().result() for _ in range(min(bs, len(window)))]


def answer_items(runner: Runner, items: Sequence[EvalItem], info: Shards,
                 progress: bool = True) -> int:
    """Answer this process's pending share of ``items``, one durable line each.

    Returns:
        the number of items that failed to load in this call.
    """
    from tqdm import tqdm

    done = _done_ids(info.out)
    mine = [it for i, it in enumerate(items) if i % info.world == info.rank]
    todo = [it for it in mine if it.id not in done]
    k, failed = runner.gen["k"], 0
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"eval rank {info.rank}",
               unit="q", disable=not progress, dynamic_ncols=True)
    with JsonlAppender(info.shard("predictions")) as log, \
            JsonlAppender(info.shard("failed")) as fails, ThreadPoolExecutor(2) as pool:
        for loaded in _prepared_batches(runner, todo, pool):
            good = [p for _, p in loaded if isinstance(p, Prepared)]
            for it, p in loaded:
                if not isinstance(p, Prepared):
                    fails.write({"id": it.id, "video": str(it.video), "error": p})
                    failed += 1
            if good:
                res = runner.run(good)
                for i, (p, text) in enumerate(zip(good, res.texts, strict=True)):
                    log.write(_row(p, text, res, i, len(good), k, runner.method))
            bar.update(len(loaded))
    bar.close()
    return failed


def merge_shards(info: Shards) -> list[dict]:
    """Rank 0, after the barrier: fold every shard into predictions.jsonl / failed.jsonl
    (first row per id wins), atomically, then drop the shards."""
    merged = {}
    for kind in ("predictions", "failed"):
        rows, seen = [], set()
        shards = sorted(info.out.glob(f"{kind}.rank*.jsonl"))
        for f in [info.out / f"{kind}.jsonl", *shards]:
            for r in read_jsonl_tolerant(f):
                if str(r["id"]) not in seen:
                    seen.add(str(r["id"]))
                    rows.append(r)
        if shards:
            write_text_atomic(info.out / f"{kind}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            for f in shards:
                f.unlink()
        merged[kind] = rows
    return merged["predictions"], merged["failed"]


def run_eval(runner: Runner, benchmark: str, items: Sequence[EvalItem], out_dir: str | Path,
             data: str | Path = "", rank: int = 0, world: int = 1, barrier=None,
             progress: bool = True) -> dict | None:
    """Evaluate ``items`` into ``out_dir``; resumable. Returns results on rank 0, else None.

    With ``world`` > 1 (``accelerate launch``) rank r answers items r, r + world, ... into
    its own shard; ``barrier`` (every process calls it) separates the phases.

    Raises:
        UserError: ``out_dir`` holds a run with other settings; an oracle checkpoint on a
            benchmark without thought videos.
    """
    from stormvl.tasks import breakdowns

    barrier = barrier or (lambda: None)
    if runner.settings.limit is not None and runner.settings.limit < 1:
        raise UserError(f"--limit {runner.settings.limit}: must be >= 1")
    prompts_sha = _sha("\n".join(f"{it.id}\t{it.prompt}" for it in items))  # before --limit
    items = list(items)[: runner.settings.limit] if runner.settings.limit else list(items)
    if runner.model.oracle_frames and not all(it.meta.get("thought_video") for it in items):
        raise UserError(f"{benchmark}: the oracle checkpoint needs a thought video per item; "
                        "only suites with thought videos (synth) can evaluate it")
    info = Shards(Path(out_dir), rank, world)
    desc = runner.describe(items[0].prompt if items else "")
    key = {"benchmark": benchmark, "data": str(Path(data).resolve()) if data else "",
           "subtitles": runner.settings.subtitles,
           "prompts_sha256": prompts_sha, **desc}
    key.pop("chat_template_example")
    check_settings(info.out, key, write=False)  # every process refuses alike ...
    barrier()
    if rank == 0:
        check_settings(info.out, key, write=True)  # ... before rank 0 records them
    barrier()
    answer_items(runner, items, info, progress)
    barrier()
    if rank != 0:
        return None
    preds, fails = merge_shards(info)
    return finalize(info.out, benchmark, items, preds, fails, {**key, **desc}, runner.warnings,
                    breakdowns(benchmark))


def _frame_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: str(r["id"])):
        h.update(f"{r['id']}:{r.get('frame_indices')}:{r.get('thought_frame_indices')}\n".encode())
    return h.hexdigest()[:16]


def cost_summary(rows: list[dict]) -> dict:
    """Mean per-question cost; a batch's time is shared by its questions (amortised)."""
    n = max(1, len(rows))
    per = {k: sum(r["latency_s"].get(k, 0.0) / r["batch_size"] for r in rows) / n
           for k in ("prefill", "rollout", "decode")}
    total = sum(per.values())
    return {
        "mean_latency_s": {**{k: round(v, 6) for k, v in per.items()}, "total": round(total, 6)},
        "questions_per_s": round(1.0 / total, 3) if rows and total > 0 else None,
        "mean_load_s": round(sum(r.get("load_s", 0.0) for r in rows) / n, 6),
        "mean_generated_tokens": round(sum(r["generated_tokens"] for r in rows) / n, 3),
        "latent_steps": rows[0]["latent_steps"] if rows else None,
        "peak_memory_mb": round(_peak_memory_mb(), 1),
    }


def finalize(out: Path, benchmark: str, items: Sequence[EvalItem], preds: list[dict],
             fails: list[dict], settings: dict, warnings: list[str],
             breakdown_keys: Sequence[str]) -> dict:
    """Score the merged predictions and write results.json / results.md (atomically)."""
    from stormvl.tasks.score import Predictions, render_table, score, write_results

    known = {it.id for it in items}
    rows = [r for r in preds if str(r["id"]) in known]  # a --limit run scores its items only
    result = score(benchmark, items, Predictions({str(r["id"]): r["response"] for r in rows}),
                   breakdown_keys)
    result["failed"] = len(fails)
    result["failed_items"] = [{"id": f["id"], "error": f["error"]} for f in fails[:50]]
    result["cost"] = cost_summary(rows)
    result["reproducibility"] = {
        **settings,
        "frame_indices_sha256": _frame_hash(rows),
        "packages": package_versions(),
        "torch_device": str(torch.cuda.get_device_name()) if torch.cuda.is_available() else "cpu",
        "warnings": warnings,
    }
    write_results(out / "results.json", result)
    c = result["cost"]
    lat = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in c["mean_latency_s"].items())
    md = [f"# {benchmark}: {settings['method']} ({settings['checkpoint']})", "", "```",
          render_table(result), "```", "",
          f"- failed to load: {len(fails)} (counted as missing, so wrong)",
          f"- mean latency per question: {lat}",
          f"- generated tokens: {c['mean_generated_tokens']}, latent steps K = {c['latent_steps']}",
          f"- video: {settings['video']}",
          f"- checkpoint sha: {settings['checkpoint_sha']}, frames sha: "
          f"{result['reproducibility']['frame_indices_sha256']}"]
    md += [f"- warning: {w}" for w in warnings]
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    return result


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------
# One question


def answer_question(runner: Runner, video: str | Path, question: str,
                    options: Sequence[str] = ()) -> dict:
    """Answer one question about one video with the method's layout; returns the reply, the
    latency split and what was sampled.

    Raises:
        UserError: the video is missing or cannot be decoded.
    """
    from stormvl.latent import format_question

    video = Path(video)
    if not video.is_file():
        raise UserError(f"--video {video}: file not found")
    item = EvalItem("answer", "answer", video, format_question(question, list(options) or None), "")
    p = runner.prepare(item)
    res = runner.run([p])
    return _row(p, res.texts[0], res, 0, 1, runner.gen["k"], runner.method)


__all__ = ["EvalSettings", "LoadedModel", "Runner", "answer_question", "load_model",
           "load_runner", "run_eval"]
