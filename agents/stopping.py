"""Stopping verification early, per ranking: one concept for deadlines, value heads and the LLM's verdict.

RSD's committed ranking is a valid output after every round, so any method can stop before its budget T.
A ``StopRule`` is asked before each verification round whether to stop; when one says yes the env ends
verification there (no LLM call): with the commit step the method's next action commits the final
ranking (free), otherwise the ranking committed so far is the output. ``RankingMethod.stop_rules`` holds
a method's rules (``rsd-eval``'s ``@deadline=<ms>`` and ``@adaptive=<gain>`` suffixes set them).

- ``Deadline`` (anytime): stop when the time already spent on this ranking (including the prompt prefill)
  plus the expected cost of one more round (the mean of this ranking's rounds so far, or of the verifier's
  past verifications) would pass the deadline.
- ``ValueHead`` (adaptive budget, learned): stop when the agent's own value estimate of the agreement still
  to gain is below a threshold: RPO's value head (``RankingPolicy.expected_gain``) or an SB3 actor-critic's
  ``predict_values``.
- ``LLMVerdict`` (adaptive budget, model-free): after a verification, the share of not-yet-verified
  positions whose proposed item was *not* the LLM's greedy choice, times the share of positions still
  unverified; stop when that is below a threshold.

A rule keeps per-ranking state (start time, round times, the last verdict) in the copy ``begin`` returns,
so one method (and its rules) can rank many tasks, or many windows at once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rsd_env.env import RSDRankEnv
from rsd_env.verifiers.base import best_unused

__all__ = ["StopRule", "Deadline", "ValueHead", "LLMVerdict", "disagreement_gain", "value_function",
           "adaptive_rule"]

ValueFn = Callable[[dict[str, np.ndarray]], float]


class StopRule:
    """Asked before each verification round: stop now? ``begin`` makes the per-ranking copy."""

    def begin(self, spent_ms: float = 0.0) -> StopRule:
        """A fresh copy for one ranking; ``spent_ms`` = cost already paid outside it (a shared prefill)."""
        rule = copy.copy(self)
        rule._start(spent_ms)
        return rule

    def _start(self, spent_ms: float) -> None:
        """Reset the per-ranking state (called on the copy)."""

    def after_round(self, env: RSDRankEnv, round_ms: float) -> None:
        """Called after each verification with what it cost."""

    def should_stop(self, obs: dict[str, np.ndarray], env: RSDRankEnv) -> bool:
        raise NotImplementedError


class Deadline(StopRule):
    """Anytime mode: no round starts that would end after ``ms`` milliseconds on this ranking."""

    def __init__(self, ms: float) -> None:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
            raise ValueError(f"a deadline must be a number of milliseconds >= 0, got {ms!r}")
        self.ms = float(ms)

    def _start(self, spent_ms: float) -> None:
        self._t0, self._spent, self._rounds = time.perf_counter(), spent_ms, []

    def after_round(self, env: RSDRankEnv, round_ms: float) -> None:
        self._rounds.append(round_ms)

    def _expected_round_ms(self, env: RSDRankEnv) -> float:
        if self._rounds:
            return float(np.mean(self._rounds))
        stats = env.verifier.stats
        calls = stats.calls.get("verify", 0)
        return 1000.0 * stats.seconds.get("verify", 0.0) / calls if calls else 0.0

    def should_stop(self, obs: dict[str, np.ndarray], env: RSDRankEnv) -> bool:
        elapsed = self._spent + 1000.0 * (time.perf_counter() - self._t0)
        return elapsed + self._expected_round_ms(env) > self.ms

    def __repr__(self) -> str:
        return f"Deadline({self.ms:g} ms)"


class ValueHead(StopRule):
    """Adaptive budget from the agent's own value estimate (checked before every round, the first too)."""

    def __init__(self, value_fn: ValueFn, min_gain: float) -> None:
        self.value_fn, self.min_gain = value_fn, float(min_gain)

    def should_stop(self, obs: dict[str, np.ndarray], env: RSDRankEnv) -> bool:
        return self.value_fn(obs) < self.min_gain

    def __repr__(self) -> str:
        return f"ValueHead(min_gain={self.min_gain:g})"


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


class LLMVerdict(StopRule):
    """Adaptive budget without a learned value: the LLM's disagreement with the latest proposal."""

    def __init__(self, min_gain: float) -> None:
        if min_gain < 0:
            raise ValueError(f"the adaptive threshold must be >= 0, got {min_gain}")
        self.min_gain = float(min_gain)

    def _start(self, spent_ms: float) -> None:
        self._gain: float | None = None

    def after_round(self, env: RSDRankEnv, round_ms: float) -> None:
        latest = env.unwrapped.latest_verification
        self._gain = disagreement_gain(env, latest.logprobs, latest.ranking)

    def should_stop(self, obs: dict[str, np.ndarray], env: RSDRankEnv) -> bool:
        return self._gain is not None and self._gain < self.min_gain

    def __repr__(self) -> str:
        return f"LLMVerdict(min_gain={self.min_gain:g})"


def value_function(agent: Any) -> ValueFn | None:
    """The agent's estimate of the agreement still to gain from an observation, if its policy has one.

    RPO's ``RankingPolicy`` trains ``expected_gain``; SB3's actor-critic policies (PPO, A2C) ``predict_values``.
    ``agent.policy`` is read at every call: an ``AgentMethod`` swaps in the policy resized for the env's N.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy

    from agents.policy import RankingPolicy, expected_gain

    policy = getattr(agent, "policy", None)
    if isinstance(policy, RankingPolicy):
        return lambda obs: expected_gain(agent.policy, obs)
    if isinstance(policy, ActorCriticPolicy):
        import torch

        def critic(obs: dict[str, np.ndarray]) -> float:
            policy = agent.policy
            tensor, _ = policy.obs_to_tensor(obs)
            with torch.no_grad():
                return float(policy.predict_values(tensor).flatten()[0])

        return critic
    return None


def adaptive_rule(agent: Any, min_gain: float) -> StopRule:
    """``@adaptive=<gain>``: the agent's value estimate where it has one, else the LLM's verdict."""
    value_fn = value_function(agent) if agent is not None else None
    return ValueHead(value_fn, min_gain) if value_fn is not None else LLMVerdict(min_gain)
