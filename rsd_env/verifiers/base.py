"""The verifier interface: what the environment needs from a target LLM.

Item ``j`` always means ``task.candidates[j]``; a ranking is an int array of item indices, best first.

**What an LLM pass is** (one definition for every verifier, the env's info and the tables): the cost of
ranking one task in forward passes of the target LLM, counted by the protocol, not by what a backend's
caches happened to save (that shows in ``tokens`` and wall time):

- the task's prompt prefill = 1 pass (it also yields the single-token scores);
- each verification of one proposal = 1 pass (a batch of k proposals counts k: batching is a throughput
  matter, visible in wall time; a proposal served from a prefix cache still counts 1);
- AR = prefill + N - 1 decode steps = N passes (the N-th item is the one left);
- the env's commit step costs 0 passes (no LLM call). An RSD episode with t verifications: 1 + t.

The prompt's shared instruction, prefilled once for all tasks, is amortised: tokens, no pass.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rsd_env.data.task import RankingTask

PREFILL_PASSES = 1
VERIFY_PASSES = 1


def episode_passes(rounds: int) -> int:
    """LLM passes of an episode with ``rounds`` verifications (the commit step is free)."""
    return PREFILL_PASSES + VERIFY_PASSES * rounds


def ar_passes(n: int) -> int:
    """LLM passes of full AR decoding of N items: the prefill plus N - 1 decode steps."""
    return PREFILL_PASSES + max(n - 1, 0)


def best_unused(row: np.ndarray, used: np.ndarray) -> int:
    """The most likely item under ``row`` that is not ``used`` (ties: lowest index), as greedy decoding does."""
    return int(np.argmax(np.where(used, -np.inf, row)))


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

    forward_passes: int = 0  # LLM passes as defined at the top of this module
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


def validate_rankings(requests: Sequence[tuple[RankingTask, Sequence[int] | np.ndarray]]
                      ) -> list[tuple[RankingTask, np.ndarray]]:
    """``validate_ranking`` for a batch: one sort when all are integer arrays of one size, else one by one
    (which also names the first bad ranking)."""
    arrays = [np.asarray(ranking) for _, ranking in requests]
    sizes = {task.n for task, _ in requests}
    if len(sizes) == 1:
        n = sizes.pop()
        if all(a.shape == (n,) and a.dtype.kind in "iu" for a in arrays):
            stacked = np.stack(arrays).astype(np.int64)
            if (np.sort(stacked, axis=1) == np.arange(n)).all():
                return [(task, row) for (task, _), row in zip(requests, stacked)]
    return [(task, validate_ranking(task, a)) for (task, _), a in zip(requests, arrays)]


def greedy_acceptance(ranking: np.ndarray, logprobs: np.ndarray) -> tuple[int, int | None]:
    """Accepted prefix length and correction item, from the verification rows.

    At each position the greedy choice is the most likely item not used earlier in the proposal;
    ties go to the lower item index so that every verifier agrees with its own AR target.
    """
    n = len(ranking)
    used = np.zeros(n, dtype=bool)
    for i in range(n):
        best = best_unused(logprobs[i], used)
        if best != int(ranking[i]):
            return i, best
        used[best] = True
    return n, None


def greedy_acceptance_batch(rankings: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``greedy_acceptance`` for k proposals of m items at once: accepted (k,) and correction (k,), -1 = none.

    ``rankings`` is (k, m), ``logprobs`` (k, m, m); same rule and tie-break as the one-by-one version.
    """
    k, m = rankings.shape
    place = np.empty_like(rankings)
    np.put_along_axis(place, rankings, np.arange(m)[None].repeat(k, 0), axis=1)  # item -> its position
    used = place[:, None, :] < np.arange(m)[None, :, None]  # (k, position, item): placed earlier
    best = np.argmax(np.where(used, -np.inf, logprobs), axis=2)  # greedy item at every position
    wrong = best != rankings
    accepted = np.where(wrong.any(axis=1), wrong.argmax(axis=1), m)
    correction = np.where(accepted < m, best[np.arange(k), np.minimum(accepted, m - 1)], -1)
    return accepted, correction


class Verifier(ABC):
    """A target LLM seen through the three operations RSD needs.

    Subclasses implement ``_first_token``, ``_verify_rows`` and may override ``_decode_target``
    (constrained greedy AR), ``target_ranking`` (a cached AR) and ``_verify_rows_batch`` (several
    proposals in one padded pass). LLM passes are counted here, by the module's definition; subclasses
    time their phases and count tokens (``timed``) but never passes.
    """

    name: str = "verifier"
    # whether answers depend on the tasks' relevance labels (a simulator does; a real LLM never sees them)
    reads_labels: bool = False

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
        self.stats.forward_passes += PREFILL_PASSES
        return np.asarray(self._first_token(task), dtype=np.float64)

    def prefill_batch(self, tasks: Sequence[RankingTask]) -> None:
        """Prefill several tasks' prompts ahead of use, together where the backend can (one padded pass).

        A throughput hint, not a protocol step: it counts no LLM pass (each task's prefill pass is counted
        when its scores are asked for) and changes no result beyond float rounding. The default does
        nothing (backends without a prompt cache prefill on first use).
        """
        return None

    def single_token_ranking(self, task: RankingTask) -> np.ndarray:
        """Items sorted by first-token score (ties by presentation order)."""
        return np.argsort(-self.first_token_scores(task), kind="stable").astype(np.int64)

    def verify(self, task: RankingTask, ranking: Sequence[int] | np.ndarray) -> Verification:
        arr = validate_ranking(task, ranking)
        self.stats.forward_passes += VERIFY_PASSES
        rows = np.asarray(self._verify_rows(task, arr), dtype=np.float64)
        accepted, correction = greedy_acceptance(arr, rows)
        return Verification(arr, rows, accepted, correction)

    def verify_batch(
        self, requests: Sequence[tuple[RankingTask, Sequence[int] | np.ndarray]]
    ) -> list[Verification]:
        """Verify several (task, ranking) pairs; backends share one pass via ``_verify_rows_batch``."""
        checked = validate_rankings(requests)
        if not checked:
            return []
        self.stats.forward_passes += VERIFY_PASSES * len(checked)
        rows = [np.asarray(r, dtype=np.float64) for r in self._verify_rows_batch(checked)]
        if len({arr.shape[0] for _, arr in checked}) == 1:  # one size: acceptance for all in one call
            accepted, correction = greedy_acceptance_batch(np.stack([a for _, a in checked]), np.stack(rows))
            return [Verification(arr, r, int(a), None if c < 0 else int(c))
                    for (_, arr), r, a, c in zip(checked, rows, accepted, correction)]
        return [Verification(arr, r, *greedy_acceptance(arr, r)) for (_, arr), r in zip(checked, rows)]

    def _verify_rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Rows for validated (task, ranking) pairs; the default verifies them one by one."""
        return [self._verify_rows(task, ranking) for task, ranking in requests]

    def target_ranking(self, task: RankingTask) -> np.ndarray:
        """Constrained greedy AR decoding (the reference); backends may serve it from a cache."""
        return self.decode_target(task)

    def decode_target(self, task: RankingTask) -> np.ndarray:
        """The AR decode itself, never served from a cache: what the AR baseline's latency measures.

        Costs ``ar_passes(N)`` LLM passes whatever the backend's caches hold.
        """
        self.stats.forward_passes += ar_passes(task.n)
        return np.asarray(self._decode_target(task), dtype=np.int64)

    def _decode_target(self, task: RankingTask) -> np.ndarray:
        """Generic constrained greedy AR: re-verify growing prefixes; real backends decode with a KV cache."""
        ranking: list[int] = []
        while len(ranking) < task.n:
            rest = [j for j in range(task.n) if j not in set(ranking)]
            arr = np.asarray(ranking + rest, dtype=np.int64)
            accepted, correction = greedy_acceptance(arr, np.asarray(self._verify_rows(task, arr)))
            ranking = list(Verification(arr, np.empty(0), accepted, correction).verified_prefix)
        return np.asarray(ranking, dtype=np.int64)

    def clear_cache(self, keep_prompts: bool = False, keep_instruction: bool = False) -> None:
        """Forget what earlier calls left in memory, so that the next call costs what a cold one does.

        The default has nothing to forget; backends that keep KV states or targets in memory override it.
        Two cold starts, by what survives:

        - ``keep_instruction=False`` (default): nothing, not even the KV of the instruction shared by all
          prompts; the next prompt pays for the instruction too. This is a freshly started process.
        - ``keep_instruction=True``: only the shared instruction KV; the next prompt pays for its own
          tokens. This is a deployed ranker that has served one query before, and the honest cold start of
          a method in the tables, which count the instruction as amortised (tokens, no pass).

        ``keep_prompts`` keeps every prompt's KV and drops only verified proposals and in-memory targets,
        so that a method pays for its own verifications on a prompt another method prefilled.
        """
        return None  # nothing is kept in memory by default

    def fingerprint(self) -> str:
        """Identifies the model and settings, for on-disk caches of targets."""
        return self.name

    @contextmanager
    def timed(self, phase: str, passes: int = 0, tokens: int = 0) -> Iterator[None]:
        """Time a phase and count its tokens; ``passes`` only for calls outside the protocol (references)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stats.add(phase, time.perf_counter() - start, passes, tokens)
