"""rsd-train's RLlib path: ``algo: rllib:PPO`` on RLlib's new API stack.

    rsd-train --config experiments/configs/train_rllib_sim.yaml [--ray-address HEAD:6379]

The policy is ours (``agents.rllib_module``: the SB3 policy class behind an RLModule) and each EnvRunner
steps one ``gym.make_vec`` vector env (``RSDRankVectorEnv``: its ``n_envs`` episodes share one batched
verification per step). ``algo_kwargs`` are RLlib ``AlgorithmConfig`` attributes (``lr``, ``num_epochs``,
``minibatch_size``, ``train_batch_size_per_learner``, ``num_env_runners``, ``num_gpus_per_env_runner``, ...).

The run folder is the one SB3 runs have, with folders where SB3 has zips: ``checkpoints/last/`` (RLlib's
whole-algorithm checkpoint: learner, optimizer and EnvRunner states, plus ``rsd_checkpoint.json``), ``best/``
and ``model/`` (policy folders, ``agents.policy_agent``, with RLlib's own module checkpoint in
``rl_module/``): ``agent:<run>/model`` ranks in make_method, rsd-eval and rsd-rerank. ``eval.jsonl``,
``progress.csv``, ``state.json``, wandb and resume work as for SB3. Differences: a resume restores the
learner and optimizer but not the EnvRunners' episode streams (RLlib re-seeds them), so a resumed run is
not step-for-step the uninterrupted one; no numbered checkpoint copies (an algorithm checkpoint is a
folder of several files); evaluation and checkpoints happen between training iterations (every
``train_batch_size_per_learner`` steps), not at an exact step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agents.policy_agent import atomic_folder, build_policy, recover_folders, save_policy_agent
from agents.train import (
    Session,
    TrainConfig,
    _say,
    _start_over,
    check_resumable,
    eval_env_config,
    make_train_env,
    open_run,
    start_tracking,
    train_env_config,
)

# the RLlib algorithms rsd-train runs. APPO and IMPALA also take a Gaussian actor with a state value, but
# their asynchronous iterations did not run through here (APPO hung, IMPALA reported no sampled steps in
# its first iteration): left out until that is worked through
ALGORITHMS = {"PPO": "ray.rllib.algorithms.ppo:PPOConfig"}
ACTOR_CRITIC_POLICIES = ("ItemTransformerPolicy", "ResidualItemPolicy")
ENV_NAME = "rsd-rank-vector"  # the env creator every EnvRunner calls (registered with Ray)
CHECKPOINT_META = "rsd_checkpoint.json"


def algorithm_name(algo: str) -> str:
    """``rllib:ppo`` -> ``PPO``, or an error listing what works (SAC needs Q-networks our policies lack)."""
    name = algo.partition(":")[2].upper()
    if name not in ALGORITHMS:
        raise ValueError(f"unsupported RLlib algorithm {algo!r}; use one of {['rllib:' + a for a in ALGORITHMS]} "
                         "(APPO / IMPALA are not wired up yet; SAC would need Q-network heads our policies do "
                         "not have)")
    return name


def validate_rllib(config: TrainConfig) -> None:
    """The algorithm, policy and ``algo_kwargs`` (known AlgorithmConfig attributes), before anything runs."""
    from agents.ray_cluster import require_ray

    require_ray()
    base = _config_class(algorithm_name(config.algo))()
    unknown = sorted(k for k in config.algo_kwargs if not hasattr(base, k))
    if unknown:
        raise ValueError(f"unknown algo_kwargs {unknown} for {config.algo}: they must be RLlib AlgorithmConfig "
                         "attributes, e.g. lr, num_epochs, minibatch_size, train_batch_size_per_learner, "
                         "num_env_runners, rollout_fragment_length")
    if (config.policy or "ItemTransformerPolicy") not in ACTOR_CRITIC_POLICIES:
        raise ValueError(f"policy {config.policy!r} cannot train with {config.algo}: RLlib's learners need a "
                         f"Gaussian actor-critic, one of {list(ACTOR_CRITIC_POLICIES)}")
    if not config.batched:
        raise ValueError("batched: false is for SB3's DummyVecEnv; RLlib EnvRunners always step our vector env")


def _config_class(name: str) -> type:
    import importlib

    module, _, cls = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_vector_env(context: dict[str, Any]) -> Any:
    """An EnvRunner's envs: ``gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")``."""
    import gymnasium as gym
    import torch

    import rsd_env  # noqa: F401  (registers the ids in this EnvRunner's process)

    if context.get("torch_threads"):
        torch.set_num_threads(int(context["torch_threads"]))
    return gym.make_vec(context["env_id"], num_envs=int(context["num_envs"]),
                        vectorization_mode="vector_entry_point", config=dict(context["config"]))


def algorithm_config(config: TrainConfig) -> Any:
    """The RLlib ``AlgorithmConfig``: our module, one vector env per EnvRunner, then ``algo_kwargs``."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.rllib_module import ItemPolicyRLModule

    env_context = {"env_id": config.env_id, "config": train_env_config(config.env_id, config.env),
                   "torch_threads": config.torch_threads}
    model_config = {"policy": config.policy or "ItemTransformerPolicy", "policy_kwargs": dict(config.policy_kwargs)}
    algo_config = (_config_class(algorithm_name(config.algo))()
                   .environment(env=ENV_NAME, env_config=env_context, disable_env_checking=True)
                   .env_runners(num_env_runners=1, num_envs_per_env_runner=config.n_envs,
                                gym_env_vectorize_mode="vector_entry_point")
                   .rl_module(rl_module_spec=RLModuleSpec(module_class=ItemPolicyRLModule, model_config=model_config))
                   .debugging(seed=config.seed, log_level="ERROR"))
    return algo_config.update_from_dict(dict(config.algo_kwargs))


class RLlibModel:
    """The RLlib algorithm with what the run bookkeeping reads (``num_timesteps``) and a driver-side copy
    of the policy (``policy``) that evaluation and saving use, refreshed from the learner's weights."""

    def __init__(self, config: TrainConfig, algo: Any, num_timesteps: int = 0) -> None:
        self.config, self.algo, self.num_timesteps = config, algo, num_timesteps
        self.policy_name = config.policy or "ItemTransformerPolicy"
        module = algo.get_module()
        self.policy = build_policy(self.policy_name, module.observation_space, module.action_space,
                                   dict(config.policy_kwargs))
        self.policy.set_training_mode(False)
        self.iterations = 0

    def sync_policy(self) -> None:
        """Copy the learner's current weights into ``policy``."""
        import torch
        from ray.rllib.core import DEFAULT_MODULE_ID

        weights = self.algo.learner_group.get_weights(module_ids=[DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID]
        prefix = "policy."
        self.policy.load_state_dict({k[len(prefix):]: torch.as_tensor(v) for k, v in weights.items()
                                     if k.startswith(prefix)})

    def meta(self) -> dict[str, Any]:
        return {"algorithm": self.config.algo, "num_timesteps": int(self.num_timesteps),
                "iterations": self.iterations}

    def save_policy(self, path: Path, meta: dict[str, Any] | None = None, with_module: bool = False) -> Path:
        """A policy folder (``agents.policy_agent``); ``with_module`` adds RLlib's module checkpoint."""
        self.sync_policy()
        extra = {"rl_module": lambda folder: self.algo.get_module().save_to_path(str(folder))} if with_module else {}
        return save_policy_agent(self.policy, path, self.policy_name, dict(self.config.policy_kwargs),
                                 {**self.meta(), **(meta or {})}, extra)

    def save_checkpoint(self, path: Path) -> None:
        """RLlib's algorithm checkpoint plus our step count, written beside ``path`` and renamed onto it."""
        from rsd_env.io import write_json

        with atomic_folder(path) as tmp:
            self.algo.save_to_path(str(tmp))
            write_json(tmp / CHECKPOINT_META, self.meta())

    def restore(self, path: Path) -> None:
        meta = json.loads((path / CHECKPOINT_META).read_text(encoding="utf-8"))
        self.algo.restore_from_path(str(path))
        self.num_timesteps, self.iterations = int(meta["num_timesteps"]), int(meta.get("iterations", 0))


def prepare_rllib(config: TrainConfig) -> Session:
    """``agents.train.prepare`` for RLlib: envs, Ray, the algorithm, then the shared run bookkeeping."""
    from ray.tune.registry import register_env

    from agents.ray_cluster import connect

    eval_env = make_train_env(config.env_id, eval_env_config(config)).unwrapped
    connect(config.ray_address)
    register_env(ENV_NAME, make_vector_env)

    def start(run: Path) -> tuple[RLlibModel, Path | None]:
        for folder in (run, run / "checkpoints"):
            if folder.exists():
                recover_folders(folder)
        last = run / "checkpoints" / "last"
        if config.resume and (last / CHECKPOINT_META).exists():
            check_resumable(config, run)
            model = RLlibModel(config, algorithm_config(config).build_algo())
            try:
                model.restore(last)
            except Exception as err:  # noqa: BLE001  (a checkpoint RLlib cannot read: say which and how)
                model.algo.stop()
                raise ValueError(f"cannot resume from {last} ({type(err).__name__}: {err}); rerun with "
                                 "--no-resume to start over") from err
            return model, last
        _start_over(run)
        return RLlibModel(config, algorithm_config(config).build_algo()), None

    return open_run(config, eval_env, start, "best")


def learn_rllib(session: Session) -> Path:
    """Train to ``total_timesteps`` in RLlib iterations, evaluating and checkpointing between them."""
    from stable_baselines3.common.logger import Logger

    from agents.callbacks import EVAL_KEYS, ResumableCSVWriter, WandbWriter, evaluate_agent
    from agents.policy_agent import PolicyAgent

    config, run, model = session.config, session.run, session.model
    last = run / "checkpoints" / "last"
    best = session.best
    task_ids = [t.task_id for t in session.eval_env.tasks[: config.eval_tasks]]
    wandb_run, logger = None, None
    try:
        wandb_run = start_tracking(session)
        outputs = [ResumableCSVWriter(run / "progress.csv", model.num_timesteps if session.resumed_from else None)]
        if wandb_run is not None:
            outputs.append(WandbWriter(wandb_run))
        logger = Logger(str(run), outputs)

        def evaluate() -> None:
            nonlocal best
            model.sync_policy()
            summary = evaluate_agent(PolicyAgent(model.policy, model.num_timesteps), session.eval_env, task_ids)
            result = {"timesteps": model.num_timesteps, "updates": model.iterations, **summary}
            for key in EVAL_KEYS:
                logger.record(f"eval/{key}", summary[key])
            if summary["final_agreement"] > best:
                best = summary["final_agreement"]
                model.save_policy(run / "best", meta={"eval": result})
            with open(run / "eval.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(result) + "\n")

        next_eval = _next_multiple(model.num_timesteps, config.eval_freq)
        next_checkpoint = _next_multiple(model.num_timesteps, config.checkpoint_freq)
        evaluated_at = None
        started = time.perf_counter()
        while model.num_timesteps < config.total_timesteps:
            result = model.algo.train()
            steps = int(result["env_runners"].get("num_env_steps_sampled", 0))
            model.num_timesteps += steps
            model.iterations += 1
            logger.record("time/total_timesteps", model.num_timesteps)
            logger.record("time/iterations", model.iterations)
            logger.record("time/fps", int(model.num_timesteps / max(time.perf_counter() - started, 1e-9)))
            logger.record("rollout/ep_rew_mean", float(result["env_runners"].get("episode_return_mean", float("nan"))))
            if next_eval is not None and model.num_timesteps >= next_eval:
                evaluate()
                evaluated_at = model.num_timesteps
                next_eval = _next_multiple(model.num_timesteps, config.eval_freq)
            if next_checkpoint is not None and model.num_timesteps >= next_checkpoint:
                model.save_checkpoint(last)
                next_checkpoint = _next_multiple(model.num_timesteps, config.checkpoint_freq)
            logger.dump(model.num_timesteps)
        if evaluated_at != model.num_timesteps:  # the model that is saved is the one evaluated last
            evaluate()
            logger.dump(model.num_timesteps)
        final = model.save_policy(run / "model", with_module=True)
        model.save_checkpoint(last)
    finally:
        if logger is not None:
            logger.close()
        if wandb_run is not None:
            wandb_run.finish()
        model.algo.stop()
        session.lock.release()
    _say(f"{config.algo}: {model.num_timesteps} steps in {model.iterations} iterations")
    return final


def _next_multiple(steps: int, every: int) -> int | None:
    return None if every <= 0 else (steps // every + 1) * every

