"""rsd-rerank: rerank your own first-stage run (top-100, sliding windows) with any method at budget T.

    rsd-rerank --run run.trec --collection collection.tsv --queries queries.tsv --qrels qrels.txt
    rsd-rerank --input requests.jsonl --method sd --budget 1        # rank_llm JSON / JSONL requests
    rsd-rerank --dataset dl19 --method ar --max-queries 10          # the bundled BM25 top-100 + qrels
    rsd-rerank --beir data/quora --run quora-bm25.trec               # a run over a BEIR folder (+ its qrels)

Writes ``<output>/run.trec`` and ``<output>/rerank.jsonl`` (rank_llm results: query + reranked candidates,
plus each query's cost) after every completed query (atomic writes), and ``summary.json`` at the end.
Rerunning the same command resumes: completed queries whose input is unchanged are kept and skipped
(``experiments.rerank_output``); a second rsd-rerank into the same --output is refused. With qrels it prints
NDCG@10, MAP and Recall@100 over the full qrels (trec_eval's definitions, via pytrec_eval) for the
reranked run and for the first-stage run it started from.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.pretrained import DEFAULT_AGENT, FALLBACK_METHOD, RECOMMENDED, TRAINED_N, default_method
from agents.rerank import RerankResult, SlidingWindowReranker, WindowSpec
from experiments import report
from experiments.cli_args import add_threads_argument, apply_threads
from experiments.paper.evaluate import rank_n_problem, trained_n
from experiments.rerank_output import RerankOutput, input_digest
from rsd_env.data.beir import beir_run
from rsd_env.data.trec import BUNDLED_TREC, QueryHits, load_bundled, read_qrels, read_rank_llm, read_trec_run
from rsd_env.settings import parse_assignments
from rsd_env.verifiers.length_defaults import with_length_defaults

MEASURES = {"ndcg_cut_10": "NDCG@10", "map": "MAP", "recall_100": "R@100"}


class Interrupted(Exception):
    """Ctrl-C during the reranking; the message says what is saved."""


# ---- input --------------------------------------------------------------------------------------------
def load_requests(args: argparse.Namespace) -> tuple[list[QueryHits], dict[str, dict[str, int]] | None, str]:
    """(queries with their first-stage hits, qrels or None, a name for the input)."""
    sources = [s for s in (args.dataset, args.input, args.run) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one input: --dataset dl19|dl20, --input <rank_llm JSON/JSONL>, or "
                         "--run <TREC run> with --collection and --queries, or with --beir <BEIR folder>")
    qrels = None
    if args.beir:  # the reader load_tasks("beir", run=...) uses; rsd-rerank takes the run's whole lists
        if not args.run or args.collection or args.queries:
            raise ValueError("--beir <folder> takes the texts from the folder: give --run <TREC run over its "
                             "corpus>, without --collection / --queries")
        requests, qrels = beir_run(args.beir, args.run, args.split)
        name = f"{Path(args.run).resolve()} on {Path(args.beir).resolve()} ({args.split})"
    elif args.dataset:
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
    src.add_argument("--beir", metavar="FOLDER", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/): texts "
                     "and qrels for --run")
    src.add_argument("--split", default="test", help="with --beir: the qrels/<split>.tsv to use (default test)")
    p.add_argument("--qrels", help="TREC qrels: print NDCG@10 / MAP / R@100 over the full qrels")
    named_agents = ", ".join(f"shipped:{name} (trained at N = {n})" for name, n in TRAINED_N.items()
                             if name != DEFAULT_AGENT)
    p.add_argument("--method",
                   help="ar std sd heuristic ... (any name in agents.methods.METHODS), agent:<checkpoint>, shipped, "
                        f"{named_agents} "
                        "(residual agents also rank longer windows). Default: by window length, a shipped agent "
                        "that beats the best decoder there on DL19 ("
                        f"{', '.join(f'{n}: {m}' for n, m in RECOMMENDED.items())}; between two measured "
                        f"lengths: an agent that beats it at both), else {FALLBACK_METHOD} (docs/long-lists.md)")
    p.add_argument("--budget", type=int, default=2, help="T, verification rounds per window (default 2)")
    p.add_argument("--top", type=int, default=100, help="rerank the first k hits of each query (default 100)")
    p.add_argument("--window", type=int, default=20, help="candidates per window (default 20; over 20 on the "
                   "bundled model loads a long-list adapter, see --full-list)")
    p.add_argument("--stride", type=int, default=10, help="step between windows (default 10)")
    p.add_argument("--passes", type=int, default=1, help="sliding-window passes over the list (default 1)")
    p.add_argument("--full-list", action="store_true",
                   help="rank the whole top-k in one prompt: one window of --top candidates (like --window "
                        "<top> --stride <top>); the LLM's tokenizer must have that many single-token identifiers. "
                        "With --verifier bundled, a window over 20 uses a shipped long-list adapter (bundled-60 up "
                        "to 60, bundled-full beyond) unless --verifier-arg adapter=... says otherwise")
    p.add_argument("--verifier", default="bundled", help="bundled | simulated | hf:<model> | openai:<url>")
    p.add_argument("--verifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="verifier option (YAML value), repeatable: --verifier-arg passage_tokens=20")
    p.add_argument("--batch", type=int, default=16, help="queries in flight, verified together (default 16)")
    p.add_argument("--max-queries", type=int, help="only the first k queries")
    p.add_argument("--output", default="results/rerank", help="output folder (default results/rerank)")
    p.add_argument("--tag", help="run tag in the TREC file (default rsd-<method>-T<budget>)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from --output")
    p.add_argument("--no-progress", action="store_true")
    add_threads_argument(p, " (with --ray: this process's; each actor runs one)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread the queries over Ray actors (experiments.rerank_ray): alone, a local Ray; with "
                        "HOST:PORT (or auto), the cluster there. Same output files")
    p.add_argument("--ray-actors", type=int, help="actors, each with its own verifier (default: one per CPU)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (GPU verifiers)")
    args = p.parse_args(argv)
    if args.method is None:
        args.method = default_method(_window_and_stride(args)[0])  # by the windows' (the envs') width
    return args


def verifier_options(args: argparse.Namespace) -> dict[str, Any]:
    """The verifier's options: ``--verifier-arg``s, plus, unless they name one, the shipped target for the
    window's length: on the bundled model the adapter trained for it when it is over 20 (the N = 20 adapter
    copies the order it is shown in long prompts; ``long_list_adapter`` and docs/long-lists.md say which is
    best at which length), on the simulated verifier the profile fitted to that adapter's target."""
    options = parse_assignments(args.verifier_arg, "--verifier-arg")
    return with_length_defaults(args.verifier, options, window_spec(args).window)


def _window_and_stride(args: argparse.Namespace) -> tuple[int, int]:
    """(window, stride) as given; ``--full-list`` is one window of ``--top``."""
    return (args.top, args.top) if args.full_list else (args.window, args.stride)


def window_spec(args: argparse.Namespace) -> WindowSpec:
    """The windows this command ranks (``--full-list``: one window of ``--top``); checks the settings."""
    return WindowSpec(args.top, *_window_and_stride(args), args.passes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Rerank as ``args`` say; returns the summary (also written to ``<output>/summary.json``).

    Everything that can be checked (inputs, method, verifier, budget, windows) is checked before the output
    folder is locked and touched, so a bad command leaves it as it was."""
    spec = window_spec(args)  # bad window settings fail first
    if args.max_queries is not None and args.max_queries < 1:
        raise ValueError(f"--max-queries must be >= 1, got {args.max_queries}")
    requests, qrels, name = load_requests(args)
    from agents.methods import make_method
    from rsd_env.verifiers import make_verifier

    method = make_method(args.method)
    problem = rank_n_problem(method, spec.window)
    if problem is not None:
        n = trained_n(method)
        raise ValueError(f"method {args.method!r} was trained for {n} candidates, the windows have "
                         f"{spec.window} ({problem}); use --window {n}")
    verifier_kwargs = verifier_options(args)
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
    labels = qrels if qrels is not None and verifier.reads_labels else {}  # a simulated LLM reads the qrels
    inputs = {q.qid: input_digest(q, labels.get(q.qid)) for q in requests}
    # completed queries stay in the output even when a rerun asks for fewer (--max-queries)
    output = RerankOutput(Path(args.output), settings, inputs, tag, fresh=args.fresh)
    try:
        with output:
            todo = output.todo(requests[: args.max_queries])
            if output.done:
                print(f"resuming: {len(output.done)} queries already in {output.jsonl}, {len(todo)} to go",
                      file=sys.stderr)
            start = time.perf_counter()
            reranker.rerank(todo, qrels=qrels, on_result=output.add, progress=not args.no_progress)
            seconds = time.perf_counter() - start
            summary = summarise(output.results(), requests, qrels, seconds, len(todo))
            summary["settings"] = settings
            # AR and STD rank the same at every T: their line names no budget
            summary["label"] = f"{args.method} T={args.budget}" if method.uses_budget else args.method
            report.write_json(output.summary, summary)
    except KeyboardInterrupt:  # every write is atomic: what was saved is complete
        raise Interrupted(f"interrupted; the {len(output.done)} completed queries are saved in {output.folder}: "
                          "rerun the same command to resume") from None
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``rsd-rerank``); returns the exit status."""
    args = parse_args(argv)
    apply_threads(args.threads)
    try:
        summary = run(args)
    except (ValueError, OSError) as err:  # bad inputs, settings, paths, a busy folder: the message says what to fix
        print(f"rsd-rerank: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"rsd-rerank: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"rsd-rerank: interrupted before any query was reranked; {args.output} is as it was",
              file=sys.stderr)
        return 130
    print(format_summary(summary, summary["label"]))
    print(f"wrote {args.output}/run.trec, rerank.jsonl, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
