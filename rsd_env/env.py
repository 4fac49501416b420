"""RSDRankEnv: up-to-down ranking revision under a budget of LLM verification rounds.

An episode is one ranking task. It starts from the single-token (FIRST) ranking; each step the agent
scores the items, the scores become a proposed ranking (the verified prefix stays in front), and the
target LLM verifies the whole proposal in one parallel pass. The env keeps every verified row of every
round in the observation, so the agent can use all the LLM said, not just the accepted prefix.

With ``commit_step`` (default) the episode has T + 1 steps: after the T-th verification one more action
commits the final ranking (verified prefix first, the rest by the action's scores) without an LLM pass,
so what the last verification said about every unverified item is not thrown away.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rsd_env.config import SIM_CONFIG, budget_range, resolve_config
from rsd_env.data import RankingTask, load_tasks
from rsd_env.data.task import check_unique_task_ids
from rsd_env.metrics import agreement_batch, agreement_metrics_batch, ideal_dcg, ndcg_batch, positions_batch
from rsd_env.render import ranking_frame
from rsd_env.verifiers import Verification, Verifier, make_verifier
from rsd_env.verifiers.base import episode_passes

LOGP_FLOOR = -30.0  # log-probs are clipped here so that observations stay bounded


def label_gains(task: RankingTask, n: int) -> tuple[np.ndarray, float]:
    """Per-item NDCG gains (the task's labels, padded to n with 0) and the task's ideal DCG@10."""
    labels = task.relevance() if task.has_labels() else {}
    gains = np.zeros(n)
    gains[: task.n] = [labels.get(d, 0) for d in task.docids]
    return gains, ideal_dcg(list(labels.values()))


def draw_budget(requested: Any, budget_range: tuple[int, int], max_budget: int, rng: np.random.Generator) -> int:
    """This episode's T: the reset option when given (validated), else drawn from the config's range."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) \
                or not 1 <= requested <= max_budget:
            raise ValueError(f"reset option budget must be an integer in 1..max_budget={max_budget}, "
                             f"got {requested!r}; raise the config's max_budget for larger budgets")
        return int(requested)
    lo, hi = budget_range
    return lo if lo == hi else int(rng.integers(lo, hi + 1))


class RSDRankEnv(gym.Env):
    """Up-to-down ranking revision under a budget of T LLM verification rounds (the RSD paper's MDP).

    ## Description
    One episode ranks one task: ``n`` candidates (passages for a query, movies for a user) that the target
    LLM would order by autoregressive (AR) decoding. The episode starts from the single-token (FIRST)
    ranking. Each step the agent scores the items; the scores become a proposed ranking (the verified
    prefix stays in front) and the target LLM verifies the whole proposal in one parallel forward pass,
    returning, for every position, its log-probs over every item. Everything the LLM said stays in the
    observation, so the agent can use all of it, not only the accepted prefix. The goal is the LLM's own
    AR ranking at a fraction of its cost (1 + T passes instead of N).

    ## Action Space
    ``Box(-1, 1, (n,), float32)``: one score per item, higher = earlier. The proposal is the verified prefix,
    then the other items by descending score (ties by item index). Padding items' scores are ignored.

    ## Observation Space
    A flat ``Dict`` of 1-D ``Box``es (SB3's ``MultiInputPolicy`` takes it as is), sized for ``max_budget``
    rounds (``R``) so that one agent serves every T <= ``max_budget``:

    | key | shape | meaning |
    |-----|-------|---------|
    | ``first_token`` | (n,) | single-token (FIRST) log-prob of each item |
    | ``verified`` | (R·n·n,) | [round, position, item] log-probs, row-major; rounds not taken: log(1/m) |
    | ``proposals`` | (R·n,) | [round, item]: the item's position in that round's proposal (-1: none) |
    | ``round_mask`` | (R,) | 1 = the round was verified (its rows are real) |
    | ``committed`` | (n,) | the item's position in the committed ranking (-1: padding) |
    | ``locked`` | (n,) | 1 = the item is in the verified prefix |
    | ``round`` | (1,) | verification rounds done |
    | ``budget`` | (1,) | this episode's T |
    | ``commit`` | (1,) | 1 = this step commits the final ranking (no LLM pass) |
    | ``valid`` | (n,) | 1 = a real candidate (tasks may have fewer than n; padding has log-prob ``LOGP_FLOOR``) |

    Log-probs are clipped to ``[LOGP_FLOOR, 0]``; unfilled rounds hold the uniform log(1/m) over the task's
    m items, never 0 (= probability 1).

    ## Rewards
    The per-step gain in agreement of the committed ranking with the target's AR ranking (``reward``:
    1 - normalised Spearman distance, or (Kendall tau + 1) / 2), so an episode's return is the final
    agreement minus the FIRST ranking's.

    ## Starting State
    A task drawn by ``reset(seed=...)``'s RNG (``task_order: cycle`` goes in order; ``options={"task_id":
    ...}`` picks one) and T from ``budget`` (an int or a range ``[lo, hi]``; ``options={"budget": t}``).
    The committed ranking is the FIRST ranking; nothing is verified.

    ## Episode End
    Terminated after the commit step that follows the T-th verification (``commit_step: True``, default), or
    after the T-th verification (``commit_step: False``, the paper's protocol), or as soon as every
    position is verified. Never truncated. The last step's ``info`` holds the episode summary: the final
    ranking, Kendall tau, Spearman rho, Footrule, Kemeny, NDCG@10 when the task has labels, and
    ``llm_passes`` (1 prefill + 1 per verification; the commit step is free).

    ## Arguments
    ``gym.make("RSDRankSim-v0" | "RSDRank-v0", config={...}, render_mode="ansi")``; every key of
    ``rsd_env.config.DEFAULT_CONFIG`` (data, verifier, budget, max_budget, commit_step, reward, seed) is
    documented there. ``RSDRank-v0`` uses the bundled LLM on TREC DL; ``RSDRankSim-v0`` the simulator.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 1}

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        self.config = resolve_config(config)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None, 'ansi' (text) or 'rgb_array' (a heat map of the latest "
                             f"verification), got {render_mode!r}")
        self.render_mode = render_mode
        self.n: int = self.config["n"]
        self.max_budget: int = self.config["max_budget"]
        self.budget_range: tuple[int, int] = budget_range(self.config["budget"])
        self.budget: int = self.budget_range[1]  # this episode's T (set by reset)
        self.tasks = self._load_tasks()
        self._index = {t.task_id: k for k, t in enumerate(self.tasks)}
        self.verifier: Verifier = make_verifier(self.config["verifier"], **self.config["verifier_kwargs"])
        self._targets: OrderedDict[str, np.ndarray] = OrderedDict()
        self._gains: dict[str, tuple[np.ndarray, float]] = {}  # NDCG gains and ideal DCG per task id
        n, t = self.n, self.max_budget
        box = lambda lo, hi, shape: spaces.Box(lo, hi, shape, dtype=np.float32)  # noqa: E731
        self.observation_space = spaces.Dict(
            {
                "first_token": box(LOGP_FLOOR, 0.0, (n,)),  # FIRST log-probs per item
                # flat [round, position, item] log-probs: reshape to (max_budget, n, n)
                "verified": box(LOGP_FLOOR, 0.0, (t * n * n,)),
                "proposals": box(-1.0, n - 1.0, (t * n,)),  # flat [round, item]: position in that proposal
                "round_mask": box(0.0, 1.0, (t,)),  # 1 = this round was verified (its rows are real)
                "committed": box(-1.0, n - 1.0, (n,)),  # item's position in the committed ranking
                "locked": box(0.0, 1.0, (n,)),  # item is in the verified prefix
                "round": box(0.0, float(t), (1,)),  # verification rounds used
                "budget": box(1.0, float(t), (1,)),  # this episode's T
                "commit": box(0.0, 1.0, (1,)),  # 1 = this step commits the final ranking (no LLM pass)
                "valid": box(0.0, 1.0, (n,)),  # real candidate (tasks may have fewer than n)
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (n,), dtype=np.float32)  # item scores, higher = earlier
        self._cycle = 0
        self.task: RankingTask | None = None
        self._committing = self._done = False

    # ---- set-up ------------------------------------------------------------------------------
    def _load_tasks(self) -> list[RankingTask]:
        c = self.config
        if c["tasks"] is not None:
            tasks = list(c["tasks"])
            if not tasks or not all(isinstance(t, RankingTask) for t in tasks):
                raise ValueError("config 'tasks' must be a non-empty list of RankingTask")
        else:
            tasks = load_tasks(c["dataset"], c["split"], c["n"], seed=c["seed"], **c["data"])
        tasks = tasks[: c["max_tasks"]] if c["max_tasks"] is not None else tasks
        check_unique_task_ids(tasks, "config 'tasks'" if c["tasks"] is not None else c["dataset"])
        too_big = [t.task_id for t in tasks if t.n > self.n]
        if too_big:
            raise ValueError(f"{len(too_big)} tasks have more than n={self.n} candidates "
                             f"(e.g. {too_big[0]!r}); raise n or cut the tasks")
        return tasks

    def task_by_id(self, task_id: str) -> RankingTask:
        if task_id not in self._index:
            raise KeyError(f"unknown task_id {task_id!r}; see env.unwrapped.tasks")
        return self.tasks[self._index[task_id]]

    def clone(self) -> RSDRankEnv:
        """Another env over the same tasks, verifier and target memo: vector envs reload nothing."""
        other = type(self)({**self.config, "verifier": self.verifier, "tasks": self.tasks, "max_tasks": None},
                           render_mode=self.render_mode)
        other._targets = self._targets
        return other

    def target(self, task: RankingTask) -> np.ndarray:
        """The target LLM's AR ranking (memoised; real verifiers also cache it on disk)."""
        if task.task_id not in self._targets:
            self._targets[task.task_id] = self.verifier.target_ranking(task)
            if len(self._targets) > 4096:
                self._targets.popitem(last=False)
        return self._targets[task.task_id]

    # ---- gym API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = sorted(set(options) - {"task_id", "budget"})
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; valid: 'task_id', 'budget'")
        if "task_id" in options:
            k = self._index[self.task_by_id(options["task_id"]).task_id]
        elif self.config["task_order"] == "cycle":
            k, self._cycle = self._cycle % len(self.tasks), self._cycle + 1
        else:
            k = int(self.np_random.integers(len(self.tasks)))
        self.task = task = self.tasks[k]
        self.budget = self._episode_budget(options.get("budget"))
        self._first = self.verifier.first_token_scores(task)
        self._target = self.target(task)
        self._target_pos = positions_batch(self._target[None])
        self._size = np.array([task.n])
        self._committed = np.argsort(-self._first, kind="stable").astype(np.int64)
        self._locked = 0  # length of the verified prefix of the committed ranking
        self._round = 0
        self._committing = False  # the next step is the commit step
        self._done = False
        # the observation's verified rows, filled round by round: neutral uniform log(1/m) until verified
        self._verified_obs = np.full((self.max_budget, self.n, self.n), np.log(1.0 / task.n), dtype=np.float32)
        self._verified_obs[:, :, task.n:] = LOGP_FLOOR
        self._first_obs = np.full(self.n, LOGP_FLOOR, dtype=np.float32)
        self._first_obs[: task.n] = np.clip(self._first, LOGP_FLOOR, 0.0)
        self._proposals = np.full((self.max_budget, task.n), -1, dtype=np.int64)
        self._latest: Verification | None = None
        self._initial_agreement = self._now = self._agreement(self._committed)  # _now: of the committed ranking
        info = {"task_id": task.task_id, "agreement": self._initial_agreement, "budget": self.budget}
        return self._observation(), info

    def _episode_budget(self, requested: Any) -> int:
        return draw_budget(requested, self.budget_range, self.max_budget, self.np_random)

    def step(self, action):
        if self._committing:
            return self.commit(action)
        return self.apply_verification(self.verifier.verify(self.task, self.propose(action)))

    @property
    def in_commit_step(self) -> bool:
        """True when the next step commits the final ranking (no verification, no LLM pass)."""
        return self._committing

    # ---- the two halves of a step (a vector env batches the verification in between) ----------
    def propose(self, action) -> np.ndarray:
        """The ranking an action asks for: verified prefix first, the rest by descending score."""
        self._check_running()
        if self._committing:
            raise RuntimeError("this is the commit step: call step() or commit(), not propose()")
        return self._order(action)

    def _check_running(self) -> None:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over (ranking committed or fully verified); call reset()")

    def _order(self, action) -> np.ndarray:
        scores = np.asarray(action)
        if scores.dtype.kind not in "iuf":  # strings, objects and bools are not scores, even if they parse
            raise ValueError(f"action must be numeric item scores (a float array of shape ({self.n},)); got "
                             f"dtype {scores.dtype}: fix the policy's output")
        scores = scores.astype(np.float64)
        if scores.shape != (self.n,):
            raise ValueError(f"action must be {self.n} item scores, shape ({self.n},); got {scores.shape}")
        if not np.all(np.isfinite(scores[: self.task.n])):
            raise ValueError("action has NaN or inf scores; scores must be finite (clip or fix the policy)")
        keep = self._locked if self.config["lock_verified_prefix"] else 0
        head, rest = self._committed[:keep], self._committed[keep:]
        rest = rest[np.argsort(-scores[rest], kind="stable")]  # ties keep the committed order
        return np.concatenate([head, rest])

    def apply_verification(self, v: Verification):
        """Record what the LLM said about a proposal and commit its verified prefix."""
        task = self.task
        if self._committing or self._done:
            raise RuntimeError("no verification is expected now (commit step or episode over)")
        self._latest = v
        self._verified_obs[self._round, : task.n, : task.n] = np.clip(v.logprobs, LOGP_FLOOR, 0.0)
        self._proposals[self._round, v.ranking] = np.arange(task.n)
        prefix = v.verified_prefix
        verified = set(prefix.tolist())
        rest = [j for j in v.ranking if j not in verified]
        before = self._now
        self._committed = np.concatenate([prefix, np.asarray(rest, dtype=np.int64)])
        self._locked = len(prefix)
        self._round += 1
        self._now = self._agreement(self._committed)
        reward = self._now - before
        if self._locked >= task.n:
            self._done = True  # everything verified: nothing left to commit
        elif self._round >= self.budget:
            self._committing = self.config["commit_step"]
            self._done = not self._committing
        info: dict[str, Any] = {"accepted": v.accepted, "verified_prefix": self._locked, "round": self._round}
        return self._step_result(reward, info)

    def commit(self, action):
        """The commit step: the final ranking is the verified prefix + the rest by the action's scores.

        No LLM pass; the reward is the agreement it gains over the committed ranking.
        """
        self._check_running()
        if not self._committing:
            raise RuntimeError("not the commit step: it follows the last verification (see in_commit_step)")
        ranking = self._order(action)
        before = self._now
        self._committed, self._now = ranking, self._agreement(ranking)
        self._committing, self._done = False, True
        info: dict[str, Any] = {"accepted": 0, "verified_prefix": self._locked, "round": self._round,
                                "committed": True}
        return self._step_result(self._now - before, info)

    def end_verification(self) -> bool:
        """Stop verifying now (anytime or adaptive budget): True if a commit step follows, else the episode
        is over. A commit step follows when the protocol has one and at least one round was verified.
        """
        self._check_running()
        if not self._committing:
            self._committing = self.config["commit_step"] and self._round > 0
            self._done = not self._committing
        return self._committing

    def _step_result(self, reward: float, info: dict[str, Any]):
        info.update(budget=self.budget, llm_passes=episode_passes(self._round))
        if self._done:
            info.update(self.episode_summary())
        return self._observation(), float(reward), self._done, False, info

    # ---- what the env reports ----------------------------------------------------------------
    def _agreement(self, ranking: np.ndarray) -> float:
        return float(agreement_batch(positions_batch(ranking[None]), self._target_pos, self._size,
                                     self.config["reward"])[0])

    @property
    def latest_verification(self) -> Verification | None:
        """What the LLM said about the latest proposal this episode (None before the first round)."""
        return self._latest

    @property
    def verified_prefix_length(self) -> int:
        """Positions of the committed ranking the LLM has verified (they stay fixed)."""
        return self._locked

    def committed_ranking(self) -> np.ndarray:
        """The output at this moment: verified prefix + the rest in the latest proposal's order."""
        return self._committed.copy()

    def episode_summary(self) -> dict[str, Any]:
        summary = self.ranking_summary(self.task, self._committed)
        summary.update(initial_agreement=self._initial_agreement, final_agreement=self._now, rounds=self._round,
                       budget=self.budget,
                       llm_passes=episode_passes(self._round))  # prefill + one per verification; commit is free
        return summary

    def ranking_summary(self, task: RankingTask, ranking: np.ndarray) -> dict[str, Any]:
        """What the env reports about any ranking of ``task``: it, its docids, the target, the agreement
        metrics (Kendall tau, Spearman rho, Footrule, Kemeny) and trec_eval's NDCG@10 when labelled. Methods
        that do not run an episode (AR) report through it too."""
        ranking = np.asarray(ranking, dtype=np.int64)
        target = self.target(task)
        summary: dict[str, Any] = {
            "task_id": task.task_id,
            "final_ranking": ranking.copy(),
            "final_docids": [task.candidates[j].docid for j in ranking],
            "target_ranking": target.copy(),
            **{key: float(value[0]) for key, value in agreement_metrics_batch(
                positions_batch(ranking[None]), positions_batch(target[None]), np.array([task.n])).items()},
        }
        if task.has_labels():  # trec_eval's NDCG@10 (equality with pytrec_eval is tested)
            if task.task_id not in self._gains:  # task ids are unique within an env
                self._gains[task.task_id] = label_gains(task, task.n)
            gains, ideal = self._gains[task.task_id]
            summary["ndcg@10"] = float(ndcg_batch(ranking[None], gains[None], np.array([ideal]))[0])
        return summary

    def _observation(self) -> dict[str, np.ndarray]:
        n, m = self.n, self.task.n
        first = self._first_obs.copy()
        t, done = self.max_budget, self._round
        verified = self._verified_obs.copy()
        proposals = np.full((t, n), -1.0, dtype=np.float32)
        proposals[:, :m] = self._proposals
        round_mask = (np.arange(t) < done).astype(np.float32)
        committed = np.full(n, -1.0, dtype=np.float32)
        committed[self._committed] = np.arange(m)
        locked = np.zeros(n, dtype=np.float32)
        locked[self._committed[: self._locked]] = 1.0
        valid = (np.arange(n) < m).astype(np.float32)
        scalar = lambda x: np.array([x], dtype=np.float32)  # noqa: E731
        return {"first_token": first, "verified": verified.ravel(), "proposals": proposals.ravel(),
                "round_mask": round_mask, "committed": committed, "locked": locked, "round": scalar(done),
                "budget": scalar(self.budget), "commit": scalar(float(self._committing)), "valid": valid}

    def observation(self) -> dict[str, np.ndarray]:
        """The current observation (e.g. after ``end_verification``)."""
        if self.task is None:
            raise RuntimeError("call reset() first")
        return self._observation()

    def render(self) -> str | np.ndarray | None:
        """``ansi``: the committed ranking as text; ``rgb_array``: ``rsd_env.render.ranking_frame``."""
        if self.render_mode is None or self.task is None:
            return None
        if self.render_mode == "rgb_array":
            return self._render_frame()
        return self._render_text()

    def _render_frame(self) -> np.ndarray:
        m = self.task.n
        if self._latest is None:  # before the first round the LLM has only scored the first position
            logprobs = np.full((m, m), np.nan)
            logprobs[0] = self._first
            shown = self._committed
        else:
            logprobs, shown = self._latest.logprobs, np.asarray(self._latest.ranking)
        return ranking_frame(logprobs, shown, self._target, self._locked)

    def _render_text(self) -> str:
        target_rank = {int(j): r + 1 for r, j in enumerate(self._target)}
        phase = "  commit step" if self._committing else ""
        lines = [f"task {self.task.task_id}  round {self._round}/{self.budget}{phase}  "
                 f"agreement {self._agreement(self._committed):.3f}"]
        if self.task.query:
            lines.append(f"query: {self.task.query}")
        for pos, j in enumerate(self._committed):
            c = self.task.candidates[j]
            mark = "L" if pos < self._locked else " "
            text = " ".join(c.text.split())[:60]
            lines.append(f"{pos + 1:>3} {mark} [{j:>2}] {c.docid:<10} target#{target_rank[int(j)]:<3} {text}")
        return "\n".join(lines)

    # ---- pickling: real models are re-created from their spec, not copied --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not isinstance(self.config["verifier"], Verifier):
            state["verifier"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.verifier is None:
            self.verifier = make_verifier(self.config["verifier"], **self.config["verifier_kwargs"])


class RSDRankSimEnv(RSDRankEnv):
    """``RSDRankEnv`` whose defaults are the simulated LLM on synthetic tasks (``SIM_CONFIG``).

    A caller's ``config`` is layered on top, so ``gym.make("RSDRankSim-v0", config={"budget": 2})`` stays
    simulated instead of falling back to the real model.
    """

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None) -> None:
        super().__init__({**SIM_CONFIG, **(config or {})}, render_mode)
