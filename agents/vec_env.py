"""A vector env over k RSDRankEnv instances that verifies all proposals in one batched LLM call.

Each vector step splits into the envs' ``propose`` (cheap), one ``verifier.verify_batch`` per distinct
verifier (one call when the envs share it, as ``RSDVecEnv.from_env`` arranges), and ``apply_verification``.
Envs in their commit step commit directly: they get no ``verify_batch`` entry (no LLM call).
Auto-reset follows SB3: a finished env's last observation is in ``info["terminal_observation"]`` and the
returned observation is the next episode's first. ``info["episode"]`` carries the return and length
(as ``Monitor`` does), so SB3's rollout statistics work without a wrapper.

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
from rsd_env.verifiers import Verification


def verify_grouped(raws: Sequence[RSDRankEnv], rankings: Sequence[np.ndarray]) -> list[Verification]:
    """Verify each env's proposal; one ``verify_batch`` call per distinct verifier object."""
    groups: dict[int, list[int]] = {}
    for i, raw in enumerate(raws):
        groups.setdefault(id(raw.verifier), []).append(i)
    out: list[Verification | None] = [None] * len(raws)
    for members in groups.values():
        verifier = raws[members[0]].verifier
        results = verifier.verify_batch([(raws[i].task, rankings[i]) for i in members])
        for i, v in zip(members, results):
            out[i] = v
    return out  # type: ignore[return-value]


class RSDVecEnv(VecEnv):
    """SB3 ``VecEnv`` over RSDRankEnv instances (or env factories) with batched verification."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env] | gym.Env]) -> None:
        if not env_fns:
            raise ValueError("RSDVecEnv needs at least one env")
        self.envs = [fn if isinstance(fn, gym.Env) else fn() for fn in env_fns]
        self.raw: list[RSDRankEnv] = [e.unwrapped for e in self.envs]
        bad = [type(r).__name__ for r in self.raw if not isinstance(r, RSDRankEnv)]
        if bad:
            raise TypeError(f"RSDVecEnv batches RSDRankEnv verification; got {bad[0]} (use DummyVecEnv)")
        spaces = {(str(r.observation_space), str(r.action_space)) for r in self.raw}
        if len(spaces) > 1:
            raise ValueError("all envs of an RSDVecEnv need the same n and max_budget (same spaces)")
        super().__init__(len(self.envs), self.envs[0].observation_space, self.envs[0].action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._starts = np.full(self.num_envs, time.perf_counter())

    @classmethod
    def from_env(cls, env: gym.Env, num_envs: int) -> RSDVecEnv:
        """``num_envs`` copies of ``env`` sharing its verifier, task list and target memo (no reloading)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        base = env.unwrapped
        if not isinstance(base, RSDRankEnv):
            raise TypeError(f"expected an RSDRankEnv, got {type(base).__name__}")
        envs: list[gym.Env] = [env]
        for _ in range(num_envs - 1):
            envs.append(base.clone())
        return cls(envs)

    # ---- SB3 VecEnv API ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        obs = []
        for i, env in enumerate(self.envs):
            options = {"options": self._options[i]} if self._options[i] else {}
            o, self.reset_infos[i] = env.reset(seed=self._seeds[i], **options)
            obs.append(o)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._starts[:] = time.perf_counter()
        return self._stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async before step_wait")
        results = self.step_some(range(self.num_envs), self._actions)
        self._actions = None
        obs, rewards, dones, infos = [], np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs, bool), []
        for i, (o, r, terminated, truncated, info) in enumerate(results):
            self._returns[i] += r
            self._lengths[i] += 1
            rewards[i], dones[i] = r, terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if dones[i]:
                info["episode"] = {"r": float(self._returns[i]), "l": int(self._lengths[i]),
                                   "t": round(time.perf_counter() - self._starts[i], 6)}
                info["terminal_observation"] = o
                o, self.reset_infos[i] = self.envs[i].reset()
                self._returns[i], self._lengths[i], self._starts[i] = 0.0, 0, time.perf_counter()
            obs.append(o)
            infos.append(info)
        return self._stack(obs), rewards, dones, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in self.envs]

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.envs[i], method_name)(*method_args, **method_kwargs)
                for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        from stable_baselines3.common import env_util

        return [env_util.is_wrapped(self.envs[i], wrapper_class) for i in self._get_indices(indices)]

    # ---- episode-synchronous use (RPO) ----------------------------------------------------------
    def reset_to(self, task_ids: Sequence[str], budgets: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
        """Reset env i to task ``task_ids[i]`` (and budget ``budgets[i]`` when given; else the env draws
        its own); first observations (infos in ``reset_infos``)."""
        if len(task_ids) != self.num_envs:
            raise ValueError(f"need one task id per env ({self.num_envs}), got {len(task_ids)}")
        if budgets is not None and len(budgets) != self.num_envs:
            raise ValueError(f"need one budget per env ({self.num_envs}), got {len(budgets)}")
        obs = []
        for i, (env, tid) in enumerate(zip(self.envs, task_ids)):
            options: dict[str, Any] = {"task_id": tid}
            if budgets is not None:
                options["budget"] = int(budgets[i])
            o, self.reset_infos[i] = env.reset(options=options)
            obs.append(o)
        return obs

    def step_some(self, indices, actions) -> list[tuple]:
        """Step the envs ``indices`` with ``actions`` (one row each); one batched verification.

        Returns gymnasium 5-tuples in the order of ``indices``; finished envs are not reset.
        """
        idx = list(indices)
        actions = np.asarray(actions)
        if actions.shape[0] != len(idx):
            raise ValueError(f"need one action per stepped env ({len(idx)}), got {actions.shape[0]}")
        raws = [self.raw[i] for i in idx]
        out: list[tuple | None] = [None] * len(idx)
        verifying = []
        for k, (raw, action) in enumerate(zip(raws, actions)):
            if raw.in_commit_step:
                out[k] = raw.commit(action)  # no LLM call
            else:
                verifying.append(k)
        rankings = [raws[k].propose(actions[k]) for k in verifying]
        verifications = verify_grouped([raws[k] for k in verifying], rankings)
        for k, v in zip(verifying, verifications):
            out[k] = raws[k].apply_verification(v)
        return out  # type: ignore[return-value]

    def _stack(self, obs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in obs]) for k in obs[0]}
