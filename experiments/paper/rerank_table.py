"""The rsd-rerank comparison table: several runs over one input side by side, against a reference run.

    python -m experiments.paper.rerank_table results/rerank/dl19/* --reference results/rerank/dl19/ar.T1

Each argument is an ``rsd-rerank --output`` folder. Per run, over the queries every run completed: NDCG@10
and MAP over the full qrels (with a 95 % CI for NDCG@10 and a paired Wilcoxon p against the reference),
Kendall τ of its reranked top ``--top`` against the τ reference's (how close to that AR ranking it gets;
``--tau-reference``, default the reference: full-list tables compare quality with sliding-window AR and
closeness with full-list AR), LLM passes, CPU and wall seconds per query, and the reference's time ÷ the
run's (the speedup; with a separate τ reference, its time ÷ the run's too). The first-stage run is the first
row. Markdown to stdout; ``--json`` writes the numbers too.

``--baseline`` pairs each run with another per query (is the agent closer to AR than the heuristic?): the
mean τ difference, the queries it is closer / further on, and a paired Wilcoxon p over the queries. Given a
method name (``heuristic``), each run is paired with that method's run at its own budget and window length
(so one table pairs the agent at T = 1, 2, 3 with the heuristic at the same T); given a run folder, every run
is paired with that run.

    python -m experiments.paper.rerank_table results/rerank/dl20/* --reference results/rerank/dl20/ar.T1 \
        --tau-reference results/rerank/dl20/ar.full --baseline heuristic
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.methods import BUDGET_FREE
from agents.pretrained import FULL_LIST_AGENT, FULL_LIST_FT_AGENT, LIST_40_AGENT
from experiments import report
from experiments.paper.stats import mean_ci, paired_test
from experiments.rerank import RerankResult, trec_per_query
from experiments.rerank_output import read_records
from rsd_env.data.trec import BUNDLED_TREC, load_bundled, read_qrels
from rsd_env.metrics import kendall_tau

LABELS = {"ar": "AR windows", "std": "STD (FIRST) windows", "sd": "SD", "heuristic": "up-to-down heuristic",
          "stale-aware": "stale-aware decoder", "sd-decode": "SD + final decode", "shipped": "shipped agent",
          f"shipped:{FULL_LIST_AGENT}": "shipped agent (N = 100)", f"shipped:{LIST_40_AGENT}": "shipped agent (N = 40)",
          f"shipped:{FULL_LIST_FT_AGENT}": "shipped agent (N = 40 fine-tuned at N = 100)"}


def load_run(folder: str | Path) -> tuple[dict[str, Any], dict[str, RerankResult]]:
    """(the run's settings, its completed queries by qid) from an ``rsd-rerank --output`` folder."""
    folder = Path(folder)
    settings_path, jsonl = folder / "settings.json", folder / "rerank.jsonl"
    if not settings_path.is_file() or not jsonl.is_file():
        raise ValueError(f"{folder} is not an rsd-rerank output folder (no settings.json / rerank.jsonl)")
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    return settings, {result.qid: result for result, _ in read_records(jsonl)}


def label(settings: dict[str, Any]) -> str:
    """The row's name: method (and T); a run that ranked the whole top in one window says "full list", one
    with windows of other than 20 candidates says how many."""
    method = settings["method"]
    name = LABELS.get(method, method)
    window = settings.get("window", 20)
    if window >= settings.get("top", 1):  # rsd-rerank --full-list
        name = f"{name.removesuffix(' windows')}, full list"
    elif window != 20:
        name = f"{name.removesuffix(' windows')}, windows of {window}"
    return name if method in BUDGET_FREE else f"{name}, T = {settings['budget']}"


def tau_top(a: Sequence[str], b: Sequence[str], top: int) -> float:
    """Kendall τ between two orderings of the same ``top`` first documents."""
    head = list(a[:top])
    index = {d: k for k, d in enumerate(head)}
    other = [d for d in b[:top] if d in index]
    if len(other) != len(head):
        raise ValueError(f"the two runs rerank different top-{top} documents; compare runs of the same input")
    return kendall_tau(np.arange(len(head)), np.asarray([index[d] for d in other]))


Run = tuple[dict[str, Any], dict[str, RerankResult]]


def baseline_runs(baseline: str, runs: Sequence[Run], paths: Sequence[Path]) -> list[Run | None]:
    """Per run (from the folders ``paths``), the run it is paired with: ``baseline`` as a folder, else the run
    of method ``baseline`` with the same window length and budget (any budget where the baseline is
    budget-free, such as AR; none for a budget-free run against a budgeted baseline); None where there is
    none and for the baseline itself."""
    if Path(baseline).is_dir():
        where = Path(baseline).resolve()
        base = runs[paths.index(where)] if where in paths else load_run(where)
        if base[0]["input"] != runs[0][0]["input"]:
            raise ValueError(f"the baseline run {baseline} reranks {base[0]['input']!r}, the table "
                             f"{runs[0][0]['input']!r}; compare runs of one input")
        return [None if path == where else base for path in paths]
    if not any(settings["method"] == baseline for settings, _ in runs):
        methods = sorted({settings["method"] for settings, _ in runs})
        raise ValueError(f"--baseline {baseline!r} is neither an rsd-rerank output folder nor the method of one "
                         f"of the runs ({', '.join(methods)})")

    def matches(settings: dict[str, Any], other: dict[str, Any]) -> bool:
        if other["method"] != baseline or other["window"] != settings["window"]:
            return False
        if baseline in BUDGET_FREE:  # one ranking at every T: any run pairs with it
            return True
        # a budget-free run has no T to match with a budgeted baseline's
        return settings["method"] not in BUDGET_FREE and other["budget"] == settings["budget"]

    return [None if settings["method"] == baseline
            else next((run for run in runs if matches(settings, run[0])), None) for settings, _ in runs]


def paired_tau(taus: dict[str, float], base: dict[str, float]) -> dict[str, Any]:
    """Per-query τ of a run against its baseline's: mean difference, closer / further queries, Wilcoxon p."""
    qids = list(taus)
    diff = np.asarray([taus[q] - base[q] for q in qids])
    return {"delta": float(diff.mean()), "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
            "queries": len(qids), "p": paired_test([taus[q] for q in qids], [base[q] for q in qids])}


def build_table(folders: Sequence[str | Path], reference: str | Path, qrels_path: str | None = None,
                top: int = 100, tau_reference: str | Path | None = None,
                baseline: str | None = None) -> dict[str, Any]:
    """Rows of the comparison table (dicts of numbers), reference last; with ``baseline`` (a method name or
    a run folder, see ``baseline_runs``) each paired run's row has ``tau_vs_baseline`` too."""
    ref_settings, ref = load_run(reference)
    ref_path, tau_path = Path(reference).resolve(), Path(tau_reference or reference).resolve()
    tau_settings, tau_ref = (ref_settings, ref) if tau_path == ref_path else load_run(tau_path)
    paths = list(dict.fromkeys(Path(f).resolve() for f in folders if Path(f).resolve() not in (ref_path, tau_path)))
    runs = [load_run(f) for f in paths]
    if tau_path != ref_path:
        runs.append((tau_settings, tau_ref))
        paths.append(tau_path)
    runs.append((ref_settings, ref))
    paths.append(ref_path)
    inputs = {s["input"] for s, _ in runs}
    if len(inputs) != 1:
        raise ValueError(f"the runs rerank different inputs ({sorted(inputs)}); compare runs of one input")
    name = inputs.pop()
    if qrels_path:
        qrels = read_qrels(qrels_path)
        first_stage = None
    elif name in BUNDLED_TREC:
        requests, qrels = load_bundled(name)
        first_stage = {q.qid: [h.docid for h in q.hits] for q in requests}
    else:
        raise ValueError(f"input {name!r} is not a bundled dataset: give --qrels")
    qids = [q for q in ref if all(q in results for _, results in runs)]  # the reference's order
    if not qids:
        raise ValueError("the runs have no completed query in common")
    per_run = [trec_per_query({q: results[q].docids for q in qids}, qrels) for _, results in runs]
    taus = [{q: tau_top(tau_ref[q].docids, results[q].docids, top) for q in qids} for _, results in runs]
    bases = baseline_runs(baseline, runs, paths) if baseline else [None] * len(runs)
    base_taus: dict[int, dict[str, float]] = {}  # per distinct baseline run, computed once however many pair with it
    for base in bases:
        if base is None or id(base[1]) in base_taus:
            continue
        missing = [q for q in qids if q not in base[1]]
        if missing:
            raise ValueError(f"the baseline run {label(base[0])!r} lacks {len(missing)} of the table's queries "
                             f"(e.g. {missing[0]}); complete it (rerun its rsd-rerank command) first")
        base_taus[id(base[1])] = {q: tau_top(tau_ref[q].docids, base[1][q].docids, top) for q in qids}
    ref_scores = per_run[-1]
    judged = [q for q in qids if q in ref_scores]
    rows = []
    if first_stage is not None:
        scores = trec_per_query({q: first_stage[q] for q in qids}, qrels)
        rows.append({"label": "BM25 (first stage)", "ndcg10": mean_ci([scores[q]["NDCG@10"] for q in judged]),
                     "map": float(np.mean([scores[q]["MAP"] for q in judged]))})
    ref_cpu = np.mean([ref[q].cpu_ms for q in qids])
    ref_wall = np.mean([ref[q].wall_ms for q in qids])
    tau_cpu = np.mean([tau_ref[q].cpu_ms for q in qids])
    for (settings, results), scores, tau, base in zip(runs, per_run, taus, bases):
        ndcg = [scores[q]["NDCG@10"] for q in judged]
        cpu, wall = np.mean([results[q].cpu_ms for q in qids]), np.mean([results[q].wall_ms for q in qids])
        rows.append({
            "label": label(settings), "method": settings["method"], "budget": settings["budget"],
            "ndcg10": mean_ci(ndcg), "map": float(np.mean([scores[q]["MAP"] for q in judged])),
            "p_vs_reference": paired_test(ndcg, [ref_scores[q]["NDCG@10"] for q in judged]),
            "tau_vs_reference": float(np.mean(list(tau.values()))),
            "llm_passes": float(np.mean([results[q].llm_passes for q in qids])),
            "cpu_s": cpu / 1000, "wall_s": wall / 1000,
            "cpu_speedup": ref_cpu / cpu if cpu else None, "wall_speedup": ref_wall / wall if wall else None,
            "cpu_speedup_vs_tau_reference": tau_cpu / cpu if cpu else None,
        })
        if base is not None:
            rows[-1]["tau_vs_baseline"] = {"baseline": label(base[0]), **paired_tau(tau, base_taus[id(base[1])])}
    return {"input": name, "queries": len(qids), "judged": len(judged), "reference": label(ref_settings),
            "tau_reference": label(tau_settings), "top": top, "baseline": baseline, "rows": rows}


def paired_cell(paired: dict[str, Any] | None) -> str:
    """``+0.0030 (37 / 14 of 54, p = 0.00026)``: τ difference, queries closer / further, Wilcoxon p."""
    if paired is None:
        return ""
    return (f"{paired['delta']:+.4f} ({paired['better']} / {paired['worse']} of {paired['queries']}, "
            f"p = {paired['p']:.2g})")


def markdown(table: dict[str, Any]) -> str:
    ref, tau_ref = table["reference"], table.get("tau_reference", table["reference"])
    both = tau_ref != ref  # a second time ratio: the τ reference's CPU time ÷ the method's
    paired = table.get("baseline") is not None  # a column of per-query τ differences to the baseline
    baseline = Path(table["baseline"]).name if paired else ""
    out = [f"| {table['input']}, {table['queries']} queries | NDCG@10 (± 95 % CI) | p vs {ref} | MAP | "
           f"τ vs {tau_ref} (top {table['top']}) | LLM passes / query | CPU s / query | wall s / query | "
           f"{ref} ÷ method: CPU / wall |" + (f" {tau_ref} ÷ method: CPU |" if both else "")
           + (f" τ − {baseline}'s (queries closer / further, p) |" if paired else ""),
           "|---|---|---|---|---|---|---|---|---|" + ("---|" if both else "") + ("---|" if paired else "")]
    for row in table["rows"]:
        ndcg = row["ndcg10"]
        cells = [row["label"], f"{ndcg['mean']:.4f} ± {(ndcg['ci_high'] - ndcg['ci_low']) / 2:.3f}"]
        if "tau_vs_reference" not in row:  # the first stage: no LLM
            cells += ["", f"{row['map']:.4f}", "", "0", "–", "–", "–"] + (["–"] if both else [])
        else:
            speed = f"{row['cpu_speedup']:.2f}× / {row['wall_speedup']:.2f}×" if row["cpu_speedup"] else "–"
            cells += [f"{row['p_vs_reference']:.2g}" if row["label"] != ref else "", f"{row['map']:.4f}",
                      f"{row['tau_vs_reference']:.3f}", f"{row['llm_passes']:.1f}", f"{row['cpu_s']:.1f}",
                      f"{row['wall_s']:.1f}", speed]
            if both:
                cells.append(f"{row['cpu_speedup_vs_tau_reference']:.2f}×")
        if paired:
            cells.append(paired_cell(row.get("tau_vs_baseline")))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="rsd-rerank output folders (one input)")
    ap.add_argument("--reference", required=True, help="the run to compare with (AR windows)")
    ap.add_argument("--qrels", help="TREC qrels (bundled datasets find their own)")
    ap.add_argument("--tau-reference", help="the run τ is measured against (default --reference), e.g. "
                    "full-list AR when --reference is AR windows")
    ap.add_argument("--top", type=int, default=100, help="depth of the τ comparison (default 100)")
    ap.add_argument("--baseline", help="pair each run's per-query τ with a baseline's: a method name (its run at "
                    "the same budget and window length, e.g. heuristic) or an rsd-rerank output folder")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    try:
        table = build_table(args.runs, args.reference, args.qrels, args.top, args.tau_reference, args.baseline)
    except (ValueError, OSError) as err:
        print(f"rerank_table: error: {err}", file=sys.stderr)
        return 2
    print(markdown(table))
    if args.json:
        report.write_json(args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
