import itertools

import pytest
import torch

from agents.warm_start_loss import WARM_START_LOSSES, pairwise_logistic


def _brute_force(scores, order, n_free):
    pairs = [(order[p], order[q]) for p, q in itertools.combinations(range(n_free), 2)]
    if not pairs:
        return 0.0
    return sum(float(torch.nn.functional.softplus(scores[j] - scores[i])) for i, j in pairs) / len(pairs)


def test_pairwise_loss_is_the_mean_over_the_targets_ordered_pairs_of_free_items():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=g)
    n_free = torch.tensor([7, 4, 2, 1, 0])
    mask = torch.arange(7)[None, :] < n_free[:, None]
    order = torch.stack([torch.randperm(7, generator=g) for _ in range(5)])
    # free items first, as RPO's target orders are
    order = torch.stack([torch.cat([o[m[o]], o[~m[o]]]) for o, m in zip(order, mask)])
    got = pairwise_logistic(scores, order, mask)
    expected = [_brute_force(scores[b], order[b].tolist(), int(n_free[b])) for b in range(5)]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_pairwise_loss_counts_discordant_pairs_when_scores_are_sharp():
    order = torch.arange(6)[None, :]
    mask = torch.ones(1, 6, dtype=torch.bool)
    agreeing = -20.0 * torch.arange(6.0)[None, :]  # the target's order, far apart
    one_swap = agreeing.clone()
    one_swap[0, [2, 3]] = one_swap[0, [3, 2]]
    assert float(pairwise_logistic(agreeing, order, mask)) < 1e-6
    # one discordant pair of 15, costing its score gap (20)
    assert float(pairwise_logistic(one_swap, order, mask)) == pytest.approx(20.0 / 15, rel=1e-4)
    assert float(pairwise_logistic(agreeing.flip(1), order, mask)) > 20.0


@pytest.mark.parametrize("name", sorted(WARM_START_LOSSES))
def test_every_warm_start_loss_falls_when_scores_move_toward_the_target(name):
    order = torch.tensor([[3, 0, 2, 1, 4]])
    mask = torch.tensor([[True, True, True, True, False]])
    scores = torch.zeros(1, 5, requires_grad=True)
    loss = WARM_START_LOSSES[name](scores, order, mask).sum()
    loss.backward()
    stepped = scores.detach() - 0.5 * scores.grad
    assert torch.argsort(stepped[0, :4], descending=True).tolist() == [3, 0, 2, 1]
    assert float(WARM_START_LOSSES[name](stepped, order, mask)) < float(loss.detach())
    assert scores.grad[0, 4] == 0  # the item outside the mask is not trained
