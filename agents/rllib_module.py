"""Our item policies as an RLlib ``TorchRLModule`` (new API stack): a thin adapter, not a second copy.

The module builds one of our SB3 actor-critic policies (``ItemTransformerPolicy``, ``ResidualItemPolicy``;
``agents.POLICIES``) and reads its parts: the features extractor (the item Transformer or the residual's
encoder), the per-item score head (the Gaussian's N means) and its state-independent ``log_std`` (N
log-stds: RLlib's ``TorchDiagGaussian`` takes the 2N outputs concatenated), and the pooled value head
(``ValueFunctionAPI``, which PPO's learner needs). One definition serves both stacks, so a module trained
here ranks exactly as the same weights would in SB3 (``agents.policy_agent``).

``model_config``: ``{"policy": <name>, "policy_kwargs": {...}}``.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from stable_baselines3.common.policies import ActorCriticPolicy

from agents.policy_agent import build_policy

DEFAULT_POLICY = "ItemTransformerPolicy"


class ItemPolicyRLModule(TorchRLModule, ValueFunctionAPI):
    """RLlib's view of one of our actor-critic policies (``self.policy``): Gaussian item scores and a value."""

    def setup(self) -> None:
        config = dict(self.model_config or {})
        self.policy_name = config.get("policy") or DEFAULT_POLICY
        self.policy_kwargs = dict(config.get("policy_kwargs") or {})
        policy = build_policy(self.policy_name, self.observation_space, self.action_space, self.policy_kwargs)
        if not isinstance(policy, ActorCriticPolicy):
            raise ValueError(f"RLlib trains a Gaussian actor-critic; {self.policy_name} is not one (RPO's "
                             "Plackett-Luce policies train with algo: rpo). Use ItemTransformerPolicy or "
                             "ResidualItemPolicy")
        self.policy = policy
        self.action_dist_cls = TorchDiagGaussian

    def _features(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.policy.extract_features(batch[Columns.OBS], self.policy.pi_features_extractor)

    def _dist_inputs(self, features: torch.Tensor) -> torch.Tensor:
        mean = self.policy.action_net(features)
        return torch.cat([mean, self.policy.log_std.expand_as(mean)], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(self._features(batch))}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features = self._features(batch)  # shared with compute_values: one encoder pass per batch
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(features), Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        features = self._features(batch) if embeddings is None else embeddings
        return self.policy.value_net(features).squeeze(-1)
