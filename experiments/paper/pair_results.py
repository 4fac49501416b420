"""Pair methods across rsd-eval runs: a method evaluated in one run against a baseline evaluated in another.

Expensive evaluations (a real target at N = 100: ~15 min per method) are run one method at a time, often
side by side; this joins their ``results.json`` files by (dataset, budget, task) and prints, per method and
budget, the mean Kendall tau, the paired difference with the baseline, the queries better / worse, and
rsd-eval's own paired Wilcoxon test over the queries (a query's windows averaged first, as rsd-eval's
"p, queries" column does). A method found in two files must have identical per-task tau there (a rerun
that does not reproduce is an error, not a silent pick).

    python -m experiments.paper.pair_results results/eval-a/results.json results/eval-b/results.json \\
        --baseline heuristic
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.paper.stats import group_mean_differences, paired_test

Key = tuple[str, str, "int | None"]  # (dataset, method, budget); None: a budget-free method (ar, std)


def load_rows(paths: Sequence[Path], metric: str = "kendall_tau") -> tuple[dict[Key, dict[str, float]],
                                                                            dict[str, str]]:
    """(dataset, method, budget) -> task id -> metric, and task id -> group, from rsd-eval result files."""
    values: dict[Key, dict[str, float]] = defaultdict(dict)
    groups: dict[str, str] = {}
    for path in paths:
        try:
            tasks = json.loads(Path(path).read_text())["tasks"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: not an rsd-eval results.json with per-task rows ({err})") from err
        for row in tasks:
            key = (row["dataset"], row["method"], None if row["budget"] is None else int(row["budget"]))
            old = values[key].get(row["task_id"])
            if old is not None and abs(old - row[metric]) > 1e-12:
                raise ValueError(f"{row['method']} T={row['budget']} task {row['task_id']} has {metric} {old} in "
                                 f"one file and {row[metric]} in {path}: the runs do not reproduce each other")
            values[key][row["task_id"]] = row[metric]
            groups[row["task_id"]] = row.get("group") or row["task_id"]
    return values, groups


def pair(values: dict[Key, dict[str, float]], groups: dict[str, str], baseline: str) -> list[dict]:
    """One row per (dataset, budget, method): mean, and against ``baseline`` on the shared tasks the mean
    difference, queries better / worse and the grouped paired p. A budget-free method (rsd-eval's ``ar``,
    ``std``: budget None) gives the same ranking at every T, so it is paired with the baseline at each of the
    baseline's budgets (and a budget-free baseline with every method at its own)."""
    out = []
    budgets = defaultdict(set)
    for dataset, method, budget in values:
        budgets[dataset, method].add(budget)
    cells = [(dataset, method, b, rows) for (dataset, method, budget), rows in values.items()
             for b in ([budget] if budget is not None else sorted(budgets[dataset, baseline] - {None}) or [None])]
    for dataset, method, budget, rows in sorted(cells, key=lambda c: (c[0], -1 if c[2] is None else c[2], c[1])):
        row = {"dataset": dataset, "budget": budget, "method": method, "tasks": len(rows),
               "mean": float(np.mean(list(rows.values())))}
        base = values.get((dataset, baseline, budget)) or values.get((dataset, baseline, None))
        if method != baseline and base:
            shared = sorted(set(rows) & set(base))
            a, b = [rows[t] for t in shared], [base[t] for t in shared]
            means = group_mean_differences(a, b, [groups[t] for t in shared])  # as grouped_paired_test
            row.update(shared=len(shared), delta=float(np.subtract(a, b).mean()), better=int((means > 0).sum()),
                       worse=int((means < 0).sum()), queries=len(means), p=paired_test(means, np.zeros(len(means))))
        out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.paper.pair_results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="rsd-eval results.json files")
    parser.add_argument("--baseline", required=True, help="the method the others are paired with")
    parser.add_argument("--metric", default="kendall_tau", help="a per-task field (default kendall_tau)")
    args = parser.parse_args(argv)
    try:
        values, groups = load_rows(args.results, args.metric)
    except (ValueError, KeyError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if not any(method == args.baseline for _, method, _ in values):
        methods = sorted({method for _, method, _ in values})
        parser.exit(2, f"{parser.prog}: error: no method {args.baseline!r} in these files; they hold {methods}\n")
    print(f"| dataset | T | method | {args.metric} | Δ vs {args.baseline} | queries better / worse | p (Wilcoxon) |")
    print("|---|---|---|---|---|---|---|")
    for r in pair(values, groups, args.baseline):
        paired = (f"{r['delta']:+.4f} | {r['better']} / {r['worse']} of {r['queries']} | {r['p']:.2g}"
                  if "p" in r else " | | ")
        budget = "–" if r["budget"] is None else r["budget"]
        print(f"| {r['dataset']} | {budget} | {r['method']} | {r['mean']:.4f} | {paired} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
