"""rsd-main: the README's main job — train a small RPO agent, then compare it with every baseline.

    rsd-main                          # bundled LLM: train on DL20, table on DL19 at T = 1, 2, 3 (~15 min)
    rsd-main --verifier simulated     # the same job on the simulated verifier (a few minutes)
    rsd-main --quick                  # smoke run

Settings: ``experiments/configs/main.yaml`` (training: ``agents.train`` with the config it names).
Outputs under ``--output`` (default ``results/main``): the training run ``rpo-<verifier>/`` (checkpoints,
``model.zip``, wandb offline logs; rerunning resumes it) and the evaluation ``eval/`` (results.json/csv,
table.md, TREC runs, plots).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments import CONFIGS
from experiments.paper.evaluate import EvalConfig, run_evaluation
from experiments.report import ensure_writable, markdown_tables
from rsd_env.settings import deep_merge, parse_assignments

MAIN_CONFIG = CONFIGS / "main.yaml"


def load_main_config(path: str | Path | None = None, verifier: str | None = None, quick: bool = False,
                **overrides: Any) -> dict[str, Any]:
    """The main job's settings: YAML, then the simulated / quick blocks where they apply, then overrides."""
    cfg = yaml.safe_load(Path(path or MAIN_CONFIG).read_text(encoding="utf-8"))
    if verifier is not None:
        cfg["verifier"] = verifier
    if cfg["verifier"] == "simulated":
        cfg = deep_merge(cfg, cfg.get("simulated"))
    if quick:
        cfg = deep_merge(cfg, cfg.get("quick"))
    cfg["quick"] = quick
    return deep_merge(cfg, {k: v for k, v in overrides.items() if v is not None})


def train_config(cfg: dict[str, Any]):
    """The ``agents.train`` config: the named YAML + main.yaml's overrides + verifier, seed, run folder."""
    from agents.train import load_train_config

    kind = cfg["verifier"] if isinstance(cfg["verifier"], str) else "custom"
    run_name = "rpo-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", kind) + ("-quick" if cfg["quick"] else "")
    fixed = {"env.verifier": cfg["verifier"], "eval_env.verifier": cfg["verifier"],
             "env.verifier_kwargs": cfg["verifier_kwargs"], "eval_env.verifier_kwargs": cfg["verifier_kwargs"],
             "seed": cfg["seed"], "run_dir": cfg["output"], "run_name": run_name}
    items = {**cfg["train_overrides"], **fixed}
    return load_train_config(CONFIGS / cfg["train_config"], items)


def run(cfg: dict[str, Any], progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Train (or resume) the agent, then evaluate it with every baseline; returns the evaluation results."""
    from agents.train import train

    out = ensure_writable(cfg["output"])
    e = cfg["eval"]
    tcfg = train_config(cfg)
    tcfg.progress_bar, tcfg.resume = progress, resume
    start = time.perf_counter()
    os.environ.setdefault("WANDB_SILENT", "true")
    checkpoint = train(tcfg)
    train_s = time.perf_counter() - start
    eval_cfg = EvalConfig.load(methods=[*e["methods"], f"rpo=agent:{checkpoint}"], datasets=e["datasets"],
                               budgets=e["budgets"], verifier=cfg["verifier"], max_tasks=e.get("max_tasks"),
                               verifier_kwargs=cfg["verifier_kwargs"], seed=cfg["seed"],
                               output=str(out / "eval"))
    results = run_evaluation(eval_cfg, progress=progress)
    results["checkpoint"] = str(checkpoint)
    results["timings_s"] = {"train": round(train_s, 1), "evaluate": results["seconds"],
                            "total": round(time.perf_counter() - start, 1)}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``rsd-main``); returns the exit status."""
    p = argparse.ArgumentParser(prog="rsd-main", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help=f"settings YAML (default {MAIN_CONFIG})")
    p.add_argument("--verifier", help="bundled (default) | simulated | hf:<model> | openai:<url>")
    p.add_argument("--verifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="verifier option (YAML value), repeatable, e.g. --verifier-arg adapter=null")
    p.add_argument("--output", help="output folder (default results/main)")
    p.add_argument("--seed", type=int)
    p.add_argument("--quick", action="store_true", help="smoke-sized run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-resume", action="store_true", help="retrain even if the agent's run has a checkpoint")
    args = p.parse_args(argv)
    try:
        extra = {"verifier_kwargs": parse_assignments(args.verifier_arg, "--verifier-arg")} if args.verifier_arg else {}
        cfg = load_main_config(args.config, args.verifier, args.quick, output=args.output, seed=args.seed, **extra)
        results = run(cfg, progress=not args.no_progress, resume=not args.no_resume)
    except (ValueError, OSError) as err:  # bad settings, data or checkpoints; a busy or incompatible run folder
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    labels = list(dict.fromkeys(r["method"] for r in results["tasks"]))
    print(markdown_tables(results["cells"], cfg["eval"]["datasets"], labels))
    t = results["timings_s"]
    print(f"verifier {results['verifier']}; agent {results['checkpoint']}; train {t['train']:.0f} s, "
          f"evaluate {t['evaluate']:.0f} s, total {t['total']:.0f} s; outputs in {cfg['output']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
