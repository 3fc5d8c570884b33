"""Latent diagnostics of a trained checkpoint on the built-in suite.

Interventions go through the engine's documented feed-back hook (``projector``: a D -> D map
applied to every hidden state before it enters the next latent slot): ``Intervention``
replaces the state fed into slot k with another question's latent (swap), zeros, or a
noise vector of the same norm. The answers under each intervention are compared with the
untouched run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from stormvl.diagnostics import metrics
from stormvl.io import read_json, write_json_atomic


class Intervention(nn.Module):
    """Feed-back map that rewrites the state entering latent slot k (k = call index).

    The engine calls the feed-back map once per latent slot, in slot order; a fresh
    Intervention is made for every batch. (Checkpoints trained here use no feed-back
    projector, so nothing is replaced by this hook.)
    """

    def __init__(self, fn: Callable[[int, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn, self.step = fn, 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, 1, D)
        out = self.fn(self.step, h)
        self.step += 1
        return out


@dataclass
class Collected:
    answers: list[str]  # extracted letters
    correct: list[bool]
    latents: torch.Tensor  # (N, K, D)


def prepare_items(runner, items) -> list:
    """Decode and tokenise every item once (reused by all interventions)."""
    return [runner.prepare(it) for it in items]


def collect(runner, items, prepared, batch_size: int,
            fn: Callable[[list[int], int, torch.Tensor], torch.Tensor] | None = None) -> Collected:
    """Generate answers for all items; ``fn(rows, k, h)`` may rewrite the state fed to slot k."""
    from stormvl.tasks.score import verdict

    answers, correct, lats = [], [], []
    for start in range(0, len(items), batch_size):
        rows = list(range(start, min(len(items), start + batch_size)))
        hook = None if fn is None else Intervention(lambda k, h, rows=rows: fn(rows, k, h))
        with torch.no_grad():
            res = runner.run([prepared[i] for i in rows], projector=hook)
        lats.append(res.latents.float().cpu())
        for i, text in zip(rows, res.texts, strict=True):
            v = verdict(items[i], text)
            answers.append(v.extracted)
            correct.append(bool(v.correct))
    return Collected(answers, correct, torch.cat(lats) if lats else torch.zeros(0, 0, 0))


def _accuracy(c: Collected) -> float:
    return float(np.mean(c.correct) * 100) if c.correct else float("nan")


def interventions(runner, items, prepared, base: Collected, batch_size: int, seed: int = 0) -> dict:
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
        runs[name] = c = collect(runner, items, prepared, batch_size, fn)
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


def diagnose(ckpts, test_dir: Path, out_json: Path, preset, alignment: bool = False,
             figure: Path | None = None, clip_cache: Path | None = None) -> dict:
    """All diagnostics of a run's final checkpoint; ``alignment``: also the Stage-I alignment
    over its checkpoints (a storm run whose ``ckpts`` span both stages). ``clip_cache``: a
    decoded-clip folder shared with the evaluations (``EvalSettings.clip_cache``)."""
    from stormvl import evaluation
    from stormvl.data.manifest import read_manifest
    from stormvl.diagnostics.alignment import alignment_report
    from stormvl.tasks import load_benchmark

    if out_json.exists():
        return read_json(out_json)
    model = evaluation.load_model(ckpts[-1][1])
    settings = evaluation.EvalSettings(batch_size=preset.eval_batch,
                                       clip_cache=str(clip_cache) if clip_cache else None)
    runner = evaluation.Runner(model, settings)
    items = load_benchmark("synth", test_dir)[: preset.diag_n]
    by_id = {s.id: s for s in read_manifest(test_dir / "manifest.jsonl")}
    samples = [by_id[it.id] for it in items]
    prepared = prepare_items(runner, items)
    base = collect(runner, items, prepared, preset.eval_batch)
    result = {
        "checkpoint": str(ckpts[-1][1]),
        "n": len(items),
        "k": model.k,
        "accuracy": _accuracy(base),
        "diversity": metrics.diversity(base.latents),
        "interventions": interventions(runner, items, prepared, base, preset.eval_batch),
    }
    labels = _probe_labels(samples, preset.frames, model.k)
    if labels is not None:
        result["probe"] = metrics.probe_accuracy(base.latents, labels)
    if alignment:
        result["alignment"] = alignment_report(model, ckpts, samples, test_dir, base.latents, preset,
                                               figure=figure, settings=settings)
    write_json_atomic(out_json, result)
    return result
