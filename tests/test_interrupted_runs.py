"""Interrupted and concurrent runs: atomic checkpoints, exact resume, kept best score, refused setting changes,
one writer per folder, and rsd-eval outputs that never mix two runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agents
from agents.callbacks import CheckpointEvery
from agents.train import main
from experiments.paper.evaluate import EvalConfig, run_evaluation
from experiments.paper.evaluate import main as eval_main
from rsd_env.io import FolderBusy, FolderLock, atomic_path, write_text

TINY = [
    "env_id=RSDRankSim-v0", "env={dataset: synthetic, split: train, budget: 2, n: 8, data: {count: 8}}",
    "eval_env={dataset: synthetic, split: test, budget: 2, n: 8, data: {count: 4}}", "eval_tasks=4",
    "policy_kwargs={d_model: 16, n_heads: 2, n_layers: 1}", "progress_bar=false", "torch_threads=1",
    "algo=rpo", "algo_kwargs={group_size: 3, tasks_per_batch: 2, warm_start_timesteps: 32}",
    "total_timesteps=120", "eval_freq=24", "checkpoint_freq=24",
]
TIMING = ("wall_ms", "latency_ms", "decode_ms")


def _argv(run_dir: Path, *extra: str) -> list[str]:
    args = ["--wandb-mode", "disabled", "--run-name", "r"]
    for item in [*TINY, f"run_dir={run_dir}", *extra]:
        args += ["--set", item]
    return args


def _evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return agents.load_agent(path).policy.state_dict()


class Killed(BaseException):
    """Stands in for SIGKILL inside the process: nothing after it runs, no handler catches it."""


def _kill_after_checkpoints(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    original, saved = CheckpointEvery.save, {"n": 0}

    def save(self) -> None:
        original(self)
        saved["n"] += 1
        if saved["n"] == count:
            raise Killed

    monkeypatch.setattr(CheckpointEvery, "save", save)


def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Checkpoints are taken at rollout boundaries, so resuming redoes exactly the lost steps."""
    assert main(_argv(tmp_path / "whole")) == 0
    _kill_after_checkpoints(monkeypatch, 2)
    with pytest.raises(Killed):
        main(_argv(tmp_path / "cut"))
    monkeypatch.undo()
    cut = tmp_path / "cut" / "r"
    at_kill = agents.load_agent(cut / "checkpoints" / "last.zip").num_timesteps
    assert 0 < at_kill < 120
    assert main(_argv(tmp_path / "cut")) == 0
    whole = tmp_path / "whole" / "r"
    a, b = agents.load_agent(whole / "model.zip"), agents.load_agent(cut / "model.zip")
    assert (a.num_timesteps, a._n_updates) == (b.num_timesteps, b._n_updates)
    for key, value in a.policy.state_dict().items():
        assert torch.equal(value, b.policy.state_dict()[key]), key
    assert _evals(cut) == _evals(whole)  # no evaluation repeated or lost
    with open(cut / "progress.csv", newline="") as fh:
        steps = [int(row["time/total_timesteps"]) for row in csv.DictReader(fh) if row["time/total_timesteps"]]
    assert steps == sorted(set(steps)) and steps[0] < at_kill < steps[-1]  # kept, then continued
    state = json.loads((cut / "state.json").read_text())
    assert state["wandb_id"]


def test_a_kill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    assert main(_argv(tmp_path, "total_timesteps=48")) == 0
    last = tmp_path / "r" / "checkpoints" / "last.zip"
    before = last.read_bytes()
    model = agents.load_agent(last)

    def half_written(path, *args, **kwargs):
        Path(path).write_bytes(before[: len(before) // 2])
        raise Killed

    monkeypatch.setattr(model, "save", half_written)
    with pytest.raises(Killed):
        agents.save_agent(model, last)
    assert last.read_bytes() == before
    assert agents.agent_meta(last)["num_timesteps"] == model.num_timesteps


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, capsys):
    assert main(_argv(tmp_path, "total_timesteps=72")) == 0
    checkpoints = tmp_path / "r" / "checkpoints"
    numbered = sorted(checkpoints.glob("model_*.zip"), key=lambda p: int(p.stem.split("_")[1]))
    newest = numbered[-1]
    (checkpoints / "last.zip").write_bytes(b"")  # what an in-place write left after SIGKILL
    newest.write_bytes(b"PK\x03\x04 truncated")
    (checkpoints / ".last.zip.abc123.tmp").write_bytes(b"partial")  # a killed writer's temp file
    capsys.readouterr()
    assert main(_argv(tmp_path, "total_timesteps=96")) == 0
    err = capsys.readouterr().err
    assert "could not load last.zip" in err and newest.name in err and f"resuming from {numbered[-2]}" in err
    assert agents.load_agent(tmp_path / "r" / "model.zip").num_timesteps >= 96
    assert not list(checkpoints.glob("*.tmp"))


@pytest.mark.parametrize("state", ["42", "null", "[1, 2]", "\x00\x01garbage"])
def test_a_state_file_of_the_wrong_shape_gets_a_new_wandb_run(tmp_path, capsys, state):
    assert main(_argv(tmp_path, "total_timesteps=48")) == 0
    (tmp_path / "r" / "state.json").write_text(state)
    capsys.readouterr()
    assert main(_argv(tmp_path, "total_timesteps=72")) == 0
    assert "state.json is unreadable; the resumed run gets a new wandb run" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "state.json").read_text())["wandb_id"]


def test_best_score_survives_a_resume(tmp_path, monkeypatch):
    _kill_after_checkpoints(monkeypatch, 2)
    with pytest.raises(Killed):
        main(_argv(tmp_path))
    monkeypatch.undo()
    best = tmp_path / "r" / "best.zip"
    kept = agents.agent_meta(best)["eval"]["final_agreement"]
    seen = []
    original = agents.callbacks.RankingEvalCallback.fire

    def fire(self):
        seen.append(self.best)
        original(self)

    monkeypatch.setattr(agents.callbacks.RankingEvalCallback, "fire", fire)
    assert main(_argv(tmp_path)) == 0
    assert seen[0] == kept  # the resumed run compares against the saved best, not -inf
    scores = [e["final_agreement"] for e in _evals(tmp_path / "r")]
    assert agents.agent_meta(best)["eval"]["final_agreement"] == max(scores)


def test_resume_refuses_changed_settings_and_no_resume_starts_over(tmp_path, capsys):
    assert main(_argv(tmp_path, "total_timesteps=48")) == 0
    run = tmp_path / "r"
    config_before = (run / "config.yaml").read_text()
    assert main(_argv(tmp_path, "total_timesteps=48", "algo_kwargs.rl_learning_rate=0.05")) == 2
    err = capsys.readouterr().err
    assert "rsd-train: error:" in err and "algo_kwargs.rl_learning_rate: None -> 0.05" in err
    assert "--no-resume" in err and (run / "config.yaml").read_text() == config_before
    # extending a run is allowed, and recorded
    assert main(_argv(tmp_path, "total_timesteps=72")) == 0
    assert json.loads((run / "state.json").read_text())["resumes"][0]["changed"] == {"total_timesteps": [48, 72]}
    assert main([*_argv(tmp_path, "total_timesteps=48", "algo_kwargs.rl_learning_rate=0.05"), "--no-resume"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1 and (aside[0] / "model.zip").exists() and (aside[0] / "config.yaml").exists()
    assert "rl_learning_rate: 0.05" in (run / "config.yaml").read_text()
    assert agents.load_agent(run / "model.zip").rl_learning_rate == 0.05


def test_a_second_concurrent_run_is_refused(tmp_path, capsys):
    with FolderLock(tmp_path / "r", ".lock", what="rsd-train run"):
        assert main(_argv(tmp_path, "total_timesteps=24")) == 2
    err = capsys.readouterr().err
    assert "another rsd-train run is writing to" in err and f"pid {os.getpid()}" in err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_a_run_refused_by_the_algorithm_leaves_no_folders_behind(tmp_path, capsys):
    """A first run whose algorithm rejects a setting creates neither its run folder nor the runs/ root."""
    root = tmp_path / "runs"
    assert main(_argv(root, "algo_kwargs={group_size: 3, tasks_per_batch: 2, advantage: bogus}")) == 2
    assert "advantage must be one of" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (root / "other").mkdir(parents=True)  # a root that already exists is kept, with what it holds
    assert main(_argv(root, "algo_kwargs={group_size: 3, tasks_per_batch: 2, advantage: bogus}")) == 2
    assert sorted(p.name for p in root.iterdir()) == ["other"]


def test_sigkill_releases_the_run_lock(tmp_path):
    """The lock dies with its holder: a killed run never blocks the next one."""
    code = ("import sys, time; from rsd_env.io import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}) as proc:
        try:
            assert proc.stdout.readline().strip() == "locked"
            with pytest.raises(FolderBusy, match=f"pid {proc.pid}"):
                FolderLock(tmp_path).acquire()
        finally:
            proc.send_signal(signal.SIGKILL)  # leaving the with block closes the pipe and waits
    FolderLock(tmp_path).acquire().release()


def test_atomic_path_leaves_the_old_file_when_the_writer_dies(tmp_path):
    target = write_text(tmp_path / "config.yaml", "old")
    with pytest.raises(Killed), atomic_path(target) as tmp:
        tmp.write_text("ha")
        raise Killed
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# ---- rsd-eval -----------------------------------------------------------------------------------
def _eval_cfg(out: Path, **overrides) -> EvalConfig:
    base = dict(methods=["std", "sd"], datasets=["synthetic"], budgets=[1], verifier="simulated", max_tasks=3,
                output=str(out), plots=False)
    return EvalConfig.load(**{**base, **overrides})


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_a_second_eval_replaces_the_first_one_whole(tmp_path):
    out = tmp_path / "out"
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")  # not rsd-eval's: left alone
    run_evaluation(_eval_cfg(out, methods=["std", "sd", "heuristic"], datasets=["dl19", "synthetic"]), progress=False)
    assert (out / "runs" / "dl19" / "heuristic.T1.trec").exists()
    run_evaluation(_eval_cfg(out, methods=["sd", "random"], budgets=[1, 2]), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    files = set(_outputs(out)) - {"notes.txt", "manifest.json"}
    assert files == set(manifest["files"])  # nothing of the first run is left beside the second
    assert not (out / "runs" / "dl19").exists() and (out / "runs" / "synthetic" / "random.T2.trec").exists()
    assert manifest["config"]["methods"] == ["sd", "random"]
    assert (out / "notes.txt").read_text() == "mine"


def test_an_eval_killed_midway_leaves_the_previous_outputs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_evaluation(_eval_cfg(out), progress=False)
    before = _outputs(out)
    import experiments.paper.evaluate as ev

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(ev, "add_label_metrics", killed)  # dies after the first dataset's work
    with pytest.raises(Killed):
        run_evaluation(_eval_cfg(out, methods=["std", "sd", "heuristic", "random"], budgets=[1, 2, 3]), progress=False)
    assert _outputs(out) == before and not list(out.glob(".staging-*"))


def test_an_eval_killed_while_committing_is_not_presented_as_complete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    run_evaluation(_eval_cfg(out), progress=False)
    moves = {"n": 0}
    original = Path.replace

    def replace(self, target):
        moves["n"] += 1
        if moves["n"] == 2:  # after the first of the new run's files moved in
            raise Killed
        return original(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(Killed):
        run_evaluation(_eval_cfg(out, methods=["heuristic", "random"]), progress=False)
    monkeypatch.undo()
    assert not (out / "results.json").exists() and not (out / "manifest.json").exists()
    dead = out / ".staging-dead"  # what a run SIGKILLed before its commit leaves
    (dead / "runs").mkdir(parents=True)
    (dead / "results.json").write_text("{}")
    run_evaluation(_eval_cfg(out, methods=["ar"]), progress=False)  # the next run cleans up what the kills left
    assert not dead.exists()
    assert "killed while it replaced" in capsys.readouterr().err
    assert set(_outputs(out)) == {*json.loads((out / "manifest.json").read_text())["files"], "manifest.json"}
    assert {p.name for p in (out / "runs" / "synthetic").iterdir()} == {"ar.trec"}


def test_concurrent_eval_into_one_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with FolderLock(out, ".rsd-eval.lock", what="rsd-eval"):
        code = eval_main(["--verifier", "simulated", "--datasets", "synthetic", "--methods", "std", "--budgets", "1",
                          "--max-tasks", "2", "--no-plots", "--no-progress", "--output", str(out)])
    assert code == 2
    assert "rsd-eval: error: another rsd-eval is writing to" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_no_plots_is_not_reported_as_plots_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_main(["--verifier", "simulated", "--datasets", "synthetic", "--methods", "std", "--budgets", "1",
                      "--max-tasks", "2", "--no-plots", "--no-progress", "--output", str(out)]) == 0
    wrote = capsys.readouterr().out.splitlines()[-1].replace(str(out), "<out>")
    assert wrote.startswith("wrote <out>/results.json, results.csv, table.md, runs/ (") and "plots" not in wrote
    assert not list(out.glob("*.png"))
