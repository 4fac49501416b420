"""Beyond the paper: stop verification rounds early, per task, without touching the method's code.

RSD's committed ranking is a valid output after every round, so any method can be cut short. A
``RoundControl`` stands in for the env a method drives: before each verification it decides whether the
round is worth running, and if not it ends verification there (no LLM call): with the env's commit
step the method's next action commits the final ranking (free), otherwise the episode ends with the
ranking committed so far as the output.

- *anytime* (``deadline_ms``): skip a round when the time already spent on this ranking (including the
  prompt prefill) plus the expected cost of one more round (the mean of this task's rounds so far, or of
  the verifier's past verifications) would pass the deadline.
- *adaptive budget* (``adaptive``): skip further rounds when the estimated gain of another round is below
  the threshold. The estimate is the agent's own value function where it has one (``predict_values`` of
  an SB3 actor-critic policy; RPO agents use their value head via ``AgentMethod.min_gain``); otherwise the
  LLM's last verdict: the share of not-yet-verified positions whose proposed item was *not* the LLM's
  greedy choice, times the share of positions still unverified.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rsd_env.env import RSDRankEnv
from rsd_env.verifiers.base import best_unused

ValueFn = Callable[[dict[str, np.ndarray]], float]


def disagreement_gain(env: RSDRankEnv, last_rows: np.ndarray, last_ranking: np.ndarray) -> float:
    """Model-free estimate of what one more round can still change (0 = the LLM agrees with the rest)."""
    n, locked = len(last_ranking), env.unwrapped.verified_prefix_length
    if locked >= n:
        return 0.0
    used = np.zeros(n, dtype=bool)
    disagree = 0
    for i, item in enumerate(last_ranking):
        if i >= locked:
            disagree += best_unused(last_rows[i], used) != int(item)
        used[item] = True
    remaining = n - locked
    return (disagree / remaining) * (remaining / n)


def agent_value_fn(method: Any) -> ValueFn | None:
    """The learned agent's critic V(obs) (expected remaining agreement gain) if it has a trained one.

    SB3 actor-critic policies (PPO, A2C) train ``predict_values``. (RPO agents stop through their own
    value head instead: ``AgentMethod.min_gain``, which the evaluation runner sets for ``@adaptive``.)
    The baselines have none and use the model-free ``disagreement_gain``.
    """
    policy = getattr(getattr(method, "agent", None), "policy", None)
    if policy is None or not hasattr(policy, "predict_values"):
        return None
    import torch

    def value(obs: dict[str, np.ndarray]) -> float:
        tensor, _ = policy.obs_to_tensor(obs)
        with torch.no_grad():
            return float(policy.predict_values(tensor).flatten()[0])

    return value


class RoundControl:
    """Proxy of an ``RSDRankEnv`` that ends episodes early; everything else goes to the real env."""

    def __init__(self, env: RSDRankEnv, deadline_ms: float | None = None, adaptive: float | None = None,
                 value_fn: ValueFn | None = None, spent_ms: float = 0.0) -> None:
        if deadline_ms is not None and deadline_ms <= 0:
            raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
        if adaptive is not None and adaptive < 0:
            raise ValueError(f"the adaptive threshold must be >= 0, got {adaptive}")
        self._env, self.deadline_ms, self.adaptive, self.value_fn = env, deadline_ms, adaptive, value_fn
        self.spent_ms = spent_ms  # cost already paid for this ranking outside the method (prompt prefill)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    @property
    def unwrapped(self) -> RoundControl:
        return self  # methods that call env.unwrapped must still go through the controller

    def reset(self, **kwargs: Any):
        self._start = time.perf_counter()
        self._round_ms: list[float] = []
        self._next_gain = None
        obs, info = self._env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def _elapsed_ms(self) -> float:
        return self.spent_ms + (time.perf_counter() - self._start) * 1000.0

    def _expected_round_ms(self) -> float:
        if self._round_ms:
            return float(np.mean(self._round_ms))
        stats = self._env.verifier.stats
        calls = stats.calls.get("verify", 0)
        return 1000.0 * stats.seconds.get("verify", 0.0) / calls if calls else 0.0

    def _worth_another_round(self) -> bool:
        if self.deadline_ms is not None and self._elapsed_ms() + self._expected_round_ms() > self.deadline_ms:
            return False
        if self.adaptive is not None and self._next_gain is not None and self._next_gain < self.adaptive:
            return False
        return True

    def step(self, action):
        env = self._env
        if env.in_commit_step:
            return env.step(action)  # committing costs no LLM call: never cut
        if not self._worth_another_round():
            return self._stop(0.0, {})
        start = time.perf_counter()
        ranking = env.propose(action)
        verification = env.verifier.verify(env.task, ranking)
        obs, reward, terminated, truncated, info = env.apply_verification(verification)
        self._round_ms.append((time.perf_counter() - start) * 1000.0)
        self._obs = obs
        if self.adaptive is not None:
            self._next_gain = (self.value_fn(obs) if self.value_fn is not None
                               else disagreement_gain(env, verification.logprobs, verification.ranking))
        if not terminated and not env.in_commit_step and not self._worth_another_round():
            return self._stop(reward, info)
        return obs, reward, terminated, truncated, info

    def _stop(self, reward: float, info: dict[str, Any]):
        """End verification: the method's next action commits (no LLM call), or the episode ends here."""
        if self._env.end_verification():
            self._obs = self._env.observation()
            return self._obs, reward, False, False, info
        return self._obs, reward, True, False, {**info, **self._env.episode_summary()}
