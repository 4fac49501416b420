"""Ablations of the learned agent, as in the paper: train each variant of one training config, then score
every variant beside the hand-written decoders in one rsd-eval grid (same tasks, same verifier, paired tests).

Variants are dotted-key overrides of the base training config (``rsd-train --set`` syntax), e.g.
``latest-round-only: {policy_kwargs.history: latest}``, or a checkpoint of another variant's run, e.g.
``warm-start-only: full/warm_start.zip`` (the model before its first RL update). Runs resume like
rsd-train; the table goes to ``<output>/eval/table.md``.

    python -m experiments.paper.ablations --config experiments/configs/ablations_sim.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from experiments import CONFIGS
from experiments.paper.evaluate import EvalConfig, run_evaluation
from experiments.report import markdown_tables


def load(path: str | Path) -> dict[str, Any]:
    """The ablation settings; every variant must be a mapping of dotted keys."""
    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("variants"), dict) or not cfg["variants"]:
        raise ValueError(f"{path}: needs a 'variants' mapping of name -> {{dotted.key: value}}")
    for name, overrides in cfg["variants"].items():
        if not isinstance(overrides, (dict, str)):
            raise ValueError(f"{path}: variant {name!r} must be a mapping of dotted keys or a checkpoint path "
                             f"under the output folder, got {overrides!r}")
    return cfg


def train_variants(cfg: dict[str, Any], progress: bool = True) -> dict[str, Path]:
    """Train (or resume) every variant; returns name -> final checkpoint."""
    from agents.train import load_train_config, train

    base = Path(cfg["train_config"])
    base = base if base.exists() else CONFIGS / base
    for name, overrides in cfg["variants"].items():
        if isinstance(overrides, str):  # a checkpoint another variant's run leaves (finished_runs finds it)
            continue
        items = {**(cfg.get("train_overrides") or {}), **overrides, "run_dir": cfg["output"], "run_name": name}
        tcfg = load_train_config(base, items)
        tcfg.progress_bar = progress
        start = time.perf_counter()
        print(f"{name}: {train(tcfg)} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return finished_runs(cfg)


def finished_runs(cfg: dict[str, Any]) -> dict[str, Path]:
    """Every variant's final checkpoint, without training (several evaluations may then run at once)."""
    out = Path(cfg["output"])
    paths = {name: out / (v if isinstance(v, str) else f"{name}/model.zip") for name, v in cfg["variants"].items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no finished run for {missing}; train them first (without --eval-only); a "
                                "checkpoint variant needs the variant whose run leaves it")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.paper.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIGS / "ablations_sim.yaml"))
    p.add_argument("--output", help="output folder (default: the config's)")
    p.add_argument("--variants", nargs="+", help="only these variants (default: all), e.g. to train in parallel")
    p.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    p.add_argument("--eval-only", action="store_true", help="evaluate the variants' finished runs (no training)")
    p.add_argument("--budgets", nargs="+", type=int, help="evaluate at these T (default: the config's)")
    p.add_argument("--eval-output", help="evaluation folder (default <output>/eval)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        cfg = load(args.config)
        if args.output:
            cfg["output"] = args.output
        if args.variants:
            unknown = sorted(set(args.variants) - set(cfg["variants"]))
            if unknown:
                raise ValueError(f"unknown variants {unknown}; the config has {sorted(cfg['variants'])}")
            cfg["variants"] = {k: v for k, v in cfg["variants"].items() if k in args.variants}
        checkpoints = finished_runs(cfg) if args.eval_only else train_variants(cfg, progress=not args.no_progress)
        if args.train_only:
            return 0
        e = {**cfg["eval"], **({"budgets": args.budgets} if args.budgets else {})}
        methods = [*e["methods"], *(f"{name}=agent:{path}" for name, path in checkpoints.items())]
        eval_cfg = EvalConfig.load(methods=methods, datasets=e["datasets"], budgets=e["budgets"],
                                   verifier=e.get("verifier", "bundled"), max_tasks=e.get("max_tasks"),
                                   seed=cfg.get("seed", 0), plots=False, n=e.get("n", 20),
                                   output=args.eval_output or str(Path(cfg["output"]) / "eval"))
        results = run_evaluation(eval_cfg, progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    labels = list(dict.fromkeys(r["method"] for r in results["tasks"]))
    print(markdown_tables(results["cells"], e["datasets"], labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
