"""RSDRankVectorEnv: k RSDRank episodes held as arrays and stepped together (``gym.make_vec``).

Each step turns the k actions into proposals with one sort, verifies every proposal that needs the LLM
in one ``verifier.verify_batch`` call (envs in their commit step make none), and computes rewards, the
verified prefixes and the observations for all k at once. Same seeds, same episodes as k ``RSDRankEnv``
in a ``SyncVectorEnv``: env i is seeded ``seed + i`` and draws its tasks and budgets from its own
generator in the same order.

Gymnasium semantics: ``metadata["autoreset_mode"]`` is ``NEXT_STEP`` (Gymnasium's default): the step
after an episode ends resets that env, ignores its action and returns its first observation with reward
0. ``info`` is a dict of arrays with a ``_key`` mask per key, as ``SyncVectorEnv`` builds it; per-env
arrays (``final_ranking``, ``target_ranking``) are stacked when all tasks have the same size, else object
arrays. ``reset(options=...)`` takes ``task_id`` and ``budget`` (one value or one per env) and
``reset_mask`` (reset only those envs).

Episode-synchronous algorithms (RPO) step a subset without auto-reset through ``step_envs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rsd_env.config import budget_range
from rsd_env.env import LOGP_FLOOR, RSDRankEnv, RSDRankSimEnv, draw_budget, label_gains
from rsd_env.metrics import agreement_batch, agreement_metrics_batch, ndcg_batch, positions_batch
from rsd_env.verifiers.base import episode_passes

RESET_OPTIONS = ("task_id", "budget", "reset_mask")


class RSDRankVectorEnv(VectorEnv):
    """``num_envs`` RSDRank episodes over one config, task list, verifier and target memo.

    ``env``: build from an existing ``RSDRankEnv`` instead of a config (shares its tasks, verifier and
    targets). ``budget_ranges``: one ``(lo, hi)`` per env instead of the config's budget.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}
    single_env_class: type[RSDRankEnv] = RSDRankEnv

    def __init__(self, num_envs: int = 1, config: dict[str, Any] | None = None, render_mode: str | None = None,
                 *, env: RSDRankEnv | None = None,
                 budget_ranges: Sequence[tuple[int, int]] | None = None) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError("the vector env does not render; use gym.make(..., render_mode='ansi') for one env")
        if env is not None and config is not None:
            raise ValueError("pass either config or env, not both")
        base = self.single_env_class(config) if env is None else env.unwrapped
        if not isinstance(base, RSDRankEnv):
            raise TypeError(f"env must be an RSDRankEnv, got {type(base).__name__}")
        self.env = base  # config, tasks, verifier and the target memo of every sub-env
        self.config, self.tasks, self.verifier = base.config, base.tasks, base.verifier
        self.render_mode = None
        k = self.num_envs = int(num_envs)
        n, t = self.n, self.max_budget = base.n, base.max_budget
        self.single_observation_space = base.observation_space
        self.single_action_space = base.action_space
        self.observation_space = batch_space(base.observation_space, k)
        self.action_space = batch_space(base.action_space, k)
        ranges = [base.budget_range] * k if budget_ranges is None else [budget_range(list(r)) for r in budget_ranges]
        if len(ranges) != k:
            raise ValueError(f"need one budget range per env ({k}), got {len(ranges)}")
        if max(hi for _, hi in ranges) > base.max_budget:
            raise ValueError(f"budget_ranges {ranges} exceed max_budget={base.max_budget}; raise the config's "
                             f"max_budget or lower the budgets")
        self.budget_ranges = ranges
        sizes = {task.n for task in self.tasks}  # one task size: per-env rankings in info stack into (k, m)
        self._info_shape = (sizes.pop(),) if len(sizes) == 1 else None
        self._rngs: list[np.random.Generator | None] = [None] * k
        self._cycle = np.zeros(k, dtype=np.int64)
        self._per_task: dict[int, tuple] = {}
        # per-env state; items past a task's m real ones are padding and sit at the end of every ranking
        self.task_index = np.full(k, -1, dtype=np.int64)
        self.m = np.full(k, n, dtype=np.int64)
        self.budget = np.zeros(k, dtype=np.int64)
        self.round = np.zeros(k, dtype=np.int64)
        self.locked = np.zeros(k, dtype=np.int64)  # length of the verified prefix
        self.committing = np.zeros(k, dtype=bool)  # the next step is the commit step
        self.done = np.zeros(k, dtype=bool)
        self.committed = np.tile(np.arange(n), (k, 1))
        self._target_pos = self.committed.copy()
        self._gains = np.zeros((k, n))
        self._ideal = np.zeros(k)
        self._initial = np.zeros(k)
        self._first = np.zeros((k, n), dtype=np.float32)
        self._verified = np.zeros((k, t, n, n), dtype=np.float32)  # the observation's rows, neutral-filled
        self._proposals = np.full((k, t, n), -1.0, dtype=np.float32)
        self._autoreset = np.zeros(k, dtype=bool)

    # ---- Gymnasium VectorEnv API -------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every env (or those in ``options["reset_mask"]``); env i gets seed ``seed + i``."""
        k = self.num_envs
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; valid: {list(RESET_OPTIONS)}")
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(k)]
        else:
            seeds = [None if s is None else int(s) for s in seed]
            if len(seeds) != k:
                raise ValueError(f"need one seed per env ({k}), got {len(seeds)}")
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seeds[0])
        mask = np.ones(k, dtype=bool) if options.get("reset_mask") is None else \
            np.asarray(options["reset_mask"], dtype=bool)
        if mask.shape != (k,):
            raise ValueError(f"reset_mask must be {k} booleans, got shape {mask.shape}")
        idx = np.flatnonzero(mask)
        for i in idx:
            if seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        infos: dict[str, Any] = {}
        self._reset_envs(idx, self._per_env(options.get("task_id"), "task_id"),
                         self._per_env(options.get("budget"), "budget"), infos, idx, k)
        return self.observe(), infos

    def step(self, actions):
        """One step of every env; envs whose episode ended last step are reset instead (NEXT_STEP)."""
        k = self.num_envs
        actions = self._check_actions(actions, k)
        rewards, terminated, truncated = np.zeros(k), np.zeros(k, dtype=bool), np.zeros(k, dtype=bool)
        infos: dict[str, Any] = {}
        resetting, running = np.flatnonzero(self._autoreset), np.flatnonzero(~self._autoreset)
        if resetting.size:
            self._reset_envs(resetting, [None] * k, [None] * k, infos, resetting, k)
        if running.size:
            rewards[running], terminated[running] = self._advance(running, actions[running], infos, running, k)
        self._autoreset = terminated | truncated
        return self.observe(), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()

    # ---- episode-synchronous use: step some envs, no auto-reset -------------------------------
    def step_envs(self, indices: Sequence[int] | np.ndarray, actions):
        """Step only the envs ``indices`` (one action row each); finished envs are not reset.

        Returns observation, rewards, terminated, truncated and infos for those envs, in their order.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        actions = self._check_actions(actions, len(idx))
        if len(np.unique(idx)) != len(idx) or (idx.size and (idx.min() < 0 or idx.max() >= self.num_envs)):
            raise ValueError(f"indices must be distinct env indices in 0..{self.num_envs - 1}, got {idx.tolist()}")
        infos: dict[str, Any] = {}
        slots = np.arange(len(idx))
        rewards, terminated = self._advance(idx, actions, infos, slots, len(idx)) if idx.size else \
            (np.zeros(0), np.zeros(0, dtype=bool))
        self._autoreset[idx] = terminated
        return self.observe(idx), rewards, terminated, np.zeros(len(idx), dtype=bool), infos

    @property
    def in_commit_step(self) -> np.ndarray:
        """(k,) True where the next step commits the final ranking (no LLM pass)."""
        return self.committing.copy()

    def task(self, i: int):
        """Env i's current task."""
        return self.tasks[self.task_index[i]]

    def target_ranking(self, i: int) -> np.ndarray:
        """The target LLM's AR ranking of env i's current task."""
        return self._task_data(int(self.task_index[i]))[0].copy()

    def observe(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The current observations of all envs (or of ``indices``), batched."""
        sel = slice(None) if indices is None else np.asarray(indices)
        n, t = self.n, self.max_budget
        m, rounds = self.m[sel], self.round[sel]
        count = len(m)
        item = np.arange(n)
        real = item < m[:, None]
        pos = positions_batch(self.committed[sel])
        as_f32 = lambda x: np.asarray(x, dtype=np.float32).reshape(count, -1)  # noqa: E731
        return {"first_token": self._first[sel].copy(),
                "verified": self._verified[sel].reshape(count, -1).copy(),
                "proposals": self._proposals[sel].reshape(count, -1).copy(),
                "round_mask": as_f32(np.arange(t) < rounds[:, None]),
                "committed": as_f32(np.where(real, pos, -1)),
                "locked": as_f32(pos < self.locked[sel][:, None]),
                "round": as_f32(rounds), "budget": as_f32(self.budget[sel]),
                "commit": as_f32(self.committing[sel]), "valid": as_f32(real)}

    # ---- the core -------------------------------------------------------------------------------
    def _per_env(self, value: Any, name: str) -> list[Any]:
        if value is None or isinstance(value, (str, int, np.integer)):
            return [value] * self.num_envs
        values = list(value)
        if len(values) != self.num_envs:
            raise ValueError(f"reset option {name!r} needs one value per env ({self.num_envs}) or a single "
                             f"value, got {len(values)}")
        return values

    def _rng(self, i: int) -> np.random.Generator:
        if self._rngs[i] is None:
            self._rngs[i] = seeding.np_random()[0]
        return self._rngs[i]

    def _task_data(self, index: int) -> tuple:
        """Per task: target, padded target positions, padded NDCG gains, ideal DCG, labelled."""
        if index not in self._per_task:
            task = self.tasks[index]
            target = self.env.target(task)
            padded = np.concatenate([target, np.arange(task.n, self.n)])
            gains, ideal = label_gains(task, self.n)
            self._per_task[index] = (target, positions_batch(padded[None])[0], gains, ideal, task.has_labels())
        return self._per_task[index]

    def _reset_envs(self, idx: np.ndarray, task_ids: list, budgets: list, infos: dict, slots, size: int) -> None:
        n = self.n
        for i in idx:
            rng = self._rng(i)
            if task_ids[i] is not None:
                t = self.env._index[self.env.task_by_id(task_ids[i]).task_id]
            elif self.config["task_order"] == "cycle":
                t = self._cycle[i] % len(self.tasks)
                self._cycle[i] += 1
            else:
                t = int(rng.integers(len(self.tasks)))
            self.budget[i] = draw_budget(budgets[i], self.budget_ranges[i], self.max_budget, rng)
            task = self.tasks[t]
            m = task.n
            first = self.verifier.first_token_scores(task)  # the prompt prefill: one LLM pass per episode
            _, self._target_pos[i], self._gains[i], self._ideal[i], _ = self._task_data(t)
            self.task_index[i], self.m[i] = t, m
            self.committed[i, :m] = np.argsort(-first, kind="stable")
            self.committed[i, m:] = np.arange(m, n)
            self._first[i, :m] = np.clip(first, LOGP_FLOOR, 0.0)
            self._first[i, m:] = LOGP_FLOOR
            self._verified[i, :, :, :m] = np.float32(np.log(1.0 / m))
            self._verified[i, :, :, m:] = LOGP_FLOOR
            self._proposals[i] = -1.0
        self.round[idx] = self.locked[idx] = 0
        self.committing[idx] = self.done[idx] = False
        self._autoreset[idx] = False
        self._initial[idx] = self._agreement(idx)
        _put(infos, size, "task_id", slots, [self.tasks[t].task_id for t in self.task_index[idx]], object)
        _put(infos, size, "agreement", slots, self._initial[idx], np.float64)
        _put(infos, size, "budget", slots, self.budget[idx], np.int64)

    def _advance(self, idx: np.ndarray, actions: np.ndarray, infos: dict, slots: np.ndarray, size: int):
        """Step the running envs ``idx``: propose, verify (one batch), commit; rewards and terminations."""
        if self.done[idx].any():
            bad = idx[self.done[idx]].tolist()
            raise RuntimeError(f"envs {bad}: the episode is over (ranking committed or fully verified); reset them")
        orders = self._order(idx, actions)
        before = self._agreement(idx)
        committing = self.committing[idx]
        accepted = np.zeros(len(idx), dtype=np.int64)
        verify = ~committing
        if verify.any():
            accepted[verify] = self._verify(idx[verify], orders[verify])
        commit_idx = idx[committing]
        self.committed[commit_idx] = orders[committing]
        self.committing[commit_idx], self.done[commit_idx] = False, True
        rewards = self._agreement(idx) - before
        # after a verification: everything verified ends the episode; the budget spent leads to the commit
        ver_idx = idx[verify]
        all_verified = self.locked[ver_idx] >= self.m[ver_idx]
        spent = ~all_verified & (self.round[ver_idx] >= self.budget[ver_idx])
        self.done[ver_idx[all_verified]] = True
        self.committing[ver_idx[spent]] = self.config["commit_step"]
        self.done[ver_idx[spent]] = not self.config["commit_step"]
        _put(infos, size, "accepted", slots, accepted, np.int64)
        _put(infos, size, "verified_prefix", slots, self.locked[idx], np.int64)
        _put(infos, size, "round", slots, self.round[idx], np.int64)
        if committing.any():
            _put(infos, size, "committed", slots[committing], True, bool)
        _put(infos, size, "budget", slots, self.budget[idx], np.int64)
        _put(infos, size, "llm_passes", slots, episode_passes(self.round[idx]), np.int64)
        ended = self.done[idx]
        if ended.any():
            self._summaries(idx[ended], slots[ended], infos, size)
        return rewards, ended

    def _check_actions(self, actions, count: int) -> np.ndarray:
        scores = np.asarray(actions)
        if scores.dtype.kind not in "iuf":
            raise ValueError(f"actions must be numeric item scores (a float array of shape ({count}, {self.n})); "
                             f"got dtype {scores.dtype}: fix the policy's output")
        if scores.shape != (count, self.n):
            raise ValueError(f"actions must be {self.n} item scores per env, shape ({count}, {self.n}); "
                             f"got {scores.shape}")
        return scores.astype(np.float64)

    def _order(self, idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The rankings the actions ask for: verified prefix first, the rest by descending score (ties
        keep the committed order), padding last."""
        m = self.m[idx][:, None]
        position = np.arange(self.n)
        if not np.isfinite(scores[position < m]).all():
            raise ValueError("action has NaN or inf scores; scores must be finite (clip or fix the policy)")
        keep = self.locked[idx] if self.config["lock_verified_prefix"] else np.zeros(len(idx), dtype=np.int64)
        committed = self.committed[idx]
        key = -np.take_along_axis(scores, committed, axis=1)
        key = np.where(position < keep[:, None], -np.inf, np.where(position >= m, np.inf, key))
        return np.take_along_axis(committed, np.argsort(key, axis=1, kind="stable"), axis=1)

    def _verify(self, idx: np.ndarray, rankings: np.ndarray) -> np.ndarray:
        """One ``verify_batch`` for the envs ``idx``; records the rows and commits the verified prefixes."""
        m = self.m[idx]
        results = self.verifier.verify_batch(
            [(self.tasks[t], r[:mi]) for t, r, mi in zip(self.task_index[idx], rankings, m)])
        accepted = np.array([v.accepted for v in results], dtype=np.int64)
        correction = np.array([-1 if v.correction is None else v.correction for v in results], dtype=np.int64)
        rounds = self.round[idx]
        if (m == self.n).all():
            self._verified[idx, rounds] = np.clip(np.stack([v.logprobs for v in results]), LOGP_FLOOR, 0.0)
        else:
            for i, r, mi, v in zip(idx, rounds, m, results):
                self._verified[i, r, :mi, :mi] = np.clip(v.logprobs, LOGP_FLOOR, 0.0)
        place = positions_batch(rankings)
        item = np.arange(self.n)
        self._proposals[idx, rounds] = np.where(item < m[:, None], place, -1)
        # new committed ranking: accepted prefix, the correction, then the rest in the proposal's order
        key = 2 * np.broadcast_to(item, rankings.shape).copy()
        corrected = np.flatnonzero(correction >= 0)
        key[corrected, place[corrected, correction[corrected]]] = 2 * accepted[corrected] - 1
        self.committed[idx] = np.take_along_axis(rankings, np.argsort(key, axis=1, kind="stable"), axis=1)
        self.locked[idx] = accepted + (correction >= 0)
        self.round[idx] += 1
        return accepted

    def _agreement(self, idx: np.ndarray) -> np.ndarray:
        return agreement_batch(positions_batch(self.committed[idx]), self._target_pos[idx], self.m[idx],
                               self.config["reward"])

    def _summaries(self, idx: np.ndarray, slots: np.ndarray, infos: dict, size: int) -> None:
        """The last step's info: final ranking, agreement metrics, NDCG@10 where labels exist."""
        m = self.m[idx]
        committed = self.committed[idx]
        tasks = [self.tasks[t] for t in self.task_index[idx]]
        dtype, shape = (np.int64, self._info_shape) if self._info_shape else (object, ())
        finals = [committed[j, :mi].copy() for j, mi in enumerate(m)]
        _put(infos, size, "task_id", slots, [task.task_id for task in tasks], object)
        _put(infos, size, "final_ranking", slots, finals, dtype, shape)
        _put(infos, size, "final_docids", slots,
             [[task.candidates[j].docid for j in f] for task, f in zip(tasks, finals)], object)
        _put(infos, size, "target_ranking", slots, [self._task_data(t)[0].copy() for t in self.task_index[idx]],
             dtype, shape)
        metrics = agreement_metrics_batch(positions_batch(committed), self._target_pos[idx], m)
        for key, values in metrics.items():
            _put(infos, size, key, slots, values, np.float64)
        _put(infos, size, "initial_agreement", slots, self._initial[idx], np.float64)
        _put(infos, size, "final_agreement", slots, self._agreement(idx), np.float64)
        _put(infos, size, "rounds", slots, self.round[idx], np.int64)
        labelled = np.array([task.has_labels() for task in tasks])
        if labelled.any():
            ndcg = ndcg_batch(committed, self._gains[idx], self._ideal[idx])
            _put(infos, size, "ndcg@10", slots[labelled], ndcg[labelled], np.float64)


def _put(infos: dict[str, Any], size: int, key: str, slots, values, dtype, shape: tuple[int, ...] = ()) -> None:
    """Gymnasium's vector info layout: ``infos[key]`` holds every env's value, ``infos["_" + key]`` says
    which envs have one (zeros / None elsewhere, as ``SyncVectorEnv`` fills them)."""
    if key not in infos:
        infos[key] = np.full(size, None, dtype=object) if dtype is object else np.zeros((size, *shape), dtype)
        infos["_" + key] = np.zeros(size, dtype=bool)
    array = infos[key]
    if dtype is object:
        for slot, value in zip(np.atleast_1d(slots), values):
            array[slot] = value
    else:
        array[slots] = np.stack(values) if isinstance(values, list) else values
    infos["_" + key][slots] = True


def env_info(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Env i's info as the single env gives it (plain Python scalars), from a vector info dict."""
    out = {}
    for key, array in infos.items():
        if not key.startswith("_") and infos["_" + key][i]:
            value = array[i]
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


class RSDRankSimVectorEnv(RSDRankVectorEnv):
    """``RSDRankVectorEnv`` on ``RSDRankSim-v0``'s defaults (simulated LLM, synthetic tasks)."""

    single_env_class = RSDRankSimEnv
