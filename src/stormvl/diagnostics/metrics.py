"""Do the latents carry information? Pure metrics over collected latent states.

Public latent-visual reasoning models were shown to produce nearly identical latents for
every input and to answer the same when their latents were perturbed (the CapImagine
critique of latent visual reasoning). These functions measure exactly that:

- ``diversity``: mean pairwise cosine of latent k across questions (1.0 = collapsed);
- ``answer_change``: how often replacing / ablating latents changes the answer;
- ``retrieval_top1``: does latent k pick its own question's thought-video target k out of a
  group of other questions' targets (top-1, and Hit@5 / MRR beside it)?;
- ``own_ranks`` / ``hits_and_mrr`` / ``retrieval_chance``: Hit@k and mean reciprocal rank of
  each query's own key, the measures of STORM's same-video retrieval (its Figure 6);
- ``pair_similarity`` / ``crossfit_map``: question-by-question scores over K vectors, and an
  out-of-fold linear map into the target space for representations trained without one;
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


def own_ranks(sim: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's own key among all keys; a tie counts against the query.

    Pessimistic ties: a collapsed representation (every score equal) ranks last, not first.

    Args:
        sim: (N, N) scores, row = query, column = key; key i belongs to query i.
    Returns:
        (N,) long ranks in [1, N].
    """
    return (sim >= sim.diagonal()[:, None]).sum(1)


def hits_and_mrr(ranks: torch.Tensor, at: Sequence[int] = (1, 5)) -> dict:
    """{"hit@k": share of queries whose own key ranks <= k, ..., "mrr": mean of 1 / rank}."""
    r = ranks.double()
    out = {f"hit@{k}": float((r <= k).double().mean()) for k in at}
    out["mrr"] = float((1.0 / r).mean())
    return out


def retrieval_chance(n: int, at: Sequence[int] = (1, 5)) -> dict:
    """``hits_and_mrr`` of a query whose own key lands at a uniformly random rank of ``n``."""
    out = {f"hit@{k}": min(k, n) / n for k in at}
    out["mrr"] = sum(1.0 / r for r in range(1, n + 1)) / n
    return out


def pair_similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Score of every (query question, key question) pair: the mean over the K steps of the
    cosine between query step k and key step k.

    Args:
        queries: (N, K, D); keys: (M, K, D).
    Returns:
        (N, M).
    """
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    return torch.einsum("ikd,jkd->ij", q, k) / q.shape[1]


def retrieval_top1(pred: torch.Tensor, targets: torch.Tensor, group: int = 32) -> dict:
    """Retrieval of a question's own target among a group of questions' targets, per step.

    Args:
        pred: (N, K, D) latents mapped into the target space (the Stage-I projector).
        targets: (N, K, D) thought-video targets of the same questions.
        group: candidates per query (chance = 1 / group); questions are split in order.
    Returns:
        {"per_step": [K] top-1, "mean": float, "chance": float, "hit@5", "mrr" (means over
        steps), "chance_hit@5", "chance_mrr"}
    """
    n, k, _ = pred.shape
    ranks, sizes = [], []  # ranks[g]: (K, group size)
    for start in range(0, n, group):
        end = min(n, start + group)
        if end - start < 2:
            continue
        ranks.append(torch.stack([own_ranks(pair_similarity(pred[start:end, s:s + 1],
                                                            targets[start:end, s:s + 1]))
                                  for s in range(k)]))
        sizes.append(end - start)
    if not sizes:
        return {"per_step": [], "mean": float("nan"), "chance": float("nan")}
    r = torch.cat(ranks, dim=1)  # (K, questions in groups)
    per = [hits_and_mrr(row)["hit@1"] for row in r]
    both = hits_and_mrr(r.flatten())
    chance = [retrieval_chance(s) for s in sizes]
    return {"per_step": per, "mean": float(np.mean(per)),
            "chance": float(np.mean([c["hit@1"] for c in chance])),
            "hit@5": both["hit@5"], "mrr": both["mrr"],
            "chance_hit@5": float(np.mean([c["hit@5"] for c in chance])),
            "chance_mrr": float(np.mean([c["mrr"] for c in chance]))}


def crossfit_map(x: torch.Tensor, y: torch.Tensor, folds: int = 5, seed: int = 0) -> torch.Tensor:
    """Out-of-fold ridge predictions of ``y`` from ``x``: one linear map shared by the K steps,
    fitted on the other folds' questions (ridge strength picked inside them), so no question
    is mapped by a fit that saw its own target.

    Why: a representation trained without a projector into the target space (latent,
    textcot's hidden states, random vectors) can only be compared with the thought-video
    features through a fitted map, and an in-sample fit with more dimensions than questions
    would retrieve perfectly from noise.

    Args:
        x: (N, K, D) representations; y: (N, K, D_t) targets; N >= 2 questions.
    Returns:
        (N, K, D_t) predictions.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, k, d = x.shape
    xs, ys = x.double().cpu().numpy(), y.double().cpu().numpy()
    out = np.zeros(ys.shape)
    split = KFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    for train, test in split.split(np.arange(n)):
        fit = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 7)))
        fit.fit(xs[train].reshape(-1, d), ys[train].reshape(len(train) * k, -1))
        out[test] = fit.predict(xs[test].reshape(-1, d)).reshape(len(test), k, -1)
    return torch.from_numpy(out).float()


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
