"""Accuracy with honest intervals.

Seed-to-seed spread on the built-in suite is large (direct from scratch: 26.5 to 49.0% over
five seeds of the shell game, docs/results/findings.md), larger than some gains, so every
accuracy in a report carries a 95% interval: a bootstrap over questions, and over seeds too
when there are several (a two-level bootstrap: resample seeds, then questions within each
drawn seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy (x100) with a 95% bootstrap interval and its sample counts."""

    mean: float
    lo: float
    hi: float
    n_questions: int
    n_seeds: int

    def to_json(self) -> dict:
        return {
            "mean": round(self.mean, 2),
            "lo": round(self.lo, 2),
            "hi": round(self.hi, 2),
            "n": self.n_questions,
            "seeds": self.n_seeds,
        }

    def fmt(self) -> str:
        return f"{self.mean:.1f} [{self.lo:.1f}, {self.hi:.1f}]"


def bootstrap_accuracy(
    correct_per_seed: Sequence[Sequence[bool]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Mean accuracy over seeds with a (two-level when seeds > 1) percentile bootstrap.

    Args:
        correct_per_seed: one 0/1 vector per training seed (questions may differ per seed).
    Returns:
        Estimate in percent.
    """
    arrays = [np.asarray(c, dtype=np.float64) for c in correct_per_seed if len(c) > 0]
    if not arrays:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    rng = np.random.default_rng(seed)
    point = float(np.mean([a.mean() for a in arrays])) * 100
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(0, len(arrays), len(arrays)) if len(arrays) > 1 else [0]
        means = []
        for s in picks:
            a = arrays[s]
            means.append(a[rng.integers(0, len(a), len(a))].mean())
        stats[b] = np.mean(means) * 100
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Estimate(point, float(lo), float(hi), sum(len(a) for a in arrays), len(arrays))


def paired_gain(
    a_per_seed: Sequence[Sequence[bool]],
    b_per_seed: Sequence[Sequence[bool]],
) -> list[float]:
    """Per-seed accuracy difference a - b (points), pairing runs that share a seed and questions."""
    if len(a_per_seed) != len(b_per_seed):
        raise ValueError("paired comparison needs the same seeds for both methods")
    out = []
    for a, b in zip(a_per_seed, b_per_seed, strict=True):
        if len(a) != len(b):
            raise ValueError("paired comparison needs the same questions for both methods")
        out.append((np.mean(a) - np.mean(b)) * 100 if len(a) else float("nan"))
    return out
