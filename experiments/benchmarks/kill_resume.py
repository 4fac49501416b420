"""Kill ``rsd-train`` or ``rsd-rerank`` at random moments (SIGKILL) and check that every run resumes, finishes,
and ends with exactly the output of an uninterrupted run.

    python -m experiments.benchmarks.kill_resume --kills 20                  # rsd-train, ~5 min on 2 CPU cores
    python -m experiments.benchmarks.kill_resume --tool rerank --kills 20    # rsd-rerank, 6 DL19 queries, ~4 min

A reference run goes once without interruption (its wall time D; for rsd-rerank also W, the time from
opening its output folder to saving its last query). Then each attempt starts the same command and SIGKILLs
it after a random delay in [0, D) (rsd-train), or, for rsd-rerank, once it has opened its output folder
(nothing is written before), after a random delay in [0, W x the share of queries not saved yet), and not
at all once every query is saved. A run that finishes before it is killed is checked and the next run (a
new run name / output folder) starts, until ``--kills`` kills have landed; the last killed run then finishes.

rsd-train: a finished run must equal the reference's weights, step count and evaluations. rsd-rerank (the
shipped agent on the simulated verifier, ``--batch 1``, so queries complete one by one): a finished run's
``run.trec`` must be byte-identical to the reference's, and its ``rerank.jsonl`` equal but for timings.

Prints one JSON line with the counts: kills, kills that left a new temp file behind (killed mid-write),
resumes, fallbacks to an older checkpoint (rsd-train), finished runs and how many equal the reference. For
rsd-rerank also: how many queries were saved at each kill, the reruns that found saved queries, those that
said they resumed with exactly all of them (the others were killed again before they said so),
queries lost (saved before an attempt, gone after it) and queries redone as "changed" (both must be 0).
Each attempt's output is in ``<run-dir>/logs``.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments import CONFIGS

CONFIG = CONFIGS / "train_rpo_sim.yaml"
# the simulated config, shrunk so that one uninterrupted run takes seconds beyond start-up
SMALL = ["env.data.count=200", "eval_tasks=16", "total_timesteps=3000", "eval_freq=600", "checkpoint_freq=300",
         "algo_kwargs.warm_start_timesteps=1500", "algo_kwargs.tasks_per_batch=8", "progress_bar=false"]
RERANK = ["--dataset", "dl19", "--max-queries", "6", "--verifier", "simulated", "--batch", "1", "--no-progress"]
TIMING = ("wall_ms", "latency_ms", "decode_ms", "cpu_ms")


@dataclass(frozen=True)
class Tool:
    """How to run one tool into ``run_dir/name``, where it is ready, and when two runs' outputs are equal."""

    command: Callable[[Path, str], list[str]]
    same_as: Callable[[Path, Path], bool]
    temp_files: tuple[str, ...]  # globs, relative to the run folder, of what a writer killed mid-write leaves
    opened: str | None = None  # a file written when start-up ends (None: kill from t = 0)
    progress: str | None = None  # a file rewritten as work completes: its last write ends the kill window


# ---- rsd-train ----------------------------------------------------------------------------------------
def train_command(run_dir: Path, name: str) -> list[str]:
    args = [sys.executable, "-m", "agents.train", "--config", str(CONFIG), "--wandb-mode", "disabled",
            "--run-name", name, "--set", f"run_dir={run_dir}"]
    for item in SMALL:
        args += ["--set", item]
    return args


def _without_timing(rows: list[dict]) -> list[dict]:
    for row in rows:
        for part in (row, row.get("rsd", {})):
            for key in TIMING:
                part.pop(key, None)
    return rows


def evals(run: Path) -> list[dict]:
    return _without_timing([json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()])


def same_training(run: Path, reference: Path) -> bool:
    import torch

    import agents

    a, b = agents.load_agent(run / "model.zip"), agents.load_agent(reference / "model.zip")
    weights = a.policy.state_dict(), b.policy.state_dict()
    return (a.num_timesteps == b.num_timesteps and a._n_updates == b._n_updates
            and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
            and evals(run) == evals(reference))


# ---- rsd-rerank ---------------------------------------------------------------------------------------
def rerank_command(run_dir: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "experiments.rerank", *RERANK, "--output", str(run_dir / name)]


def same_rerank(run: Path, reference: Path) -> bool:
    def records(folder: Path) -> list[dict]:
        return _without_timing([json.loads(line) for line in (folder / "rerank.jsonl").read_text().splitlines()])

    return ((run / "run.trec").read_bytes() == (reference / "run.trec").read_bytes()
            and records(run) == records(reference))


TOOLS = {"train": Tool(train_command, same_training, ("checkpoints/.*.tmp", ".*.zip.*.tmp")),
         "rerank": Tool(rerank_command, same_rerank, (".*.tmp",), opened="settings.json", progress="rerank.jsonl")}


def start(tool: Tool, run_dir: Path, name: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "WANDB_SILENT": "true"}
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(tool.command(run_dir, name), stdout=out, stderr=out, env=env)


def reference_run(tool: Tool, run_dir: Path, log: Path) -> tuple[float, float]:
    """Runs the reference; returns (D, W): its wall time, and the span over which attempts are killed
    (D, or for a tool with ``opened``/``progress`` files the time from the one's write to the other's last)."""
    t0 = time.perf_counter()
    if start(tool, run_dir, "reference", log).wait() != 0:
        raise SystemExit(f"the reference run failed; see {log}")
    duration = time.perf_counter() - t0
    if tool.opened is None or tool.progress is None:
        return duration, duration
    folder = run_dir / "reference"
    return duration, (folder / tool.progress).stat().st_mtime - (folder / tool.opened).stat().st_mtime


def wait_until_opened(proc: subprocess.Popen, marker: Path) -> None:
    """Until the process has (re)written ``marker`` (it has opened its output) or ended."""
    started = time.time()
    while proc.poll() is None:
        try:
            if marker.stat().st_mtime >= started:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.005)


def temp_files(tool: Tool, run: Path) -> set[Path]:
    return {path for pattern in tool.temp_files for path in run.glob(pattern)}


def saved_queries(run: Path) -> int:
    path = run / "rerank.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", choices=sorted(TOOLS), default="train")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, help="where the runs go (default: a temp folder)")
    args = p.parse_args(argv)
    tool, rerank = TOOLS[args.tool], args.tool == "rerank"
    rng = random.Random(args.seed)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"rsd-kill-{args.tool}-"))
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    duration, window = reference_run(tool, run_dir, logs / "reference.txt")
    total = saved_queries(run_dir / "reference")
    counts: dict = {"kills": 0, "killed_mid_write": 0, "resumed": 0, "fell_back": 0, "finished_runs": 0,
                    "equal_to_reference": 0, "failed": 0}
    if rerank:  # per attempt: the queries saved before it, and whether it resumed exactly those
        counts.update(saved_at_kill={}, reruns_after_a_saved_query=0, resumed_all_saved=0,
                      killed_before_saying_so=0, queries_lost=0, redone_as_changed=0)
    run_index, attempt, finished = 0, 0, False
    while not finished:
        name, log = f"killed-{run_index}", logs / f"{attempt:03d}.txt"
        attempt += 1
        run = run_dir / name
        saved_before = saved_queries(run) if rerank else 0
        temps_before = temp_files(tool, run)
        proc = start(tool, run_dir, name, log)
        # enough kills, or (rsd-rerank) every query saved: let this run finish
        last = counts["kills"] >= args.kills
        delay = None if last else rng.uniform(0.0, window)
        if rerank and not last:  # kill while queries are being reranked: W scaled to the ones left
            left = 1.0 - saved_before / total
            delay = rng.uniform(0.0, window * left) if left > 0 else None
            wait_until_opened(proc, run / tool.opened)
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            code = None
            counts["kills"] += 1
            counts["killed_mid_write"] += bool(temp_files(tool, run) - temps_before)
        text = log.read_text()
        if rerank:
            saved = saved_queries(run)
            counts["queries_lost"] += max(0, saved_before - saved)
            counts["redone_as_changed"] += text.count("changed since they were reranked")
            if saved_before:
                counts["reruns_after_a_saved_query"] += 1
                if f"resuming: {saved_before} queries" in text:
                    counts["resumed_all_saved"] += 1
                elif code is None and "resuming:" not in text:
                    counts["killed_before_saying_so"] += 1
            if code is None:
                counts["saved_at_kill"][saved] = counts["saved_at_kill"].get(saved, 0) + 1
        counts["resumed"] += text.count("resuming ") + text.count("resuming: ")
        counts["fell_back"] += text.count("could not load")
        if code is None:
            continue
        if code != 0:
            counts["failed"] += 1
            print(f"run {name} exited with {code}; see {log}", file=sys.stderr)
        else:
            counts["finished_runs"] += 1
            counts["equal_to_reference"] += tool.same_as(run, run_dir / "reference")
        run_index += 1
        finished = last
    if rerank:
        counts["saved_at_kill"] = dict(sorted(counts["saved_at_kill"].items()))
    counts["kill_window_seconds"] = round(window, 2)
    counts["reference_seconds"] = round(duration, 1)
    counts["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(counts))
    ok = counts["failed"] == 0 and counts["equal_to_reference"] == counts["finished_runs"]
    if rerank:
        ok = ok and counts["queries_lost"] == 0 and counts["redone_as_changed"] == 0 and (
            counts["resumed_all_saved"] + counts["killed_before_saying_so"]
            == counts["reruns_after_a_saved_query"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
