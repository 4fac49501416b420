"""Turning a query's first-stage hits into N-candidate tasks: the top window, all windows, or
seeded random subsets (training augmentation), optionally in a seeded random presentation order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rsd_env.data.task import Candidate, RankingTask
from rsd_env.data.trec import QueryHits

SAMPLINGS = ("top", "windows", "random")


def _task(q: QueryHits, suffix: str, hits: Sequence[Candidate], qrels, rng, shuffle: bool) -> RankingTask:
    hits = list(hits)
    if shuffle:
        hits = [hits[k] for k in rng.permutation(len(hits))]
    return RankingTask(task_id=f"{q.qid}{suffix}", domain="ir", candidates=tuple(hits), query=q.query,
                       qrels=qrels.get(q.qid) if qrels is not None else None, query_id=q.qid)


def ir_tasks(
    queries: Sequence[QueryHits],
    qrels: Mapping[str, Mapping[str, int]] | None,
    n: int = 20,
    sampling: str = "top",
    samples_per_query: int = 1,
    stride: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    source: str = "dataset",
) -> list[RankingTask]:
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS}")
    if n < 2:
        raise ValueError(f"n must be at least 2 candidates, got {n}")
    most = max(len(q.hits) for q in queries)
    if n > most:
        raise ValueError(f"n={n} is larger than the candidates available in {source} (at most {most} per "
                         "query); lower n")
    out: list[RankingTask] = []
    for qi, q in enumerate(queries):
        rng = np.random.default_rng([seed, qi])
        if sampling == "top":
            out.append(_task(q, "", q.hits[:n], qrels, rng, shuffle))
        elif sampling == "windows":
            step = stride or n
            for start in range(0, max(len(q.hits) - n, 0) + 1, step):
                out.append(_task(q, f"@w{start}", q.hits[start : start + n], qrels, rng, shuffle))
        else:
            k = min(n, len(q.hits))
            for s in range(samples_per_query):
                pick = np.sort(rng.choice(len(q.hits), size=k, replace=False))
                out.append(_task(q, f"#r{seed}.{s}", [q.hits[i] for i in pick], qrels, rng, shuffle))
    return out


def synthetic_tasks(count: int = 256, n: int = 20, split: str = "test", seed: int = 0) -> list[RankingTask]:
    """Text-free tasks with seeded graded labels: for the simulated verifier and fast RL research."""
    offsets = {"train": 1, "test": 2}
    if split not in (*offsets, "all"):
        raise ValueError(f"unknown split {split!r} for 'synthetic'; use 'train', 'test' or 'all'")
    if split == "all":
        return synthetic_tasks(count, n, "train", seed) + synthetic_tasks(count, n, "test", seed)
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, offsets[split], k])
        grades = rng.choice(4, size=n, p=[0.55, 0.25, 0.12, 0.08])
        cands = tuple(Candidate(f"d{k}.{j}", f"synthetic item {j} of task {k}") for j in range(n))
        out.append(RankingTask(f"synthetic:{split}:{k}", "ir", cands, query=f"synthetic query {k}",
                               qrels={c.docid: int(g) for c, g in zip(cands, grades)}))
    return out
