"""SB3 ``VecEnv`` adapter over ``rsd_env.vector.RSDRankVectorEnv`` (the one batched core).

The Gymnasium vector env auto-resets on the next step; SB3 expects the reset in the same step with the
last observation in ``info["terminal_observation"]``, so this adapter steps the core without auto-reset
and resets the finished envs at once. ``info["episode"]`` carries the return and length (as ``Monitor``
does), so SB3's rollout statistics work without a wrapper. Infos are SB3's list of dicts.

Episode-synchronous algorithms (RPO) use ``reset_to`` and ``step_some`` instead: no auto-reset, and
only the envs still running are stepped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

from rsd_env.env import RSDRankEnv
from rsd_env.vector import RSDRankVectorEnv, env_info

# config keys that may differ between the envs given to RSDVecEnv (the rest must match: one core)
_PER_ENV_KEYS = ("budget", "verifier", "verifier_kwargs", "tasks", "max_tasks")


class RSDVecEnv(VecEnv):
    """SB3 ``VecEnv`` with batched verification: an ``RSDRankVectorEnv``, or envs / env factories of one
    config (budgets may differ; the first env's tasks and verifier serve all, and wrappers around the
    given envs are not applied: the core steps the episodes itself)."""

    def __init__(self, source: RSDRankVectorEnv | Sequence[Callable[[], gym.Env] | gym.Env]) -> None:
        self.vector_env = source if isinstance(source, RSDRankVectorEnv) else self._from_envs(source)
        core = self.vector_env
        super().__init__(core.num_envs, core.single_observation_space, core.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._starts = np.full(self.num_envs, time.perf_counter())

    @staticmethod
    def _from_envs(env_fns: Sequence[Callable[[], gym.Env] | gym.Env]) -> RSDRankVectorEnv:
        if not env_fns:
            raise ValueError("RSDVecEnv needs at least one env")
        raws = [(fn if isinstance(fn, gym.Env) else fn()).unwrapped for fn in env_fns]
        bad = [type(r).__name__ for r in raws if not isinstance(r, RSDRankEnv)]
        if bad:
            raise TypeError(f"RSDVecEnv batches RSDRankEnv verification; got {bad[0]} (use DummyVecEnv)")
        base = raws[0]
        for raw in raws[1:]:
            if (raw.n, raw.max_budget) != (base.n, base.max_budget):
                raise ValueError("all envs of an RSDVecEnv need the same n and max_budget (same spaces)")
            differ = sorted(key for key in base.config if key not in _PER_ENV_KEYS
                            and raw.config[key] != base.config[key])
            if differ or [t.task_id for t in raw.tasks] != [t.task_id for t in base.tasks] \
                    or raw.verifier.fingerprint() != base.verifier.fingerprint():
                raise ValueError(f"RSDVecEnv steps envs of one config, task list and verifier (budgets may "
                                 f"differ); these differ: {differ or ['tasks or verifier']}. Use DummyVecEnv "
                                 f"for mixed envs")
        return RSDRankVectorEnv(len(raws), env=base, budget_ranges=[r.budget_range for r in raws])

    @classmethod
    def from_env(cls, env: gym.Env, num_envs: int) -> RSDVecEnv:
        """``num_envs`` episodes over ``env``'s tasks, verifier and target memo (no reloading)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        base = env.unwrapped
        if not isinstance(base, RSDRankEnv):
            raise TypeError(f"expected an RSDRankEnv, got {type(base).__name__}")
        return cls(RSDRankVectorEnv(num_envs, env=base))

    @property
    def base_env(self) -> RSDRankEnv:
        """The env whose config, tasks, verifier and targets every sub-env uses."""
        return self.vector_env.env

    # ---- SB3 VecEnv API ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options: dict[str, Any] = {}
        for key in ("task_id", "budget"):
            values = [o.get(key) if o else None for o in self._options]
            if any(v is not None for v in values):
                options[key] = values
        obs, infos = self.vector_env.reset(seed=seeds, options=options)
        self.reset_infos = [env_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._starts[:] = time.perf_counter()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async before step_wait")
        k = self.num_envs
        obs, rewards, terminated, truncated, vinfos = self.vector_env.step_envs(np.arange(k), self._actions)
        self._actions = None
        dones = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        infos = [env_info(vinfos, i) for i in range(k)]
        for i in np.flatnonzero(dones):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]),
                                   "t": round(time.perf_counter() - self._starts[i], 6)}
            infos[i]["terminal_observation"] = {key: value[i] for key, value in obs.items()}
        if dones.any():
            obs, reset_infos = self.vector_env.reset(options={"reset_mask": dones})
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = env_info(reset_infos, i)
            self._returns[dones], self._lengths[dones], self._starts[dones] = 0.0, 0, time.perf_counter()
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.vector_env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """Per-env state (``task``, ``budget``) per env; anything else from the shared base env."""
        per_env = {"task": self.vector_env.task, "budget": lambda i: int(self.vector_env.budget[i])}
        if attr_name in per_env:
            return [per_env[attr_name](i) for i in self._get_indices(indices)]
        return [getattr(self.base_env, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError("RSDVecEnv's envs share one core; set attributes on the base env "
                             "(RSDVecEnv.base_env) or use DummyVecEnv")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.base_env, method_name)(*method_args, **method_kwargs)
                for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    # ---- episode-synchronous use (RPO) ----------------------------------------------------------
    def reset_to(self, task_ids: Sequence[str], budgets: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
        """Reset env i to task ``task_ids[i]`` (and budget ``budgets[i]`` when given; else the env draws
        its own); first observations (infos in ``reset_infos``)."""
        if len(task_ids) != self.num_envs:
            raise ValueError(f"need one task id per env ({self.num_envs}), got {len(task_ids)}")
        if budgets is not None and len(budgets) != self.num_envs:
            raise ValueError(f"need one budget per env ({self.num_envs}), got {len(budgets)}")
        options: dict[str, Any] = {"task_id": list(task_ids)}
        if budgets is not None:
            options["budget"] = [int(b) for b in budgets]
        obs, infos = self.vector_env.reset(options=options)
        self.reset_infos = [env_info(infos, i) for i in range(self.num_envs)]
        return [{key: value[i] for key, value in obs.items()} for i in range(self.num_envs)]

    def step_some(self, indices, actions) -> list[tuple]:
        """Step the envs ``indices`` with ``actions`` (one row each); one batched verification.

        Returns gymnasium 5-tuples in the order of ``indices``; finished envs are not reset.
        """
        idx = list(indices)
        actions = np.asarray(actions)
        if actions.shape[0] != len(idx):
            raise ValueError(f"need one action per stepped env ({len(idx)}), got {actions.shape[0]}")
        obs, rewards, terminated, truncated, infos = self.vector_env.step_envs(idx, actions)
        return [({key: value[j] for key, value in obs.items()}, float(rewards[j]), bool(terminated[j]),
                 bool(truncated[j]), env_info(infos, j)) for j in range(len(idx))]

    def target_ranking(self, i: int) -> np.ndarray:
        """The target ranking of env i's current task."""
        return self.vector_env.target_ranking(i)
