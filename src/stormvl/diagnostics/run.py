"""Latent diagnostics of a trained checkpoint on the built-in suite.

Interventions go through the engine's documented feed-back hook (``projector``: a D -> D map
applied to every hidden state before it enters the next latent slot): ``Intervention``
replaces the state fed into slot k with another question's latent (swap), zeros, or a
noise vector of the same norm. The answers under each intervention are compared with the
untouched run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from stormvl.diagnostics import metrics


class Intervention(nn.Module):
    """Feed-back map that rewrites the state entering latent slot k (k = call index).

    The engine calls the feed-back map once per latent slot, in slot order, for each
    rollout; ``reset`` must be called before each rollout.
    """

    def __init__(self, fn: Callable[[int, torch.Tensor], torch.Tensor], inner: nn.Module | None = None):
        super().__init__()
        self.fn, self.inner, self.step = fn, inner, 0

    def reset(self) -> None:
        self.step = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, 1, D)
        h = h if self.inner is None else self.inner(h)
        out = self.fn(self.step, h)
        self.step += 1
        return out


@dataclass
class Collected:
    answers: list[str]  # extracted letters
    correct: list[bool]
    latents: torch.Tensor  # (N, K, D)


def _encode_items(model, items, k: int, sampling: dict):
    """Prompts (no target) for each item, with its decoded clip's frame count."""
    from stormvl.backbones import Prompt
    from stormvl.tasks.base import load_clip

    bb = model.backbone
    out = []
    for it in items:
        clip = load_clip(it, sampling.get("num_frames"), sampling.get("sample_fps"),
                         sampling.get("max_frames"))
        vi = bb.preprocess_video(clip.frames, clip.timestamps)
        out.append(bb.encode(Prompt(videos=[vi], text=it.render_prompt(clip.timestamps), k=k)))
    return out


def collect(model, items, encoded, batch_size: int,
            fn: Callable[[list[int], int, torch.Tensor], torch.Tensor] | None = None) -> Collected:
    """Generate answers for all items; ``fn(rows, k, h)`` may rewrite the state fed to slot k."""
    from stormvl.latent import generate
    from stormvl.tasks.score import verdict

    bb = model.backbone
    answers, correct, lats = [], [], []
    for start in range(0, len(items), batch_size):
        rows = list(range(start, min(len(items), start + batch_size)))
        batch = bb.collate([encoded[i] for i in rows]).to(bb.device)
        hook = None
        if fn is not None:
            hook = Intervention(lambda k, h, rows=rows: fn(rows, k, h), model.projector)
        with torch.no_grad():
            res = generate(bb, batch, max_new_tokens=8, projector=hook or model.projector)
        lats.append(res.latents.float().cpu())
        for i, text in zip(rows, res.texts, strict=True):
            v = verdict(items[i], text)
            answers.append(v.extracted)
            correct.append(bool(v.correct))
    return Collected(answers, correct, torch.cat(lats) if lats else torch.zeros(0, 0, 0))


def _accuracy(c: Collected) -> float:
    return float(np.mean(c.correct) * 100) if c.correct else float("nan")


def interventions(model, items, encoded, base: Collected, batch_size: int, seed: int = 0) -> dict:
    """Swap / zero / noise the latents; answer-change rates and accuracy drops."""
    lat = base.latents  # (N, K, D), the unperturbed states
    perm = metrics.derangement(len(items), [it.answer for it in items], seed)
    gen = torch.Generator().manual_seed(seed)

    def swap(rows, k, h):
        return lat[perm[rows], k].unsqueeze(1).to(h)

    def zero(rows, k, h):
        return torch.zeros_like(h)

    def noise(rows, k, h):
        z = torch.randn(h.shape, generator=gen).to(h)
        return z / z.norm(dim=-1, keepdim=True) * h.norm(dim=-1, keepdim=True)

    out, runs = {}, {}
    for name, fn in (("swap", swap), ("zero", zero), ("noise", noise)):
        runs[name] = c = collect(model, items, encoded, batch_size, fn)
        out[name] = {
            "answer_change": metrics.answer_change(base.answers, c.answers),
            "accuracy": _accuracy(c),
            "accuracy_drop": _accuracy(base) - _accuracy(c),
        }
    # answers that move *to the donor's* answer show the latents carry the answer itself
    donor = [items[perm[i]].answer for i in range(len(items))]
    out["swap"]["follows_donor"] = float(np.mean(
        [a == d for a, d in zip(runs["swap"].answers, donor, strict=True)]))
    return out


def _probe_labels(samples, n_frames: int, k: int) -> np.ndarray | None:
    """(N, K) hidden-state label at the end of each of K time segments (``state[t]['probe']``)."""
    from stormvl.training.targets import segment_bounds

    rows = []
    for s in samples:
        if not s.state:
            return None
        bounds = segment_bounds(len(s.state), k)
        rows.append([str(s.state[min(len(s.state) - 1, e - 1)].get("probe")) for _, e in bounds])
    return np.array(rows)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def diagnose(ckpts, test_dir: Path, out_json: Path, preset, stage1: Path | None = None,
             figure: Path | None = None) -> dict:
    """All diagnostics of a run's final checkpoint (and alignment over its checkpoints)."""
    from stormvl import evaluate
    from stormvl.data.manifest import read_manifest
    from stormvl.diagnostics.alignment import alignment_report
    from stormvl.tasks import load_benchmark

    if out_json.exists():
        return json.loads(out_json.read_text())
    model = evaluate.load_model(ckpts[-1][1])
    items = load_benchmark("synth", test_dir)[: preset.diag_n]
    by_id = {s.id: s for s in read_manifest(test_dir / "manifest.jsonl")}
    samples = [by_id[it.id] for it in items]
    sampling = {"num_frames": preset.frames}
    encoded = _encode_items(model, items, model.k, sampling)
    base = collect(model, items, encoded, preset.eval_batch)
    result = {
        "checkpoint": str(ckpts[-1][1]),
        "n": len(items),
        "k": model.k,
        "accuracy": _accuracy(base),
        "diversity": metrics.diversity(base.latents),
        "interventions": interventions(model, items, encoded, base, preset.eval_batch),
    }
    labels = _probe_labels(samples, preset.frames, model.k)
    if labels is not None:
        result["probe"] = metrics.probe_accuracy(base.latents, labels)
    if stage1 is not None:
        result["alignment"] = alignment_report(ckpts, samples, test_dir, base.latents, preset,
                                               figure=figure)
    _write_json(out_json, result)
    return result
