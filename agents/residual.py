"""A residual ranking policy: a hand-written decoder plus a learned correction, for RPO.

Each item's score is ``base_j + residual_j``. ``base_j = -scale * rank_j``, ``rank_j`` being the item's
position in the decoder's order (``agents.decoders``); the residual is a small item Transformer whose last
layer starts at zero. So the untrained policy *is* the decoder (greedy sorting reproduces its order
exactly), RL starts from the strongest hand-written baseline instead of from scratch, and
Plackett-Luce sampling around it mostly swaps neighbours: at scale 1 and temperature 0.3 an adjacent
swap has probability ~3 % per position (~27 % at temperature 1). The scale is learnable by default, so the
warm start can make the policy as sharp as the decoder deserves.

The residual sees, per item, its decoded rank (under every decoder), the decoder's evidence and
confidence at that rank, the single-token score, and per verified round: its log-prob at its decoded
position, at its own slot in that round's proposal, at the first free position and in the deepest row
conditioned on exactly the committed prefix (fresh for every free item), and whether that row
was conditioned on exactly the prefix the decode gives it (the proposal and the decoded order agree up
to the item's position) or is stale. Rounds are pooled by their mean plus the latest round, so the
network does not depend on how many rounds the budget T allows. ``history="latest"`` keeps only the latest
round (the paper's "no cross-round knowledge" ablation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from agents.decoders import DECODERS, DecodeInput, common_prefix_length, decode, decoded_ranks, read_observation
from agents.policy import LOGP_SCALE, ItemTransformerPolicy, RankingPolicy

__all__ = ["ResidualItemExtractor", "ResidualScoreHead", "ResidualRankingPolicy", "ResidualItemPolicy",
           "residual_features"]

ROUND_FEATURES = 16
STATIC_FEATURES = 12 + len(DECODERS)
HISTORIES = ("all", "latest")


def _confidence(evidence: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, R, N) per item: its log-prob at its decoded position minus the best item decoded after it.

    ``evidence`` is (B, R, N, N) [round, position, item]; positive = the decode's choice was clear.
    """
    b, r, n, _ = evidence.shape
    by_rank = evidence.gather(3, order[:, None, None, :].expand(b, r, n, n))  # [position, decoded rank q]
    later = torch.where(torch.arange(n, device=order.device)[None, :] > torch.arange(n, device=order.device)[:, None],
                        by_rank, torch.full_like(by_rank, -1.0e4)).amax(3)  # best among q > p
    chosen = by_rank.diagonal(dim1=2, dim2=3)  # (B, R, N): the item decoded at p, at p
    margin_by_rank = (chosen - later).clamp(-30.0, 30.0)
    return margin_by_rank.gather(2, decoded_ranks(order)[:, None, :].expand(b, r, n))


def residual_features(x: DecodeInput, decoder: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """(order, static (B, N, S), rounds (B, T, N, F), filled (B, T)) for the residual network."""
    b, t, n, _ = x.rows.shape
    orders = {name: decode(x, name) for name in sorted(DECODERS)}
    order = orders[decoder]
    rank = decoded_ranks(order)
    rank_f = rank.float()
    free = x.locked.sum(1)
    done = x.done.float()[:, None]
    started = (x.done > 0).float()[:, None]
    first_rank = decoded_ranks(torch.argsort(torch.where(x.valid, -x.first, torch.full_like(x.first, 1e4)),
                                             dim=1, stable=True)).float()
    others = [(decoded_ranks(o).float() - rank_f) / n for o in orders.values()]  # where the decoders differ
    evidence = DECODERS[decoder](x)[:, None]
    at_rank = evidence[:, 0].gather(1, rank[:, None, :])[:, 0] * started
    confidence = _confidence(evidence, order)[:, 0] * started
    static = torch.stack([
        rank_f / n, (rank_f - free[:, None]) / n, x.locked.float(), x.valid.float(),
        x.first / LOGP_SCALE, x.first.exp(), first_rank / n, done.expand(b, n) / max(t, 1),
        ((t - done) == 1).float().expand(b, n), free[:, None].float().expand(b, n) / n,
        at_rank / LOGP_SCALE, confidence / LOGP_SCALE, *others], dim=-1)
    cols = x.rows.transpose(2, 3)  # [round, item, position]
    prop = x.proposals.clamp(0, n - 1)
    at_decoded = cols.gather(3, rank[:, None, :, None].expand(b, t, n, 1))[..., 0]
    own = cols.gather(3, prop[..., None])[..., 0]
    at_free = cols.gather(3, free.clamp(max=n - 1)[:, None, None, None].expand(b, t, n, 1))[..., 0]
    prop_order = torch.argsort(torch.where(x.proposals >= 0, x.proposals, torch.full_like(x.proposals, 2 * n)),
                               dim=2, stable=True)
    agree_decoded = common_prefix_length(prop_order, order[:, None, :]).float()  # (B, T)
    agree_committed = common_prefix_length(prop_order, x.committed[:, None, :])
    # the deepest row conditioned on exactly the committed ranking's prefix: its view of the free items is
    # fresh (the rows after it saw an item that the committed ranking does not have there)
    at_fresh = cols.gather(3, agree_committed.clamp(max=n - 1)[:, :, None, None].expand(b, t, n, 1))[..., 0]
    agree_committed = agree_committed.float()
    # row p of a round was conditioned on that proposal's first p items: exactly the decoded prefix iff
    # p <= the common prefix of the proposal and the decoded order; otherwise it is stale
    fresh = (rank_f[:, None, :] <= agree_decoded[:, :, None]).float()
    rounds = torch.arange(t, device=cols.device)
    age = (done - 1 - rounds[None, :]).clamp(min=0)  # 0 = latest round
    feats = torch.stack([
        at_decoded / LOGP_SCALE, at_decoded.exp(), own / LOGP_SCALE, own.exp(), at_free / LOGP_SCALE,
        at_free.exp(), at_fresh / LOGP_SCALE, at_fresh.exp(), _confidence(x.rows, order) / LOGP_SCALE, fresh,
        ((agree_decoded[:, :, None] - rank_f[:, None, :]) / n).clamp(-1, 1),
        ((agree_committed[:, :, None] - rank_f[:, None, :]) / n).clamp(-1, 1),
        (x.proposals.float() - rank_f[:, None, :]) / n,
        (age == 0).float()[:, :, None].expand(b, t, n), (age / max(t, 1))[:, :, None].expand(b, t, n),
        x.valid.float()[:, None, :].expand(b, t, n)], dim=-1)
    feats = torch.where(x.filled[:, :, None, None], feats, torch.zeros_like(feats))
    return order, static, feats, x.filled


class ResidualItemExtractor(BaseFeaturesExtractor):
    """obs -> (B, N * (d + 2)): item embeddings, each item's base score ``-scale * rank`` and validity.

    No weight depends on N or on the budget (``size_agnostic``): ``agents.resize`` rebuilds a trained
    policy for another list length with the same weights.
    """

    size_agnostic = True

    def __init__(self, observation_space: spaces.Dict, d_model: int = 64, n_layers: int = 1, n_heads: int = 4,
                 dropout: float = 0.0, decoder: str = "heuristic", base_scale: float = 1.0,
                 learn_scale: bool = True, history: str = "all") -> None:
        if history not in HISTORIES:
            raise ValueError(f"history must be one of {HISTORIES} (which verified rounds the policy reads), "
                             f"got {history!r}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        if base_scale <= 0:
            raise ValueError(f"base_scale must be > 0 (score gap between decoded neighbours), got {base_scale}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        n = observation_space["first_token"].shape[0]
        super().__init__(observation_space, features_dim=n * (d_model + 2))
        self.n, self.d_model, self.decoder, self.history = n, d_model, decoder, history
        self.log_scale = nn.Parameter(torch.tensor(math.log(base_scale)), requires_grad=learn_scale)
        self.static = nn.Linear(STATIC_FEATURES, d_model)
        self.round_in = nn.Sequential(nn.Linear(ROUND_FEATURES, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.pool = nn.Linear(2 * d_model, d_model)  # [mean over filled rounds, latest round]
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        x = read_observation(observations)
        b, t, n, _ = x.rows.shape
        if n != self.n:
            raise ValueError(f"this policy was built for N={self.n} items, the observation has {n}")
        order, static, rounds, filled = residual_features(x, self.decoder)
        z = self.round_in(rounds)  # (B, T, N, d)
        if self.history == "latest":  # forget every round but the latest one
            filled = filled & (torch.arange(t, device=filled.device)[None, :] == x.latest[:, None])
        w = filled.float()[:, :, None, None]
        mean = (z * w).sum(1) / w.sum(1).clamp(min=1.0)
        latest = z.gather(1, x.latest.view(b, 1, 1, 1).expand(b, 1, n, self.d_model))[:, 0] * w.amax(1)
        h = self.static(static) + self.pool(torch.cat([mean, latest], dim=-1))
        h = self.norm(self.encoder(h, src_key_padding_mask=~x.valid))
        base = -self.log_scale.exp() * decoded_ranks(order).float()
        return torch.cat([h.flatten(1), base, x.valid.float()], dim=1)

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = features.shape[0]
        return features[:, : self.n * self.d_model].reshape(b, self.n, self.d_model), features[:, -self.n:] > 0.5

    def base(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N) the decoder's scores, ``-scale * decoded rank``."""
        return features[:, self.n * self.d_model: self.n * (self.d_model + 1)]


class ResidualScoreHead(nn.Module):
    """``base + residual``; the residual layer starts at zero, so the untrained policy is the decoder."""

    def __init__(self, extractor: ResidualItemExtractor) -> None:
        super().__init__()
        self.split, self.base = extractor.split, extractor.base
        self.linear = nn.Linear(extractor.d_model, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, _ = self.split(features)
        return self.base(features) + self.linear(h).squeeze(-1)


class ResidualRankingPolicy(RankingPolicy):
    """RPO's Plackett-Luce policy over ``decoder``'s order plus a learned residual (see the module doc).

    Select it with ``agents.make("rpo", env, policy="ResidualRankingPolicy", policy_kwargs={...})`` or in a
    training YAML with ``policy: ResidualRankingPolicy``. ``policy_kwargs``: ``decoder``
    (``heuristic`` or ``stale_aware``), ``base_scale`` (initial score gap between decoded neighbours),
    ``learn_scale``, ``history`` (``all`` rounds or only the ``latest``: an ablation), and the Transformer's
    ``d_model``, ``n_layers``, ``n_heads``, ``dropout``.
    """

    extractor_class = ResidualItemExtractor
    score_head_class = ResidualScoreHead

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule,
                 decoder: str = "heuristic", base_scale: float = 1.0, learn_scale: bool = True,
                 history: str = "all", n_layers: int = 1, **kwargs: Any) -> None:
        options = dict(decoder=decoder, base_scale=base_scale, learn_scale=learn_scale, history=history)
        kwargs["features_extractor_kwargs"] = options
        super().__init__(observation_space, action_space, lr_schedule, n_layers=n_layers, **kwargs)
        self.arch.update(options)

    @property
    def scale(self) -> float:
        """The current score gap between decoded neighbours."""
        return float(self.features_extractor.log_scale.detach().exp())


class ResidualItemPolicy(ItemTransformerPolicy):
    """PPO's Gaussian over item scores with the residual mean (``decoder``'s order plus a learned correction).

    SB3 and RLlib clip Gaussian actions to the action box [-1, 1], so the decoded scores must fit in it:
    ``base_scale`` defaults to 1 / (N - 1) (scores from 0 down to -1) and ``log_std_init`` to -3 (noise
    ~0.05, about one decoded gap: samples stay near the decoded order, as RPO's temperature does). The
    untrained policy's greedy ranking is the decoder's. ``policy_kwargs`` as ``ResidualRankingPolicy``.
    """

    extractor_class = ResidualItemExtractor
    score_head_class = ResidualScoreHead

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule,
                 decoder: str = "heuristic", base_scale: float | None = None, learn_scale: bool = True,
                 history: str = "all", n_layers: int = 1, log_std_init: float = -3.0, **kwargs: Any) -> None:
        n = observation_space["first_token"].shape[0]
        kwargs["features_extractor_kwargs"] = dict(
            decoder=decoder, base_scale=1.0 / max(n - 1, 1) if base_scale is None else base_scale,
            learn_scale=learn_scale, history=history)
        super().__init__(observation_space, action_space, lr_schedule, n_layers=n_layers, log_std_init=log_std_init,
                         **kwargs)
