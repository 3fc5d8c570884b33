"""Do the latents carry information? Pure metrics over collected latent states.

Public latent-visual reasoning models were shown to produce nearly identical latents for
every input and to answer the same when their latents were perturbed (REFERENCES.md
section 2, the CapImagine critique). These functions measure exactly that:

- ``diversity``: mean pairwise cosine of latent k across questions (1.0 = collapsed);
- ``answer_change``: how often replacing / ablating latents changes the answer;
- ``retrieval_top1``: does latent k pick its own question's thought-video target k out of a
  group of other questions' targets?;
- ``probe_accuracy``: can a linear probe read the hidden scene state at segment k from
  latent k?
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def diversity(latents: torch.Tensor) -> dict:
    """Mean off-diagonal cosine between questions, per latent step.

    Args:
        latents: (N, K, D) latent states of N questions.
    Returns:
        {"per_step": [K floats], "mean": float}; lower = more input-dependent.
    """
    n, k, _ = latents.shape
    if n < 2 or k == 0:
        return {"per_step": [], "mean": float("nan")}
    z = F.normalize(latents.float(), dim=-1).transpose(0, 1)  # (K, N, D)
    sim = z @ z.transpose(1, 2)  # (K, N, N)
    off = (sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
    per = [float(v) for v in off]
    return {"per_step": per, "mean": float(np.mean(per))}


def derangement(n: int, answers: Sequence[str], seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point, pairing questions with different answers when possible.

    Swapping in latents from a question with the *same* answer could leave the reply right
    for the wrong reason; pairing across answers makes an answer change measurable.
    """
    if n < 2:
        raise ValueError("a swap needs at least 2 questions")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    answers = list(answers)
    for _ in range(50):
        bad = [i for i in range(n) if perm[i] == i or answers[perm[i]] == answers[i]]
        if not bad:
            break
        for i in bad:
            j = int(rng.integers(n))
            perm[i], perm[j] = perm[j], perm[i]
    for i in range(n):  # guarantee: no fixed points (answers may still coincide)
        if perm[i] == i:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j], perm[i]
    return perm


def answer_change(base: Sequence[str], other: Sequence[str]) -> float:
    """Fraction of questions whose extracted answer differs between two runs."""
    if len(base) != len(other):
        raise ValueError("runs cover different questions")
    return float(np.mean([a != b for a, b in zip(base, other, strict=True)])) if base else float("nan")


def retrieval_top1(pred: torch.Tensor, targets: torch.Tensor, group: int = 32) -> dict:
    """Top-1 retrieval of a question's own target among a group of questions' targets.

    Args:
        pred: (N, K, D) latents mapped into the target space (the Stage-I projector).
        targets: (N, K, D) thought-video targets of the same questions.
        group: candidates per query (chance = 1 / group); questions are split in order.
    Returns:
        {"per_step": [K], "mean": float, "chance": float}
    """
    n, k, _ = pred.shape
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(targets.float(), dim=-1)
    hits = torch.zeros(k)
    count = 0
    sizes = []
    for start in range(0, n, group):
        end = min(n, start + group)
        if end - start < 2:
            continue
        sim = torch.einsum("ikd,jkd->kij", p[start:end], t[start:end])  # (K, g, g)
        hits += (sim.argmax(-1) == torch.arange(end - start)).float().sum(-1)
        count += end - start
        sizes.append(end - start)
    if count == 0:
        return {"per_step": [], "mean": float("nan"), "chance": float("nan")}
    per = (hits / count).tolist()
    chance = float(np.mean([1 / s for s in sizes]))
    return {"per_step": per, "mean": float(np.mean(per)), "chance": chance}


def probe_accuracy(latents: torch.Tensor, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated linear-probe accuracy of the hidden state at step k from latent k.

    Args:
        latents: (N, K, D) latent states.
        labels: (N, K) categorical hidden-state labels (as strings or ints).
    Returns:
        {"per_step": [K], "majority": [K]} accuracies; majority = the most-common-label
        baseline, so a probe is only informative above it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_all = latents.float().cpu().numpy()
    labels = np.asarray(labels).astype(str)
    per, majority = [], []
    for k in range(x_all.shape[1]):
        y = labels[:, k]
        _, counts = np.unique(y, return_counts=True)
        majority.append(float(counts.max() / len(y)))
        n_splits = min(folds, len(y))
        if len(counts) < 2 or n_splits < 2:
            per.append(float("nan"))  # one class: nothing to probe
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5))
        cv = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        per.append(float(cross_val_score(clf, x_all[:, k], y, cv=cv).mean()))
    return {"per_step": per, "majority": majority}
