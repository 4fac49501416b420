"""rsd-rerank: rerank your own first-stage run (top-100, sliding windows) with any method at budget T.

    rsd-rerank --run run.trec --collection collection.tsv --queries queries.tsv --qrels qrels.txt
    rsd-rerank --input requests.jsonl --method sd --budget 1        # rank_llm JSON / JSONL requests
    rsd-rerank --dataset dl19 --method ar --max-queries 10          # the bundled BM25 top-100 + qrels

Writes ``<output>/run.trec`` and ``<output>/rerank.jsonl`` (rank_llm results: query + reranked candidates,
plus each query's cost) after every completed query (atomic writes), and ``summary.json`` at the end.
Rerunning the same command resumes: completed queries are kept and skipped. With qrels it prints
NDCG@10, MAP and Recall@100 over the full qrels (trec_eval's definitions, via pytrec_eval) for the
reranked run and for the first-stage run it started from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.rerank import RerankResult, SlidingWindowReranker, WindowSpec
from experiments import report
from experiments.paper.evaluate import trained_n
from rsd_env.data.task import Candidate
from rsd_env.data.trec import BUNDLED_TREC, QueryHits, load_bundled, read_qrels, read_rank_llm, read_trec_run
from rsd_env.settings import parse_assignments

DEFAULT_METHOD = "shipped"  # the agent shipped in agents/pretrained (trained against the bundled LLM)
MEASURES = {"ndcg_cut_10": "NDCG@10", "map": "MAP", "recall_100": "R@100"}
SETTINGS = ("input", "method", "budget", "top", "window", "stride", "passes", "verifier")


# ---- input --------------------------------------------------------------------------------------------
def load_requests(args: argparse.Namespace) -> tuple[list[QueryHits], dict[str, dict[str, int]] | None, str]:
    """(queries with their first-stage hits, qrels or None, a name for the input)."""
    sources = [s for s in (args.dataset, args.input, args.run) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one input: --dataset dl19|dl20, --input <rank_llm JSON/JSONL>, or "
                         "--run <TREC run> with --collection and --queries")
    qrels = None
    if args.dataset:
        if args.dataset not in BUNDLED_TREC:
            raise ValueError(f"unknown bundled dataset {args.dataset!r}; choose one of {sorted(BUNDLED_TREC)}")
        requests, qrels = load_bundled(args.dataset)
        name = args.dataset
    elif args.input:
        requests, name = read_rank_llm(args.input), str(Path(args.input).resolve())
    else:
        if not (args.collection and args.queries):
            raise ValueError("--run needs --collection <docid\\ttext TSV> and --queries <qid\\tquery TSV>")
        for path in (args.run, args.collection, args.queries):
            if not Path(path).is_file():
                raise ValueError(f"no such file: {path}")
        try:
            requests = read_trec_run(args.run, args.collection, args.queries)
        except ValueError as err:
            if str(args.run) in str(err) or str(args.collection) in str(err) or str(args.queries) in str(err):
                raise
            raise ValueError(f"cannot read TREC run {args.run}: {err}; lines must be 'qid Q0 docid rank score "
                             "tag' with an integer rank and a numeric score") from err
        if not requests:
            raise ValueError(f"{args.run}: no ranked documents found (empty run file?)")
        name = str(Path(args.run).resolve())
    if args.qrels:
        qrels = read_qrels(args.qrels)
    return requests, qrels, name


# ---- output -------------------------------------------------------------------------------------------
def to_record(result: RerankResult) -> dict[str, Any]:
    """A rank_llm Result (``query`` + ``candidates``) with this query's cost under ``rsd``."""
    n = len(result.hits)
    return {"query": {"text": result.query, "qid": result.qid},
            "candidates": [{"docid": c.docid, "score": float(n - i), "doc": {"contents": c.text}}
                           for i, c in enumerate(result.hits)],
            "rsd": {"llm_passes": result.llm_passes, "tokens": result.tokens, "wall_ms": round(result.wall_ms, 3),
                    "cpu_ms": round(result.cpu_ms, 3), "windows": result.windows, "rounds": result.rounds}}


def from_record(obj: dict[str, Any]) -> RerankResult:
    cost = obj.get("rsd", {})
    hits = tuple(Candidate(str(c["docid"]), c["doc"]["contents"], c.get("score")) for c in obj["candidates"])
    return RerankResult(str(obj["query"]["qid"]), obj["query"]["text"], hits, int(cost.get("llm_passes", 0)),
                        int(cost.get("tokens", 0)), float(cost.get("wall_ms", 0.0)),
                        float(cost.get("cpu_ms", 0.0)), int(cost.get("windows", 0)), int(cost.get("rounds", 0)))


class RunWriter:
    """Keeps ``run.trec`` and ``rerank.jsonl`` equal to the queries completed so far, rewritten atomically
    after each one, so an interrupted run leaves complete queries only and can resume."""

    def __init__(self, folder: Path, settings: dict[str, Any], order: Sequence[str], tag: str,
                 fresh: bool = False) -> None:
        self.folder = report.ensure_writable(folder)
        self.jsonl, self.trec, self.meta = folder / "rerank.jsonl", folder / "run.trec", folder / "settings.json"
        self.order = {q: k for k, q in enumerate(order)}
        self.tag = tag
        self.done: dict[str, RerankResult] = {}
        if not fresh and self.jsonl.exists():
            old = json.loads(self.meta.read_text(encoding="utf-8")) if self.meta.exists() else {}
            changed = {k: (old.get(k), settings[k]) for k in SETTINGS if old.get(k) != settings[k]}
            if changed:
                raise ValueError(f"{folder} holds a run with other settings ({changed}, as (old, new)); "
                                 "pass --fresh to overwrite it or choose another --output")
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    result = from_record(json.loads(line))
                    if result.qid in self.order:
                        self.done[result.qid] = result
        report.write_json(self.meta, settings)
        self._flush()

    def add(self, result: RerankResult) -> None:
        self.done[result.qid] = result
        self._flush()

    def results(self) -> list[RerankResult]:
        return sorted(self.done.values(), key=lambda r: self.order[r.qid])

    def _flush(self) -> None:
        results = self.results()
        report.write_text(self.jsonl, "".join(json.dumps(to_record(r)) + "\n" for r in results))
        report.write_trec_run(self.trec, {r.qid: r.docids for r in results}, self.tag)


# ---- metrics --------------------------------------------------------------------------------------------
def trec_per_query(runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
                   ) -> dict[str, dict[str, float]]:
    """NDCG@10, MAP and Recall@100 of every judged query (trec_eval's definitions via pytrec_eval, full
    qrels); queries without judgements are left out, as trec_eval does."""
    import pytrec_eval

    judged = {q: docs for q, docs in runs.items() if q in qrels}
    if not judged:
        return {}
    scored = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in judged.items()}
    evaluator = pytrec_eval.RelevanceEvaluator({q: dict(qrels[q]) for q in judged}, {"ndcg_cut.10", "map",
                                                                                       "recall.100"})
    return {q: {name: v[m] for m, name in MEASURES.items()} for q, v in evaluator.evaluate(scored).items()}


def trec_metrics(runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Means of ``trec_per_query``; ``queries`` says how many were scored."""
    per_query = trec_per_query(runs, qrels)
    if not per_query:
        return {"queries": 0}
    out = {name: sum(v[name] for v in per_query.values()) / len(per_query) for name in MEASURES.values()}
    out["queries"] = len(per_query)
    return out


def summarise(results: Sequence[RerankResult], requests: Sequence[QueryHits],
              qrels: Mapping[str, Mapping[str, int]] | None, seconds: float, new: int) -> dict[str, Any]:
    n = len(results)
    summary: dict[str, Any] = {
        "queries": n,
        "llm_passes_per_query": sum(r.llm_passes for r in results) / n,
        "tokens_per_query": sum(r.tokens for r in results) / n,
        "wall_ms_per_query": sum(r.wall_ms for r in results) / n,
        "cpu_ms_per_query": sum(r.cpu_ms for r in results) / n,
        "windows_per_query": sum(r.windows for r in results) / n,
        "seconds_this_session": round(seconds, 2), "queries_this_session": new,
        "queries_per_second": new / seconds if seconds > 0 and new else None,
    }
    if qrels is not None:
        done = {r.qid for r in results}
        summary["reranked"] = trec_metrics({r.qid: r.docids for r in results}, qrels)
        summary["first_stage"] = trec_metrics({q.qid: [h.docid for h in q.hits] for q in requests
                                               if q.qid in done}, qrels)
    return summary


def format_summary(summary: dict[str, Any], label: str) -> str:
    lines = [f"{label}: {summary['queries']} queries, {summary['windows_per_query']:.1f} windows, "
             f"{summary['llm_passes_per_query']:.1f} LLM passes, {summary['tokens_per_query']:.0f} tokens, "
             f"{summary['wall_ms_per_query'] / 1000:.2f} s wall ({summary['cpu_ms_per_query'] / 1000:.2f} s CPU) "
             "per query"]
    if summary.get("queries_per_second"):
        lines.append(f"this session: {summary['queries_this_session']} queries in "
                     f"{summary['seconds_this_session']:.1f} s = {summary['queries_per_second']:.3f} queries/s")
    for key in ("first_stage", "reranked"):
        m = summary.get(key)
        if m and m.get("queries"):
            scores = "  ".join(f"{name} {m[name]:.4f}" for name in MEASURES.values())
            lines.append(f"{key:<11} {scores}  ({m['queries']} judged queries, full qrels)")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rsd-rerank", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_argument_group("input (one of)")
    src.add_argument("--run", help="TREC run file 'qid Q0 docid rank score tag' (needs --collection, --queries)")
    src.add_argument("--collection", help="docid<TAB>text TSV")
    src.add_argument("--queries", help="qid<TAB>query TSV")
    src.add_argument("--input", help="rank_llm JSON or JSONL requests (retrieve results)")
    src.add_argument("--dataset", help=f"bundled BM25 top-100 with qrels: {' | '.join(sorted(BUNDLED_TREC))}")
    p.add_argument("--qrels", help="TREC qrels: print NDCG@10 / MAP / R@100 over the full qrels")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help="ar std sd heuristic ... (any name in agents.methods.METHODS), agent:<checkpoint> or "
                        f"shipped (default {DEFAULT_METHOD})")
    p.add_argument("--budget", type=int, default=2, help="T, verification rounds per window (default 2)")
    p.add_argument("--top", type=int, default=100, help="rerank the first k hits of each query (default 100)")
    p.add_argument("--window", type=int, default=20, help="candidates per window (default 20)")
    p.add_argument("--stride", type=int, default=10, help="step between windows (default 10)")
    p.add_argument("--passes", type=int, default=1, help="sliding-window passes over the list (default 1)")
    p.add_argument("--verifier", default="bundled", help="bundled | simulated | hf:<model> | openai:<url>")
    p.add_argument("--verifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="verifier option (YAML value), repeatable: --verifier-arg passage_tokens=20")
    p.add_argument("--batch", type=int, default=16, help="queries in flight, verified together (default 16)")
    p.add_argument("--max-queries", type=int, help="only the first k queries")
    p.add_argument("--output", default="results/rerank", help="output folder (default results/rerank)")
    p.add_argument("--tag", help="run tag in the TREC file (default rsd-<method>-T<budget>)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from --output")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread the queries over Ray actors (experiments.rerank_ray): alone, a local Ray; with "
                        "HOST:PORT (or auto), the cluster there. Same output files")
    p.add_argument("--ray-actors", type=int, help="actors, each with its own verifier (default: one per CPU)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (GPU verifiers)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Rerank as ``args`` say; returns the summary (also written to ``<output>/summary.json``)."""
    spec = WindowSpec(args.top, args.window, args.stride, args.passes)  # bad window settings fail first
    if args.max_queries is not None and args.max_queries < 1:
        raise ValueError(f"--max-queries must be >= 1, got {args.max_queries}")
    requests, qrels, name = load_requests(args)
    from agents.methods import make_method
    from rsd_env.verifiers import make_verifier

    method = make_method(args.method)
    n = trained_n(method)
    if n is not None and n != spec.window:
        raise ValueError(f"method {args.method!r} was trained for {n} candidates; use --window {n}")
    verifier_kwargs = parse_assignments(args.verifier_arg, "--verifier-arg")
    verifier = make_verifier(args.verifier, **verifier_kwargs)
    reranker = SlidingWindowReranker(method, verifier, spec, args.budget, args.batch)
    if getattr(args, "ray", None):  # same interface, the queries spread over Ray actors
        from experiments.rerank_ray import RayReranker

        reranker = RayReranker(args.method, args.verifier, verifier_kwargs, spec, args.budget, args.batch,
                               args.ray, args.ray_actors, args.ray_gpus_per_actor)
    settings = {"input": name, "method": args.method, "budget": args.budget, "top": spec.top,
                "window": spec.window, "stride": spec.stride, "passes": spec.passes,
                "verifier": verifier.fingerprint(), "max_queries": args.max_queries, "batch": args.batch}
    tag = args.tag or f"rsd-{args.method.replace(' ', '_')}-T{args.budget}"
    # completed queries stay in the output even when a rerun asks for fewer (--max-queries)
    writer = RunWriter(Path(args.output), settings, [q.qid for q in requests], tag, fresh=args.fresh)
    todo = [q for q in requests[: args.max_queries] if q.qid not in writer.done]
    if writer.done:
        print(f"resuming: {len(writer.done)} queries already in {writer.jsonl}, {len(todo)} to go", file=sys.stderr)
    start = time.perf_counter()
    reranker.rerank(todo, qrels=qrels, on_result=writer.add, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    summary = summarise(writer.results(), requests, qrels, seconds, len(todo))
    summary["settings"] = settings
    report.write_json(Path(args.output) / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``rsd-rerank``); returns the exit status."""
    args = parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, OSError) as err:  # bad inputs, settings, paths: the message says what to fix
        print(f"rsd-rerank: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, f"{args.method} T={args.budget}"))
    print(f"wrote {args.output}/run.trec, rerank.jsonl, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
