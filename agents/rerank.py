"""Sliding-window reranking of a deep first-stage list (rank_llm style), batched across queries.

A top-100 list is too long for one listwise prompt, so it is reranked in windows (rank_llm's scheme: size
20, stride 10, from the back of the list to the front, so good passages bubble up to the top). Each window
is one episode of any ``RankingMethod`` at budget T. Windows of one query are sequential (a window's
candidates depend on the previous window's output); windows of different queries advance together, with
one ``verify_batch`` call per verification round across all of them, so a run of many queries is not a
loop of single LLM calls. Methods that do not follow the episode protocol (AR) rank each window with their
own ``rank``. The prompts of windows that open together are prefilled together too
(``Verifier.prefill_batch``: one padded pass on the HF verifier where its device gains from it).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.episode import Episode
from agents.methods import RankingMethod, make_method
from agents.pretrained import default_method
from rsd_env.config import DEFAULT_CONFIG
from rsd_env.data.task import Candidate, RankingTask
from rsd_env.data.trec import QueryHits
from rsd_env.env import RSDRankEnv
from rsd_env.verifiers import Verifier, make_verifier
from rsd_env.verifiers.length_defaults import with_length_defaults
from rsd_env.verifiers.prompts import IDENTIFIERS

__all__ = ["WindowSpec", "RerankResult", "SlidingWindowReranker", "rerank", "MAX_WINDOW", "MAX_BUDGET"]

MAX_WINDOW = len(IDENTIFIERS)  # canonical identifiers A..Z, AA..ZZ; the verifier's tokenizer may allow fewer
MAX_BUDGET = DEFAULT_CONFIG["max_budget"]  # a window's env keeps the default observation size


@dataclass(frozen=True)
class WindowSpec:
    """How a query's list is cut into windows: the first ``top`` hits, ``window`` at a time, moving
    ``stride`` towards the front, ``passes`` times over."""

    top: int = 100
    window: int = 20
    stride: int = 10
    passes: int = 1

    def __post_init__(self) -> None:
        for name in ("top", "window", "stride", "passes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.window < 2:
            raise ValueError(f"window must hold at least 2 candidates to rank, got {self.window}")
        if self.window > MAX_WINDOW:
            raise ValueError(f"window {self.window} is larger than the {MAX_WINDOW} identifiers "
                             f"({IDENTIFIERS[0]}..{IDENTIFIERS[-1]}) a prompt can label candidates with; "
                             f"use a window <= {MAX_WINDOW}")
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} > window {self.window} would leave candidates between "
                             "windows that are never reranked; use stride <= window")

    def spans(self, depth: int) -> list[tuple[int, int]]:
        """``(start, end)`` slices of one pass over a list of ``depth`` hits, back to front.

        rank_llm's loop: the last window ends at ``min(top, depth)``, each next one ``stride`` earlier,
        the first is clipped at 0, and no window repeats the one before it. One-candidate windows are
        skipped (nothing to rank).
        """
        out: list[tuple[int, int]] = []
        end = min(self.top, depth)
        start = end - self.window
        while end > 0 and start + self.stride != 0:
            start = max(start, 0)
            if end - start >= 2:
                out.append((start, end))
            end, start = end - self.stride, start - self.stride
        return out


@dataclass
class RerankResult:
    """One reranked query: all its hits (reranked top, then the untouched rest) and what it cost.

    ``wall_ms`` runs from the query's first window to its last; in a batched run queries overlap, so
    throughput is the run's queries per second, not ``1000 / wall_ms``. ``cpu_ms`` is this process's CPU
    time over the same span: on a shared machine it is the steadier cost figure (with ``batch = 1`` and
    one torch thread it is the query's own compute). ``tokens`` of a verification pass shared by several
    queries are split in proportion to their windows' sizes.
    """

    qid: str
    query: str
    hits: tuple[Candidate, ...]
    llm_passes: int = 0
    tokens: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    windows: int = 0
    rounds: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def docids(self) -> list[str]:
        return [c.docid for c in self.hits]


class _NoReference(Verifier):
    """The verifier as a reranking window sees it: the env asks for the AR target on reset (to score
    agreement), which a reranker has no use for, so ``target_ranking`` answers the presentation order
    and costs nothing; everything else (and the cost counters) is the wrapped verifier's."""

    def __init__(self, inner: Verifier) -> None:
        self.inner = inner
        self.stats = inner.stats
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:  # clear_cache, passage_tokens, ... of the real verifier
        return getattr(self.__dict__["inner"], name)

    def _first_token(self, task: RankingTask) -> np.ndarray:
        return self.inner.first_token_scores(task)

    def _verify_rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        return self.inner.verify(task, ranking).logprobs

    def first_token_scores(self, task: RankingTask) -> np.ndarray:
        return self.inner.first_token_scores(task)

    def prefill_batch(self, tasks: Sequence[RankingTask]) -> None:
        self.inner.prefill_batch(tasks)

    def verify(self, task, ranking):
        return self.inner.verify(task, ranking)

    def verify_batch(self, requests):
        return self.inner.verify_batch(requests)

    def target_ranking(self, task: RankingTask) -> np.ndarray:
        return np.arange(task.n, dtype=np.int64)

    def decode_target(self, task: RankingTask) -> np.ndarray:
        return self.inner.decode_target(task)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()


class _Query:
    """A query in flight: its working list, the windows still to rank, and its cost so far."""

    def __init__(self, request: QueryHits, spec: WindowSpec, labels: Mapping[str, int] | None) -> None:
        self.request = request
        self.hits = list(request.hits)
        self.labels = labels
        spans = spec.spans(len(self.hits))
        self.todo = deque((p, s, e) for p in range(spec.passes) for s, e in spans)
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.result = RerankResult(request.qid, request.query, ())

    def charge(self, passes: int, tokens: float) -> None:
        self.result.llm_passes += passes
        self.result.tokens += int(round(tokens))

    def finish(self) -> RerankResult:
        r = self.result
        r.hits = tuple(self.hits)
        r.wall_ms = 1000.0 * (time.perf_counter() - self.started)
        r.cpu_ms = 1000.0 * (time.process_time() - self.cpu_started)
        return r


def _charge_shared(members: Sequence[tuple[_Query, RankingTask]], passes: int, tokens: int) -> None:
    """Charge one LLM call shared by several windows to their queries: ``passes`` each, and the call's
    tokens in proportion to the windows' sizes."""
    sizes = np.array([task.n for _, task in members], dtype=np.float64)
    for (query, _), share in zip(members, sizes / sizes.sum()):
        query.charge(passes, share * tokens)


@dataclass
class _Window:
    """One window of a query: where it sits in the query's list, its task, and either its episode (with
    its own copy of the method: methods keep per-task state) or, for a non-episodic method (AR), the
    ranking the method's own ``rank`` gave."""

    query: _Query
    span: tuple[int, int]
    task: RankingTask
    episode: Episode | None = None
    ranking: np.ndarray | None = None


class SlidingWindowReranker:
    """Reranks queries with ``method`` at budget ``budget`` in sliding windows; ``batch`` queries at a time.

    ``method``: a ``RankingMethod`` or a ``make_method`` spec (``"heuristic"``, ``"ar"``,
    ``"agent:<checkpoint>"``, any name in ``agents.methods.METHODS``). ``verifier``: a ``Verifier`` or a
    ``make_verifier`` spec (``"bundled"`` loads the shipped adapter for the window's length, ``"simulated"``
    the profile fitted to it, as the env does for its ``n``). ``batch = 1`` ranks one query at a time (the
    latency of a lone query).
    """

    def __init__(self, method: RankingMethod | str, verifier: Verifier | Any = "bundled",
                 spec: WindowSpec | None = None, budget: int = 2, batch: int = 16) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be an integer >= 1 (verification rounds per window), got {budget!r}")
        if budget > MAX_BUDGET:
            raise ValueError(f"budget {budget} is more verification rounds than a window's episode holds (its "
                             f"observation has {MAX_BUDGET}); use a budget of 1..{MAX_BUDGET}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1 (queries in flight), got {batch!r}")
        self.method = make_method(method) if isinstance(method, str) else method
        self.method.cold = False  # a deployed reranker keeps its caches; each window is a new prompt anyway
        self.spec = spec or WindowSpec()
        options = with_length_defaults(verifier, {}, self.spec.window)
        self.verifier = make_verifier(verifier, **options)
        self.budget = budget
        self.batch = batch
        self._view = _NoReference(self.verifier)
        self.seconds = 0.0  # wall time of the last ``rerank`` call
        # AR and other methods that do not run the episode protocol rank a window with their own ``rank``
        self._episodic = type(self.method).rank is RankingMethod.rank

    def rerank(self, requests: Sequence[QueryHits], qrels: Mapping[str, Mapping[str, int]] | None = None,
               on_result: Callable[[RerankResult], None] | None = None, progress: bool = False
               ) -> list[RerankResult]:
        """Rerank every request; results in the requests' order. ``on_result`` is called as each query
        completes (e.g. to save it), in completion order. ``qrels`` only label the window tasks (the
        simulated LLM reads them; real LLMs never see them)."""
        ids = [r.qid for r in requests]
        if len(set(ids)) != len(ids):
            dup = next(q for q in ids if ids.count(q) > 1)
            raise ValueError(f"query {dup!r} appears more than once in the input; give each query once")
        pending = deque(requests)
        active: list[_Window] = []
        results: dict[str, RerankResult] = {}
        bar = tqdm(total=len(requests), desc=f"rerank {self.method.name}", unit="query", disable=not progress)
        started = time.perf_counter()
        try:
            while pending or active:
                while pending and len(active) < self.batch:
                    admit = [pending.popleft() for _ in range(min(len(pending), self.batch - len(active)))]
                    opened, finished = self._open(
                        [_Query(r, self.spec, qrels.get(r.qid) if qrels else None) for r in admit])
                    active.extend(opened)
                    for query in finished:
                        self._done(query, results, on_result, bar)
                self._round([w for w in active if w.episode.wants_round()])
                still: list[_Window] = []
                moving: list[_Query] = []
                for w in active:
                    if w.episode.wants_round():
                        still.append(w)
                    else:
                        self._close(w)  # window finished: its query moves on to its next window, or is done
                        moving.append(w.query)
                opened, finished = self._open(moving)
                for query in finished:
                    self._done(query, results, on_result, bar)
                active = still + opened
                bar.set_postfix(windows=len(active))
        finally:
            bar.close()
        self.seconds = time.perf_counter() - started
        return [results[q] for q in ids]

    # ---- one window's episode ------------------------------------------------------------------------
    def _open(self, queries: Sequence[_Query]) -> tuple[list[_Window], list[_Query]]:
        """The next window of each query, reset: (windows in flight, queries with no window left).

        The new windows' prompts are prefilled together (``Verifier.prefill_batch``) before their envs
        reset. A window that needs no verification round (STD, AR's own ``rank``, a stop rule) is finished
        at once and its query moves on to its next window in the next batch.
        """
        opened: list[_Window] = []
        finished: list[_Query] = []
        todo = list(queries)
        while todo:
            staged: list[tuple[_Query, tuple[int, int], RankingTask]] = []
            for query in todo:
                if not query.todo:
                    finished.append(query)
                    continue
                p, start, end = query.todo.popleft()
                task = RankingTask(f"{query.request.qid}#p{p}:{start}-{end}", "ir", tuple(query.hits[start:end]),
                                   query=query.request.query, qrels=query.labels)
                staged.append((query, (start, end), task))
            if staged:
                before = self.verifier.stats.snapshot()
                self.verifier.prefill_batch([task for _, _, task in staged])
                cost = self.verifier.stats.since(before)  # tokens only: passes are counted on reset
                _charge_shared([(query, task) for query, _, task in staged], 0, cost.tokens)
            todo = []
            for query, span, task in staged:
                window = self._start(query, span, task)
                if window is None:
                    todo.append(query)
                else:
                    opened.append(window)
        return opened, finished

    def _start(self, query: _Query, span: tuple[int, int], task: RankingTask) -> _Window | None:
        """One window's episode, reset; ``None`` when it finished at once (then closed and written back).

        Non-episodic methods (AR) rank the whole window here."""
        env = RSDRankEnv({"tasks": [task], "verifier": self._view, "n": self.spec.window,
                          "budget": self.budget, "task_order": "cycle"})
        method = copy.copy(self.method)
        before = self.verifier.stats.snapshot()
        window = _Window(query, span, task)
        query.result.windows += 1
        if self._episodic:
            window.episode = Episode(method, env, task.task_id)
        else:
            window.ranking = method.rank(env, task.task_id).ranking
        cost = self.verifier.stats.since(before)
        query.charge(cost.forward_passes, cost.tokens)
        if window.episode is None or not window.episode.wants_round():
            self._close(window)
            return None
        return window

    def _round(self, windows: Sequence[_Window]) -> None:
        """One verification round of every window in ``windows``, in one batched LLM call."""
        if not windows:
            return
        proposals = [w.episode.propose() for w in windows]
        before = self.verifier.stats.snapshot()
        round_start = time.perf_counter()
        verdicts = self.verifier.verify_batch([(w.task, r) for w, r in zip(windows, proposals)])
        round_ms = 1000.0 * (time.perf_counter() - round_start)  # every window waited for the whole batch
        cost = self.verifier.stats.since(before)
        _charge_shared([(w.query, w.task) for w in windows], 1 if cost.forward_passes else 0, cost.tokens)
        for w, v in zip(windows, verdicts):
            w.episode.apply(v, round_ms)
            w.query.result.rounds += 1

    @staticmethod
    def _close(w: _Window) -> None:
        """Commit the window's final ranking (``Episode.finish``: the free commit step, so the last
        verification's rows are used) and write it back into its query's list."""
        ranking = w.ranking if w.episode is None else w.episode.finish()
        start, end = w.span
        w.query.hits[start:end] = [w.task.candidates[j] for j in ranking]

    @staticmethod
    def _done(query: _Query, results: dict[str, RerankResult], on_result, bar) -> None:
        result = query.finish()
        results[result.qid] = result
        if on_result is not None:
            on_result(result)
        bar.update(1)


def rerank(requests: Sequence[QueryHits], method: RankingMethod | str | None = None, budget: int = 2,
           verifier: Verifier | Any = "bundled", top: int = 100, window: int = 20, stride: int = 10,
           passes: int = 1, batch: int = 16, qrels: Mapping[str, Mapping[str, int]] | None = None,
           progress: bool = False) -> list[RerankResult]:
    """Rerank first-stage results (``rsd_env.data.trec.read_rank_llm`` / ``read_trec_run``) in sliding
    windows; the Python face of ``rsd-rerank``. ``method`` None: the one ``rsd-rerank`` picks for the window
    length (``agents.pretrained.default_method``)."""
    if method is None:
        method = default_method(window)  # windows are envs of this width (shorter ones padded)
    reranker = SlidingWindowReranker(method, verifier, WindowSpec(top, window, stride, passes), budget, batch)
    return reranker.rerank(requests, qrels=qrels, progress=progress)
