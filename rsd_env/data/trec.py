"""IR tasks: TREC DL19/DL20 (bundled), rank_llm JSON/JSONL files, and TREC run + TSV collection.

Every reader turns a first-stage ranking into ``QueryHits`` (query text + ranked candidates); windowing
into N-candidate ``RankingTask``s happens in ``rsd_env.data.sampling``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rsd_env.data.task import Candidate
from rsd_env.io import read_text

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
        return _text(hit["content"], "content")
    doc = hit.get("doc", hit)
    for key in ("contents", "text", "segment", "content"):
        if key in doc:
            title = doc.get("title")
            text = _text(doc[key], key)
            return f"{title}: {text}" if title else text
    raise KeyError("no passage text (expected 'content', or 'doc' with 'contents'/'text'/'segment')")


def _text(value, key: str) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise _BadPassage(f"passage text {key!r} is {json.dumps(value)[:60]}, not a string; give every hit "
                          "its passage text (or drop the hit)")
    return str(value)


class _BadPassage(ValueError):
    pass


_RECORD_SHAPES = ("{'query': str, 'hits': [{'qid', 'docid', 'content', 'score'}]} or "
                  "{'query': {'qid', 'text'}, 'candidates': [{'docid', 'doc': {...}, 'score'}]}")


def _parse_record(obj: dict, where: str) -> QueryHits:
    try:
        if "candidates" in obj:  # rank_llm Request: {"query": {"text", "qid"}, "candidates": [...]}
            qid, query, raw = str(obj["query"]["qid"]), str(obj["query"]["text"]), obj["candidates"]
        else:  # rank_llm retrieve_results: {"query": str, "hits": [{"qid", "docid", "content", ...}]}
            raw = obj["hits"]
            qid = str(obj.get("qid", raw[0].get("qid") if raw else None))
            query = str(obj["query"])
        hits = []
        for k, h in enumerate(raw):
            try:
                hits.append(Candidate(str(h["docid"]), _candidate_text(h), float(h["score"]) if "score" in h else None))
            except _BadPassage as err:
                raise ValueError(f"{where}: hit {k} (docid {h.get('docid')!r}): {err}") from None
            except ValueError as err:
                raise ValueError(f"{where}: hit {k} has a score that is not a number ({err})") from None
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"{where}: not a rank_llm record ({err!r}); expected {_RECORD_SHAPES}") from err
    if qid == "None":
        raise ValueError(f"{where}: record has no 'qid'; add one to the record or to its hits")
    if not query.strip():
        raise ValueError(f"{where}: query {qid!r} has an empty text; give the query its text (the LLM ranks "
                         "passages for it)")
    seen: dict[str, int] = {}
    for k, h in enumerate(hits):
        if h.docid in seen:
            raise ValueError(f"{where}: docid {h.docid!r} is listed twice (hits {seen[h.docid]} and {k}); "
                             "keep one")
        seen[h.docid] = k
    return QueryHits(qid, query, tuple(hits))


def read_rank_llm(path: str | Path) -> list[QueryHits]:
    """Queries from a rank_llm JSON list or JSON-lines file; one record per query id."""
    path = Path(path)
    text = read_text(path, "rank_llm file")
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
    out, where_of = [], {}
    for where, obj in records:
        q = _parse_record(obj, where)
        if q.qid in where_of:
            raise ValueError(f"{where_of[q.qid]} and {where.removeprefix(str(path)).strip()}: query id {q.qid!r} "
                             "appears twice, and task ids (targets, results) are keyed by it; merge the two "
                             "records' hits into one or give one of them another qid")
        where_of[q.qid] = where
        out.append(q)
    return out


def read_qrels(path: str | Path, known_qids: set[str] | None = None) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid 0 docid grade``; qids not in ``known_qids`` are an error, not dropped."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for lineno, line in enumerate(read_text(path, "qrels file").splitlines(), 1):
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
    """A TREC run file (``qid Q0 docid rank score tag``) + ``docid<TAB>text`` + ``qid<TAB>query``.

    Each query's hits are ordered as trec_eval orders them, by score (ties by the rank column, then by
    trec_eval's descending docid); a run whose rank column contradicts its scores is refused.
    """
    queries = _read_tsv(queries_tsv, "queries")
    collection = _read_tsv(collection_tsv, "collection")
    return run_hits(run_path, collection, queries, collection_tsv, queries_tsv)


def run_hits(run_path: str | Path, collection: Mapping[str, str], queries: Mapping[str, str],
             collection_tsv: str | Path, queries_tsv: str | Path) -> list[QueryHits]:
    """The run's hits with the texts of ``collection`` and ``queries`` (read from the two named files),
    ordered as ``read_trec_run`` says."""
    ranked: dict[str, list[_RunLine]] = defaultdict(list)
    line_of: dict[tuple[str, str], int] = {}
    for lineno, line in enumerate(read_text(run_path, "TREC run").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise ValueError(f"{run_path} line {lineno}: expected 'qid Q0 docid rank score tag', got {line!r}")
        qid, _, docid, rank, score, _ = parts
        try:
            row = _RunLine(float(score), int(rank), docid, lineno)
        except ValueError:
            field_, value = ("rank", rank) if not _is_int(rank) else ("score", score)
            raise ValueError(f"{run_path} line {lineno}: {field_} {value!r} is not a number; expected "
                             "'qid Q0 docid rank score tag'") from None
        if (qid, docid) in line_of:
            raise ValueError(f"{run_path} line {lineno}: docid {docid!r} of query {qid!r} was already ranked on "
                             f"line {line_of[qid, docid]}; keep one")
        line_of[qid, docid] = lineno
        ranked[qid].append(row)
    if not ranked:
        raise ValueError(f"{run_path}: the TREC run is empty; expected lines 'qid Q0 docid rank score tag'")
    out = []
    for qid, rows in ranked.items():
        if qid not in queries:
            raise ValueError(f"{run_path}: query {qid!r} is missing from {queries_tsv}")
        missing = [r.docid for r in rows if r.docid not in collection]
        if missing:
            raise ValueError(f"{run_path}: {len(missing)} docids of query {qid} are missing from "
                             f"{collection_tsv} (e.g. {missing[:3]})")
        hits = tuple(Candidate(r.docid, collection[r.docid], r.score) for r in _trec_eval_order(rows, run_path, qid))
        out.append(QueryHits(qid, queries[qid], hits))
    return out


@dataclass(frozen=True)
class _RunLine:
    score: float
    rank: int
    docid: str
    lineno: int


def _trec_eval_order(rows: list[_RunLine], run_path: str | Path, qid: str) -> list[_RunLine]:
    """``rows`` best first as trec_eval ranks them: by score, descending; equal scores by the rank column,
    then by docid descending (trec_eval's own tie-break). Tools that write one rank (0) for every line are
    thereby read right; a rank column that orders two hits against their scores is an error."""
    by_docid = sorted(rows, key=lambda r: r.docid, reverse=True)
    ordered = sorted(by_docid, key=lambda r: (-r.score, r.rank))  # stable: keeps the docid order within ties
    worst = ordered[0]  # the line with the largest rank so far
    for row in ordered[1:]:
        if row.rank < worst.rank:
            raise ValueError(
                f"{run_path}: query {qid!r}: line {worst.lineno} (rank {worst.rank}, score {worst.score:g}) and "
                f"line {row.lineno} (rank {row.rank}, score {row.score:g}) rank the two hits against their "
                "scores; trec_eval orders by score, so fix the rank or the score column to agree")
        worst = row if row.rank > worst.rank else worst
    return ordered


def _read_tsv(path: str | Path, what: str) -> dict[str, str]:
    """``id<TAB>text`` lines; an id repeated with another text, or an empty query, is an error."""
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path, f"{what} TSV").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        if not sep:
            raise ValueError(f"{path} line {lineno}: {what} TSV needs 'id<TAB>text', got {line[:80]!r}")
        if what == "queries" and not value.strip():
            raise ValueError(f"{path} line {lineno}: query {key!r} has an empty text; give the query its text")
        if key in out and out[key] != value:
            raise ValueError(f"{path} lines {line_of[key]} and {lineno}: id {key!r} has two different texts; "
                             "keep one (which text is right cannot be guessed)")
        line_of.setdefault(key, lineno)
        out[key] = value
    return out


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def load_bundled(name: str) -> tuple[list[QueryHits], dict[str, dict[str, int]]]:
    """The bundled TREC DL19 or DL20 BM25 top-100 with its official qrels."""
    folder = _bundled_dir(name)
    queries = read_rank_llm(folder / "bm25_top100.jsonl")
    qrels = read_qrels(folder / BUNDLED_TREC[name][1], {q.qid for q in queries} | _qrels_only_qids(folder))
    return queries, qrels


def _qrels_only_qids(folder: Path) -> set[str]:
    """Official qrels judge the same queries as queries.tsv lists."""
    return set(_read_tsv(folder / "queries.tsv", "queries"))
