"""rsd-eval: every method x dataset x budget T, scored against the target LLM, with costs and tests.

    rsd-eval                                  # the grid in experiments/configs/eval.yaml, bundled LLM
    rsd-eval --verifier simulated --datasets dl19 synthetic --budgets 1 2 3 --max-tasks 50
    rsd-eval --quick                          # a smoke-sized grid
    rsd-eval --methods std sd heuristic agent:runs/rpo/final.zip agent:runs/rpo/final.zip@adaptive=0.02

Per cell (dataset, method, T): Kendall tau / Spearman rho / Footrule / Kemeny vs the target (mean and
95 % CI over tasks), NDCG@10 vs qrels (IR), HR@1 / NDCG@5 of the held-out item (recommendation), LLM
passes, tokens, latency per ranking and speedup vs AR, and a paired Wilcoxon test of Kendall tau against
*the decoder to beat*: the strongest hand-written decoder (``decoders``, highest mean Kendall tau) at the
same T (where a dataset cuts several tasks from one query, e.g. windows, also over queries, each query's
tasks averaged first: the tasks of one query are not independent evidence). Plus the paper's summary:
the mean relative improvement over the best of STD and SD across Kendall tau, Spearman rho, Footrule and
Kemeny (for the distances, improvement = reduction). Writes results.json, results.csv, table.md,
runs/*.trec and plots.

Latency, LLM passes and tokens per ranking = the task's prompt prefill (measured once per task, the same
for every method) + the method's own cost without any prefill it triggered itself, so the order in which
methods meet a task (and the verifier's prompt cache) favours no one. Before each method the verifier
forgets the proposals it verified for the task, so no method reuses another's verification KV. The
prefill dominates on CPU, so the table also shows *decode* ms (everything after the prompt is encoded:
the part RSD speeds up) and the speedup on it. The instruction prefix shared by all prompts is encoded
once per dataset and charged to its first task, as a deployed ranker would.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from tqdm.auto import tqdm

import rsd_env  # noqa: F401  (registers the envs)
from agents.stopping import adaptive_rule
from experiments import CONFIGS, report
from experiments.cli_args import add_threads_argument, apply_threads
from experiments.paper.run_folder import RunFolder
from experiments.paper.stats import grouped_paired_test, mean_ci, paired_test
from rsd_env.env import RSDRankEnv
from rsd_env.metrics import agreement_metrics, ndcg_at_k
from rsd_env.settings import apply_dotted, parse_assignments

DEFAULT_CONFIG = CONFIGS / "eval.yaml"
_LABEL = re.compile(r"^(?P<label>[A-Za-z][\w-]*)=(?P<spec>.+)$")  # rpo=agent:runs/rpo.zip
_SUFFIX = re.compile(r"^(?P<base>.+?)@(?P<kind>deadline|adaptive)=(?P<value>[0-9.]+(?:[eE][+-]?[0-9]+)?)(?:ms)?$")


@dataclass
class EvalConfig:
    """The evaluation grid; defaults live in ``configs/eval.yaml``."""

    methods: list[str]
    datasets: list[str]
    budgets: list[int]
    verifier: Any = "bundled"
    verifier_kwargs: dict[str, Any] = field(default_factory=dict)
    n: int = 20
    max_tasks: int | None = None
    seed: int = 0
    output: str = "results/eval"
    plots: bool = True
    baselines: list[str] = field(default_factory=lambda: ["std", "sd"])  # the paper's: relative improvement
    decoders: list[str] = field(default_factory=lambda: ["heuristic", "stale-aware", "sd-decode"])
    budget_free: list[str] = field(default_factory=lambda: ["ar", "std"])
    plot_exclude: list[str] = field(default_factory=lambda: ["random", "identity"])
    dataset_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, quick: bool = False, **overrides: Any) -> EvalConfig:
        """YAML defaults, then the ``quick`` block if asked, then non-``None`` overrides."""
        data = yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text(encoding="utf-8")) or {}
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown} in evaluation config {path or DEFAULT_CONFIG}")
        if quick:
            data = apply_dotted(data, data.get("quick") or {})
        return cls(**apply_dotted(data, {k: v for k, v in overrides.items() if v is not None}))

    def validate(self) -> None:
        unknown = [d for d in self.datasets if d not in self.dataset_specs]
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown}; choose from {sorted(self.dataset_specs)} "
                             "(or add one under dataset_specs in the config)")
        bad = [t for t in self.budgets if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1]
        if bad or not self.budgets:
            raise ValueError(f"budgets must be integers >= 1, got {self.budgets}")
        self.budgets = [int(t) for t in self.budgets]
        if not self.methods:
            raise ValueError("no methods to evaluate")
        if self.max_tasks is not None and (isinstance(self.max_tasks, bool)
                                           or not isinstance(self.max_tasks, numbers.Integral) or self.max_tasks < 1):
            raise ValueError(f"max_tasks must be an integer >= 1 (or left out for all tasks), got {self.max_tasks!r}")


@dataclass
class MethodEntry:
    """A method as evaluated: the ranking method (with any ``@deadline`` / ``@adaptive`` stop rule) and its label."""

    label: str
    spec: str
    method: Any
    budget_free: bool = False


def default_factory() -> Callable[..., Any]:
    from agents.methods import make_method

    return make_method


def trained_n(method: Any) -> int | None:
    """The N a learned method was trained for (from its observation space), if it has one."""
    if getattr(method, "n", None) is not None:
        return int(method.n)
    space = getattr(getattr(method, "agent", None), "observation_space", None)
    try:
        return int(space["first_token"].shape[0])
    except (TypeError, KeyError, IndexError):
        return None


def rank_n_problem(method: Any, n: int) -> str | None:
    """Why ``method`` cannot rank ``n`` candidates (None: it can): a learned method trained for another N
    whose policy cannot be resized to ``n`` (``agents.resize``)."""
    checkpoint_n = trained_n(method)
    if checkpoint_n is None or checkpoint_n == n:
        return None
    return method.resize_problem(n) if hasattr(method, "resize_problem") else "it cannot"


def build_methods(cfg: EvalConfig, factory: Callable[..., Any] | None = None) -> list[MethodEntry]:
    """All methods, built before any evaluation so a bad name or checkpoint fails in seconds."""
    factory = factory or default_factory()
    entries, labels = [], set()
    for spec in cfg.methods:
        named = _LABEL.match(spec)
        match = _SUFFIX.match(named["spec"] if named else spec)
        base = match["base"] if match else (named["spec"] if named else spec)
        method = factory(base)
        problem = rank_n_problem(method, cfg.n)
        if problem is not None:
            checkpoint_n = trained_n(method)
            raise ValueError(f"method {spec!r} was trained for N={checkpoint_n} candidates but the evaluation "
                             f"uses N={cfg.n} ({problem}); retrain it or pass --n {checkpoint_n}")
        name = named["label"] if named else getattr(method, "name", base)
        label = name + (f"@{match['kind']}={match['value']}" if match else "")
        if label in labels:
            raise ValueError(f"method {spec!r} appears twice (label {label!r})")
        labels.add(label)
        kind, value = (match["kind"], float(match["value"])) if match else (None, None)
        if hasattr(method, "cold"):
            method.cold = False  # the runner keeps fairness itself at a fraction of the cost (run_dataset)
        if kind == "deadline":
            method.deadline_ms = value
        elif kind == "adaptive":  # the agent's own value estimate where it has one, else the LLM's verdict
            method.stop_rules = (*method.stop_rules, adaptive_rule(method if hasattr(method, "agent") else None, value))
        entries.append(MethodEntry(label, spec, method, budget_free=match is None and base in cfg.budget_free))
    return entries


def make_grid_env(cfg: EvalConfig, dataset: str, budget: int) -> RSDRankEnv:
    spec = dict(cfg.dataset_specs[dataset])
    data = {k: v for k, v in spec.items() if k not in ("dataset", "split")}
    config = {"dataset": spec["dataset"], "split": spec.get("split", "test"), "data": data, "n": cfg.n,
              "budget": budget, "verifier": cfg.verifier, "verifier_kwargs": dict(cfg.verifier_kwargs),
              "max_tasks": cfg.max_tasks, "seed": cfg.seed, "task_order": "cycle"}
    return gym.make("RSDRank-v0", config=config).unwrapped


@dataclass(frozen=True)
class Prefill:
    """What a task's prompt prefill costs; every method is charged it exactly once per ranking."""

    ms: float
    tokens: int

    def charge(self, result: Any, cost: Any) -> tuple[float, int, int]:
        """(latency ms, passes, tokens) of a method's result: its own time and tokens without any prefill
        it triggered itself (none when the verifier kept the prompt KV), plus this prefill once. Passes
        need no correction: they follow the protocol's definition (``rsd_env.verifiers.base``), which
        already counts one prefill whatever the caches held."""
        inside = cost.calls.get("prefill", 0)
        ms = float(result.wall_ms) - 1000.0 * cost.seconds.get("prefill", 0.0) + self.ms
        tokens = int(result.tokens) - inside * self.tokens + self.tokens
        return ms, int(result.llm_passes), tokens


def measure_prefill(verifier: Any, task: Any) -> Prefill:
    before = verifier.stats.snapshot()
    verifier.first_token_scores(task)
    d = verifier.stats.since(before)
    return Prefill(1000.0 * sum(d.seconds.values()), d.tokens)


def run_dataset(envs: dict[int, RSDRankEnv], entries: Sequence[MethodEntry], dataset: str,
                progress: bool = True) -> list[dict[str, Any]]:
    """Per-task records of every method at every budget on one dataset.

    Tasks are the outer loop, so each task's prompt is prefilled once for all methods and budgets (methods
    run warm, ``cold = False``; their prefill is charged by ``Prefill``). Before each method the verifier
    forgets the proposals it verified (the prompt KV stays): every method pays for its own verifications,
    as it would deployed alone.
    """
    first, *_ = envs.values()
    verifier = first.verifier
    verifier.clear_cache()  # prompts cached earlier in this process (training) would hide their prefill cost
    records = []
    for task in tqdm(first.tasks, desc=dataset, disable=not progress):
        prefill = measure_prefill(verifier, task)  # warm-up: the prompt prefill, then the AR target
        target = first.target(task)
        for k, (budget, env) in enumerate(envs.items()):
            env.target(task)
            for entry in entries:
                if entry.budget_free and k > 0:
                    continue
                verifier.clear_cache(keep_prompts=True)
                # stop rules (deadlines) count the shared prefill as spent on this ranking
                spent = {"spent_ms": prefill.ms} if getattr(entry.method, "stop_rules", ()) else {}
                before = verifier.stats.snapshot()
                result = entry.method.rank(env, task.task_id, **spent)
                cost = verifier.stats.since(before)
                ranking = np.asarray(result.ranking, dtype=np.int64)
                latency_ms, passes, tokens = prefill.charge(result, cost)
                records.append({
                    "dataset": dataset, "method": entry.label, "budget": None if entry.budget_free else budget,
                    "task_id": task.task_id, "group": task.group, **agreement_metrics(ranking, target),
                    "docids": [task.candidates[j].docid for j in ranking],
                    "llm_passes": passes, "tokens": tokens, "wall_ms": float(result.wall_ms),
                    "latency_ms": latency_ms, "decode_ms": latency_ms - prefill.ms,
                    "rounds": result.info.get("rounds"),
                })
    return records


def add_label_metrics(records: list[dict[str, Any]], tasks: dict[str, Any]) -> None:
    """NDCG@10 vs qrels (IR); HR@1 and NDCG@5 of the held-out item (recommendation), via pytrec_eval."""
    ir = [r for r in records if tasks[r["task_id"]].qrels]
    rec = [r for r in records if tasks[r["task_id"]].held_out is not None]
    for group, k in ((ir, 10), (rec, 5)):
        for method in {r["method"] for r in group}:
            mine = [r for r in group if r["method"] == method]
            runs = {r["task_id"]: r["docids"] for r in mine}
            scores = ndcg_at_k(runs, {t: tasks[t].relevance() for t in runs}, k)
            for r in mine:
                r[f"ndcg@{k}"] = scores[r["task_id"]]
    for r in rec:
        r["hr@1"] = float(r["docids"][0] == tasks[r["task_id"]].held_out)


def summarise(records: list[dict[str, Any]], cfg: EvalConfig, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per (dataset, method, budget), with CIs, speedup and the paired test."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["budget"]), []).append(r)
    cells = []
    for (dataset, method, budget), rs in groups.items():
        cell: dict[str, Any] = {"dataset": dataset, "method": method, "budget": budget, "tasks": len(rs)}
        for m in (*report.AGREEMENT, *report.QUALITY):
            if any(m in r for r in rs):
                cell[m] = mean_ci([r[m] for r in rs])
        for m in report.COST:
            vals = [r[m] for r in rs if r[m] is not None]
            cell[m] = float(np.mean(vals)) if vals else None
        cells.append(cell)
    _compare(cells, groups, cfg, labels)
    return cells


def relative_improvement(mine: dict[str, float], base: dict[str, float]) -> float:
    """Relative improvement (%) of metric means over a reference; distances improve by going down."""
    gains = []
    for m in report.AGREEMENT:
        if not base[m]:
            continue  # a perfect distance of 0 leaves nothing to improve on
        up = mine[m] - base[m] if m in report.HIGHER_IS_BETTER else base[m] - mine[m]
        gains.append(100.0 * up / abs(base[m]))
    return float(np.mean(gains)) if gains else float("nan")


def _compare(cells, groups, cfg: EvalConfig, labels: Sequence[str]) -> None:
    """Speedup vs AR; Kendall tau vs the decoder to beat at the same budget (paired over tasks); the
    mean relative improvement over the best of the paper's baselines (STD, SD) per metric."""
    ar_label = next((lab for lab, spec in zip(labels, cfg.methods) if spec == "ar"), None)
    decoder_labels = [lab for lab, spec in zip(labels, cfg.methods) if spec in cfg.decoders]
    baseline_labels = [lab for lab, spec in zip(labels, cfg.methods) if spec in cfg.baselines]

    def group(dataset, method, budget):
        return groups.get((dataset, method, budget)) or groups.get((dataset, method, None))

    def means(rs):
        return {m: float(np.mean([r[m] for r in rs])) for m in report.AGREEMENT}

    to_beat: dict[tuple, str] = {}  # (dataset, T) -> the strongest hand-written decoder
    for cell in cells:
        if cell["method"] in decoder_labels and cell["budget"] is not None:
            key = (cell["dataset"], cell["budget"])
            best = to_beat.get(key)
            if best is None or cell["kendall_tau"]["mean"] > np.mean(
                    [r["kendall_tau"] for r in groups[(*key[:1], best, key[1])]]):
                to_beat[key] = cell["method"]
    for cell in cells:
        dataset, method, budget = cell["dataset"], cell["method"], cell["budget"]
        ar = groups.get((dataset, ar_label, None)) if ar_label else None
        for key, speedup in (("latency_ms", "speedup_vs_ar"), ("decode_ms", "decode_speedup_vs_ar")):
            if ar and cell[key]:
                cell[speedup] = float(np.mean([r[key] for r in ar])) / cell[key]
        if method == ar_label or budget is None:
            continue
        refs = [means(g) for g in (group(dataset, lab, budget) for lab in baseline_labels) if g]
        if refs and method not in baseline_labels:
            best_ref = {m: (max if m in report.HIGHER_IS_BETTER else min)(r[m] for r in refs)
                        for m in report.AGREEMENT}
            cell["rel_improvement_pct"] = relative_improvement(means(group(dataset, method, budget)), best_ref)
        beat = to_beat.get((dataset, budget))
        if beat is None:
            continue
        if method == beat:
            cell["decoder_to_beat"] = True
            continue
        base_by_task = {r["task_id"]: r["kendall_tau"] for r in groups[(dataset, beat, budget)]}
        mine = group(dataset, method, budget)
        a = [r["kendall_tau"] for r in mine]
        b = [base_by_task[r["task_id"]] for r in mine]
        cell["vs_baseline"] = beat
        base_mean = float(np.mean(b))
        cell["delta_tau_pct"] = 100.0 * (np.mean(a) - base_mean) / abs(base_mean) if base_mean else None
        cell["p_value"] = paired_test(a, b)
        queries = [r.get("group", r["task_id"]) for r in mine]
        if len(set(queries)) < len(queries):  # several tasks per query (windows): also test over queries
            cell["p_value_by_query"], cell["queries"] = grouped_paired_test(a, b, queries)


def run_evaluation(cfg: EvalConfig, factory: Callable[..., Any] | None = None, progress: bool = True,
             write: bool = True) -> dict[str, Any]:
    """Run the grid; returns the results dict and (``write``) commits every output file at the end.

    The methods are built (bad names and checkpoints fail) before the output folder is touched; outputs are
    staged and replace the previous run's only when the whole grid is done (``RunFolder``), and a second
    concurrent run into the same folder is refused.
    """
    cfg.validate()
    entries = build_methods(cfg, factory)
    folder = RunFolder(cfg.output) if write else None
    staging = folder.open() if folder is not None else None
    try:
        results = _run_grid(cfg, entries, progress)
        if folder is not None:
            write_outputs(results, staging, [e.label for e in entries], cfg)
            folder.commit({"run": "rsd-eval", "started": results["started"], "config": results["config"]})
    except BaseException:
        if folder is not None:
            folder.discard()
        raise
    return results


def _run_grid(cfg: EvalConfig, entries: list[MethodEntry], progress: bool) -> dict[str, Any]:
    started = time.time()
    records: list[dict[str, Any]] = []
    verifier_name = None
    for dataset in cfg.datasets:
        envs = {budget: make_grid_env(cfg, dataset, budget) for budget in cfg.budgets}
        first = envs[cfg.budgets[0]]
        for env in envs.values():  # one verifier object: shared prompt cache and cost counters
            env.verifier = first.verifier
        verifier_name = first.verifier.fingerprint()
        dataset_records = run_dataset(envs, entries, dataset, progress)
        add_label_metrics(dataset_records, {t.task_id: t for t in first.tasks})
        records += dataset_records
    labels = [e.label for e in entries]
    cells = summarise(records, cfg, labels)
    return {"config": dataclasses.asdict(cfg), "verifier": verifier_name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "cells": cells, "tasks": records}


def write_outputs(results: dict[str, Any], out: Path, labels: Sequence[str], cfg: EvalConfig) -> None:
    cells, records = results["cells"], results["tasks"]
    for dataset in cfg.datasets:
        for label in labels:
            for budget in sorted({r["budget"] or 0 for r in records if r["method"] == label}):
                runs = {r["task_id"]: r["docids"] for r in records if r["dataset"] == dataset
                        and r["method"] == label and (r["budget"] or 0) == budget}
                if runs:
                    name = re.sub(r"[^A-Za-z0-9_.=@-]+", "_", label) + (f".T{budget}" if budget else "")
                    report.write_trec_run(out / "runs" / dataset / f"{name}.trec", runs, name)
    if cfg.plots:
        from experiments.paper import plots

        shown = [lab for lab in labels if lab not in cfg.plot_exclude]
        for dataset in cfg.datasets:
            plots.budget_curve(cells, dataset, shown, out / f"{dataset}_budget.png")
            plots.pareto(cells, dataset, shown, out / f"{dataset}_pareto.png")
            plots.relative_improvement(cells, dataset, shown, out / f"{dataset}_improvement.png")
    report.write_text(out / "table.md", report.markdown_tables(cells, cfg.datasets, labels))
    report.write_csv(out / "results.csv", cells)
    report.write_json(out / "results.json", results)  # last: its presence means the run completed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rsd-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"YAML grid (default {DEFAULT_CONFIG})")
    p.add_argument("--methods", nargs="+", help="method specs: ar std sd heuristic stale-aware sd-decode random "
                   "identity agent:<checkpoint>; suffix @deadline=<ms> or @adaptive=<gain>")
    p.add_argument("--datasets", nargs="+", help="names under dataset_specs in the config: dl19 dl20 ml-100k "
                   "synthetic dl19-shuffled, or your own copies of quora amazon-games ml-1m (docs/data.md)")
    p.add_argument("--budgets", nargs="+", type=int, help="verification budgets T")
    p.add_argument("--verifier", help="bundled | simulated | hf:<model> | openai:<url>")
    p.add_argument("--verifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="verifier option (YAML value), repeatable: --verifier-arg adapter=null")
    p.add_argument("--n", type=int, help="candidates per task")
    p.add_argument("--max-tasks", type=int, help="first k tasks per dataset")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="output folder")
    p.add_argument("--no-plots", dest="plots", action="store_const", const=False)
    p.add_argument("--quick", action="store_true", help="the smoke-sized grid of the config's quick block")
    p.add_argument("--no-progress", action="store_true")
    add_threads_argument(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``rsd-eval``); returns the exit status."""
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "quick", "no_progress", "verifier_arg", "threads")}
    apply_threads(args.threads)
    if args.verifier_arg:
        overrides["verifier_kwargs"] = parse_assignments(args.verifier_arg, "--verifier-arg")
    try:
        cfg = EvalConfig.load(args.config, quick=args.quick, **overrides)
        results = run_evaluation(cfg, progress=not args.no_progress)
    except (ValueError, OSError) as err:  # bad names, checkpoints, paths: the message says what to fix
        print(f"rsd-eval: error: {err}", file=sys.stderr)
        return 2
    print(report.markdown_tables(results["cells"], cfg.datasets, [c for c in _labels(results)]))
    print(f"wrote {cfg.output}/results.json, results.csv, table.md, runs/{' and plots' if cfg.plots else ''} "
          f"({results['seconds']:.0f} s)")
    return 0


def _labels(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in results["tasks"]:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


if __name__ == "__main__":
    raise SystemExit(main())
