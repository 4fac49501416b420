"""Hyperparameter sweeps of RPO: a wandb sweep, or an offline Optuna study that resumes after a kill.

    python -m experiments.paper.sweep optuna --trials 8 [--output results/sweep]   # no server, no account
    python -m experiments.paper.sweep wandb --count 8 [--project rsd-sweep]        # wandb server sweep
    wandb sweep experiments/configs/sweep.yaml && wandb agent <id>           # same, with wandb's CLI

The search space is ``configs/sweep.yaml`` for both. A trial trains RPO on the training tasks and scores
the greedy agent on held-out tasks: objective = its mean Kendall tau vs the target minus that of the
decoder to beat (the strongest hand-written decoder on the same tasks at the same budget T), so trials with
different T compare fairly and > 0 means learning beats every decoder.
The Optuna study lives in a journal file; rerunning the command continues it: finished trials are kept,
trials cut off by a kill are marked failed and re-run with the same parameters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from experiments import CONFIGS

SWEEP_CONFIG = CONFIGS / "sweep.yaml"


def load_space(path: str | Path | None = None) -> dict[str, Any]:
    return yaml.safe_load(Path(path or SWEEP_CONFIG).read_text(encoding="utf-8"))


def _env(params: dict[str, Any], split: str, max_tasks: int):
    import gymnasium as gym

    import rsd_env  # noqa: F401

    config = {"dataset": "synthetic", "split": split, "verifier": params["verifier"],
              "budget": int(params["budget"]), "max_tasks": max_tasks, "seed": int(params["seed"])}
    return gym.make("RSDRank-v0", config=config)


def run_trial(params: dict[str, Any]) -> dict[str, float]:
    """Train one RPO agent with ``params`` and score it on held-out tasks."""
    from agents.methods import DECODERS, AgentMethod, make_method
    from agents.rpo import RPO

    start = time.perf_counter()
    steps = int(params["timesteps"])
    model = RPO("RankingPolicy", _env(params, "train", int(params["train_tasks"])),
                learning_rate=float(params["learning_rate"]), group_size=int(params["group_size"]),
                tasks_per_batch=int(params["tasks_per_batch"]), seed=int(params["seed"]), device="cpu",
                warm_start_timesteps=steps // 3 if params["warm_start"] else 0,
                policy_kwargs={"d_model": int(params["d_model"]), "n_layers": int(params["n_layers"])})
    model.learn(steps)
    env = _env(params, "test", int(params["eval_tasks"])).unwrapped
    ids = [t.task_id for t in env.tasks]
    agent = AgentMethod(model, name="rpo")
    tau_agent = float(np.mean([agent.rank(env, i).info["kendall_tau"] for i in ids]))
    decoders = {name: float(np.mean([make_method(name).rank(env, i).info["kendall_tau"] for i in ids]))
                for name in DECODERS}
    best = max(decoders, key=decoders.__getitem__)
    return {"objective": tau_agent - decoders[best], "kendall_tau": tau_agent, "decoder_to_beat": best,
            **{f"{name}_kendall_tau": tau for name, tau in decoders.items()},
            "train_seconds": time.perf_counter() - start}


# ---- Optuna (offline) -----------------------------------------------------------------------------
def suggest(trial, parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna suggestions from a wandb-style parameter block (values / value / distributions)."""
    params: dict[str, Any] = {}
    for name, spec in parameters.items():
        if "value" in spec:
            params[name] = spec["value"]
        elif "values" in spec:
            params[name] = trial.suggest_categorical(name, spec["values"])
        elif spec.get("distribution") in ("log_uniform_values", "uniform"):
            log = spec["distribution"] == "log_uniform_values"
            params[name] = trial.suggest_float(name, float(spec["min"]), float(spec["max"]), log=log)
        elif spec.get("distribution") in ("int_uniform", "q_uniform"):
            params[name] = trial.suggest_int(name, int(spec["min"]), int(spec["max"]))
        else:
            raise ValueError(f"sweep parameter {name!r}: unsupported spec {spec}; use value, values, "
                             "or distribution log_uniform_values | uniform | int_uniform")
    return params


def open_study(output: str | Path, name: str, seed: int):
    """The study in ``output/optuna.journal``, created or resumed; killed trials are re-queued."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from experiments.report import ensure_writable

    folder = ensure_writable(output)
    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    # a resumed process must not replay the first process's random stream (it would repeat its trials):
    # seed by the history length, which keeps a given history -> same next trials
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=4)
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.state == TrialState.RUNNING:  # its process died: single-worker study, so nobody runs it
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return study


def optuna_sweep(trials: int, output: str | Path = "results/sweep", name: str = "rpo", seed: int = 0,
                 space: dict[str, Any] | None = None, wandb_mode: str = "offline",
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run until the study has ``trials`` complete trials; returns the best trial's parameters."""
    import wandb
    from optuna.trial import TrialState

    space = space or load_space()
    parameters = {**space["parameters"], **{k: {"value": v} for k, v in (overrides or {}).items()}}
    study = open_study(output, name, seed)

    def objective(trial) -> float:
        params = suggest(trial, parameters)
        run = wandb.init(project="rsd-sweep", group=name, name=f"{name}-trial-{trial.number}", config=params,
                         mode=wandb_mode, dir=str(output), reinit="finish_previous")
        try:
            scores = run_trial(params)
            run.log(scores)
        finally:
            run.finish()
        for key, value in scores.items():
            trial.set_user_attr(key, value)
        return scores["objective"]

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done < trials:
        study.optimize(objective, n_trials=trials - done, show_progress_bar=True)
    best = study.best_trial
    fixed = {k: v["value"] for k, v in parameters.items() if "value" in v}
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return {"trial": best.number, "objective": best.value, "params": {**fixed, **best.params},
            "scores": best.user_attrs, "complete_trials": complete, "resumed_from": done}


# ---- wandb (server) ---------------------------------------------------------------------------------
def wandb_trial() -> None:
    """One trial inside ``wandb agent``: the sweep's parameters arrive in ``wandb.config``."""
    import wandb

    run = wandb.init()
    run.log(run_trial(dict(run.config)))
    run.finish()


def wandb_sweep(count: int, project: str) -> None:
    import wandb

    sweep_id = wandb.sweep(load_space(), project=project)
    wandb.agent(sweep_id, function=wandb_trial, count=count, project=project)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="experiments.paper.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="backend", required=True)
    o = sub.add_parser("optuna", help="offline sweep; rerun the same command to resume")
    o.add_argument("--trials", type=int, default=8, help="complete trials wanted in the study")
    o.add_argument("--output", default="results/sweep")
    o.add_argument("--name", default="rpo")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--wandb-mode", default="offline", choices=("online", "offline", "disabled"))
    o.add_argument("--timesteps", type=int, help="override the training steps per trial")
    w = sub.add_parser("wandb", help="create a wandb sweep and run an agent (needs a wandb server/account)")
    w.add_argument("--count", type=int, default=8)
    w.add_argument("--project", default="rsd-sweep")
    sub.add_parser("wandb-trial", help="one trial, as launched by `wandb agent`")
    args = p.parse_args(argv)
    if args.backend == "optuna":
        overrides = {"timesteps": args.timesteps} if args.timesteps else None
        best = optuna_sweep(args.trials, args.output, args.name, args.seed, wandb_mode=args.wandb_mode,
                            overrides=overrides)
        print(yaml.safe_dump({"best": best}, sort_keys=False))
    elif args.backend == "wandb":
        wandb_sweep(args.count, args.project)
    else:
        wandb_trial()


if __name__ == "__main__":
    raise SystemExit(main())
