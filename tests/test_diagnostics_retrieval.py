"""Figure-6 retrieval: Hit@k / MRR against hand-computed ranks, and the features it ranks."""

from fractions import Fraction as Fr

import pytest
import torch

from stormvl.diagnostics.metrics import (
    crossfit_map,
    hits_and_mrr,
    own_ranks,
    pair_similarity,
    retrieval_chance,
    retrieval_top1,
)
from stormvl.diagnostics.retrieval import pooled_rationale, rationale_length


def approx(x: Fr):
    return pytest.approx(float(x), abs=1e-12)


def test_ranks_hits_and_mrr_match_a_hand_ranked_matrix():
    # row = query, column = key; query i's own key is column i. Ranks by hand (ties against):
    # q0: 9 is the largest -> 1; q1: own 4 below 7 and 5 -> 3; q2: own 2, tied with one 2,
    # below 8, 6, 3 -> 5; q3: own 1 the smallest of six -> 6; q4: own 5 below 9 -> 2;
    # q5: own 3 tied with 3 and 3, below 4 -> 4
    sim = torch.tensor([[9, 1, 2, 3, 4, 5],
                        [7, 4, 5, 1, 2, 3],
                        [8, 6, 2, 3, 2, 1],
                        [2, 3, 4, 1, 5, 6],
                        [9, 1, 2, 3, 5, 4],
                        [3, 4, 1, 3, 2, 3]], dtype=torch.float)
    ranks = own_ranks(sim)
    assert ranks.tolist() == [1, 3, 5, 6, 2, 4]
    got = hits_and_mrr(ranks)
    assert got["hit@1"] == approx(Fr(1, 6)) and got["hit@5"] == approx(Fr(5, 6))
    mrr = (1 + Fr(1, 3) + Fr(1, 5) + Fr(1, 6) + Fr(1, 2) + Fr(1, 4)) / 6
    assert got["mrr"] == approx(mrr)


def test_a_collapsed_representation_ranks_last_not_first():
    assert own_ranks(torch.zeros(4, 4)).tolist() == [4, 4, 4, 4]
    assert hits_and_mrr(own_ranks(torch.zeros(4, 4)))["mrr"] == approx(Fr(1, 4))


def test_chance_is_a_uniform_rank():
    c = retrieval_chance(4)
    assert c["hit@1"] == approx(Fr(1, 4)) and c["hit@5"] == 1.0
    assert c["mrr"] == approx((1 + Fr(1, 2) + Fr(1, 3) + Fr(1, 4)) / 4)  # 25/48
    assert retrieval_chance(200)["hit@5"] == approx(Fr(5, 200))


def test_pair_similarity_is_the_mean_of_per_step_cosines():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one question, K = 2
    keys = torch.tensor([[[2.0, 0.0], [0.0, 3.0]],  # both steps parallel: cosine 1, 1
                         [[0.0, 1.0], [1.0, 1.0]]])  # 0 and 1/sqrt(2)
    sim = pair_similarity(q, keys)
    assert sim.shape == (1, 2)
    assert sim[0, 0].item() == pytest.approx(1.0)
    assert sim[0, 1].item() == pytest.approx(0.5 / 2**0.5)


def test_group_retrieval_counts_ties_against_and_adds_hit5_and_mrr():
    # q0 ties its own target with q1's (cosine 1 both) -> rank 2; q1 = [0, 1] scores 0, 0
    # (own), 1 -> rank 3; q2 = [1, 1] scores 1/sqrt(2) with all three -> rank 3
    pred = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    targets = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    r = retrieval_top1(pred, targets, group=3)
    assert r["per_step"] == [0.0] and r["mean"] == 0.0 and r["chance"] == approx(Fr(1, 3))
    assert r["hit@5"] == 1.0 and r["mrr"] == approx((Fr(1, 2) + Fr(1, 3) + Fr(1, 3)) / 3)
    assert r["chance_mrr"] == approx((1 + Fr(1, 2) + Fr(1, 3)) / 3)


def test_crossfit_map_recovers_a_linear_code_but_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(40, 2, 8, generator=gen)
    x = y @ torch.randn(8, 12, generator=gen) + 0.01 * torch.randn(40, 2, 12, generator=gen)
    assert hits_and_mrr(own_ranks(pair_similarity(crossfit_map(x, y), y)))["hit@1"] == 1.0
    # 64 noise dimensions for 40 questions: a fit that saw its own target would interpolate
    # it and retrieve every question; out of fold it stays near chance (1/40)
    noise = torch.randn(40, 1, 64, generator=gen)
    y1 = y[:, :1]
    leaky = hits_and_mrr(own_ranks(pair_similarity(noise @ torch.linalg.lstsq(
        noise[:, 0], y1[:, 0]).solution[None], y1)))
    fair = hits_and_mrr(own_ranks(pair_similarity(crossfit_map(noise, y1), y1)))
    assert leaky["hit@1"] == 1.0 and fair["hit@1"] <= 0.15 and fair["mrr"] < 0.3


def test_rationale_length_stops_before_the_last_answer_sentence():
    from stormvl.backbones.tiny import build_tiny

    tok = build_tiny("qwen2_5_vl", "tiny", seed=0).tokenizer
    ids = tok("The ball starts under cup 2. Swap 1: the answer is not yet known. "
              "The answer is B.", add_special_tokens=False)["input_ids"]
    n = rationale_length(tok, ids)
    assert tok.decode(ids[:n]).strip() == "The ball starts under cup 2. Swap 1: the answer is not yet known."
    plain = tok("B.", add_special_tokens=False)["input_ids"]
    assert rationale_length(tok, plain) == len(plain)


def test_pooled_rationale_averages_k_segments_of_the_rationale_tokens():
    states = torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0], [8.0, 8.0]])
    # rows 1..4 are the 4 rationale tokens (row 0: the prompt; row 5: the answer)
    assert pooled_rationale(states, 4, 2).tolist() == [[2.0, 1.0], [6.0, 5.0]]
    assert pooled_rationale(states, 0, 2).tolist() == [[9.0, 9.0], [9.0, 9.0]]
