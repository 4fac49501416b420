"""``rsd-train``: train an agent on RSDRank from a YAML config, with evaluation, checkpoints and wandb.

    rsd-train --config experiments/configs/train_rpo_sim.yaml --set total_timesteps=20000 --set env.budget=3

A run lives in ``<run_dir>/<run_name>/``: ``config.yaml``, ``checkpoints/last.zip`` (+ ``.json``),
``best.zip`` (best held-out agreement), ``model.zip`` (final), ``eval.jsonl``, ``progress.csv``,
``state.json`` (wandb run id) and ``wandb/``. Starting a run whose folder has a checkpoint resumes it:
same timesteps, optimizer state, sampling stream and wandb run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    mode: str = "offline"  # never needs an account unless "online"
    project: str = "rsd"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files and ``--set key=value`` fill it."""

    algo: str = "rpo"  # agents.make name: rpo | ppo | a2c | trpo | module:Class
    env_id: str = "RSDRank-v0"
    env: dict[str, Any] = field(default_factory=lambda: {"dataset": "trec-dl", "split": "train", "budget": 2})
    eval_env: dict[str, Any] | None = None  # layered over ``env`` with split "test": list only what differs
    eval_tasks: int | None = 64  # held-out tasks per evaluation (None = all)
    eval_freq: int = 5000  # timesteps between evaluations (0 = only at the end)
    total_timesteps: int = 20000
    n_envs: int = 8  # for SB3 algorithms; RPO uses tasks_per_batch * (group_size + 1)
    batched: bool = True  # RSDVecEnv (one verify_batch per step) or DummyVecEnv
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=lambda: {"d_model": 64, "n_layers": 2, "n_heads": 4})
    seed: int = 0
    checkpoint_freq: int = 5000  # timesteps between checkpoints
    run_dir: str = "runs"
    run_name: str | None = None  # default: <algo>-<env_id>-seed<seed>
    resume: bool = True
    progress_bar: bool = True
    torch_threads: int | None = None
    verbose: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def name(self) -> str:
        return self.run_name or f"{self.algo}-{self.env_id}-seed{self.seed}".replace(":", "_").replace("/", "_")

    def path(self) -> Path:
        return Path(self.run_dir) / self.name()


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from nested dicts; unknown keys are errors that list the valid ones."""
    raw = dict(raw or {})
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ValueError(f"unknown train config keys {unknown}; valid keys: {sorted(valid)}")
    wandb_raw = dict(raw.pop("wandb", None) or {})
    wandb_valid = {f.name for f in dataclasses.fields(WandbConfig)}
    if set(wandb_raw) - wandb_valid:
        raise ValueError(f"unknown wandb keys {sorted(set(wandb_raw) - wandb_valid)}; valid: {sorted(wandb_valid)}")
    config = TrainConfig(**raw, wandb=WandbConfig(**wandb_raw))
    if config.wandb.mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {config.wandb.mode!r}")
    if config.total_timesteps < 1:
        raise ValueError(f"total_timesteps must be >= 1, got {config.total_timesteps}")
    return config


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (dotted keys for nesting, values parsed as YAML) applied to a config dict."""
    raw = json.loads(json.dumps(raw))  # deep copy
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. env.budget=3), got {item!r}")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # e.g. eval_env: null -> a mapping of overrides
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no train config at {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a YAML mapping of train config keys")
    defaults = dataclasses.asdict(TrainConfig())
    merged = {**defaults, **raw, "wandb": {**defaults["wandb"], **(raw.get("wandb") or {})}}
    return config_from_dict(apply_overrides(merged, overrides or []))


# ---- envs ----------------------------------------------------------------------------------------
def make_env(env_id: str, env_config: dict[str, Any]):
    """``gym.make(env_id, config=...)`` with ``env_config`` layered over the id's registered config.

    ``env_config["mix"]``: a list of ``{dataset, split, **load_tasks options}`` whose tasks are pooled
    into one env (e.g. DL20 queries and MovieLens training users), instead of ``dataset``/``split``.
    """
    import gymnasium as gym

    import rsd_env  # noqa: F401  (registers the ids)
    from rsd_env.data import load_tasks

    config = {**(gym.spec(env_id).kwargs.get("config") or {}), **env_config}
    mix = config.pop("mix", None)
    if mix:
        if not isinstance(mix, list) or not all(isinstance(m, dict) and "dataset" in m for m in mix):
            raise ValueError(f"env.mix must be a list of mappings with a 'dataset' key, got {mix!r}")
        n, seed = config.get("n", 20), config.get("seed", 0)
        config["tasks"] = [task for m in mix for task in load_tasks(
            m["dataset"], m.get("split", "train"), n, seed=seed, **{k: v for k, v in m.items()
                                                                   if k not in ("dataset", "split")})]
    return gym.make(env_id, config=config)


def make_vec_env(config: TrainConfig, env):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.vec_env import RSDVecEnv

    if config.batched:
        venv = RSDVecEnv.from_env(env, config.n_envs)
    else:
        venv = DummyVecEnv([lambda: env] + [lambda: make_env(config.env_id, config.env)] * (config.n_envs - 1))
    venv.seed(config.seed)
    return venv


# ---- the run -------------------------------------------------------------------------------------
def train(config: TrainConfig) -> Path:
    """Train (or resume) the run described by ``config``; returns the final model's path."""
    import torch
    import wandb
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import configure
    from wandb.integration.sb3 import WandbCallback

    import agents
    from agents.callbacks import CheckpointEvery, RankingEvalCallback, WandbWriter

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    run = config.path()
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    state_file = run / "state.json"
    last = run / "checkpoints" / "last.zip"
    resuming = config.resume and last.exists()
    state = json.loads(state_file.read_text()) if resuming and state_file.exists() else {}

    env = make_env(config.env_id, config.env)
    eval_config = {**config.env, "split": "test", **(config.eval_env or {})}
    eval_env = make_env(config.env_id, eval_config).unwrapped
    if config.algo == "rpo":
        train_env = env  # RPO builds its own RSDVecEnv of tasks_per_batch * (group_size + 1) copies
    else:
        train_env = make_vec_env(config, env)

    if resuming:
        model = agents.load_agent(last, env=train_env)
    else:
        model = agents.make(config.algo, train_env, seed=config.seed, verbose=config.verbose,
                            policy_kwargs=dict(config.policy_kwargs), **config.algo_kwargs)

    wandb_run = wandb.init(project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
                           tags=config.wandb.tags, name=config.name(), id=state.get("wandb_id"), resume="allow",
                           dir=str(run), mode=config.wandb.mode, config=dataclasses.asdict(config))
    state["wandb_id"] = wandb_run.id
    state_file.write_text(json.dumps(state))

    logger = configure(str(run), ["stdout", "csv"] if config.verbose else ["csv"])
    logger.output_formats.append(WandbWriter(wandb_run))
    model.set_logger(logger)

    task_ids = [t.task_id for t in eval_env.tasks[: config.eval_tasks]]
    callbacks = CallbackList([
        CheckpointEvery(config.checkpoint_freq, last, keep_dir=run / "checkpoints"),
        RankingEvalCallback(eval_env, task_ids, config.eval_freq, best_path=run / "best.zip",
                            log_path=run / "eval.jsonl"),
        WandbCallback(verbose=0),
    ])
    remaining = config.total_timesteps - model.num_timesteps
    try:
        if remaining > 0:
            model.learn(remaining, callback=callbacks, progress_bar=config.progress_bar,
                        reset_num_timesteps=not resuming, tb_log_name=config.name())
        final = agents.save_agent(model, run / "model.zip")
        agents.save_agent(model, last)
    finally:
        wandb_run.finish()
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsd-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML train config (see experiments/configs/train_*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; dotted for nesting, e.g. env.budget=3 algo_kwargs.group_size=4")
    parser.add_argument("--wandb-mode", choices=WANDB_MODES, help="wandb mode (default: offline)")
    parser.add_argument("--wandb-project", help="wandb project name")
    parser.add_argument("--run-name", help="run name (folder under run_dir, wandb run name)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.wandb_mode:
        overrides.append(f"wandb.mode={args.wandb_mode}")
    if args.wandb_project:
        overrides.append(f"wandb.project={args.wandb_project}")
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    if args.no_resume:
        overrides.append("resume=false")
    try:
        config = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    os.environ.setdefault("WANDB_SILENT", "true")
    path = train(config)
    print(f"trained agent: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
