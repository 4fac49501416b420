"""Kill ``rsd-train`` at random moments (SIGKILL) and check that every run resumes, finishes, and ends with
exactly the weights and evaluations of an uninterrupted run.

    python -m experiments.benchmarks.kill_resume --kills 20          # ~5 min on 2 CPU cores

A reference run trains once without interruption (its wall time D). Then each attempt starts the same
command and SIGKILLs it after a random delay in [0, D); a run that finishes before it is killed is checked
and the next run (a new run name) starts, until ``--kills`` kills have landed. Prints one JSON line with
the counts: kills, kills that left a checkpoint temp file behind (killed mid-write), resumes, fallbacks to
an older checkpoint, finished runs and whether each equals the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import agents
from experiments import CONFIGS

CONFIG = CONFIGS / "train_rpo_sim.yaml"
# the simulated config, shrunk so that one uninterrupted run takes seconds beyond start-up
SMALL = ["env.data.count=200", "eval_tasks=16", "total_timesteps=3000", "eval_freq=600", "checkpoint_freq=300",
         "algo_kwargs.warm_start_timesteps=1500", "algo_kwargs.tasks_per_batch=8", "progress_bar=false"]
TIMING = ("wall_ms", "latency_ms", "decode_ms")


def command(run_dir: Path, name: str) -> list[str]:
    args = [sys.executable, "-m", "agents.train", "--config", str(CONFIG), "--wandb-mode", "disabled",
            "--run-name", name, "--set", f"run_dir={run_dir}"]
    for item in SMALL:
        args += ["--set", item]
    return args


def start(run_dir: Path, name: str, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "WANDB_SILENT": "true"}
    return subprocess.Popen(command(run_dir, name), stdout=log, stderr=log, env=env)


def evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def same_as(run: Path, reference: Path) -> bool:
    a, b = agents.load_agent(run / "model.zip"), agents.load_agent(reference / "model.zip")
    weights = a.policy.state_dict(), b.policy.state_dict()
    return (a.num_timesteps == b.num_timesteps and a._n_updates == b._n_updates
            and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
            and evals(run) == evals(reference))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, help="where the runs go (default: a temp folder)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="rsd-kill-"))
    log = open(run_dir / "log.txt", "a")
    t0 = time.perf_counter()
    if start(run_dir, "reference", log).wait() != 0:
        raise SystemExit(f"the reference run failed; see {run_dir / 'log.txt'}")
    duration = time.perf_counter() - t0
    counts = {"kills": 0, "killed_mid_write": 0, "resumed": 0, "fell_back": 0, "finished_runs": 0,
              "equal_to_reference": 0, "failed": 0}
    run_index = 0
    while counts["kills"] < args.kills:
        name = f"killed-{run_index}"
        proc = start(run_dir, name, log)
        try:
            code = proc.wait(timeout=rng.uniform(0.0, duration))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            counts["kills"] += 1
            run = run_dir / name
            counts["killed_mid_write"] += bool(list(run.glob("checkpoints/.*.tmp")) + list(run.glob(".*.zip.*.tmp")))
            continue
        if code != 0:
            counts["failed"] += 1
            print(f"run {name} exited with {code}; see {run_dir / 'log.txt'}", file=sys.stderr)
        else:
            counts["finished_runs"] += 1
            counts["equal_to_reference"] += same_as(run_dir / name, run_dir / "reference")
        run_index += 1
    name = f"killed-{run_index}"
    if start(run_dir, name, log).wait() == 0:  # the last killed run, finished
        counts["finished_runs"] += 1
        counts["equal_to_reference"] += same_as(run_dir / name, run_dir / "reference")
    else:
        counts["failed"] += 1
    log.close()
    text = (run_dir / "log.txt").read_text()
    counts["resumed"] = text.count("resuming ")
    counts["fell_back"] = text.count("could not load")
    counts["reference_seconds"] = round(duration, 1)
    counts["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(counts))
    ok = counts["failed"] == 0 and counts["equal_to_reference"] == counts["finished_runs"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
