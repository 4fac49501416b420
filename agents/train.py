"""``rsd-train``: train an agent on RSDRank from a YAML config, with evaluation, checkpoints and wandb.

    rsd-train --config experiments/configs/train_rpo_sim.yaml --set total_timesteps=20000 --set env.budget=3

A run lives in ``<run_dir>/<run_name>/``: ``config.yaml``, ``checkpoints/last.zip`` (+ ``.json``),
``best.zip`` (best held-out agreement), ``model.zip`` (final), ``eval.jsonl``, ``progress.csv``,
``state.json`` (wandb run id, resume history) and ``wandb/``. Every checkpoint and config is written to a
temp file and renamed, so a kill never leaves half a file.

Starting a run whose folder has a checkpoint resumes it from the newest checkpoint that loads: same
timesteps, optimizer state, sampling stream and wandb run; the steps after that checkpoint are redone
(and their lines in ``eval.jsonl``/``progress.csv`` dropped). A resume may change only how long and how the
run is watched (``RESUMABLE_CHANGES``); other changes are refused. One process at a time per run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import numbers
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rsd_env.config import SIM_CONFIG as SIM_ENV_DEFAULTS
from rsd_env.io import FolderLock, read_text, remove_stale_temps, write_text
from rsd_env.settings import apply_dotted, parse_assignments

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
    policy: str | None = None  # policy class or alias, e.g. ResidualRankingPolicy (default: the algo's item policy)
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
    # fine-tuning: a new run starts from this agent's policy weights (shipped, shipped:<name>, a checkpoint or a
    # policy folder); same policy and policy_kwargs; a size-agnostic policy may come from another N (agents.resize)
    init_agent: str | None = None
    seed: int = 0
    checkpoint_freq: int = 5000  # timesteps between checkpoints
    run_dir: str = "runs"
    run_name: str | None = None  # default: <algo>-<env_id>-seed<seed>
    resume: bool = True
    progress_bar: bool = True
    torch_threads: int | None = None
    ray_address: str | None = None  # rllib: algorithms: join this Ray cluster (HOST:PORT, auto); None = local Ray
    verbose: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def name(self) -> str:
        return self.run_name or f"{self.algo}-{self.env_id}-seed{self.seed}".replace(":", "_").replace("/", "_")

    def path(self) -> Path:
        return Path(self.run_dir) / self.name()


_INT_KEYS = ("eval_freq", "total_timesteps", "n_envs", "seed", "checkpoint_freq", "verbose")
_OPTIONAL_INT_KEYS = ("eval_tasks", "torch_threads")
_BOOL_KEYS = ("batched", "resume", "progress_bar")
_DICT_KEYS = ("env", "algo_kwargs", "policy_kwargs")
_STR_KEYS = ("algo", "env_id", "run_dir")
_MINIMUM = {"total_timesteps": 1, "n_envs": 1, "eval_freq": 0, "checkpoint_freq": 0, "eval_tasks": 1,
            "torch_threads": 1, "verbose": 0}
# what the trainer passes to the algorithm itself; algo_kwargs must not repeat them
_RESERVED_ALGO_KWARGS = ("policy", "env", "seed", "verbose", "policy_kwargs", "_init_setup_model")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_types(raw: dict[str, Any]) -> None:
    """Every key has the type it needs, so a typo fails here instead of as a TypeError deep in training."""
    def fail(key: str, expected: str) -> None:
        raise ValueError(f"{key} must be {expected}, got {raw[key]!r} ({type(raw[key]).__name__})")

    for key in _INT_KEYS:
        if key in raw and not _is_int(raw[key]):
            fail(key, "an integer")
    for key in _OPTIONAL_INT_KEYS:
        if raw.get(key) is not None and not _is_int(raw[key]):
            fail(key, "an integer or null")
    for key in _BOOL_KEYS:
        if key in raw and not isinstance(raw[key], bool):
            fail(key, "true or false")
    for key in _DICT_KEYS:
        if key in raw and not isinstance(raw[key], dict):
            fail(key, "a mapping, e.g. {key: value}")
    if raw.get("eval_env") is not None and not isinstance(raw["eval_env"], dict):
        fail("eval_env", "a mapping or null")
    for key in _STR_KEYS:
        if key in raw and not isinstance(raw[key], str):
            fail(key, "a string")
    for key in ("run_name", "ray_address", "init_agent"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            fail(key, "a string or null")
    for key, low in _MINIMUM.items():
        if raw.get(key) is not None and raw[key] < low:
            raise ValueError(f"{key} must be >= {low}, got {raw[key]}")


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from nested dicts; unknown keys, wrong types and bad values are errors that say which."""
    raw = dict(raw or {})
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ValueError(f"unknown train config keys {unknown}; valid keys: {sorted(valid)}")
    wandb_raw = raw.pop("wandb", None) or {}
    if not isinstance(wandb_raw, dict):
        raise ValueError(f"wandb must be a mapping, got {wandb_raw!r}")
    wandb_valid = {f.name for f in dataclasses.fields(WandbConfig)}
    if set(wandb_raw) - wandb_valid:
        raise ValueError(f"unknown wandb keys {sorted(set(wandb_raw) - wandb_valid)}; valid: {sorted(wandb_valid)}")
    _check_types(raw)
    config = TrainConfig(**raw, wandb=WandbConfig(**wandb_raw))
    if config.wandb.mode not in WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {config.wandb.mode!r}")
    return config


def validate(config: TrainConfig) -> None:
    """Everything that can be checked without loading data or models: the algorithm and its keyword
    arguments, the env id and both env configs. Runs before anything is written."""
    import agents

    if is_rllib(config.algo):
        from agents.rllib_train import validate_rllib

        if config.init_agent is not None:
            raise ValueError(f"init_agent is for SB3 algorithms (rpo, ppo, ...); {config.algo} starts from "
                             "fresh weights: remove init_agent")
        validate_rllib(config)
    else:
        _validate_sb3(config, agents.algorithm_class(config.algo))
    _validate_envs(config)
    if config.init_agent is not None:
        from agents.pretrained import agent_path

        path = agent_path(config.init_agent)
        try:
            agents.agent_location(path)
        except FileNotFoundError as err:
            raise ValueError(f"init_agent {config.init_agent!r}: no agent at {path}; name a checkpoint (.zip), a "
                             "policy folder, 'shipped' or 'shipped:<name>'") from err


def is_rllib(algo: str) -> bool:
    """``rllib:<ALGO>`` names an RLlib algorithm (``agents.rllib_train``)."""
    return algo.lower().startswith("rllib:")


def _validate_sb3(config: TrainConfig, cls: type) -> None:
    params = inspect.signature(cls.__init__).parameters
    reserved = sorted(set(config.algo_kwargs) & set(_RESERVED_ALGO_KWARGS))
    if reserved:
        raise ValueError(f"algo_kwargs {reserved} are set by rsd-train itself; use the top-level keys "
                         "(policy, seed, verbose, policy_kwargs) instead")
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = set(params) - {"self", *_RESERVED_ALGO_KWARGS}
        unknown = sorted(set(config.algo_kwargs) - accepted)
        if unknown:
            raise ValueError(f"unknown algo_kwargs {unknown} for {cls.__name__}; valid: {sorted(accepted)}")


def _validate_envs(config: TrainConfig) -> None:
    import gymnasium as gym

    import rsd_env  # noqa: F401  (registers the ids)
    from rsd_env.config import resolve_config

    try:
        spec = gym.spec(config.env_id)
    except gym.error.Error as err:
        raise ValueError(f"unknown env_id {config.env_id!r} ({err}); use RSDRank-v0 or RSDRankSim-v0") from err
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    if entry.startswith("rsd_env."):
        base = {**(SIM_ENV_DEFAULTS if entry.endswith("RSDRankSimEnv") else {}), **(spec.kwargs.get("config") or {})}
        for name, env_config in (("env", config.env), ("eval_env", eval_env_config(config))):
            try:
                resolve_config({**base, **split_mix(env_config)[0]})
            except (ValueError, TypeError) as err:
                raise ValueError(f"{name}: {err}") from err


def eval_env_config(config: TrainConfig) -> dict[str, Any]:
    """The held-out env: ``env`` with split "test" (without its training ``mix``), then ``eval_env``'s keys."""
    train = {k: v for k, v in config.env.items() if k != "mix"}
    return {**train, "split": "test", **(config.eval_env or {})}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``key=value`` texts (``--set``) or a ``{dotted.key: value}`` dict applied to a config dict (a copy)."""
    if not isinstance(overrides, Mapping):
        overrides = parse_assignments(overrides)
    return apply_dotted(raw, overrides)


def load_train_config(path: str | Path | None = None,
                      overrides: list[str] | Mapping[str, Any] | None = None) -> TrainConfig:
    """The YAML at ``path`` over the defaults, then ``overrides`` (``--set`` texts or a dotted-key dict)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no train config at {path}")
        try:
            raw = yaml.safe_load(read_text(path, "train config")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML ({err}); fix the file") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a YAML mapping of train config keys")
    defaults = dataclasses.asdict(TrainConfig())
    merged = {**defaults, **raw, "wandb": {**defaults["wandb"], **(raw.get("wandb") or {})}}
    config = config_from_dict(apply_overrides(merged, overrides or []))
    validate(config)
    return config


# ---- envs ----------------------------------------------------------------------------------------
def split_mix(env_config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The env config without ``mix`` (a training-layer option the env does not know), and the mix."""
    config = dict(env_config)
    mix = config.pop("mix", None)
    if mix is not None and (not isinstance(mix, list) or not mix
                            or not all(isinstance(m, dict) and "dataset" in m for m in mix)):
        raise ValueError(f"env.mix must be a non-empty list of mappings with a 'dataset' key, got {mix!r}")
    return config, mix


def make_train_env(env_id: str, env_config: dict[str, Any]) -> Any:
    """``gym.make(env_id, config=...)`` with ``env_config`` layered over the id's registered config.

    ``env_config["mix"]``: a list of ``{dataset, split, **load_tasks options}`` whose tasks are pooled
    into one env (e.g. DL20 queries and MovieLens training users), instead of ``dataset``/``split``.
    """
    import gymnasium as gym

    return gym.make(env_id, config=train_env_config(env_id, env_config))


def train_env_config(env_id: str, env_config: dict[str, Any]) -> dict[str, Any]:
    """The env config ``make_train_env`` builds ``env_id`` with: ``mix`` resolved into ``tasks``."""
    import gymnasium as gym

    import rsd_env  # noqa: F401  (registers the ids)
    from rsd_env.data import load_tasks

    config, mix = split_mix({**(gym.spec(env_id).kwargs.get("config") or {}), **env_config})
    if mix:
        n, seed = config.get("n", 20), config.get("seed", 0)
        config["tasks"] = [task for m in mix for task in load_tasks(
            m["dataset"], m.get("split", "train"), n, seed=seed, **{k: v for k, v in m.items()
                                                                   if k not in ("dataset", "split")})]
    return config


def make_vec_env(config: TrainConfig, env):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.vec_env import RSDVecEnv

    if config.batched:
        venv = RSDVecEnv.from_env(env, config.n_envs)
    else:
        venv = DummyVecEnv([lambda: env] + [lambda: make_train_env(config.env_id, config.env)] * (config.n_envs - 1))
    venv.seed(config.seed)
    return venv


# ---- the run folder -------------------------------------------------------------------------------
# keys that may change when a run resumes (how long and how it is watched); any other change is refused
RESUMABLE_CHANGES = ("total_timesteps", "eval_freq", "checkpoint_freq", "progress_bar", "verbose", "torch_threads",
                     "resume", "run_dir", "run_name", "wandb", "ray_address")
_CHECKPOINT_PATTERN = "model_*.zip"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: ``{key: (old, new)}``."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def checkpoints(run: Path) -> list[Path]:
    """Resume candidates, preferred first: ``last.zip``, then the numbered copies, newest first."""
    folder = run / "checkpoints"
    numbered = sorted(folder.glob(_CHECKPOINT_PATTERN), key=lambda p: _step_of(p), reverse=True)
    return [p for p in [folder / "last.zip", *numbered] if p.exists()]


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _say(message: str) -> None:
    print(f"rsd-train: {message}", file=sys.stderr, flush=True)


def _truncate_jsonl(path: Path, until_timesteps: int) -> None:
    """Drop evaluation lines logged after the checkpoint a run resumes from (those steps are redone)."""
    if not path.exists():
        return
    kept = []
    for line in read_text(path, "evaluation log").splitlines():
        try:
            if json.loads(line)["timesteps"] <= until_timesteps:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    write_text(path, "".join(f"{line}\n" for line in kept))


def _start_over(run: Path) -> None:
    """Move a previous run's files out of the way (or delete them if it never reached a checkpoint)."""
    previous = [p for p in run.iterdir() if p.name != LOCK_NAME]
    if not previous:
        return
    # a checkpoint: SB3's zips, or an RLlib run's folders (rsd_checkpoint.json, rsd_agent.json inside)
    if not any(next(run.rglob(pattern), None) for pattern in ("*.zip", "rsd_*.json")):
        for p in previous:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        _say(f"starting over in {run} (the previous attempt ended before its first checkpoint)")
        return
    aside = run.parent / f"{run.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=False)
    for p in previous:
        p.rename(aside / p.name)
    _say(f"starting over in {run}; the previous run's files were moved to {aside}")


LOCK_NAME = ".lock"


@dataclass
class Session:
    """A prepared run: its folder (locked), envs, model and where it resumed from."""

    config: TrainConfig
    run: Path
    lock: FolderLock
    model: Any
    eval_env: Any
    resumed_from: Path | None
    state: dict[str, Any]
    best: float


def prepare(config: TrainConfig) -> Session:
    """Everything before the first training step; fails with a ``ValueError``/``OSError`` that says what to fix.

    Order: validate the config, build the envs (data, verifier), lock the run folder (a second concurrent
    run into it is refused), then resume from the newest checkpoint that loads or start a new run.
    Nothing is written before the envs exist, and a folder this call created is removed if it fails.
    """
    import torch

    import agents

    validate(config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if is_rllib(config.algo):
        from agents.rllib_train import prepare_rllib

        return prepare_rllib(config)
    env = make_train_env(config.env_id, config.env)
    eval_env = make_train_env(config.env_id, eval_env_config(config)).unwrapped
    train_env = env if config.algo == "rpo" else make_vec_env(config, env)  # RPO builds its own vector env

    def start(run: Path) -> tuple[Any, Path | None]:
        model, resumed_from = _resume(config, run, train_env) if config.resume else (None, None)
        if model is None:
            _start_over(run)
            try:
                model = agents.make(config.algo, train_env, policy=config.policy, seed=config.seed,
                                    verbose=config.verbose, policy_kwargs=dict(config.policy_kwargs),
                                    **config.algo_kwargs)
            except TypeError as err:
                raise ValueError(f"cannot build {config.algo} with algo_kwargs {config.algo_kwargs} and "
                                 f"policy_kwargs {config.policy_kwargs}: {err}") from err
            if config.init_agent is not None:  # a resumed run has its own weights
                start_from(model, config)
        return model, resumed_from

    return open_run(config, eval_env, start, "best.zip")


def start_from(model: Any, config: TrainConfig) -> None:
    """Load ``config.init_agent``'s policy weights into a new run's ``model`` (fine-tuning)."""
    import agents
    from agents.pretrained import agent_path
    from agents.resize import transfer_weights

    try:
        transfer_weights(agents.load_agent(agent_path(config.init_agent)), model.policy, config.policy_kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"init_agent {config.init_agent!r}: {err}") from err
    _say(f"the policy starts from {config.init_agent}'s weights")


def open_run(config: TrainConfig, eval_env: Any, start: Callable[[Path], tuple[Any, Path | None]],
             best_name: str) -> Session:
    """Lock the run folder, then ``start(run)`` (resume or build the model: it has ``num_timesteps``), and
    the bookkeeping every algorithm shares: evaluation lines after the checkpoint dropped, the best score
    read from ``best_name``, config changes of a resume recorded, ``config.yaml`` written. A folder this call
    created is removed if it fails."""
    import agents

    run = config.path()
    created = [p for p in (run, *run.parents) if not p.exists()]  # what the lock's mkdir makes, deepest first
    lock = FolderLock(run, LOCK_NAME, what="rsd-train run").acquire()
    try:
        for folder in (run, run / "checkpoints"):  # temp files of a writer killed mid-write
            if folder.exists():
                remove_stale_temps(folder)
        model, resumed_from = start(run)
        state = _read_state(run) if resumed_from is not None else {}
        best = -float("inf")
        if resumed_from is not None:
            steps = int(model.num_timesteps)
            _truncate_jsonl(run / "eval.jsonl", steps)
            if (run / best_name).exists():
                try:
                    best = float(agents.agent_meta(run / best_name)["eval"]["final_agreement"])
                except (ValueError, KeyError, TypeError):
                    _say(f"{best_name} records no evaluation score; the next evaluation replaces it")
            previous = yaml.safe_load(read_text(run / "config.yaml", "run config"))
            changed = config_changes(previous, dataclasses.asdict(config))
            if changed:
                state.setdefault("resumes", []).append(
                    {"timesteps": steps, "changed": {k: list(v) for k, v in changed.items()}})
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_text(run / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(run, ignore_errors=True)
            for parent in created[1:]:  # e.g. the runs/ root of a first run: removed while still empty
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise
    return Session(config, run, lock, model, eval_env, resumed_from, state, best)


def _read_state(run: Path) -> dict[str, Any]:
    path = run / "state.json"
    if not path.exists():
        return {}
    try:
        state = json.loads(read_text(path, "run state"))
    except ValueError:
        state = None
    if not isinstance(state, dict):  # garbage bytes, or valid JSON of another shape (42, null, a list)
        _say(f"{path} is unreadable; the resumed run gets a new wandb run")
        return {}
    return state


def check_resumable(config: TrainConfig, run: Path) -> None:
    """Refuse to resume ``run`` with settings other than ``RESUMABLE_CHANGES``; the error says the way out."""
    saved = run / "config.yaml"
    if saved.exists():
        try:
            previous = yaml.safe_load(read_text(saved, "run config")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{saved} is unreadable ({err}); rerun with --no-resume to start over") from err
        changed = {k: v for k, v in config_changes(previous, dataclasses.asdict(config)).items()
                   if k.split(".")[0] not in RESUMABLE_CHANGES}
        if changed:
            listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{run} was trained with other settings ({listing}); a resumed run keeps its "
                             "settings, so rerun with --no-resume to start over (the old run is moved aside) "
                             "or pick a new --run-name")


def _resume(config: TrainConfig, run: Path, train_env) -> tuple[Any, Path | None]:
    """The newest checkpoint that loads (saying so when it is not ``last.zip``), after refusing a changed config."""
    import agents

    candidates = checkpoints(run)
    if not candidates:
        return None, None
    check_resumable(config, run)
    failures = []
    for path in candidates:
        try:
            model = agents.load_agent(path, env=train_env)
        except Exception as err:  # noqa: BLE001  (any unreadable checkpoint: try the next one)
            failures.append(f"{path.name} ({type(err).__name__}: {err})")
            continue
        if failures:
            _say(f"could not load {', '.join(failures)}; resuming from {path} at {model.num_timesteps} steps")
        return model, path
    raise ValueError(f"no checkpoint in {run / 'checkpoints'} loads: {'; '.join(failures)}; rerun with "
                     "--no-resume to start over")


# ---- the run -------------------------------------------------------------------------------------
def start_tracking(session: Session) -> Any:
    """The wandb run (resumed by the id in ``state.json``) or None when tracking is disabled; writes state."""
    config, run, state = session.config, session.run, session.state
    wandb_run = None
    if config.wandb.mode != "disabled":  # disabled: wandb is not even imported
        import wandb

        wandb_run = wandb.init(project=config.wandb.project, entity=config.wandb.entity,
                               group=config.wandb.group, tags=config.wandb.tags, name=config.name(),
                               id=state.get("wandb_id"), resume="allow", dir=str(run), mode=config.wandb.mode,
                               config=dataclasses.asdict(config))
        state["wandb_id"] = wandb_run.id
    else:  # fixed at the first start, so tracking turned on later resumes one wandb run, not a new one
        state.setdefault("wandb_id", secrets.token_hex(4))
    write_text(run / "state.json", json.dumps(state, indent=1))
    return wandb_run


def learn(session: Session) -> Path:
    """Train the prepared run to ``total_timesteps``; returns the final model's path. Releases the lock."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.logger import Logger, make_output_format

    import agents
    from agents.callbacks import (
        CheckpointEvery,
        RankingEvalCallback,
        ResumableCSVWriter,
        WandbWriter,
        WarmStartSnapshot,
    )
    from agents.progress import StepProgressBar

    config, run, model = session.config, session.run, session.model
    if is_rllib(config.algo):
        from agents.rllib_train import learn_rllib

        return learn_rllib(session)
    resuming = session.resumed_from is not None
    last = run / "checkpoints" / "last.zip"
    wandb_run = None
    try:
        wandb_run = start_tracking(session)
        outputs = [ResumableCSVWriter(run / "progress.csv", model.num_timesteps if resuming else None)]
        if wandb_run is not None:
            outputs.append(WandbWriter(wandb_run))
        if config.verbose:
            outputs.insert(0, make_output_format("stdout", str(run)))
        model.set_logger(Logger(str(run), outputs))

        task_ids = [t.task_id for t in session.eval_env.tasks[: config.eval_tasks]]
        side_work = [
            CheckpointEvery(config.checkpoint_freq, last, keep_dir=run / "checkpoints"),
            WarmStartSnapshot(run / "warm_start.zip"),
            RankingEvalCallback(session.eval_env, task_ids, config.eval_freq, best_path=run / "best.zip",
                                log_path=run / "eval.jsonl", best=session.best),
        ]
        if wandb_run is not None:
            from wandb.integration.sb3 import WandbCallback

            side_work.append(WandbCallback(verbose=0))
        if config.progress_bar:  # SB3's own bar counts num_envs per callback step, not env steps
            side_work.append(StepProgressBar())
        callbacks = CallbackList(side_work)
        remaining = config.total_timesteps - model.num_timesteps
        try:
            if remaining > 0:
                model.learn(remaining, callback=callbacks, progress_bar=False,
                            reset_num_timesteps=not resuming, tb_log_name=config.name())
            final = agents.save_agent(model, run / "model.zip")
            agents.save_agent(model, last)
        finally:
            model.logger.close()
            if wandb_run is not None:
                wandb_run.finish()
    finally:
        session.lock.release()
    return final


def train(config: TrainConfig) -> Path:
    """Train (or resume) the run described by ``config``; returns the final model's path."""
    return learn(prepare(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsd-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML train config (see experiments/configs/train_*.yaml)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override a config key; dotted for nesting, e.g. env.budget=3 algo_kwargs.group_size=4")
    parser.add_argument("--wandb-mode", choices=WANDB_MODES, help="wandb mode (default: offline)")
    parser.add_argument("--wandb-project", help="wandb project name")
    parser.add_argument("--run-name", help="run name (folder under run_dir, wandb run name)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--init-agent", metavar="AGENT", help="fine-tune: a new run starts from this agent's policy "
                        "weights (shipped, shipped:<name>, a checkpoint or a policy folder; = --set init_agent=...)")
    parser.add_argument("--ray-address", help="rllib: algorithms: the Ray cluster to run on (HOST:PORT of "
                                              "`ray start --head`, or auto); default: a local Ray")
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
    if args.init_agent:
        overrides.append(f"init_agent={args.init_agent}")
    if args.ray_address:
        overrides.append(f"ray_address={args.ray_address}")
    try:
        config = load_train_config(args.config, overrides)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        session = prepare(config)
    except (ValueError, OSError) as err:  # bad data or model, a locked or incompatible run folder
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if session.resumed_from is not None:
        print(f"resuming {session.run} from {session.resumed_from.name} at {session.model.num_timesteps} steps")
    path = learn(session)
    print(f"trained agent: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
