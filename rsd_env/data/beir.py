"""BEIR folders (Quora and the other BEIR datasets): ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

Two ways to candidates, because BEIR ships no first-stage ranking:

- with a TREC run over the corpus (BM25's, say): the run's hits, as for any run (``beir_run``); task ids are
  the query ids, as for ``trec-run``;
- without one: the query's judged documents (at most half of the N, highest grades first) padded with
  seeded random unjudged corpus documents (never the query's own id: Quora's queries are corpus
  questions too), in a seeded order (``judged_plus_random_tasks``); task ids end in
  ``@judged+random<seed>`` so they are never mistaken for first-stage candidates. Random documents are
  easy negatives: scores on these tasks are not comparable with scores on a run's top N.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_env.data.rows import delimited_rows
from rsd_env.data.task import Candidate, RankingTask
from rsd_env.data.trec import QueryHits, run_hits
from rsd_env.io import read_text

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class BeirFolder:
    """A BEIR dataset's texts and one split's judgements."""

    folder: Path
    corpus: dict[str, str]  # docid -> "title: text" (or the text alone: titles are optional, as in Quora)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # of ``split`` only

    @property
    def corpus_file(self) -> Path:
        return self.folder / "corpus.jsonl"

    @property
    def queries_file(self) -> Path:
        return self.folder / "queries.jsonl"


def read_beir(folder: str | Path, split: str = "test") -> BeirFolder:
    """The corpus, the queries and ``qrels/<split>.tsv`` of a BEIR folder, checked against each other."""
    folder = Path(folder)
    qrels_file = folder / "qrels" / f"{split}.tsv"
    missing = [str(f) for f in (folder / "corpus.jsonl", folder / "queries.jsonl") if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found: a BEIR folder holds corpus.jsonl, queries.jsonl and "
                                f"qrels/<split>.tsv; point path at the unzipped dataset (e.g. .../quora)")
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        fix = f"choose one of the splits {splits}" if splits else "a BEIR folder needs qrels/<split>.tsv"
        raise FileNotFoundError(f"{qrels_file} not found: no qrels for split {split!r} in {folder}; {fix}")
    corpus = _read_jsonl(folder / "corpus.jsonl", "document", title=True)
    queries = _read_jsonl(folder / "queries.jsonl", "query", title=False)
    return BeirFolder(folder, corpus, queries, _read_qrels(qrels_file, corpus, queries))


def _read_jsonl(path: Path, what: str, title: bool) -> dict[str, str]:
    """``{"_id", "text"[, "title"]}`` lines; a repeated id, an empty text or a bad line names its line."""
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path, f"BEIR {what}s file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            key, text = str(obj["_id"]), obj.get("text", "")
            head = (obj.get("title") or "") if title else ""
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} line {lineno}: not a BEIR {what} ({err!r}); expected a JSON object with "
                             "'_id' and 'text'" + (" (and optionally 'title')" if title else "")) from None
        if not isinstance(text, str) or not isinstance(head, str):
            raise ValueError(f"{path} line {lineno}: {what} {key!r} has a text or title that is not a string")
        if not text.strip() and not head.strip():
            raise ValueError(f"{path} line {lineno}: {what} {key!r} has an empty text; give it one or delete "
                             "the line")
        if key in line_of:
            raise ValueError(f"{path} lines {line_of[key]} and {lineno}: {what} id {key!r} appears twice; keep one")
        line_of[key] = lineno
        out[key] = f"{head}: {text}" if head.strip() else text
    if not out:
        raise ValueError(f"{path}: no {what}s found")
    return out


def _read_qrels(path: Path, corpus: Mapping[str, str], queries: Mapping[str, str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    line_of: dict[tuple[str, str], int] = {}
    for lineno, (qid, docid, grade) in delimited_rows(path, "\t", "BEIR qrels file",
                                                      "query-id<TAB>corpus-id<TAB>score", width=3):
        if lineno == 1 and (qid, docid, grade) == QRELS_HEADER:
            continue
        where = f"{path} line {lineno}"
        try:
            label = int(grade)
        except ValueError:
            raise ValueError(f"{where}: score {grade!r} is not an integer; expected "
                             "'query-id<TAB>corpus-id<TAB>score'") from None
        if qid not in queries:
            raise ValueError(f"{where}: query {qid!r} is not in queries.jsonl; the qrels belong to another "
                             "dataset, or queries.jsonl is incomplete")
        if docid not in corpus:
            raise ValueError(f"{where}: document {docid!r} is not in corpus.jsonl; the qrels belong to another "
                             "dataset, or corpus.jsonl is incomplete")
        if (qid, docid) in line_of:
            raise ValueError(f"{where}: query {qid!r} judges document {docid!r} again (line "
                             f"{line_of[qid, docid]}); keep one")
        line_of[qid, docid] = lineno
        qrels.setdefault(qid, {})[docid] = label
    if not qrels:
        raise ValueError(f"{path}: no judgements found")
    return qrels


def beir_run(folder: str | Path, run: str | Path, split: str = "test"
             ) -> tuple[list[QueryHits], dict[str, dict[str, int]]]:
    """A TREC run over a BEIR corpus as queries with hits, and the split's qrels.

    The run may rank a subset of the split's queries; a query of another split is an error (wrong split?).
    """
    data = read_beir(folder, split)
    hits = run_hits(run, data.corpus, data.queries, data.corpus_file, data.queries_file)
    itself = sorted(q.qid for q in hits if any(h.docid == q.qid for h in q.hits)
                    and data.corpus[q.qid] == data.queries[q.qid])
    if itself:
        raise ValueError(f"{run}: {len(itself)} queries (e.g. {itself[:3]}) rank themselves: the document with "
                         "the query's id and text (Quora's queries are corpus questions too). BEIR's evaluation "
                         "ignores such hits; drop them from the run, e.g. awk '$1 != $3' run > run.clean")
    unjudged = sorted(q.qid for q in hits if q.qid not in data.qrels)
    if unjudged:
        raise ValueError(f"{run}: {len(unjudged)} queries (e.g. {unjudged[:3]}) have no judgements in "
                         f"qrels/{split}.tsv; pass the split the run was made for (split=...)")
    return hits, data.qrels


def judged_plus_random_tasks(data: BeirFolder, n: int, seed: int) -> list[RankingTask]:
    """One task per judged query: its judged documents (at most ``n // 2``, highest grades first, ties in
    a seeded order) and seeded random unjudged corpus documents up to ``n``, in a seeded order."""
    if n < 2:
        raise ValueError(f"n must be at least 2 candidates, got {n}")
    docids = list(data.corpus)
    tasks = []
    for qid in sorted(data.qrels):
        judged = data.qrels[qid]
        rng = np.random.default_rng([seed, zlib.crc32(qid.encode("utf-8"))])
        names = list(judged)
        order = [names[k] for k in rng.permutation(len(names))]
        kept = sorted(order, key=lambda d: -judged[d])[: n // 2]  # stable: the seeded order within a grade
        if len(docids) < n + len(judged) + 1:
            raise ValueError(f"{data.corpus_file}: {len(docids)} documents are too few to pad query {qid!r}'s "
                             f"{len(judged)} judged documents to n={n} with unjudged ones; lower n")
        draws = rng.choice(len(docids), size=n - len(kept) + len(judged) + 1, replace=False)  # + the query's id
        padding = [docids[k] for k in draws if docids[k] not in judged and docids[k] != qid][: n - len(kept)]
        items = [(kept + padding)[k] for k in rng.permutation(n)]
        tasks.append(RankingTask(task_id=f"{qid}@judged+random{seed}", domain="ir",
                                 candidates=tuple(Candidate(d, data.corpus[d]) for d in items),
                                 query=data.queries[qid], qrels=judged))
    return tasks
