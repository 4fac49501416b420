import itertools
import math

import numpy as np
import torch

from agents.plackett_luce import log_prob, sample_order


def _analytic(scores, order):
    """P(order) by the Plackett-Luce product, computed the slow way."""
    w = np.exp(np.asarray(scores, dtype=np.float64))
    p, rest = 1.0, list(order)
    for j in order:
        p *= w[j] / sum(w[k] for k in rest)
        rest.remove(j)
    return p


def test_log_probs_of_all_rankings_of_four_items_sum_to_one():
    scores = torch.tensor([[0.3, -1.2, 2.0, 0.5]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    orders = torch.tensor(list(itertools.permutations(range(4))))
    lp = log_prob(scores.expand(24, 4), orders, mask.expand(24, 4))
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-5)
    for order, value in zip(orders.tolist(), lp.tolist()):
        assert math.isclose(math.exp(value), _analytic(scores[0].tolist(), order), rel_tol=1e-5)


def test_masked_items_are_placed_last_and_do_not_count():
    """A locked or padding item is outside the distribution: the 3! orders of the rest sum to 1."""
    scores = torch.tensor([[1.0, 5.0, -0.5, 0.2]])
    mask = torch.tensor([[True, False, True, True]])
    orders = torch.tensor([[*p, 1] for p in itertools.permutations([0, 2, 3])])
    lp = log_prob(scores.expand(6, 4), orders, mask.expand(6, 4))
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-5)
    sampled = sample_order(scores.expand(50, 4), mask.expand(50, 4))
    assert (sampled[:, -1] == 1).all()


def test_gumbel_top_k_sampling_matches_the_analytic_probabilities():
    torch.manual_seed(0)
    scores = torch.tensor([1.0, 0.0, -0.7])
    draws = 20000
    orders = sample_order(scores.expand(draws, 3), torch.ones(draws, 3, dtype=torch.bool))
    counts: dict[tuple, int] = {}
    for row in orders.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    for perm in itertools.permutations(range(3)):
        p = _analytic(scores.tolist(), perm)
        se = math.sqrt(p * (1 - p) / draws)
        assert abs(counts.get(perm, 0) / draws - p) < 5 * se, perm


def test_greedy_order_sorts_by_score_and_gradient_is_finite():
    scores = torch.tensor([[0.1, 0.9, -2.0, 0.4]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    order = sample_order(scores, mask, greedy=True)
    assert order.tolist() == [[1, 0, 2, 3]]
    log_prob(scores, order, mask).sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 3] == 0
