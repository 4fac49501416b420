"""Plain data classes for one ranking request (rank_llm style: request / candidate)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Domain = Literal["ir", "rec"]


@dataclass(frozen=True)
class Candidate:
    """One item to be ranked: a passage (IR) or a movie title (recommendation)."""

    docid: str
    text: str
    score: float | None = None  # first-stage (e.g. BM25) score, if any


@dataclass(frozen=True)
class RankingTask:
    """A query (IR) or a user's history (recommendation) plus the candidates to order.

    The candidates' order is the *presentation order*: item index ``j`` of every ranking,
    verification row and observation refers to ``candidates[j]``.
    """

    task_id: str
    domain: Domain
    candidates: tuple[Candidate, ...]
    query: str = ""  # IR: the search query
    history: tuple[str, ...] = ()  # rec: watched titles, oldest first
    qrels: Mapping[str, int] | None = field(default=None, hash=False, compare=False)
    held_out: str | None = None  # rec: docid of the true next item
    # the query several tasks were cut from (windows, random draws): paired tests count it once
    query_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError(f"task {self.task_id!r} has no candidates")
        ids = [c.docid for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {self.task_id!r} has duplicate candidate ids")
        if self.domain not in ("ir", "rec"):
            raise ValueError(f"task {self.task_id!r}: domain must be 'ir' or 'rec', got {self.domain!r}")

    def __hash__(self) -> int:
        # tasks key every per-task cache; hashing all candidates' texts dominated a simulated env step
        return hash(self.task_id)

    @property
    def group(self) -> str:
        """The unit of independent evidence: the source query when the task is one of its windows or draws."""
        return self.query_id or self.task_id

    @property
    def n(self) -> int:
        return len(self.candidates)

    @property
    def docids(self) -> tuple[str, ...]:
        return tuple(c.docid for c in self.candidates)

    def has_labels(self) -> bool:
        return bool(self.qrels) or self.held_out is not None

    def relevance(self) -> dict[str, int]:
        """Graded labels for the candidates (held-out item = 1 for recommendation)."""
        if self.qrels:
            return {d: int(self.qrels.get(d, 0)) for d in self.docids}
        if self.held_out is not None:
            return {d: int(d == self.held_out) for d in self.docids}
        return {}


def check_unique_task_ids(tasks: Sequence[RankingTask], source: str) -> None:
    """Task ids key targets and results, so two tasks with one id would be scored against each other."""
    counts = Counter(t.task_id for t in tasks)
    repeated = sorted(k for k, c in counts.items() if c > 1)
    if repeated:
        raise ValueError(f"{source}: {len(repeated)} task ids appear more than once (e.g. {repeated[:3]}); every "
                         "task needs its own id")
