"""The verifier interface: what the environment needs from a target LLM.

Item ``j`` always means ``task.candidates[j]``; a ranking is an int array of item indices, best first.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rsd_env.data.task import RankingTask


@dataclass(frozen=True)
class Verification:
    """The LLM's listwise knowledge about one proposed ranking, from one parallel pass.

    ``logprobs[i, j]``: log-probability that item ``j`` comes at position ``i`` given the proposal's
    prefix ``ranking[:i]`` (log-softmax over the task's N identifiers, used items included).
    ``accepted``: leading positions where the proposal equals the greedy choice among unused items.
    ``correction``: the greedy item at position ``accepted`` (``None`` when everything was accepted).
    """

    ranking: np.ndarray
    logprobs: np.ndarray
    accepted: int
    correction: int | None

    @property
    def verified_prefix(self) -> np.ndarray:
        """Accepted prefix plus the correction: positions now known to equal the target."""
        head = list(self.ranking[: self.accepted])
        if self.correction is not None:
            head.append(self.correction)
        return np.asarray(head, dtype=np.int64)


@dataclass
class VerifierStats:
    """Cost accounting; the env and the benchmarks read it, episodes' ``info`` does not."""

    forward_passes: int = 0
    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, seconds: float, passes: int = 0, tokens: int = 0) -> None:
        self.forward_passes += passes
        self.tokens += tokens
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.calls[phase] = self.calls.get(phase, 0) + 1

    def snapshot(self) -> VerifierStats:
        return VerifierStats(self.forward_passes, self.tokens, dict(self.seconds), dict(self.calls))

    def since(self, earlier: VerifierStats) -> VerifierStats:
        """Cost incurred between ``earlier`` (a snapshot) and now."""
        return VerifierStats(
            self.forward_passes - earlier.forward_passes,
            self.tokens - earlier.tokens,
            {k: v - earlier.seconds.get(k, 0.0) for k, v in self.seconds.items()},
            {k: v - earlier.calls.get(k, 0) for k, v in self.calls.items()},
        )


def validate_ranking(task: RankingTask, ranking: Sequence[int] | np.ndarray) -> np.ndarray:
    """A full permutation of the task's items, or a ValueError saying what is wrong."""
    arr = np.asarray(ranking)
    if arr.ndim != 1 or arr.shape[0] != task.n:
        raise ValueError(
            f"ranking for task {task.task_id!r} must list all {task.n} items once, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ranking must hold integer item indices, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= task.n:
        raise ValueError(f"ranking has unknown items (valid indices are 0..{task.n - 1}): {arr.tolist()}")
    if len(np.unique(arr)) != task.n:
        raise ValueError(f"ranking has duplicate items: {arr.tolist()}")
    return arr.astype(np.int64)


def greedy_acceptance(ranking: np.ndarray, logprobs: np.ndarray) -> tuple[int, int | None]:
    """Accepted prefix length and correction item, from the verification rows.

    At each position the greedy choice is the most likely item not used earlier in the proposal;
    ties go to the lower item index so that every verifier agrees with its own AR target.
    """
    n = len(ranking)
    used = np.zeros(n, dtype=bool)
    for i in range(n):
        row = np.where(used, -np.inf, logprobs[i])
        best = int(np.argmax(row))
        if best != int(ranking[i]):
            return i, best
        used[best] = True
    return n, None


class Verifier(ABC):
    """A target LLM seen through the three operations RSD needs.

    Subclasses implement ``_first_token``, ``_verify_rows`` and may override ``target_ranking``
    (constrained greedy AR) and ``verify_batch`` (several proposals in one padded pass).
    """

    name: str = "verifier"

    def __init__(self) -> None:
        self.stats = VerifierStats()

    # ---- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _first_token(self, task: RankingTask) -> np.ndarray:
        """Log-probs over the N identifiers at the first answer slot."""

    @abstractmethod
    def _verify_rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        """(N, N) log-prob rows for a proposal, from one parallel pass."""

    # ---- public API ---------------------------------------------------------------------------
    def first_token_scores(self, task: RankingTask) -> np.ndarray:
        """FIRST-style single-token scores: one prefill, one next-token distribution."""
        return np.asarray(self._first_token(task), dtype=np.float64)

    def single_token_ranking(self, task: RankingTask) -> np.ndarray:
        """Items sorted by first-token score (ties by presentation order)."""
        return np.argsort(-self.first_token_scores(task), kind="stable").astype(np.int64)

    def verify(self, task: RankingTask, ranking: Sequence[int] | np.ndarray) -> Verification:
        arr = validate_ranking(task, ranking)
        rows = np.asarray(self._verify_rows(task, arr), dtype=np.float64)
        accepted, correction = greedy_acceptance(arr, rows)
        return Verification(arr, rows, accepted, correction)

    def verify_batch(
        self, requests: Sequence[tuple[RankingTask, Sequence[int] | np.ndarray]]
    ) -> list[Verification]:
        """Verify several (task, ranking) pairs; backends share one pass via ``_verify_rows_batch``."""
        checked = [(task, validate_ranking(task, ranking)) for task, ranking in requests]
        if not checked:
            return []
        out = []
        for (_, arr), rows in zip(checked, self._verify_rows_batch(checked)):
            rows = np.asarray(rows, dtype=np.float64)
            out.append(Verification(arr, rows, *greedy_acceptance(arr, rows)))
        return out

    def _verify_rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Rows for validated (task, ranking) pairs; the default verifies them one by one."""
        return [self._verify_rows(task, ranking) for task, ranking in requests]

    def target_ranking(self, task: RankingTask) -> np.ndarray:
        """Constrained greedy AR decoding: N steps, each the best unused identifier.

        The generic version re-verifies growing prefixes; real backends decode with a KV cache.
        """
        ranking: list[int] = []
        rest = list(range(task.n))
        while rest:
            proposal = np.asarray(ranking + rest, dtype=np.int64)
            v = self.verify(task, proposal)
            ranking = list(v.verified_prefix)
            rest = [j for j in range(task.n) if j not in set(ranking)]
        return np.asarray(ranking, dtype=np.int64)

    def decode_target(self, task: RankingTask) -> np.ndarray:
        """The AR decode itself, never served from a cache: what the AR baseline's latency measures.

        Backends that cache ``target_ranking`` override this with their uncached decoder.
        """
        return Verifier.target_ranking(self, task)

    def fingerprint(self) -> str:
        """Identifies the model and settings, for on-disk caches of targets."""
        return self.name

    @contextmanager
    def timed(self, phase: str, passes: int = 0, tokens: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stats.add(phase, time.perf_counter() - start, passes, tokens)
