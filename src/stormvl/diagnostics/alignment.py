"""Stage-I alignment diagnostics for storm runs.

- cosine between projected latent k and thought-video target k, per step, at every
  checkpoint of both stages (Stage II is answer-only and was seen to erode the alignment in
  a pilot of this project and in the demo's own runs);
- retrieval: does latent k pick its own question's target k among others' (chance 1/group)?
- a picture per family: for each latent step, the true thought-video frame at the end of
  segment k beside the frame nearest to the projected latent among several questions'
  thought videos (its own among them).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from stormvl.backbones.base import read_stormvl_meta
from stormvl.diagnostics import metrics


def _run_config(ckpt: Path):
    from stormvl.config import from_dict
    from stormvl.training.checkpoint import read_meta
    from stormvl.training.config import TrainConfig

    meta = read_meta(ckpt)
    return from_dict(TrainConfig, meta["config"], f"{ckpt}/stormvl.json config")


def _projector(ckpt: Path, cfg, hidden: int):
    """The Stage-I projector saved with a checkpoint, or None when it has none."""
    from safetensors.torch import load_file

    from stormvl.training.checkpoint import PROJECTOR
    from stormvl.training.losses import Projector

    f = ckpt / PROJECTOR
    if not f.is_file():
        return None
    width = cfg.targets.dim or hidden
    per = cfg.targets.per_step if cfg.targets.reduction == "multi" else 1
    proj = Projector(hidden, width, per, cfg.align.projector)
    proj.load_saved(load_file(str(f)))
    return proj.eval()


def _targets(samples, root: Path, cfg, backbone, k: int) -> tuple[torch.Tensor, object]:
    """(N, K, D) first-vector targets of each sample, built with the run's fixed encoder
    (read from the run's ``targets.cache_dir`` when it set one that still exists, else built
    in a temporary folder)."""
    import tempfile

    from stormvl.training.targets import TargetCache, build_encoder, build_targets

    encoder = build_encoder(cfg.targets, backbone)
    with tempfile.TemporaryDirectory(prefix="stormvl-diag-targets-") as tmp:
        shared = Path(cfg.targets.cache_dir or tmp)
        cache = TargetCache(shared if shared.is_dir() else Path(tmp))
        report = build_targets(samples, root, encoder, cache, cfg.targets, k)
        rows = [cache.get(report.parts[s.id])[:, 0] for s in samples]  # (K, D) each
    return torch.stack(rows), encoder


def checkpoint_stage(path: Path) -> int | None:
    """Storm stage (1 / 2) a checkpoint was trained in, from its stormvl.json."""
    return (read_stormvl_meta(path) or {}).get("stage")


def _project(proj, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return proj(latents.float())[:, :, 0]  # (N, K, D_t)


def _cos_per_step(pred: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return F.cosine_similarity(pred, targets, dim=-1).mean(0).tolist()


def alignment_report(final, ckpts, samples, root: Path, final_latents: torch.Tensor, preset,
                     figure: Path | None = None, n_curve: int = 32, settings=None) -> dict:
    """Cosine per step through both stages, retrieval and (optionally) the picture.

    ``settings``: the ``EvalSettings`` each checkpoint runs under (default: the preset's batch).
    """
    from stormvl import evaluation
    from stormvl.diagnostics.run import collect, prepare_items
    from stormvl.tasks import load_benchmark

    stage1_ckpts = [p for _, p in ckpts if checkpoint_stage(p) == 1]
    cfg1 = _run_config(stage1_ckpts[-1])
    k = final.k  # the final checkpoint's LoadedModel (already loaded by the caller)
    targets, encoder = _targets(samples, root, cfg1, final.backbone, k)
    proj1 = _projector(stage1_ckpts[-1], cfg1, final.backbone.hidden_size)
    if proj1 is None:
        return {"error": f"{stage1_ckpts[-1]}: no Stage-I projector saved"}
    # align in the space training used: targets minus the mean training target (if centred)
    targets = targets - proj1.target_center[:, 0]
    pred = _project(proj1, final_latents)
    out = {
        "final_cos_per_step": _cos_per_step(pred, targets),
        "retrieval": metrics.retrieval_top1(pred, targets, group=min(32, len(samples))),
        "curve": [],
    }
    items = load_benchmark("synth", root)[:n_curve]
    for step, path in ckpts:
        m = final if path == ckpts[-1][1] else evaluation.load_model(path)
        proj = _projector(path, cfg1, m.backbone.hidden_size) or proj1
        runner = evaluation.Runner(m, settings or evaluation.EvalSettings(batch_size=preset.eval_batch))
        lat = collect(runner, items, prepare_items(runner, items), preset.eval_batch).latents
        stage = checkpoint_stage(path)
        out["curve"].append({"step": step, "stage": stage,
                             "cos_per_step": _cos_per_step(_project(proj, lat), targets[: len(items)])})
    if figure is not None:
        _picture(figure, samples, root, pred, encoder, k, preset, proj1.target_center[:, 0])
        out["figure"] = figure.name
    return out


def _picture(path: Path, samples, root: Path, pred: torch.Tensor, encoder, k: int, preset,
             center: torch.Tensor, gallery: int = 32) -> None:
    """One row per family: for each latent step, the true segment-end frame beside the frame
    nearest to the projected latent among the thought-video frames of the first ``gallery``
    questions and its own. A latent nearer another question's video shows as a failure;
    chosen from its own 8 frames alone, every pair looked right while retrieval was at
    chance."""
    from stormvl.data.manifest import resolve_media
    from stormvl.data.video import read_clip
    from stormvl.report.render import image_grid
    from stormvl.training.targets import segment_bounds

    reps, seen = [], set()
    for i, s in enumerate(samples):
        if s.family not in seen and s.thought_video:
            seen.add(s.family)
            reps.append(i)
    if not reps:
        return
    frames, owner, feats = {}, [], []  # owner[m] = (question, frame) of bank row m
    for i in sorted(set(range(min(gallery, len(samples)))) | set(reps)):
        if not samples[i].thought_video:
            continue
        clip = read_clip(resolve_media(root, samples[i].thought_video), num_frames=preset.frames)
        frames[i] = clip.frames
        feats.append(encoder.encode(clip.frames, clip.timestamps).mean(1))  # (T, D)
        owner += [(i, t) for t in range(len(clip.frames))]
    bank = torch.cat(feats)  # (M, D)
    # each step compares with frames in its own centred space: (K, M)
    rows, labels, titles = [], [], []
    for i in reps:
        sims = torch.einsum("kd,kmd->km", F.normalize(pred[i], dim=-1),
                            F.normalize(bank[None] - center[:, None], dim=-1))
        row, label = [], []
        for step, (_, end) in enumerate(segment_bounds(len(frames[i]), k)):
            j, t = owner[int(sims[step].argmax())]
            row += [frames[i][end - 1], frames[j][t]]
            label += [f"frame {end}", f"own, frame {t + 1}" if j == i else "other question"]
        rows.append(row)
        labels.append(label)
        titles.append(samples[i].family)
    cols = [f"step {s + 1}: {what}" for s in range(k) for what in ("true", "nearest")]
    image_grid(path, rows, titles, f"storm latents vs thought-video frames (nearest among "
               f"{len(frames)} questions' videos)", col_titles=cols, labels=labels)
