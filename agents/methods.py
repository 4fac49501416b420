"""Reranking methods behind one interface: baselines and learned agents, with the same cost accounting.

Every method ranks one task of an ``RSDRankEnv`` and reports the ranking, the LLM forward passes and
tokens it caused (deltas of ``verifier.stats``) and its wall time. The target (AR) ranking is computed
*before* the meter starts, so a method is never charged for the reference it is scored against; only
``AR`` pays for decoding it, bypassing the verifier's target cache. With ``cold = True`` (default) the
verifier's per-task caches (prompt KV, prefixes) are dropped first, so each method pays for its own
prompt prefill as a new query would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.episode import Episode
from agents.stopping import Deadline, StopRule, ValueHead, value_function
from rsd_env.data import RankingTask
from rsd_env.env import RSDRankEnv
from rsd_env.metrics import agreement

__all__ = [
    "MethodResult", "RankingMethod", "ARMethod", "STDMethod", "SDMethod", "DecoderMethod", "HeuristicMethod",
    "StaleAwareMethod", "SDDecodeMethod", "RandomMethod", "IdentityMethod", "AgentMethod", "make_method",
    "rank_tasks", "summarize", "order_to_action", "METHODS", "DECODERS", "BUDGET_FREE",
]


@dataclass
class MethodResult:
    """One ranked task: the output, what it cost, and the episode summary (metrics vs the target)."""

    task_id: str
    ranking: np.ndarray
    docids: list[str]
    llm_passes: int
    tokens: int
    wall_ms: float
    info: dict[str, Any] = field(default_factory=dict)


def order_to_action(order: np.ndarray, n: int) -> np.ndarray:
    """Scores in [-1, 1] whose descending sort is ``order`` (items not in ``order`` get -1, i.e. last)."""
    action = np.full(n, -1.0, dtype=np.float32)
    k = len(order)
    action[np.asarray(order, dtype=np.int64)] = np.linspace(1.0, -1.0, k) if k > 1 else 1.0
    return action


def first_token_order(obs: dict[str, np.ndarray], m: int) -> np.ndarray:
    """The task's m items by single-token score (ties: presentation order)."""
    return np.argsort(-obs["first_token"][:m], kind="stable")


class RankingMethod:
    """Base class: runs one episode with ``act`` choosing each step's item scores.

    ``act`` is called for every verification and, with the env's commit step, once more when
    ``obs["commit"]`` is 1: that action's scores order the unverified items of the final ranking (free).
    Subclasses override ``act`` (and ``rounds`` when they do not use the whole budget T); a method that
    does not follow the episode protocol (AR) overrides ``rank``.
    """

    name: str = "method"
    hand_written_decoder: bool = False  # a candidate for "the decoder to beat" in the tables
    uses_budget: bool = True  # False: the same ranking at every T (AR, STD); tables name it without a T
    cold: bool = True  # drop the verifier's per-task caches before ranking (honest latency)
    stop_rules: tuple[StopRule, ...] = ()  # stop verifying early (agents.stopping): deadline, adaptive budget

    @property
    def deadline_ms(self) -> float | None:
        """Anytime mode: the ``Deadline`` rule's milliseconds (None = no deadline); setting it replaces it."""
        return next((r.ms for r in self.stop_rules if isinstance(r, Deadline)), None)

    @deadline_ms.setter
    def deadline_ms(self, ms: float | None) -> None:
        self._replace_rule(Deadline, None if ms is None else Deadline(ms))

    def _replace_rule(self, kind: type[StopRule], rule: StopRule | None) -> None:
        self.stop_rules = (*(r for r in self.stop_rules if not isinstance(r, kind)), *([rule] if rule else []))

    def rounds(self, env: RSDRankEnv) -> int:
        return env.budget

    def start(self, env: RSDRankEnv, task: RankingTask) -> None:
        """Hook called after reset (e.g. to seed per-task randomness)."""

    def act(self, obs: dict[str, np.ndarray], env: RSDRankEnv) -> np.ndarray:
        raise NotImplementedError

    def rank(self, env: RSDRankEnv, task_id: str, spent_ms: float = 0.0) -> MethodResult:
        """One episode on ``task_id``. ``spent_ms``: cost already paid for this ranking elsewhere (a prompt
        prefill shared by several methods), which deadlines count."""
        env = env.unwrapped
        task = env.task_by_id(task_id)
        env.target(task)  # memoised before the meter starts: the reference is not this method's cost
        self._prepare(env.verifier)
        before = env.verifier.stats.snapshot()
        start = time.perf_counter()
        episode = Episode(self, env, task_id, spent_ms)
        while episode.wants_round():
            round_start = time.perf_counter()
            verification = env.verifier.verify(env.task, episode.propose())
            episode.apply(verification, 1000.0 * (time.perf_counter() - round_start))
        episode.finish()
        wall_ms = 1000.0 * (time.perf_counter() - start)
        cost = env.verifier.stats.since(before)
        info = env.episode_summary()
        return MethodResult(task_id, info["final_ranking"], info["final_docids"], cost.forward_passes,
                            cost.tokens, wall_ms, info)

    def _prepare(self, verifier) -> None:
        if self.cold:
            verifier.clear_cache()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class STDMethod(RankingMethod):
    """Single-token decoding (FIRST): the first-token order, zero verification rounds."""

    name = "std"
    uses_budget = False

    def rounds(self, env: RSDRankEnv) -> int:
        return 0


class SDMethod(RankingMethod):
    """Left-to-right speculative decoding with T rounds.

    With the verified prefix locked, proposing the first-token order of the unaccepted items is exactly
    SD: each round accepts a prefix plus the correction, and everything else the LLM said is discarded.
    Its commit step keeps that order, so its output is the classic SD output (the honest baseline).
    """

    name = "sd"

    def act(self, obs, env):
        return order_to_action(first_token_order(obs, env.task.n), env.n)


class DecoderMethod(RankingMethod):
    """A hand-written decoder of the verified rows (a baseline: nothing is fitted).

    Before any verification it proposes the first-token order, like SD; afterwards each proposal and the
    commit step are ``decode`` of the latest round. The strongest decoder per budget is the decoder a
    learned agent has to beat.
    """

    hand_written_decoder = True
    decoder: str = ""  # the name in agents.decoders (one implementation, shared with the residual policy)

    def decode(self, obs: dict[str, np.ndarray], m: int) -> np.ndarray:
        """A full ranking of the task's m items: the verified prefix, then the decoded rest."""
        from agents.decoders import decode, read_observation  # torch only for the decoders' methods
        from agents.policy import obs_to_tensors

        return decode(read_observation(obs_to_tensors(obs)), self.decoder)[0].numpy()[:m]

    def act(self, obs, env):
        m = env.task.n
        order = first_token_order(obs, m) if int(obs["round"][0]) == 0 else self.decode(obs, m)
        return order_to_action(order, env.n)


class HeuristicMethod(DecoderMethod):
    """Up-to-down greedy decoding of the latest verified rows.

    After a round the committed ranking has a locked prefix of length L; for positions L, L+1, ... take
    the most likely not-yet-placed item under the latest round's row for that position (the rows were
    conditioned on the proposal's prefix, which is close to the new one).
    (Measured on the simulated verifier it beat "best log-prob at the next free position over all rounds".)
    """

    name = "heuristic"
    decoder = "heuristic"


class StaleAwareMethod(DecoderMethod):
    """Greedy decoding that knows which verified rows are stale for which item.

    The row at position p was conditioned on the proposal's prefix ``ranking[:p]``: for an item inside that
    prefix (e.g. the rejected one, displaced by the correction) the row says "already used", so plain greedy
    decoding sinks it to the bottom. Here such an item keeps the evidence of its own slot (its log-prob
    at the position it was proposed at) when it competes for later positions.
    """

    name = "stale-aware"
    decoder = "stale_aware"


class SDDecodeMethod(HeuristicMethod):
    """SD's proposals each round, then the commit step decodes the last round's rows greedily.

    Isolates what the commit step alone is worth over SD at the same verifications.
    """

    name = "sd-decode"

    def act(self, obs, env):
        m = env.task.n
        order = self.decode(obs, m) if obs["commit"][0] > 0 else first_token_order(obs, m)
        return order_to_action(order, env.n)


class RandomMethod(RankingMethod):
    """Random proposals each round (seeded per task): a sanity floor."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def start(self, env, task):
        self._rng = np.random.default_rng([self.seed, *task.task_id.encode()])

    def act(self, obs, env):
        return self._rng.uniform(-1.0, 1.0, env.n).astype(np.float32)


class IdentityMethod(RankingMethod):
    """Proposes the presentation (first-stage, e.g. BM25) order every round: ignores the LLM's scores."""

    name = "identity"

    def act(self, obs, env):
        return order_to_action(np.arange(env.task.n), env.n)


class ARMethod(RankingMethod):
    """The target itself: constrained greedy AR decoding, N decode steps; agreement 1 by definition.

    Its wall time is the latency reference, so it calls the verifier's uncached ``decode_target``.
    """

    name = "ar"
    uses_budget = False

    def rank(self, env: RSDRankEnv, task_id: str) -> MethodResult:
        env = env.unwrapped
        task = env.task_by_id(task_id)
        target = env.target(task)
        verifier = env.verifier
        self._prepare(verifier)
        before = verifier.stats.snapshot()
        start = time.perf_counter()
        ranking = np.asarray(verifier.decode_target(task), dtype=np.int64)
        wall_ms = 1000.0 * (time.perf_counter() - start)
        cost = verifier.stats.since(before)
        info = {**env.ranking_summary(task, ranking), "final_agreement": agreement(ranking, target), "rounds": 0,
                "llm_passes": cost.forward_passes}
        docids = info["final_docids"]
        return MethodResult(task_id, ranking, docids, cost.forward_passes, cost.tokens, wall_ms, info)


class AgentMethod(RankingMethod):
    """A learned agent (RPO, PPO, ... with our item policy): greedy scores each round.

    ``min_gain``: adaptive budget — a ``ValueHead`` stop rule: skip the remaining rounds once the policy's
    value head (``expected_gain``, trained by RPO) predicts less agreement gain than this.

    An env with another budget or a larger N than the agent's training gets the agent's policy rebuilt for
    its spaces (``agents.resize``) when the policy's weights are size-agnostic (the residual policies);
    ``n`` is the N it was trained for and ``resize_problem(n)`` says why it cannot rank ``n`` (None: it can).
    """

    def __init__(self, agent: Any, name: str = "agent", min_gain: float | None = None) -> None:
        self.agent = agent
        self.name = name
        self.policy = agent.policy  # the policy for the env being ranked (see ``start``)
        self._resized: dict[tuple, Any] = {}
        self.min_gain = min_gain

    @property
    def n(self) -> int:
        from agents.resize import policy_n

        return policy_n(self.agent.policy)

    def resize_problem(self, n: int) -> str | None:
        from agents.resize import resize_problem

        return resize_problem(self.agent.policy, n)

    def start(self, env, task):
        from agents.resize import resized_policy

        key = tuple((name, space.shape) for name, space in env.observation_space.spaces.items())
        if key not in self._resized:
            self._resized[key] = resized_policy(self.agent, env.observation_space, env.action_space)
        self.policy = self._resized[key]

    @property
    def min_gain(self) -> float | None:
        return next((r.min_gain for r in self.stop_rules if isinstance(r, ValueHead)), None)

    @min_gain.setter
    def min_gain(self, value: float | None) -> None:
        from agents.policy import RankingPolicy

        if value is not None and not isinstance(self.agent.policy, RankingPolicy):
            raise ValueError(f"min_gain needs a policy with expected_gain (RPO); {type(self.agent).__name__} "
                             "has none: use an @adaptive rule (agents.stopping.adaptive_rule)")
        self._replace_rule(ValueHead, None if value is None else ValueHead(value_function(self), value))

    def act(self, obs, env):
        from agents.policy import item_scores  # torch is imported only for learned agents

        scores = item_scores(self.policy, obs)
        valid = np.arange(env.n) < env.task.n
        return order_to_action(np.argsort(-np.where(valid, scores, -np.inf), kind="stable")[: env.task.n], env.n)


METHODS: dict[str, type[RankingMethod]] = {
    "ar": ARMethod, "std": STDMethod, "sd": SDMethod, "heuristic": HeuristicMethod,
    "stale-aware": StaleAwareMethod, "sd-decode": SDDecodeMethod, "random": RandomMethod,
    "identity": IdentityMethod,
}
DECODERS: tuple[str, ...] = tuple(name for name, cls in METHODS.items() if cls.hand_written_decoder)
BUDGET_FREE: frozenset[str] = frozenset(name for name, cls in METHODS.items() if not cls.uses_budget)


def make_method(spec: str, **kwargs: Any) -> RankingMethod:
    """A method by name (``METHODS``: ``ar std sd heuristic stale-aware sd-decode random identity``),
    ``agent:<checkpoint path>``, or ``shipped`` (``shipped:<name>``): an agent shipped in ``agents.pretrained``.

    ``deadline_ms`` (any method) enables anytime mode; ``cold`` (any method, default True) drops the
    verifier's per-task caches before each ranking (honest latency; False for agreement-only measurements and
    deployed rerankers). For agents ``name`` and ``min_gain`` go to ``AgentMethod`` and the other kwargs to
    ``load_agent`` (e.g. ``algorithm=``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"method spec must be a string, got {type(spec).__name__}")
    deadline_ms = kwargs.pop("deadline_ms", None)
    cold = kwargs.pop("cold", True)
    if spec == "shipped" or spec.startswith("shipped:"):  # an agent shipped in agents/pretrained
        from agents.pretrained import agent_path

        kwargs.setdefault("name", spec)
        spec = f"agent:{agent_path(spec)}"
    if spec.startswith("agent:"):
        from agents import load_agent

        path = spec[len("agent:"):]
        name, min_gain = kwargs.pop("name", f"agent:{path}"), kwargs.pop("min_gain", None)
        method: RankingMethod = AgentMethod(load_agent(path, **kwargs), name=name, min_gain=min_gain)
    elif spec in METHODS:
        method = METHODS[spec](**kwargs)
    else:
        raise ValueError(f"unknown method {spec!r}; choose one of {sorted(METHODS)}, 'agent:<checkpoint>' "
                         "or 'shipped'")
    method.deadline_ms = deadline_ms
    method.cold = bool(cold)
    return method


def rank_tasks(method: RankingMethod, env, task_ids: list[str] | None = None) -> list[MethodResult]:
    """Rank every task (default: all of ``env``'s tasks) with ``method``."""
    env = env.unwrapped
    ids = [t.task_id for t in env.tasks] if task_ids is None else list(task_ids)
    return [method.rank(env, tid) for tid in ids]


def summarize(results: list[MethodResult]) -> dict[str, float]:
    """Mean metrics over tasks (keys present in every result's info), passes, tokens, wall ms."""
    if not results:
        raise ValueError("no results to summarize")
    keys = [k for k in ("kendall_tau", "spearman_rho", "footrule", "kemeny", "final_agreement", "ndcg@10")
            if all(k in r.info for r in results)]
    out = {k: float(np.mean([r.info[k] for r in results])) for k in keys}
    out.update(llm_passes=float(np.mean([r.llm_passes for r in results])),
               tokens=float(np.mean([r.tokens for r in results])),
               wall_ms=float(np.mean([r.wall_ms for r in results])), tasks=len(results))
    return out
