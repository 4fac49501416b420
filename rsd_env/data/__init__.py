"""Data layer: ranking tasks from bundled TREC DL, MovieLens, BEIR and RecBole folders, user files, or a
synthetic generator."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path

from rsd_env.data.beir import beir_run, judged_plus_random_tasks, read_beir
from rsd_env.data.movielens import read_movielens
from rsd_env.data.recbole import read_atomic
from rsd_env.data.recommendation import recommendation_tasks
from rsd_env.data.sampling import ir_tasks, synthetic_tasks
from rsd_env.data.task import Candidate, RankingTask, check_unique_task_ids
from rsd_env.data.trec import load_bundled, read_qrels, read_rank_llm, read_trec_run

# Which bundled collection each split of "trec-dl" means; override with ``splits=``.
TREC_DL_SPLITS: dict[str, tuple[str, ...]] = {"train": ("dl20",), "test": ("dl19",), "all": ("dl19", "dl20")}
DATASETS = ("trec-dl", "dl19", "dl20", "ml-100k", "ml-1m", "recbole", "beir", "synthetic", "rank_llm", "trec-run")

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
    run: str | Path | None = None,
    name: str | None = None,
    splits: Mapping[str, tuple[str, ...]] | None = None,
    count: int = 256,
    max_tasks: int | None = None,
) -> list[RankingTask]:
    """Ranking tasks of ``dataset``/``split`` with ``n`` candidates each.

    - ``trec-dl``: bundled TREC DL; split ``train`` = DL20, ``test`` = DL19 (see ``TREC_DL_SPLITS``).
    - ``dl19`` / ``dl20``: one bundled collection (split ``all``).
    - ``ml-100k`` / ``ml-1m``: MovieLens users, seeded 80/20 user split (``path`` for ml-1m or a copy).
    - ``recbole``: any RecBole atomic dataset ``name`` (``<name>.inter`` + ``.item``) in folder ``path``
      (Amazon_Video_Games, ml-1m, ...), as MovieLens: LLMRank-style, seeded 80/20 user split.
    - ``beir``: the BEIR folder ``path`` (Quora, ...), split = its ``qrels/<split>.tsv``; candidates from the
      TREC ``run`` if given, else each query's judged documents padded with seeded random documents
      (ids ``<qid>@judged+random<seed>``; see ``rsd_env.data.beir``).
    - ``rank_llm``: a rank_llm JSON/JSONL file at ``path`` (+ optional TREC ``qrels``).
    - ``trec-run``: a TREC run at ``path`` + ``collection`` and ``queries`` TSVs (+ optional ``qrels``).
    - ``synthetic``: ``count`` text-free tasks with seeded labels.
    IR options: ``sampling`` = top | windows | random, ``samples_per_query``, ``stride``, ``shuffle``.
    """
    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, numbers.Integral)
                                  or max_tasks < 1):
        raise ValueError(f"max_tasks must be an integer >= 1 or None (all tasks), got {max_tasks!r}")
    for option, value, owner in (("run", run, "beir"), ("name", name, "recbole")):
        if value is not None and dataset != owner:
            raise ValueError(f"{option}= is an option of dataset {owner!r}, not of {dataset!r}; drop it")
    if dataset == "synthetic":
        tasks = synthetic_tasks(count, n, split, seed)
    elif dataset in ("ml-100k", "ml-1m"):
        tasks = recommendation_tasks(read_movielens(path, dataset), n, history, split, seed=seed, name=dataset)
    elif dataset == "recbole":
        if path is None:
            raise ValueError("dataset 'recbole' needs path=<folder with <name>.inter and <name>.item> (and name=)")
        name = name or Path(path).name
        tasks = recommendation_tasks(read_atomic(path, name), n, history, split, seed=seed, name=name)
    elif dataset == "beir":
        tasks = _beir_tasks(split, path, run, n, sampling, samples_per_query, stride, shuffle, seed)
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


def _beir_tasks(split, path, run, n, sampling, samples_per_query, stride, shuffle, seed) -> list[RankingTask]:
    if path is None:
        raise ValueError("dataset 'beir' needs path=<BEIR folder with corpus.jsonl, queries.jsonl, qrels/> "
                         "(and optionally run=<TREC run over its corpus>)")
    if run is not None:
        hits, qrels = beir_run(path, run, split)
        return ir_tasks(hits, qrels, n, sampling, samples_per_query, stride, shuffle, seed, str(run))
    if sampling != "top":
        raise ValueError(f"sampling={sampling!r} needs a first-stage run: without run=, each BEIR query's "
                         "candidates are already a seeded random draw; use sampling='top' or pass run=")
    return judged_plus_random_tasks(read_beir(path, split), n, seed)


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
