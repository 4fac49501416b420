"""IR tasks: TREC DL19/DL20 (bundled), rank_llm JSON/JSONL files, and TREC run + TSV collection.

Every reader turns a first-stage ranking into ``QueryHits`` (query text + ranked candidates); windowing
into N-candidate ``RankingTask``s happens in ``rsd_env.data.sampling``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rsd_env.data.task import Candidate

BUNDLED_TREC = {"dl19": ("trec_dl19", "qrels.dl19-passage.txt"), "dl20": ("trec_dl20", "qrels.dl20-passage.txt")}


@dataclass(frozen=True)
class QueryHits:
    """A query and its first-stage candidates, best first."""

    qid: str
    query: str
    hits: tuple[Candidate, ...]


def _bundled_dir(name: str) -> Path:
    return Path(str(resources.files("rsd_env.data").joinpath("files", BUNDLED_TREC[name][0])))


def _candidate_text(hit: dict) -> str:
    """rank_llm has used several keys for the passage text over its versions."""
    if "content" in hit:
        return str(hit["content"])
    doc = hit.get("doc", hit)
    for key in ("contents", "text", "segment", "content"):
        if key in doc:
            title = doc.get("title")
            return f"{title}: {doc[key]}" if title else str(doc[key])
    raise KeyError("no passage text (expected 'content', or 'doc' with 'contents'/'text'/'segment')")


def _parse_record(obj: dict, where: str) -> QueryHits:
    try:
        if "candidates" in obj:  # rank_llm Request: {"query": {"text", "qid"}, "candidates": [...]}
            qid, query, raw = str(obj["query"]["qid"]), str(obj["query"]["text"]), obj["candidates"]
        else:  # rank_llm retrieve_results: {"query": str, "hits": [{"qid", "docid", "content", ...}]}
            raw = obj["hits"]
            qid = str(obj.get("qid", raw[0].get("qid") if raw else None))
            query = str(obj["query"])
        hits = tuple(
            Candidate(str(h["docid"]), _candidate_text(h), float(h["score"]) if "score" in h else None)
            for h in raw
        )
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(
            f"{where}: not a rank_llm record ({err!r}); expected {{'query': str, 'hits': [{{'docid', "
            "'content', 'score'}}]}} or {{'query': {{'qid', 'text'}}, 'candidates': [...]}}"
        ) from err
    if qid == "None":
        raise ValueError(f"{where}: record has no 'qid'; add one to the record or to its hits")
    return QueryHits(qid, query, hits)


def read_rank_llm(path: str | Path) -> list[QueryHits]:
    """Queries from a rank_llm JSON list or JSON-lines file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    records: list[tuple[str, dict]] = []
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = [(f"{path} item {i}", o) for i, o in enumerate(json.loads(text))]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: malformed JSON ({err}); fix the file or give JSON lines") from err
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path} line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {lineno}: malformed JSON ({err.msg}); fix that line") from err
    if not records:
        raise ValueError(f"{path}: no queries found")
    return [_parse_record(obj, where) for where, obj in records]


def read_qrels(path: str | Path, known_qids: set[str] | None = None) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid 0 docid grade``; qids not in ``known_qids`` are an error, not dropped."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise ValueError(f"{path} line {lineno}: expected 'qid iter docid grade', got {line!r}")
        try:
            qrels[parts[0]][parts[2]] = int(parts[3])
        except ValueError as err:
            raise ValueError(f"{path} line {lineno}: grade {parts[3]!r} is not an integer") from err
    if known_qids is not None:
        unknown = sorted(set(qrels) - known_qids)
        if unknown:
            raise ValueError(
                f"{path}: qrels for {len(unknown)} query ids that are not in the run/queries "
                f"(e.g. {unknown[:3]}); pass the qrels that belong to these queries"
            )
    return dict(qrels)


def read_trec_run(run_path: str | Path, collection_tsv: str | Path, queries_tsv: str | Path) -> list[QueryHits]:
    """A TREC run file (``qid Q0 docid rank score tag``) + ``docid<TAB>text`` + ``qid<TAB>query``."""
    queries = _read_tsv(queries_tsv, "queries")
    collection = _read_tsv(collection_tsv, "collection")
    ranked: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for lineno, line in enumerate(Path(run_path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise ValueError(f"{run_path} line {lineno}: expected 'qid Q0 docid rank score tag', got {line!r}")
        ranked[parts[0]].append((int(parts[3]), parts[2], float(parts[4])))
    out = []
    for qid, rows in ranked.items():
        if qid not in queries:
            raise ValueError(f"{run_path}: query {qid!r} is missing from {queries_tsv}")
        missing = [d for _, d, _ in rows if d not in collection]
        if missing:
            raise ValueError(f"{run_path}: {len(missing)} docids of query {qid} are missing from "
                             f"{collection_tsv} (e.g. {missing[:3]})")
        hits = tuple(Candidate(d, collection[d], s) for _, d, s in sorted(rows))
        out.append(QueryHits(qid, queries[qid], hits))
    return out


def _read_tsv(path: str | Path, what: str) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        if not sep:
            raise ValueError(f"{path} line {lineno}: {what} TSV needs 'id<TAB>text', got {line[:80]!r}")
        out[key] = value
    return out


def load_bundled(name: str) -> tuple[list[QueryHits], dict[str, dict[str, int]]]:
    """The bundled TREC DL19 or DL20 BM25 top-100 with its official qrels."""
    folder = _bundled_dir(name)
    queries = read_rank_llm(folder / "bm25_top100.jsonl")
    qrels = read_qrels(folder / BUNDLED_TREC[name][1], {q.qid for q in queries} | _qrels_only_qids(folder))
    return queries, qrels


def _qrels_only_qids(folder: Path) -> set[str]:
    """Official qrels judge the same queries as queries.tsv lists."""
    return set(_read_tsv(folder / "queries.tsv", "queries"))
