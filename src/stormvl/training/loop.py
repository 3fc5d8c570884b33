"""One training loop for every method, on ``accelerate`` (1 process, DDP, FSDP).

Read top to bottom: ``train`` sets up (model, data, targets, optimiser, resume), then each
optimizer step draws ``grad_accum`` micro-batches, runs ``TrainModule`` (the latent engine +
the Stage-I projector), checks the loss is finite, clips, steps, logs and checkpoints.

Methods differ only in the prompt (``make_prepare``) and the loss (``TrainModule``):

=========  ================================================  ==========================
method     prompt                                            loss
=========  ================================================  ==========================
direct     video + question -> answer letter                 answer CE
textcot    video + question -> rationale + answer            CE on both
latent     video + question -> K latents -> answer           answer CE
  + internalize_at: K latents -> rationale tail + answer     CE (the tail shrinks by step)
storm 1    as latent                                         CE + lambda * align
storm 2    as latent, weights from the stage-1 checkpoint    CE (+ small align, opt.)
oracle     video + thought video + question -> answer        answer CE
=========  ================================================  ==========================
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from stormvl.backbones.tower_cache import TowerCache
from stormvl.config import save_config
from stormvl.data.clip_cache import ClipReader
from stormvl.errors import UserError
from stormvl.io import CreatedHere, exclusive_folder, writing
from stormvl.training import checkpoint as ckpt
from stormvl.training import fsdp
from stormvl.training.build import Built, build_model, run_meta, same_base, save_model
from stormvl.training.config import TrainConfig
from stormvl.training.data import (
    Collated,
    Loaded,
    ResumableSampler,
    VideoQADataset,
    load_samples,
    make_collate,
)
from stormvl.training.logging import MetricsLog
from stormvl.training.losses import Projector, align_loss, cosine_agreement
from stormvl.training.targets import TargetCache, build_encoder, build_targets, vision_modules
from stormvl.training.video_settings import backbone_counter, with_max_pixels


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


# --- prompts -------------------------------------------------------------------------------


def rationale_sentences(text: str) -> list[str]:
    """A rationale cut into sentences, the steps the latent curriculum drops one by one."""
    return [x for x in re.split(r"(?<=[.!?])\s+", text.strip()) if x]


def target_text(method: str, sample, dropped: int | None = None) -> str:
    """Supervised assistant text: the answer (a letter, or an open-ended question's answer
    text), or (textcot) the rationale then the answer.

    ``dropped`` (latent curriculum): the rationale's sentences after the first ``dropped``
    come before the answer, as textcot writes them; None or all dropped = the answer alone.
    """
    written = sample.rationale.strip() if method == "textcot" else None
    if written is None and dropped is not None:
        written = " ".join(rationale_sentences(sample.rationale or "")[dropped:])
    if not written:
        return sample.answer
    end = "" if sample.answer.endswith((".", "!", "?")) else "."
    return f"{written}\nThe answer is {sample.answer}{end}"


def bare_question(samples, where: str) -> dict:
    """The one question (and options) every sample asks, which ``data.prompt=bare`` leaves
    out of the prompt; recorded in the checkpoint so evaluation can refuse other questions."""
    asked = {(s.question, tuple(s.options or ())) for s in samples}
    if len(asked) != 1:
        raise UserError(f"{where}: data.prompt=bare needs every row to ask the same question "
                        f"with the same options; these rows ask {len(asked)} different ones")
    question, options = asked.pop()
    return {"layout": "bare", "question": question, "options": list(options)}


def make_prepare_media(bb) -> Callable[[Loaded], list]:
    """Worker-side hook: decoded clip(s) -> the adapter's tower inputs (input video, then an
    oracle's thought video). Text plays no part, so the dataset keeps them across variants."""

    def prepare_media(x: Loaded) -> list:
        s = x.sample
        vids = [_preprocess(bb, x.frames, x.timestamps, x.plan, (s.video, s.start, s.end))]
        if x.thought_frames is not None:
            vids.append(_preprocess(bb, x.thought_frames, x.thought_timestamps, x.thought_plan,
                                    (s.thought_video, None, None)))
        return vids

    return prepare_media


def make_prepare(bb, cfg: TrainConfig) -> Callable[[Loaded], object]:
    """Worker-side hook: decoded clip(s) -> the adapter's ``Encoded`` for this method (from
    ``Loaded.media`` when the dataset made it, else the clips are preprocessed here)."""
    from stormvl.backbones import Prompt
    from stormvl.latent import format_question

    method, k = cfg.method.name, cfg.method.num_latents
    media = make_prepare_media(bb)
    bare = cfg.data.prompt == "bare"  # video only: no system turn, no question text

    def prepare(x: Loaded):
        s = x.sample
        vids = x.media if x.media is not None else media(x)
        text = "" if bare else format_question(s.question, s.options)
        return bb.encode(Prompt(videos=vids, text=text, k=k, system="" if bare else None,
                                target=target_text(method, s, x.variant)))

    return prepare


def _preprocess(bb, frames, timestamps, plan, source: tuple | None = None):
    """The adapter's own preprocessing at the planned pixel bound (budget fitted upstream).

    ``source`` (file, start, end) and the plan determine the pixels: together they are the
    clip's key in a frozen tower's feature cache. Without a source the clip has no key and
    is never cached.
    """
    vid = with_max_pixels(bb, plan.max_pixels).preprocess_video(frames, timestamps)
    if source is None:
        return vid
    return replace(vid, key=repr((*source, plan.num_frames, plan.max_pixels)))


# --- the module DDP wraps ------------------------------------------------------------------


class TrainModule(nn.Module):
    """The latent engine plus the Stage-I projector; ``forward`` returns the loss parts.

    Wrapping this one module (not the bare HF model) lets DDP/FSDP see every trained
    parameter, including the projector.
    """

    def __init__(self, engine: nn.Module, projector: Projector | None, cfg: TrainConfig):
        super().__init__()
        self.engine, self.projector = engine, projector
        self.kind, self.temperature = cfg.align.loss, cfg.align.temperature
        self.align_weight = cfg.align_weight  # 0 during a frozen_copy warm-up

    def forward(self, batch, targets: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        out = self.engine(batch)
        parts = {"ce": out.loss, "loss": out.loss}
        if self.projector is not None and self.align_weight > 0:
            pred = self.projector(out.latents)  # (B, K, P, D_t)
            if targets is None:  # no sample here has a thought video: a zero term keeps every
                al = cos = pred.sum() * 0.0  # process's graph (and DDP's reducer) the same
            else:
                targets = self.projector.center_targets(targets)
                al = align_loss(pred, targets, self.kind, self.temperature, mask)
                cos = cosine_agreement(pred[mask], targets[mask]) if mask.any() else al.detach() * 0
            parts.update(align=al, cos=cos, loss=out.loss + self.align_weight * al)
        return parts


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


# --- the run -------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the step function touches, built once by ``setup``."""

    cfg: TrainConfig
    acc: object  # accelerate.Accelerator
    built: Built
    module: nn.Module  # prepared TrainModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: ckpt.TrainerState
    samples: list
    root: Path
    dataset: VideoQADataset
    target_parts: dict
    sharded: bool = False  # FSDP: parameters are shards, states are gathered to save
    log: MetricsLog | None = None
    prompt: dict | None = None  # data.prompt=bare: the question it leaves out (bare_question)


def _cache(cfg: TrainConfig) -> TargetCache:
    return TargetCache(Path(cfg.targets.cache_dir or Path(cfg.out_dir) / "target_cache"))


def _targets(cfg: TrainConfig, acc, bb, samples, root) -> dict:
    """Build (or find cached) Stage-I targets on the main process; others wait and read."""
    encoder = build_encoder(cfg.targets, bb)
    report = None
    with acc.main_process_first():
        report = build_targets(samples, root, encoder, _cache(cfg), cfg.targets,
                               cfg.method.k, cfg.video.timeout_s)
    if acc.is_main_process:
        print(f"targets ({encoder.name}): {report.built} built, {report.hits} cached, "
              f"{report.missing} samples without thought video, {len(report.failed)} failed")
        for f, why in report.failed[:5]:
            print(f"  skipped thought video {f}: {why}")
    bad = len(report.failed) / max(1, len(samples))
    if bad > cfg.data.max_bad_fraction:
        raise UserError(f"{len(report.failed)} of {len(samples)} thought videos failed "
                        f"(> data.max_bad_fraction={cfg.data.max_bad_fraction}); first: {report.failed[0]}")
    if not report.parts:
        raise UserError(f"{cfg.data.train}: storm stage 1 needs thought videos; no sample has one")
    return report.parts


def _accelerator(cfg: TrainConfig):
    """An Accelerator for this launch; refuses layouts the loop does not support."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    # a projector idle during the frozen_copy warm-up is the only parameter DDP may not see
    unused = cfg.method.uses_align and cfg.targets.encoder == "frozen_copy"
    # Under torchrun on a machine without CUDA, accelerate only goes multi-process on CPU
    # (gloo) when asked to use the CPU; without this it would run N unaware copies.
    acc = Accelerator(cpu=world > 1 and not torch.cuda.is_available(),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)])
    if acc.num_processes != world:
        raise UserError(f"WORLD_SIZE={world} but accelerate sees {acc.num_processes} process(es)")
    if acc.distributed_type.name == "DEEPSPEED":
        raise UserError("accelerate DEEPSPEED is not supported by stormvl train; use FSDP "
                        "(`accelerate launch --use_fsdp`) or DDP")
    if fsdp.requested(acc):
        fsdp.check_supported(cfg)
        if acc.mixed_precision == "fp16":  # would need a sharded grad scaler
            raise UserError("mixed_precision fp16 is not supported under FSDP; use bf16 or "
                            "model.dtype: bfloat16")
    return acc


def target_width(cfg: TrainConfig, hidden: int) -> int:
    """Width of one target vector: the projection's ``dim`` (0 = hidden) or the tower's."""
    return (cfg.targets.dim or hidden) if cfg.targets.encoder == "random_projection" else hidden


def build_projector(cfg: TrainConfig, hidden: int) -> Projector:
    """The Stage-I projector; stage 2 starts from stage 1's saved map when it has one."""
    per = cfg.targets.per_step if cfg.targets.reduction == "multi" else 1
    projector = Projector(hidden, target_width(cfg, hidden), per, cfg.align.projector)
    saved = Path(cfg.method.stage1_checkpoint or "") / ckpt.PROJECTOR
    if cfg.method.stage == 2 and saved.is_file():
        from safetensors.torch import load_file

        projector.load_saved(load_file(str(saved)))
    return projector


def set_target_center(projector: Projector | None, cfg: TrainConfig, parts: dict, cache: TargetCache) -> None:
    """Centre alignment on the question-specific part of the targets (``align.center``)."""
    if projector is None or not cfg.align.center or not parts:
        return
    total, n = None, 0
    for key in sorted(parts):  # fixed order: every process gets the same bits
        t = cache.get(parts[key])
        if t is None:
            continue
        total = t.double() if total is None else total + t.double()
        n += 1
    if n:
        projector.set_center((total / n).float())


def setup(cfg: TrainConfig, resume: bool) -> Run:
    """Model, data, targets, optimiser, scheduler; restores a checkpoint when resuming."""
    from accelerate.utils import set_seed

    from stormvl.latent import LatentModel

    out = Path(cfg.out_dir)
    last = ckpt.latest_checkpoint(out) if resume else None
    if resume and last is None:
        raise UserError(f"--resume: no finished checkpoint under {out / 'checkpoints'}; the same "
                        "command without --resume starts the run from its beginning")
    if not resume and ckpt.list_checkpoints(out):
        raise UserError(f"{out} already holds checkpoints; pass --resume or choose another out_dir")
    if last is not None:
        _check_resume(cfg, last)
    acc = _accelerator(cfg)
    set_seed(cfg.seed)
    built = build_model(cfg, last)
    bb = built.backbone
    samples, root, summary = load_samples(cfg.data)
    if cfg.method.name == "textcot" or cfg.method.internalize_at:
        samples = [s for s in samples if s.rationale]
        if not samples:
            why = "textcot" if cfg.method.name == "textcot" else "method.internalize_at"
            raise UserError(f"{cfg.data.train}: {why} needs samples with a rationale; none has one")
    prompt = bare_question(samples, cfg.data.train) if cfg.data.prompt == "bare" else None
    if acc.is_main_process:
        print(summary)
    use_align = cfg.method.uses_align and cfg.align_weight > 0
    parts: dict = {}
    if use_align and cfg.targets.encoder != "frozen_copy":
        parts = _targets(cfg, acc, bb, samples, root)
    projector = build_projector(cfg, bb.hidden_size) if use_align else None
    set_target_center(projector, cfg, parts, _cache(cfg))
    module = TrainModule(LatentModel(bb), projector, cfg)
    if cfg.targets.encoder == "frozen_copy":
        module.align_weight = 0.0  # CE-only warm-up until the tower copy is taken
    if last is not None and projector is not None and (last / ckpt.PROJECTOR).is_file():
        from safetensors.torch import load_file

        projector.load_saved(load_file(str(last / ckpt.PROJECTOR)))
    # with a process group even 1 process is sharded here (on GPU, accelerate.prepare would
    # otherwise apply its own FSDP wrapping, which the checkpoint code does not expect)
    sharded = fsdp.requested(acc) and torch.distributed.is_available() and torch.distributed.is_initialized()
    if sharded:  # before the optimizer: sharding replaces the parameters
        module = fsdp.shard(module, acc.device)
        if acc.is_main_process:
            print(f"FSDP: {fsdp.units(module)} units sharded over {acc.num_processes} processes")
    elif fsdp.requested(acc):
        print("FSDP requested without a process group (1 process): training unsharded")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    state = ckpt.TrainerState()
    if last is not None:
        state, parts = _restore(last, acc, module, optimizer, scheduler, parts, sharded)
    if not sharded:
        module, optimizer = acc.prepare(module, optimizer)
    # FSDP excluded: a rank skipping the tower would skip its parameter all-gathers
    if cfg.data.tower_cache_gb > 0 and not sharded and not any(
            p.requires_grad for p in vision_modules(bb).parameters()):
        bb.tower_cache = TowerCache(int(cfg.data.tower_cache_gb * (1 << 30)))
    cache = _cache(cfg)
    dataset = VideoQADataset(samples, root, cfg.video, backbone_counter(bb), bb.temporal_patch,
                             make_prepare(bb, cfg), parts, cache,
                             cfg.method.oracle_frames if cfg.method.name == "oracle" else 0,
                             keep_decoded=cfg.data.cache_decoded,
                             keep_bytes=int(cfg.data.cache_decoded_gb * (1 << 30)),
                             clips=ClipReader(cfg.data.clip_cache), prepare_media=make_prepare_media(bb))
    return Run(cfg, acc, built, module, optimizer, scheduler, state, samples, root, dataset, parts,
               sharded, prompt=prompt)


def _check_resume(cfg: TrainConfig, path: Path) -> None:
    """Resuming may extend a run (max_steps, logging) but not change what is trained."""
    meta = ckpt.read_meta(path)
    now = run_meta(cfg, 0)
    if not same_base(meta, path, cfg.model.backbone):
        raise UserError(f"--resume from {path}: it was trained with model.backbone="
                        f"{meta.get('base')!r}, this config has {cfg.model.backbone!r}")
    if (meta.get("prompt") or {}).get("layout", "chat") != cfg.data.prompt:
        raise UserError(f"--resume from {path}: it was trained with data.prompt="
                        f"{(meta.get('prompt') or {}).get('layout', 'chat')!r}, this config has "
                        f"{cfg.data.prompt!r}")
    for key, name in (("method", "method.name"), ("stage", "method.stage"), ("k", "method.k"),
                      ("internalize_at", "method.internalize_at"), ("lora", "model.lora.enabled")):
        # (checkpoints from before a setting existed hold its default)
        if meta.get(key, [] if key == "internalize_at" else None) != now[key]:
            raise UserError(f"--resume from {path}: it was trained with {name}={meta.get(key)!r}, "
                            f"this config has {now[key]!r}")


def _restore(path: Path, acc, module: TrainModule, optimizer, scheduler, parts: dict, sharded: bool):
    """Optimizer, scheduler, data position and RNG from a checkpoint (weights and projector
    are loaded before the module is wrapped)."""
    st = ckpt.read_trainer_state(path)
    saved_sharded = st.get("optimizer_format") == "fsdp"
    if saved_sharded != sharded:
        how = {True: "FSDP", False: "1 process / DDP"}
        raise UserError(f"--resume from {path}: its optimizer state was saved under {how[saved_sharded]}; "
                        f"resume under {how[saved_sharded]} (this launch is {how[sharded]})")
    if sharded:
        fsdp.load_optimizer_state(module, optimizer, st["optimizer"])
    else:
        optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    if not parts and st.get("target_parts"):  # frozen_copy: targets of the copy taken earlier
        parts = st["target_parts"]
        module.align_weight = st.get("align_weight", module.align_weight)
    rng = ckpt.read_rng(path, acc.process_index)
    if rng is not None:
        ckpt.set_rng_state(rng)
    return ckpt.TrainerState(**st["trainer"]), parts


def save(run: Run) -> Path:
    """Write this step's checkpoint atomically; every process adds its RNG state."""
    from safetensors.torch import save_file

    acc, cfg, step = run.acc, run.cfg, run.state.step
    tmp, final = ckpt.tmp_dir(cfg.out_dir, step), ckpt.step_dir(cfg.out_dir, step)
    module = acc.unwrap_model(run.module)
    model_sd = None
    if run.sharded:  # collective: every process sends its shards, rank 0 gets full tensors
        full = fsdp.full_state_dict(run.module)
        model_sd, proj_sd = fsdp.split_state(full, "engine.model."), fsdp.split_state(full, "projector.")
        optim_sd = fsdp.optimizer_state(run.module, run.optimizer)
    elif acc.is_main_process:
        proj_sd = module.projector.state_dict() if module.projector is not None else {}
        optim_sd = run.optimizer.state_dict()
    if acc.is_main_process:
        ckpt.clear_partial(cfg.out_dir)
        with writing(final, partial=tmp):  # a full disk: one error line, no half checkpoint
            save_model(run.built, tmp, run_meta(cfg, step, final, run.prompt), model_sd)
            if module.projector is not None:  # identity projectors save an empty file: "no map"
                save_file({k: v.contiguous() for k, v in proj_sd.items()}, str(tmp / ckpt.PROJECTOR))
            extra = {"target_parts": run.target_parts, "align_weight": float(module.align_weight),
                     "optimizer_format": "fsdp" if run.sharded else "index"}
            ckpt.write_trainer_state(tmp, run.state, optim_sd, run.scheduler, extra)
            save_config(cfg, tmp / "config.yaml")
    acc.wait_for_everyone()
    with writing(final, partial=tmp):
        ckpt.write_rng(tmp, acc.process_index)
    acc.wait_for_everyone()
    if acc.is_main_process:
        os.replace(tmp, final)
        ckpt.prune(cfg.out_dir, cfg.checkpoint.keep_last)
    acc.wait_for_everyone()
    return final


# --- steps ---------------------------------------------------------------------------------


def make_loader(run: Run) -> DataLoader:
    """Micro-batches from the current data position onwards (nothing before is decoded)."""
    acc, cfg = run.acc, run.cfg
    sampler = ResumableSampler(run.samples, cfg.optim.batch_size, cfg.data, cfg.seed,
                               acc.num_processes, acc.process_index, run.state.micro_batches,
                               cfg.optim.grad_accum,
                               cfg.method.rationale_stage if cfg.method.internalize_at else None)
    bb = run.built.backbone
    return DataLoader(run.dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                      collate_fn=make_collate(bb.collate))


def _micro(run: Run, col: Collated, last_good: Collated | None):
    """Loss parts of one micro-batch; an all-failed micro-batch reuses the last good one at
    weight 0 so every process still runs the same collective backward."""
    weight = 1.0
    if col.batch is None:
        if last_good is None:
            raise UserError(f"every sample of the first batch failed to load: {col.skipped[0].reason}")
        col, weight = last_good, 0.0
    dev = run.acc.device
    targets = col.targets.to(dev) if col.targets is not None else None
    mask = col.target_mask.to(dev) if col.target_mask is not None else None
    # a sharded module is not wrapped by accelerate, so its autocast (bf16) is applied here
    with run.acc.autocast() if run.sharded else nullcontext():
        parts = run.module(col.batch.to(dev), targets, mask)
    return parts, weight, col


def train_step(run: Run, it, last_good: Collated | None) -> tuple[dict, Collated | None, list]:
    """One optimizer step over ``grad_accum`` micro-batches.

    Returns:
        (metrics, the last good micro-batch, [(file, reason)] of media skipped this step)
    """
    acc, cfg, st = run.acc, run.cfg, run.state
    run.module.train()
    sums: dict = defaultdict(float)
    good = requested = bad = 0
    skipped = []
    for m in range(cfg.optim.grad_accum):
        col = next(it)
        st.micro_batches += 1
        requested, bad = requested + col.requested, bad + len(col.skipped)
        skipped += [(s.file, s.reason) for s in col.skipped]
        good += len(col.ids)
        sync = m == cfg.optim.grad_accum - 1
        if run.sharded:  # FSDP2: keep unsharded gradients until the last micro-batch
            run.module.set_requires_gradient_sync(sync)
        with nullcontext() if sync or run.sharded else acc.no_sync(run.module):
            parts, weight, used = _micro(run, col, last_good)
            acc.backward(parts["loss"] * (weight / cfg.optim.grad_accum))
        last_good = used
        for k, v in parts.items():
            sums[k] += float(v.detach()) / cfg.optim.grad_accum
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        skipped = gather_object(skipped)
    counts = acc.reduce(torch.tensor([requested, bad, good], device=acc.device, dtype=torch.float64), "sum")
    keys = sorted(sums)  # the same on every process: TrainModule always returns the same parts
    means = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
    sums = dict(zip(keys, means.tolist(), strict=True))
    loss = means[keys.index("loss")]
    params = [p for p in run.module.parameters() if p.requires_grad]
    clip = cfg.optim.clip if cfg.optim.clip > 0 else float("inf")
    grad_norm = fsdp.clip_grad_norm(params, clip) if run.sharded else acc.clip_grad_norm_(params, clip)
    if not (torch.isfinite(loss).all() and torch.isfinite(torch.as_tensor(grad_norm))):
        last = ckpt.latest_checkpoint(cfg.out_dir)
        raise TrainingDiverged(
            f"loss became non-finite at step {st.step + 1} (loss={float(loss):.4g}, "
            f"grad_norm={float(grad_norm):.4g}); stopped without updating. Last good checkpoint: "
            f"{last or 'none yet'}. Try a lower optim.lr or optim.clip."
        )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    st.samples_seen += int(counts[2])
    st.bad_media += int(counts[1])
    metrics = dict(sums)
    metrics.update(grad_norm=float(grad_norm), lr=run.scheduler.get_last_lr()[0],
                   samples=int(counts[2]), bad_media=st.bad_media)
    return metrics, last_good, skipped


def _check_bad_media(run: Run, skipped: list) -> None:
    cfg, st = run.cfg, run.state
    requested = st.samples_seen + st.bad_media
    for f, why in skipped:
        run.log.warn(f"skipped video {f}: {why}")
    if requested >= 20 and st.bad_media > cfg.data.max_bad_fraction * requested:
        raise UserError(f"{st.bad_media} of {requested} videos failed to load "
                        f"(> data.max_bad_fraction={cfg.data.max_bad_fraction}); see {run.log.path}")


def _maybe_take_tower_copy(run: Run) -> bool:
    """frozen_copy: after warm-up, snapshot the tower, build targets, turn alignment on."""
    cfg = run.cfg
    module = run.acc.unwrap_model(run.module)
    if (cfg.targets.encoder != "frozen_copy" or module.projector is None or run.target_parts
            or run.state.step < cfg.targets.warmup_steps):
        return False
    run.target_parts = _targets(cfg, run.acc, run.built.backbone, run.samples, run.root)
    run.dataset.target_parts = run.target_parts
    set_target_center(module.projector, cfg, run.target_parts, _cache(cfg))
    module.align_weight = cfg.align_weight
    return True


def train(cfg: TrainConfig, resume: bool = False, on_step: Callable[[Run, dict], None] | None = None) -> Path:
    """Train ``cfg``; returns the final checkpoint folder.

    Args:
        resume: continue from the newest finished checkpoint under ``cfg.out_dir``; the loss
            curve then matches an uninterrupted run.
        on_step: called after each optimizer step with (run, metrics) (tests, notebooks).

    Raises:
        UserError: bad config / data / checkpoint; ``TrainingDiverged`` on NaN/inf.
    """
    # one writer per run folder (rank 0 takes the lock; other ranks write only their RNG state)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    created = CreatedHere(cfg.out_dir)
    steps: list[int] = []  # optimizer steps this invocation finished

    def count(run: Run, metrics: dict) -> None:
        steps.append(run.state.step)
        if on_step is not None:
            on_step(run, metrics)

    with exclusive_folder(cfg.out_dir, "training") if rank0 else nullcontext():
        try:
            return _train(cfg, resume, count)
        except UserError:
            # bad input found before any step (manifest, config, first batch): take away the
            # lock, config copy and empty logs, so no folder is left that looks like a run
            if rank0 and not steps and not ckpt.list_checkpoints(cfg.out_dir):
                created.remove()
            raise


def _train(cfg: TrainConfig, resume: bool, on_step) -> Path:
    run = setup(cfg, resume)
    acc = run.acc
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        with writing(Path(cfg.out_dir) / "config.yaml"):
            save_config(cfg, Path(cfg.out_dir) / "config.yaml")
    run.log = MetricsLog(cfg, acc.is_main_process, run.state.step)
    it, last_good = iter(make_loader(run)), None
    final = ckpt.latest_checkpoint(cfg.out_dir)  # a resumed run may have nothing left to do
    try:
        while run.state.step < cfg.optim.max_steps:
            t0 = time.perf_counter()
            metrics, last_good, skipped = train_step(run, it, last_good)
            metrics["samples_per_s"] = metrics["samples"] / max(1e-9, time.perf_counter() - t0)
            _check_bad_media(run, skipped)
            run.log.step(run.state.step, metrics)
            if on_step is not None:
                on_step(run, metrics)
            if _maybe_take_tower_copy(run):
                it = iter(make_loader(run))  # workers must see the new targets
            step = run.state.step
            if step % cfg.checkpoint.every == 0 or step == cfg.optim.max_steps:
                final = save(run)
    finally:
        run.log.close()
    return final
