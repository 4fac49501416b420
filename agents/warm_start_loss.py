"""Supervised losses for RPO's warm start: how far a state's item scores are from the target's order.

Each takes ``(scores, order, mask)`` as ``agents.plackett_luce.log_prob`` does (``order``: the target's order
of the free items, free first) and returns one loss per state.

- ``plackett_luce``: the negative log-likelihood of the whole target order under the policy's own sampling
  distribution. Every position is a softmax over all items placed after it, so an item the decoder left far
  from its place costs in proportion to how far (its score is ``-scale * rank`` away), and long lists weigh
  those few items over the many small swaps.
- ``pairwise``: RankNet's logistic loss ``log(1 + exp(s_j - s_i))`` averaged over every pair of free items
  (``i`` before ``j`` in the target): a smooth count of discordant pairs, i.e. of what Kendall tau, the
  measure agents are compared on, counts, each pair alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from agents.plackett_luce import log_prob


def plackett_luce_nll(scores: torch.Tensor, order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) negative PL log-likelihood of ``order``."""
    return -log_prob(scores, order, mask)


def pairwise_logistic(scores: torch.Tensor, order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean over the ordered pairs of free items of ``softplus(s_later - s_earlier)`` (0 with < 2 free)."""
    s = scores.gather(1, order)  # target order: position p holds the item the target ranks p-th
    n = s.shape[1]
    positions = torch.arange(n, device=s.device)
    counted = positions[None, :] < mask.sum(1, keepdim=True)  # (B, N): a free item at that position
    before = positions[:, None] < positions[None, :]  # [p, q]: p is ranked before q
    pairs = before[None] & counted[:, :, None] & counted[:, None, :]
    losses = F.softplus(s[:, None, :] - s[:, :, None])  # [b, p, q] = log(1 + exp(s_q - s_p))
    return (losses * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)


WARM_START_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "plackett_luce": plackett_luce_nll,
    "pairwise": pairwise_logistic,
}
