"""A permutation-equivariant Transformer over the N items, as SB3 policies.

One token per item, built from everything the LLM said about it: its first-token score, its column in
every verified row of every round (absolute positions, and relative to the first free position), its
position in past proposals, locked flag, committed position, the round, the episode's budget T and
whether this step is the commit step. Self-attention over items (no positional encoding) makes the
scores equivariant to the presentation order. The verified rounds (the observation's ``round_mask``)
are encoded with shared weights plus a recency embedding and averaged, so one network serves any T.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from agents.plackett_luce import NEG, sample_order

LOGP_SCALE = 10.0  # env log-probs lie in [-30, 0]
GAIN_SCALE = 10.0  # the value head predicts 10 x the agreement still to gain (gains are ~0.01-0.1)


class ItemTransformer(nn.Module):
    """obs (batched dict of tensors) -> item embeddings (B, N, d) and the validity mask (B, N)."""

    def __init__(self, n_items: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 ff_mult: int = 2, max_rounds: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n = n_items
        self.max_rounds = max_rounds
        self.static = nn.Linear(11, d_model)
        self.round_in = nn.Linear(6 * n_items + 3, d_model)
        self.recency = nn.Embedding(max_rounds, d_model)
        self.round_mlp = nn.Sequential(nn.GELU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, ff_mult * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        first = obs["first_token"].float()
        b, n = first.shape
        if n != self.n:
            raise ValueError(f"this policy was built for N={self.n} items, the observation has {n}")
        t = obs["proposals"].shape[1] // n
        valid = obs["valid"].float() > 0.5
        locked = obs["locked"].float()
        done = obs["round"].float().reshape(b, 1)
        budget = obs["budget"].float().reshape(b, 1).clamp(min=1.0)  # this episode's T
        commit = obs["commit"].float().reshape(b, 1)
        free = locked.sum(1).long()  # first free position (verified prefix length)
        # item-level features
        rank_first = torch.argsort(torch.argsort(torch.where(valid, -first, -NEG), dim=1), dim=1).float() / n
        last_verification = ((budget - done) == 1).float() * (1 - commit)
        per_task = torch.cat([done / budget, last_verification, commit, free[:, None] / n, 1.0 / budget], dim=1)
        static = torch.cat([
            torch.stack([first / LOGP_SCALE, first.exp(), rank_first, locked, obs["committed"].float() / n,
                         valid.float()], dim=-1),
            per_task[:, None, :].expand(b, n, per_task.shape[1])], dim=-1)
        h = self.static(static)
        if t:
            h = h + self._rounds(obs, b, n, t, done, free)
        h = self.encoder(h, src_key_padding_mask=~valid)
        return self.norm(h), valid

    def _rounds(self, obs, b, n, t, done, free) -> torch.Tensor:
        cols = obs["verified"].float().reshape(b, t, n, n).transpose(2, 3)  # [round, item, position]
        pos = torch.arange(n, device=cols.device)
        shift = free[:, None] + pos[None, :]  # positions free, free+1, ... (B, N)
        idx = shift.clamp(max=n - 1)[:, None, None, :].expand(b, t, n, n)
        shifted = torch.where((shift < n)[:, None, None, :], cols.gather(3, idx), torch.full_like(cols, -30.0))
        prop = obs["proposals"].float().reshape(b, t, n)  # item's position in each proposal
        own = cols.gather(3, prop.clamp(min=0).long()[..., None])[..., 0]  # log-prob at its proposed slot
        # margin to the row's best item among those not yet placed by that proposal: 0 = greedy choice
        open_ = prop[:, :, :, None] >= pos[None, None, None, :]  # item k still open at position p
        best = torch.where(open_, cols, torch.full_like(cols, -1e4)).amax(dim=2, keepdim=True)
        margin = torch.where(open_, cols - best, torch.full_like(cols, -30.0)).clamp(min=-30.0)
        margin_shifted = torch.where((shift < n)[:, None, None, :], margin.gather(3, idx), torch.full_like(cols, -30.0))
        feats = torch.cat([cols / LOGP_SCALE, cols.exp(), shifted / LOGP_SCALE, shifted.exp(),
                           margin.exp(), margin_shifted.exp(),
                           (prop / n)[..., None], (own / LOGP_SCALE)[..., None],
                           ((prop - free[:, None, None]) / n)[..., None]], dim=-1)  # (B, T, N, F)
        rounds = torch.arange(t, device=cols.device)
        taken = obs["round_mask"].float().reshape(b, t)  # 1 = verified round (others hold a neutral fill)
        recency = (done - 1 - rounds[None, :]).clamp(0, self.max_rounds - 1).long()
        z = self.round_mlp(self.round_in(feats) + self.recency(recency)[:, :, None, :])
        # mean over the verified rounds (a sum would grow with T and put larger budgets out of distribution)
        return (z * taken[:, :, None, None]).sum(1) / taken.sum(1).clamp(min=1.0)[:, None, None]


class ItemTransformerExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: flattened item embeddings plus the validity mask, (B, N * (d + 1))."""

    def __init__(self, observation_space: spaces.Dict, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 dropout: float = 0.0) -> None:
        n = observation_space["first_token"].shape[0]
        super().__init__(observation_space, features_dim=n * (d_model + 1))
        self.n, self.d_model = n, d_model
        self.core = ItemTransformer(n, d_model, n_layers, n_heads, dropout=dropout)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        h, valid = self.core(observations)
        return torch.cat([h.flatten(1), valid.float()], dim=1)

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = features.shape[0]
        return features[:, : self.n * self.d_model].reshape(b, self.n, self.d_model), features[:, -self.n:] > 0.5


class ItemScoreHead(nn.Module):
    """One score per item from its embedding (shared weights: equivariant)."""

    def __init__(self, extractor: ItemTransformerExtractor) -> None:
        super().__init__()
        self.split = extractor.split
        self.linear = nn.Linear(extractor.d_model, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, _ = self.split(features)
        return self.linear(h).squeeze(-1)


class PooledValueHead(nn.Module):
    """State value from the mean of the valid items' embeddings (invariant to item order)."""

    def __init__(self, extractor: ItemTransformerExtractor) -> None:
        super().__init__()
        self.split = extractor.split
        d = extractor.d_model
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, valid = self.split(features)
        w = valid.float()[..., None]
        return self.mlp((h * w).sum(1) / w.sum(1).clamp(min=1.0))


class _Passthrough(nn.Module):
    """SB3's ``mlp_extractor`` slot: the heads read the item embeddings directly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.latent_dim_pi = self.latent_dim_vf = dim

    def forward(self, features):
        return features, features

    def forward_actor(self, features):
        return features

    def forward_critic(self, features):
        return features


def _transformer_kwargs(kwargs: dict[str, Any], d_model: int, n_layers: int, n_heads: int, dropout: float,
                        extractor_class: type[BaseFeaturesExtractor] = ItemTransformerExtractor) -> dict[str, Any]:
    kwargs["features_extractor_class"] = extractor_class
    kwargs["features_extractor_kwargs"] = dict(kwargs.get("features_extractor_kwargs") or {}, d_model=d_model,
                                               n_layers=n_layers, n_heads=n_heads, dropout=dropout)
    kwargs.setdefault("normalize_images", False)
    return kwargs


class ItemTransformerPolicy(ActorCriticPolicy):
    """Actor-critic for PPO/A2C/TRPO: Gaussian over item scores (mean = per-item head), pooled value.

    Subclasses swap the item encoder and the score head through ``extractor_class`` / ``score_head_class``
    (e.g. ``agents.residual.ResidualItemPolicy``); RLlib runs it through ``agents.rllib_module``.
    """

    extractor_class: type[BaseFeaturesExtractor] = ItemTransformerExtractor
    score_head_class: type[nn.Module] = ItemScoreHead

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule,
                 d_model: int = 64, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("ortho_init", False)  # orthogonal init with gain sqrt(2) hurts the Transformer
        kwargs.pop("net_arch", None)
        kwargs["share_features_extractor"] = True
        super().__init__(observation_space, action_space, lr_schedule,
                         **_transformer_kwargs(kwargs, d_model, n_layers, n_heads, dropout, self.extractor_class))

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _Passthrough(self.features_dim)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = self.score_head_class(self.features_extractor)
        self.value_net = PooledValueHead(self.features_extractor)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def score_items(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.action_net(self.extract_features(obs, self.pi_features_extractor))


class RankingPolicy(BasePolicy):
    """RPO's policy: a Plackett-Luce distribution over rankings from the item scores.

    Actions are rank encodings in [-1, 1] (the env sorts them back into the ranking). Deterministic
    = argmax ranking (sort by score), stochastic = Gumbel-top-k sample. RPO trains the value head on the
    greedy rollouts' return-to-go, so ``expected_gain`` says how much agreement more rounds would still
    add: RPO's per-state baseline (``advantage="value"``) and the adaptive per-task budget's stopping rule.
    Subclasses swap the item encoder and the score head through ``extractor_class`` / ``score_head_class``
    (e.g. ``agents.residual.ResidualRankingPolicy``).
    """

    extractor_class: type[BaseFeaturesExtractor] = ItemTransformerExtractor
    score_head_class: type[nn.Module] = ItemScoreHead

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule,
                 d_model: int = 64, n_layers: int = 2, n_heads: int = 4, dropout: float = 0.0,
                 optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs,
                         **_transformer_kwargs(kwargs, d_model, n_layers, n_heads, dropout, self.extractor_class))
        self.arch = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout)
        self.features_extractor = self.make_features_extractor()
        self.score_head = self.score_head_class(self.features_extractor)
        self.value_head = PooledValueHead(self.features_extractor)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("features_extractor_class", None)
        data.pop("features_extractor_kwargs", None)
        data.update(self.arch, optimizer_class=self.optimizer_class, optimizer_kwargs=self.optimizer_kwargs)
        return data

    def score_items(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score_head(self.extract_features(obs, self.features_extractor))

    def expected_gain(self, obs: dict[str, torch.Tensor], scaled: bool = True) -> torch.Tensor:
        """(B,) agreement the greedy policy is expected to gain from this state until the episode ends."""
        value = self.value_head(self.extract_features(obs, self.features_extractor))[:, 0]
        return value / GAIN_SCALE if scaled else value

    def _predict(self, observation, deterministic: bool = False) -> torch.Tensor:
        scores = self.score_items(observation)
        mask = observation["valid"] > 0.5
        order = sample_order(scores, mask, greedy=deterministic)
        return ranks_to_actions(order)

    def forward(self, obs, deterministic: bool = False) -> torch.Tensor:
        return self._predict(obs, deterministic)


def ranks_to_actions(order: torch.Tensor) -> torch.Tensor:
    """(B, N) item orders -> (B, N) scores in [-1, 1] that sort back into the same orders."""
    b, n = order.shape
    values = torch.linspace(1.0, -1.0, n, device=order.device).expand(b, n)
    return torch.empty(b, n, device=order.device).scatter_(1, order, values)


def obs_to_tensors(obs: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Env observations (one or a batch) as float tensors with a batch axis."""
    out = {}
    for key, value in obs.items():
        arr = torch.as_tensor(np.asarray(value), dtype=torch.float32, device=device)
        out[key] = arr[None] if arr.ndim == 1 else arr
    return out


@torch.no_grad()
def item_scores(policy: BasePolicy, obs: dict[str, np.ndarray]) -> np.ndarray:
    """Greedy item scores of any of our policies for one observation (works for any budget T)."""
    if not hasattr(policy, "score_items"):
        raise TypeError(f"{type(policy).__name__} has no score_items: train agents with agents.make(...) "
                        "so that they use our item policy")
    was_training = policy.training
    policy.set_training_mode(False)
    scores = policy.score_items(obs_to_tensors(obs, policy.device))[0].cpu().numpy()
    policy.set_training_mode(was_training)
    return scores


@torch.no_grad()
def expected_gain(policy: RankingPolicy, obs: dict[str, np.ndarray]) -> float:
    """The value head's estimate of the agreement still to gain from one observation."""
    was_training = policy.training
    policy.set_training_mode(False)
    gain = float(policy.expected_gain(obs_to_tensors(obs, policy.device))[0])
    policy.set_training_mode(was_training)
    return gain
