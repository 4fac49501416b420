"""Plackett-Luce distributions over rankings of the free (not locked, valid) items.

P(order | s) = prod_i exp(s[order_i]) / sum_{k >= i} exp(s[order_k]) over the free items; sampling is
Gumbel-top-k (sort s + Gumbel noise), the mode is the sort by s. Items outside the mask (verified
prefix, padding) are placed last and contribute nothing.
"""

from __future__ import annotations

import torch

NEG = -1.0e4  # finite "minus infinity": keeps logcumsumexp and its gradient free of NaNs


def sample_order(scores: torch.Tensor, mask: torch.Tensor, greedy: bool = False,
                 uniform: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) item orders: the free items first, sampled by Gumbel-top-k (or sorted when greedy).

    ``uniform``: optional U(0, 1) draws of the same shape (from the caller's seeded generator).
    """
    s = scores.detach()
    if not greedy:
        u = torch.rand(s.shape, device=s.device) if uniform is None else uniform.to(s.device, s.dtype)
        s = s - torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-7)))
    s = torch.where(mask, s, torch.full_like(s, 2 * NEG))
    return torch.argsort(s, dim=1, descending=True, stable=True)


def log_prob(scores: torch.Tensor, order: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) exact log-probability of ``order`` (free items first, as ``sample_order`` gives them)."""
    n_free = mask.sum(1, keepdim=True)
    s = torch.where(mask, scores, torch.full_like(scores, NEG)).gather(1, order)
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)  # log sum_{k >= i} exp(s_k)
    counted = torch.arange(s.shape[1], device=s.device)[None, :] < n_free
    return torch.where(counted, s - tail, torch.zeros_like(s)).sum(1)

