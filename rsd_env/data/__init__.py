"""Data layer: ranking tasks from bundled TREC DL, MovieLens, user files, or a synthetic generator."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path

from rsd_env.data.movielens import read_movielens, recommendation_tasks
from rsd_env.data.sampling import ir_tasks, synthetic_tasks
from rsd_env.data.task import Candidate, RankingTask, check_unique_task_ids
from rsd_env.data.trec import load_bundled, read_qrels, read_rank_llm, read_trec_run

# Which bundled collection each split of "trec-dl" means; override with ``splits=``.
TREC_DL_SPLITS: dict[str, tuple[str, ...]] = {"train": ("dl20",), "test": ("dl19",), "all": ("dl19", "dl20")}
DATASETS = ("trec-dl", "dl19", "dl20", "ml-100k", "ml-1m", "synthetic", "rank_llm", "trec-run")

__all__ = ["Candidate", "RankingTask", "load_tasks", "DATASETS", "TREC_DL_SPLITS"]


def load_tasks(
    dataset: str = "trec-dl",
    split: str = "test",
    n: int = 20,
    *,
    sampling: str = "top",
    samples_per_query: int = 1,
    stride: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    history: int = 10,
    path: str | Path | None = None,
    qrels: str | Path | None = None,
    collection: str | Path | None = None,
    queries: str | Path | None = None,
    splits: Mapping[str, tuple[str, ...]] | None = None,
    count: int = 256,
    max_tasks: int | None = None,
) -> list[RankingTask]:
    """Ranking tasks of ``dataset``/``split`` with ``n`` candidates each.

    - ``trec-dl``: bundled TREC DL; split ``train`` = DL20, ``test`` = DL19 (see ``TREC_DL_SPLITS``).
    - ``dl19`` / ``dl20``: one bundled collection (split ``all``).
    - ``ml-100k`` / ``ml-1m``: MovieLens users, seeded 80/20 user split (``path`` for ml-1m or a copy).
    - ``rank_llm``: a rank_llm JSON/JSONL file at ``path`` (+ optional TREC ``qrels``).
    - ``trec-run``: a TREC run at ``path`` + ``collection`` and ``queries`` TSVs (+ optional ``qrels``).
    - ``synthetic``: ``count`` text-free tasks with seeded labels.
    IR options: ``sampling`` = top | windows | random, ``samples_per_query``, ``stride``, ``shuffle``.
    """
    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, numbers.Integral)
                                  or max_tasks < 1):
        raise ValueError(f"max_tasks must be an integer >= 1 or None (all tasks), got {max_tasks!r}")
    if dataset == "synthetic":
        tasks = synthetic_tasks(count, n, split, seed)
    elif dataset in ("ml-100k", "ml-1m"):
        if dataset == "ml-1m" and path is None:
            raise ValueError("ml-1m is not bundled anywhere: pass path=<folder with ratings.dat and movies.dat>")
        tasks = recommendation_tasks(read_movielens(path), n, history, split, seed=seed, name=dataset)
    elif dataset in ("trec-dl", "dl19", "dl20", "rank_llm", "trec-run"):
        tasks = []
        for hits, labels, source in _ir_sources(dataset, split, path, qrels, collection, queries, splits):
            tasks += ir_tasks(hits, labels, n, sampling, samples_per_query, stride, shuffle, seed, source)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if not tasks:
        raise ValueError(f"{dataset}/{split} gave no tasks with n={n}")
    check_unique_task_ids(tasks, f"{dataset}/{split}" + (f" ({path})" if path is not None else ""))
    return tasks[:max_tasks] if max_tasks is not None else tasks


def _ir_sources(dataset, split, path, qrels, collection, queries, splits):
    if dataset in ("dl19", "dl20", "rank_llm", "trec-run") and split != "all":
        raise ValueError(f"dataset {dataset!r} has a single split, 'all' (got {split!r}); use 'trec-dl' for "
                         "the DL20-train / DL19-test split")
    if dataset == "trec-dl":
        table = dict(splits or TREC_DL_SPLITS)
        if split not in table:
            raise ValueError(f"unknown split {split!r} for trec-dl; choose one of {sorted(table)}")
        for name in table[split]:
            yield (*load_bundled(name), name)
        return
    if dataset in ("dl19", "dl20"):
        yield (*load_bundled(dataset), dataset)
        return
    if path is None:
        raise ValueError(f"dataset {dataset!r} needs path=<file>")
    if dataset == "rank_llm":
        hits = read_rank_llm(path)
    else:
        if collection is None or queries is None:
            raise ValueError("dataset 'trec-run' needs path=<run>, collection=<docid\\ttext TSV>, "
                             "queries=<qid\\tquery TSV>")
        hits = read_trec_run(path, collection, queries)
    labels = read_qrels(qrels, {q.qid for q in hits}) if qrels is not None else None
    yield hits, labels, str(path)
