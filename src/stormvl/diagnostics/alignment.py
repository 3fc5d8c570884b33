"""Stage-I alignment diagnostics for storm runs.

- cosine between projected latent k and thought-video target k, per step, at every
  checkpoint of both stages (Stage II is answer-only and was seen to erode the alignment,
  REFERENCES.md section 6);
- retrieval: does latent k pick its own question's target k among others' (chance 1/group)?
- a picture per family: for each latent step, the true thought-video frame at the end of
  segment k beside the thought-video frame nearest to the projected latent.
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
             center: torch.Tensor) -> None:
    """One row per family: for each step, (true segment-end frame, nearest frame to latent)."""
    from stormvl.data.manifest import resolve_media
    from stormvl.data.video import read_clip
    from stormvl.report.render import image_grid
    from stormvl.training.targets import segment_bounds

    rows, titles, seen = [], [], set()
    for i, s in enumerate(samples):
        if s.family in seen or not s.thought_video:
            continue
        seen.add(s.family)
        clip = read_clip(resolve_media(root, s.thought_video), num_frames=preset.frames)
        feats = encoder.encode(clip.frames, clip.timestamps).mean(1)  # (T, D)
        # each step compares with frames in its own centred space: (K, T)
        sims = torch.einsum("kd,ktd->kt", F.normalize(pred[i], dim=-1),
                            F.normalize(feats[None] - center[:, None], dim=-1))
        row = []
        for step, (_, end) in enumerate(segment_bounds(len(clip.frames), k)):
            row += [clip.frames[end - 1], clip.frames[int(sims[step].argmax())]]
        rows.append(row)
        titles.append(f"{s.family}: (true, nearest) per latent step")
    if rows:
        image_grid(path, rows, titles, "storm latents vs thought-video frames")
