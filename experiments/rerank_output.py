"""rsd-rerank's output folder: one writer at a time, and a resume that keeps a query only if its input is unchanged.

``run.trec`` and ``rerank.jsonl`` hold exactly the queries completed so far, rewritten atomically after each
one, so a kill leaves complete queries only. Each ``rerank.jsonl`` record carries a hash of the query's
input (``input_digest``: query text, hits with their texts in order, and the relevance labels when the
verifier reads them). A rerun keeps a completed query only if the settings that shape the output are the
same and its input hashes the same; changed queries are reranked again and queries gone from the input are
dropped, both named on stderr. Everything happens under the folder's lock (``rsd_env.io.FolderLock``, as
for rsd-train and rsd-eval), so a second rsd-rerank into the same folder stops before it reads or writes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.rerank import RerankResult
from experiments import report
from rsd_env.data.task import Candidate
from rsd_env.data.trec import QueryHits
from rsd_env.io import FolderLock, read_text, remove_stale_temps

LOCK_NAME = ".rsd-rerank.lock"
# settings that shape a query's output: completed queries are kept only when all of them are unchanged
SETTINGS = ("input", "method", "budget", "top", "window", "stride", "passes", "verifier")
SHOWN_IDS = 8  # query ids listed in a message before "..."


def input_digest(request: QueryHits, labels: Mapping[str, int] | None = None) -> str:
    """A hash of everything a query's reranked output depends on besides the settings: its text, its hits
    with their texts in order, and ``labels`` (pass them only when the verifier reads them)."""
    payload = {"qid": request.qid, "query": request.query, "hits": [[c.docid, c.text] for c in request.hits],
               "labels": sorted(labels.items()) if labels else None}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def to_record(result: RerankResult, digest: str) -> dict[str, Any]:
    """A rank_llm Result (``query`` + ``candidates``) with this query's cost and input hash under ``rsd``."""
    n = len(result.hits)
    return {"query": {"text": result.query, "qid": result.qid},
            "candidates": [{"docid": c.docid, "score": float(n - i), "doc": {"contents": c.text}}
                           for i, c in enumerate(result.hits)],
            "rsd": {"llm_passes": result.llm_passes, "tokens": result.tokens, "wall_ms": round(result.wall_ms, 3),
                    "cpu_ms": round(result.cpu_ms, 3), "windows": result.windows, "rounds": result.rounds,
                    "input": digest}}


def from_record(obj: dict[str, Any]) -> tuple[RerankResult, str | None]:
    """``(result, input hash or None)`` of a ``to_record`` record; ``KeyError``/``TypeError``/``ValueError``
    if it is not one."""
    cost = obj.get("rsd", {})
    hits = tuple(Candidate(str(c["docid"]), str(c["doc"]["contents"]), c.get("score")) for c in obj["candidates"])
    result = RerankResult(str(obj["query"]["qid"]), str(obj["query"]["text"]), hits, int(cost.get("llm_passes", 0)),
                          int(cost.get("tokens", 0)), float(cost.get("wall_ms", 0.0)),
                          float(cost.get("cpu_ms", 0.0)), int(cost.get("windows", 0)), int(cost.get("rounds", 0)))
    return result, cost.get("input")


def read_records(path: str | Path) -> list[tuple[RerankResult, str | None]]:
    """The ``(result, input hash)`` records of a ``rerank.jsonl``; a damaged line is an error naming it."""
    records = []
    for lineno, line in enumerate(read_text(path, "rerank results").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(from_record(json.loads(line)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} line {lineno} is damaged ({type(err).__name__}: {err}); rerun rsd-rerank "
                             "with --fresh to start over, or move the folder aside") from None
    return records


def _say(text: str) -> None:
    print(f"rsd-rerank: {text}", file=sys.stderr)


def _ids(qids: Iterable[str]) -> str:
    qids = list(qids)
    return ", ".join(qids[:SHOWN_IDS]) + (f", ... ({len(qids)} in all)" if len(qids) > SHOWN_IDS else "")


class RerankOutput:
    """``<folder>/run.trec``, ``rerank.jsonl``, ``settings.json`` and ``summary.json`` of one rerank run.

    ``inputs``: ``{qid: input_digest}`` of every query of the input, in its order. Use as a context manager
    (or ``open``/``close``): ``open`` locks the folder, removes what killed writers left, and keeps the
    completed queries that still match (``done``); ``add`` saves one more.
    """

    def __init__(self, folder: str | Path, settings: Mapping[str, Any], inputs: Mapping[str, str], tag: str,
                 fresh: bool = False) -> None:
        self.folder = Path(folder)
        self.jsonl, self.trec = self.folder / "rerank.jsonl", self.folder / "run.trec"
        self.meta, self.summary = self.folder / "settings.json", self.folder / "summary.json"
        self.settings, self.inputs, self.tag, self.fresh = dict(settings), dict(inputs), tag, fresh
        self.order = {q: k for k, q in enumerate(inputs)}
        self.done: dict[str, RerankResult] = {}
        self._lock: FolderLock | None = None

    def open(self) -> RerankOutput:
        report.ensure_writable(self.folder)
        self._lock = FolderLock(self.folder, LOCK_NAME, what="rsd-rerank").acquire()
        try:
            remove_stale_temps(self.folder)  # temp files of a writer killed mid-write
            self.summary.unlink(missing_ok=True)  # it describes a finished run; written again at the end
            if not self.fresh:
                self._resume()
            report.write_json(self.meta, self.settings)
            self._flush()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RerankOutput:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def todo(self, requests: Sequence[QueryHits]) -> list[QueryHits]:
        """The requests not completed yet."""
        return [q for q in requests if q.qid not in self.done]

    def add(self, result: RerankResult) -> None:
        self.done[result.qid] = result
        self._flush()

    def results(self) -> list[RerankResult]:
        return sorted(self.done.values(), key=lambda r: self.order[r.qid])

    # ---- resume ---------------------------------------------------------------------------------------
    def _resume(self) -> None:
        records = read_records(self.jsonl) if self.jsonl.exists() else []
        if not records:  # settings of a run that completed no query bind nothing
            return
        old = self._read_settings()
        changed = {k: (old.get(k), self.settings[k]) for k in SETTINGS if old.get(k) != self.settings[k]}
        if changed:
            raise ValueError(f"{self.folder} holds a run with other settings ({changed}, as (old, new)); "
                             "pass --fresh to overwrite it or choose another --output")
        redo, gone, unhashed = [], [], []
        for result, digest in records:
            if result.qid not in self.inputs:
                gone.append(result.qid)
            elif digest is None:
                unhashed.append(result.qid)
            elif digest != self.inputs[result.qid]:
                redo.append(result.qid)
            else:
                self.done[result.qid] = result
        if redo:
            _say(f"the input of {len(redo)} completed queries changed since they were reranked ({_ids(redo)}); "
                "reranking them again")
        if unhashed:
            _say(f"{len(unhashed)} completed queries were saved without their input's hash (an older rsd-rerank: "
                f"{_ids(unhashed)}); reranking them again")
        if gone:
            _say(f"{len(gone)} completed queries are no longer in the input ({_ids(gone)}); dropped from "
                f"{self.folder}")

    def _read_settings(self) -> dict[str, Any]:
        try:
            old = json.loads(read_text(self.meta, "rerank settings"))
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise ValueError(f"{self.meta} is damaged ({err}); rerun with --fresh to start over") from None
        if not isinstance(old, dict):
            raise ValueError(f"{self.meta} holds {json.dumps(old)[:40]}, not settings; rerun with --fresh to "
                             "start over")
        return old

    def _flush(self) -> None:
        results = self.results()
        report.write_text(self.jsonl, "".join(json.dumps(to_record(r, self.inputs[r.qid])) + "\n"
                                              for r in results))
        report.write_trec_run(self.trec, {r.qid: r.docids for r in results}, self.tag)
