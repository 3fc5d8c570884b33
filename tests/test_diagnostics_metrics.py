import numpy as np
import torch

from stormvl.diagnostics.metrics import (
    answer_change,
    derangement,
    diversity,
    probe_accuracy,
    retrieval_top1,
)
from stormvl.report.stats import bootstrap_accuracy, paired_gain


def test_diversity_separates_collapsed_from_varied():
    torch.manual_seed(0)
    varied = torch.randn(20, 3, 16)
    collapsed = torch.randn(1, 3, 16).expand(20, 3, 16) + 1e-3 * torch.randn(20, 3, 16)
    assert diversity(collapsed)["mean"] > 0.99
    assert abs(diversity(varied)["mean"]) < 0.2


def test_derangement_has_no_fixed_points_and_prefers_other_answers():
    answers = list("ABCD" * 10)
    perm = derangement(40, answers, seed=1)
    assert sorted(perm.tolist()) == list(range(40))
    assert all(perm[i] != i for i in range(40))
    assert sum(answers[perm[i]] == answers[i] for i in range(40)) == 0
    assert answer_change(list("AB"), list("AC")) == 0.5


def test_retrieval_finds_own_target_only_when_informative():
    torch.manual_seed(0)
    t = torch.randn(64, 2, 8)
    own = retrieval_top1(t + 0.1 * torch.randn_like(t), t, group=32)
    rand = retrieval_top1(torch.randn_like(t), t, group=32)
    assert own["mean"] > 0.95 and own["chance"] == 1 / 32
    assert rand["mean"] < 0.2


def test_probe_reads_a_linear_state_but_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(90, 2))
    x = torch.randn(90, 2, 10)
    x[:, :, 0] += torch.from_numpy(labels * 4.0).float()  # state written into dim 0
    good = probe_accuracy(x, labels)
    bad = probe_accuracy(torch.randn(90, 2, 10), labels)
    assert min(good["per_step"]) > 0.8 > 2 * max(good["majority"])
    assert max(bad["per_step"]) < 0.6


def test_bootstrap_interval_contains_mean_and_narrows_with_data():
    small = bootstrap_accuracy([[1, 0, 1, 1]], n_boot=500)
    big = bootstrap_accuracy([[1, 0, 1, 1] * 50], n_boot=500)
    assert small.lo <= small.mean <= small.hi and big.lo <= big.mean <= big.hi
    assert (big.hi - big.lo) < (small.hi - small.lo)
    two = bootstrap_accuracy([[1, 1, 1, 1], [0, 0, 0, 0]], n_boot=500)
    assert two.mean == 50 and two.n_seeds == 2 and two.lo < 50 < two.hi
    assert paired_gain([[1, 1], [1, 0]], [[0, 1], [0, 0]]) == [50.0, 50.0]
