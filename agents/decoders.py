"""Hand-written up-to-down decoders, computed from the observation alone (batched, torch).

A decoder turns what the LLM said so far into the next proposal: the verified prefix first, then, for
each later position, the most likely not-yet-placed item under an evidence matrix ``E[position, item]``.
The decoders differ only in ``E``:

- ``heuristic``: the latest filled round's rows as they are. Before any round: the first-token order.
- ``stale_aware``: the same rows, except that an item the latest proposal placed *before* a position
  keeps the log-prob of its own slot there. Row p was conditioned on the proposal's prefix, so an item
  in that prefix (e.g. the rejected one, displaced by the LLM's correction) looks "already said" in
  every later row and would sink to the bottom; its own slot's log-prob is the evidence the LLM gave
  about it when it was still free.

``read_observation`` is the only function that knows the observation's layout; everything else (these
decoders, the residual policy's features) works on the ``DecodeInput`` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG = -1.0e4  # finite "minus infinity" (placed items, padding)

__all__ = ["DecodeInput", "read_observation", "greedy_decode", "decode", "decoded_ranks", "DECODERS",
           "common_prefix_length"]


@dataclass
class DecodeInput:
    """What the decoders and the residual policy read from an observation batch (B items, N, T rounds)."""

    first: torch.Tensor  # (B, N) single-token log-probs
    rows: torch.Tensor  # (B, T, N, N) verified log-probs [round, position, item]
    proposals: torch.Tensor  # (B, T, N) long: item's position in each round's proposal (-1: none)
    filled: torch.Tensor  # (B, T) bool: round holds a verification
    committed: torch.Tensor  # (B, N) long: committed order, committed[b, p] = item at position p
    locked: torch.Tensor  # (B, N) bool: item is in the verified prefix
    valid: torch.Tensor  # (B, N) bool: real candidate (not padding)
    done: torch.Tensor  # (B,) long: rounds taken

    @property
    def latest(self) -> torch.Tensor:
        """(B,) index of the latest filled round (0 when none; check ``done``)."""
        return (self.done - 1).clamp(min=0)


def read_observation(obs: dict[str, torch.Tensor]) -> DecodeInput:
    """The env observation (a batch of tensors) as a ``DecodeInput``: the one place that knows its layout."""
    first = obs["first_token"].float()
    b, n = first.shape
    t = obs["proposals"].shape[1] // n
    valid = obs["valid"].float() > 0.5
    done = obs["round"].float().reshape(b).round().long()
    filled = torch.arange(t, device=first.device)[None, :] < done[:, None]
    position = torch.where(valid, obs["committed"].float(), torch.full_like(first, 2.0 * n))
    committed = torch.argsort(position, dim=1, stable=True)  # padding (position -1) sorted last
    return DecodeInput(first=first, rows=obs["verified"].float().reshape(b, t, n, n),
                       proposals=obs["proposals"].float().reshape(b, t, n).round().long(), filled=filled,
                       committed=committed, locked=(obs["locked"].float() > 0.5) & valid, valid=valid,
                       done=done)


def _latest_rows(x: DecodeInput) -> torch.Tensor:
    """(B, N, N) the latest filled round's rows [position, item]."""
    b, t, n, _ = x.rows.shape
    return x.rows.gather(1, x.latest.view(b, 1, 1, 1).expand(b, 1, n, n))[:, 0]


def _latest_proposal(x: DecodeInput) -> torch.Tensor:
    """(B, N) each item's position in the latest verified proposal."""
    b, t, n = x.proposals.shape
    return x.proposals.gather(1, x.latest.view(b, 1, 1).expand(b, 1, n))[:, 0]


def heuristic_evidence(x: DecodeInput) -> torch.Tensor:
    """``E = `` the latest round's rows."""
    return _latest_rows(x)


def stale_aware_evidence(x: DecodeInput) -> torch.Tensor:
    """``E[p, j] = rows[min(p, own_j), j]``: after its own slot an item keeps that slot's log-prob."""
    rows = _latest_rows(x)
    n = rows.shape[1]
    own = _latest_proposal(x).clamp(0, n - 1)  # (B, N)
    pos = torch.arange(n, device=rows.device)
    source = torch.minimum(pos[None, :, None], own[:, None, :])  # (B, position, item): row to read
    return rows.gather(1, source)


DECODERS = {"heuristic": heuristic_evidence, "stale_aware": stale_aware_evidence}


def greedy_decode(evidence: torch.Tensor, x: DecodeInput) -> torch.Tensor:
    """(B, N) orders: the verified prefix, then per position the best unplaced valid item under ``evidence``.

    Ties go to the lowest item index (as ``numpy.argmax``); padding items come last in index order.
    """
    b, n = x.first.shape
    prefix_len = x.locked.sum(1)
    n_valid = x.valid.sum(1)
    order = x.committed.clone()  # positions < prefix_len are the verified prefix already
    placed = x.locked.clone()
    for p in range(n):
        active = (p >= prefix_len) & (p < n_valid)
        if not bool(active.any()):
            continue
        score = torch.where(placed | ~x.valid, torch.full_like(evidence[:, p], NEG), evidence[:, p])
        best = score.argmax(1)
        order[:, p] = torch.where(active, best, order[:, p])
        placed = placed | (active[:, None] & (torch.arange(n, device=order.device)[None, :] == best[:, None]))
    tail = torch.argsort((~x.valid).long(), dim=1, stable=True)  # padding items in index order, last
    is_pad = torch.arange(n, device=order.device)[None, :] >= n_valid[:, None]
    return torch.where(is_pad, tail, order)


def first_token_order(x: DecodeInput) -> torch.Tensor:
    """(B, N) the single-token order (stable: ties keep the item index order), padding last."""
    return torch.argsort(torch.where(x.valid, -x.first, torch.full_like(x.first, -NEG)), dim=1, stable=True)


def decode(x: DecodeInput, decoder: str = "heuristic") -> torch.Tensor:
    """(B, N) the named decoder's proposal order; before any round the first-token order."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    decoded = greedy_decode(DECODERS[decoder](x), x)
    return torch.where((x.done > 0)[:, None], decoded, first_token_order(x))


def decoded_ranks(order: torch.Tensor) -> torch.Tensor:
    """(B, N) each item's position in ``order`` (the inverse permutation)."""
    b, n = order.shape
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))


def common_prefix_length(orders: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(..., ) length of the common prefix of ``orders`` (..., N) and ``reference`` (broadcastable)."""
    same = (orders == reference).long()
    return same.cumprod(-1).sum(-1)
