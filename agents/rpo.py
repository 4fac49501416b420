"""RPO: ranking-tailored policy optimisation (RSD paper), shaped like an SB3 algorithm.

Per iteration: pick ``tasks_per_batch`` tasks; on each run ``group_size`` trajectories sampled from the
Plackett-Luce policy and one greedy (argmax) reference rollout, all in parallel with one batched
verification per round. Update: clipped policy gradient on the exact PL log-probabilities.

The reward is the env's per-step gain in agreement with the target LLM's AR ranking, by default
1 - normalised Spearman distance (``reward: kendall`` in the env config switches to (tau + 1) / 2).
Spearman is the paper's return (recon) and charges each item by the square of its displacement, so an
item left far from its place (what the stale rows of a rejected item cause) costs much more than a few
neighbour swaps; Kendall tau counts every discordant pair alike. The two agree closely on these rankings
and the evaluation reports both (plus Footrule and Kemeny). A step's return is its return-to-go: the
agreement gained from that state to the end of the episode.

Advantage (``advantage``): each proposal is one whole PL permutation, so its baseline should be about
the state it was sampled in, not one scalar for the episode:

- ``"value"``: return-to-go - the value head's estimate at that state, which is trained on the greedy
  rollouts' return-to-go: "how much better than the deployed (argmax) policy from here";
- ``"greedy_step"``: return-to-go - the greedy reference rollout's return-to-go from the same step of the
  same task (exact at the first step, where both start from the same state);
- ``"greedy"`` (the paper), ``"group_mean"`` (GRPO-like), ``"none"`` (plain REINFORCE): one episode scalar,
  final return minus the greedy rollout's / the group's mean / nothing, kept for ablations.

Optional supervised warm start: the first ``warm_start_timesteps`` steps fit the policy's scores to the
target ranking (free items) on the visited states, by the PL likelihood or a pairwise loss
(``warm_start_loss``, ``agents.warm_start_loss``). With ``warm_start_replay`` > 0 the visited states are
kept (up to that many, oldest dropped first) and every warm-start update samples its minibatches from all
of them, not only from the latest batch: against a real LLM every state costs a verification pass, so
each one is used many times instead of for one batch's few updates. With ``warm_start_anchor`` > 0 (for
fine-tuning a trained agent, ``init_agent``) part of the warm-start loss fits the policy's *initial* ranking
(its argmax order, by the same loss) instead of the target's: a few hundred tasks then refine the agent
without overwriting what it learned elsewhere, as a KL penalty to the reference policy does in RLHF.

``learn``/``predict``/``save``/``load``, the logger and callbacks are SB3's, so ``CheckpointCallback``,
``wandb.integration.sb3.WandbCallback`` etc. work unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.plackett_luce import log_prob, sample_order
from agents.policy import GAIN_SCALE, RankingPolicy, obs_to_tensors, ranks_to_actions
from agents.progress import StepProgressBar
from agents.residual import ResidualRankingPolicy
from agents.vec_env import RSDVecEnv
from agents.warm_start_loss import WARM_START_LOSSES

ADVANTAGES = ("value", "greedy_step", "greedy", "group_mean", "none")
PER_STATE = ("value", "greedy_step")


@dataclass
class GroupRollout:
    """Everything one collection produced: per-step data and per-env final agreements."""

    obs: dict[str, torch.Tensor]  # stacked states, one row per (env, round)
    orders: torch.Tensor  # (S, N) proposal orders, free items first
    masks: torch.Tensor  # (S, N) free items
    old_logp: torch.Tensor  # (S,)
    env_index: np.ndarray  # (S,) which env took the step
    targets: torch.Tensor  # (S, N) the target's order of the free items, free first
    gains: torch.Tensor  # (S,) agreement gained from this state to the episode's end (return-to-go)
    final: np.ndarray  # (k,) final agreement per env
    initial: np.ndarray  # (k,)
    lengths: np.ndarray  # (k,)
    steps: np.ndarray | None = None  # (S,) round index of each state


def _map_tensors(fn, *batches: dict[str, Any]) -> dict[str, Any]:
    """``fn`` applied leaf by leaf to batches of the same layout (tensors, and one level of dicts: ``obs``)."""
    first = batches[0]
    return {key: ({k: fn(*(b[key][k] for b in batches)) for k in value} if isinstance(value, dict)
                  else fn(*(b[key] for b in batches))) for key, value in first.items()}


class RPO(BaseAlgorithm):
    """Ranking-tailored policy optimisation with a greedy-rollout baseline.

    :param group_size: G sampled trajectories per task (plus one greedy reference rollout)
    :param tasks_per_batch: tasks per iteration; the vector env holds tasks_per_batch * (G + 1) envs
    :param n_epochs: passes over each batch (clipped importance ratio after the first)
    :param batch_size: minibatch size in states
    :param advantage: per-state baselines "value" or "greedy_step" (see the module doc), or one episode
        scalar: "greedy" (paper), "group_mean" (GRPO-style), "none" (plain REINFORCE), for ablations
    :param temperature: the sampled trajectories follow PL(scores / temperature); < 1 explores closer to the
        greedy ranking (lower-variance advantages), the deployed argmax is unchanged
    :param value_coef: weight of the value loss: the value head learns the agreement the greedy policy
        still gains from a state (``RankingPolicy.expected_gain``), e.g. to stop early (adaptive budget)
    :param warm_start_timesteps: env steps of supervised PL warm start before RL (0 = off). On the simulated
        verifier it is what makes RPO strong (T=2 Kendall tau 0.924 after 30k steps vs 0.884 for 40k steps
        of RL alone), so the shipped configs use it.
    :param warm_start_loss: the warm start's loss, one of ``agents.warm_start_loss.WARM_START_LOSSES``:
        ``"plackett_luce"`` (the target order's likelihood under the policy) or ``"pairwise"`` (logistic
        loss over every pair of free items: a smooth Kendall tau, each discordant pair alike)
    :param warm_start_replay: capacity in states of the warm start's replay buffer (0 = train each batch
        on its own states only). The buffer lives in memory and is not part of checkpoints: a run resumed
        inside the warm start refills it from new rollouts (so it is not bit-identical to an uninterrupted
        run until the RL stage, which does not use it)
    :param warm_start_anchor: share in [0, 1) of the warm-start loss that fits the initial policy's own
        ranking (its argmax order of the free items, frozen when the warm start begins and kept in
        checkpoints) instead of the target's; 0 = off. For fine-tuning from ``init_agent``
    :param rl_learning_rate: learning rate after the warm start (default: ``learning_rate``'s schedule)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "RankingPolicy": RankingPolicy, "MultiInputPolicy": RankingPolicy,
        "ResidualRankingPolicy": ResidualRankingPolicy}
    policy: RankingPolicy

    def __init__(
        self,
        policy: str | type[RankingPolicy] = "RankingPolicy",
        env: gym.Env | VecEnv | str | None = None,
        learning_rate: float = 3e-4,
        group_size: int = 8,
        tasks_per_batch: int = 16,
        n_epochs: int = 2,
        batch_size: int = 128,
        clip_range: float = 0.2,
        advantage: str = "greedy",
        temperature: float = 1.0,
        normalize_advantage: bool = True,
        max_grad_norm: float = 1.0,
        value_coef: float = 0.5,
        warm_start_timesteps: int = 0,
        warm_start_epochs: int = 2,
        warm_start_replay: int = 0,
        warm_start_loss: str = "plackett_luce",
        warm_start_anchor: float = 0.0,
        rl_learning_rate: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        if group_size < 1 or tasks_per_batch < 1:
            raise ValueError(f"group_size and tasks_per_batch must be >= 1, got {group_size}, {tasks_per_batch}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if warm_start_replay < 0:
            raise ValueError(f"warm_start_replay must be >= 0 (states kept; 0 = off), got {warm_start_replay}")
        if warm_start_loss not in WARM_START_LOSSES:
            raise ValueError(f"warm_start_loss must be one of {sorted(WARM_START_LOSSES)}, got {warm_start_loss!r}")
        if not 0.0 <= warm_start_anchor < 1.0:
            raise ValueError(f"warm_start_anchor must be in [0, 1) (the share of the warm-start loss fitted to the "
                             f"initial policy's ranking; 0 = off), got {warm_start_anchor!r}")
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
        if isinstance(env, str):
            env = gym.make(env)
        if isinstance(env, gym.Env):
            env = RSDVecEnv.from_env(env, tasks_per_batch * (group_size + 1))
        super().__init__(policy, env, learning_rate, policy_kwargs=policy_kwargs, stats_window_size=stats_window_size,
                         tensorboard_log=tensorboard_log, verbose=verbose, device=device, support_multi_env=True,
                         seed=seed, supported_action_spaces=(spaces.Box,))
        self.group_size = group_size
        self.tasks_per_batch = tasks_per_batch
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.clip_range = clip_range
        self.advantage = advantage
        self.temperature = temperature
        self.normalize_advantage = normalize_advantage
        self.max_grad_norm = max_grad_norm
        self.value_coef = value_coef
        self.warm_start_timesteps = warm_start_timesteps
        self.warm_start_epochs = warm_start_epochs
        self.warm_start_replay = warm_start_replay
        self.warm_start_loss = warm_start_loss
        self.warm_start_anchor = warm_start_anchor
        self._anchor_frozen = False  # set once the reference is copied; a loaded run keeps its own reference
        self._replay: dict[str, Any] | None = None
        self.rl_learning_rate = rl_learning_rate
        self._rng: np.random.Generator | None = None
        self._group_env: RSDVecEnv | None = None
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if self._rng is None:  # a loaded model keeps its generator state: resume continues the stream
            self._rng = np.random.default_rng(self.seed)
        self.policy = self._new_policy()
        self.anchor_policy = self._new_policy().requires_grad_(False) if self.warm_start_anchor > 0 else None

    def _new_policy(self) -> RankingPolicy:
        return self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                 **self.policy_kwargs).to(self.device)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        saved = ["policy", "policy.optimizer"]  # the optimizer too: resuming continues the same run
        return (saved + ["anchor_policy"] if self.anchor_policy is not None else saved), []

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_group_env", "_replay"]

    def set_env(self, env, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        self._group_env = None

    # ---- rollouts ------------------------------------------------------------------------------
    def group_env(self) -> RSDVecEnv:
        """The episode-synchronous vector env: the given RSDVecEnv if its size fits, else copies of env 0."""
        if self._group_env is None:
            if self.env is None:
                raise ValueError("this RPO model has no env; pass env= to RPO(...) or RPO.load(...)")
            width = self.group_size + 1
            if isinstance(self.env, RSDVecEnv) and self.env.num_envs % width == 0:
                self._group_env = self.env
            else:
                base = self.env.base_env if isinstance(self.env, RSDVecEnv) else \
                    self.env.envs[0] if isinstance(self.env, DummyVecEnv) else None
                if base is None:
                    raise TypeError("RPO needs in-process RSDRankEnv instances: use RSDVecEnv or DummyVecEnv")
                self._group_env = RSDVecEnv.from_env(base, self.tasks_per_batch * width)
        return self._group_env

    def _free_mask(self, obs: dict[str, torch.Tensor], venv: RSDVecEnv) -> torch.Tensor:
        mask = obs["valid"] > 0.5
        if venv.base_env.config["lock_verified_prefix"]:
            mask = mask & (obs["locked"] < 0.5)
        return mask

    @torch.no_grad()
    def collect(self, callback: BaseCallback | None = None) -> GroupRollout | None:
        """One batch of groups; returns None when a callback asked to stop."""
        venv = self.group_env()
        width = self.group_size + 1
        n_tasks = venv.num_envs // width
        tasks = venv.base_env.tasks
        picks = self._rng.integers(len(tasks), size=n_tasks)
        lo, hi = venv.base_env.budget_range  # one budget per group: its trajectories stay comparable
        budgets = [lo] * n_tasks if lo == hi else self._rng.integers(lo, hi + 1, size=n_tasks).tolist()
        obs = venv.reset_to([tasks[p].task_id for p in picks for _ in range(width)],
                            [t for t in budgets for _ in range(width)])
        k = venv.num_envs
        initial = np.array([venv.reset_infos[i]["agreement"] for i in range(k)])
        final, lengths = np.zeros(k), np.zeros(k, dtype=np.int64)
        greedy = torch.as_tensor(np.arange(k) % width == 0, device=self.device)
        active = list(range(k))
        rows: list[tuple] = []
        rewards: dict[int, list[float]] = {i: [] for i in range(k)}
        self.policy.set_training_mode(False)
        while active:
            batch = obs_to_tensors({key: np.stack([obs[i][key] for i in active]) for key in obs[0]}, self.device)
            scores = self.policy.score_items(batch) / self.temperature
            mask = self._free_mask(batch, venv)
            uniform = torch.as_tensor(self._rng.random(tuple(scores.shape)), dtype=torch.float32)
            order = torch.where(greedy[active][:, None], sample_order(scores, mask, greedy=True),
                                sample_order(scores, mask, uniform=uniform))
            logp = log_prob(scores, order, mask)
            targets = self._target_orders(venv, active, mask)
            rows.append((batch, order, mask, logp, np.asarray(active), targets))
            results = venv.step_some(active, ranks_to_actions(order).cpu().numpy())
            self.num_timesteps += len(active)
            still = []
            for i, (o, reward, terminated, truncated, info) in zip(active, results):
                obs[i] = o
                rewards[i].append(reward)
                lengths[i] += 1
                if terminated or truncated:
                    final[i] = info["final_agreement"]
                else:
                    still.append(i)
            active = still
            if callback is not None:
                callback.update_locals(locals())
                if not callback.on_step():
                    return None
        cat = lambda j: torch.cat([r[j] for r in rows])  # noqa: E731
        stacked = {key: torch.cat([r[0][key] for r in rows]) for key in rows[0][0]}
        env_index = np.concatenate([r[4] for r in rows])
        step = np.concatenate([np.full(len(r[4]), t) for t, r in enumerate(rows)])
        gains = torch.as_tensor([sum(rewards[i][t:]) for i, t in zip(env_index, step)], dtype=torch.float32)
        return GroupRollout(stacked, cat(1), cat(2), cat(3), env_index, cat(5), gains.to(self.device),
                            final, initial, lengths, step)

    @staticmethod
    def _target_orders(venv: RSDVecEnv, active: list[int], mask: torch.Tensor) -> torch.Tensor:
        """The target ranking restricted to each state's free items (free first), for the warm start."""
        out = []
        for row, i in enumerate(active):
            target = venv.target_ranking(i).tolist()
            free = mask[row].cpu().numpy()
            out.append([j for j in target if free[j]] + [j for j in range(len(free)) if not free[j]])
        return torch.as_tensor(out, dtype=torch.long, device=mask.device)

    def advantages(self, rollout: GroupRollout) -> np.ndarray:
        """Per-env advantage; the greedy reference envs (every (G+1)-th) get 0 and are not trained on."""
        width = self.group_size + 1
        final = rollout.final.reshape(-1, width)
        if self.advantage == "greedy":
            adv = final - final[:, :1]
        elif self.advantage == "group_mean":
            adv = final - final[:, 1:].mean(1, keepdims=True)
        else:
            adv = final.copy()
        adv[:, 0] = 0.0
        return adv.ravel()

    @torch.no_grad()
    def state_advantages(self, rollout: GroupRollout) -> np.ndarray:
        """(S,) advantage of every state's proposal (per-state baselines, or the episode's scalar)."""
        if self.advantage not in PER_STATE:
            return self.advantages(rollout)[rollout.env_index]
        gains = rollout.gains.cpu().numpy().astype(np.float64)
        if self.advantage == "value":
            was_training = self.policy.training
            self.policy.set_training_mode(False)
            baseline = np.concatenate([
                self.policy.expected_gain({k: v[rows] for k, v in rollout.obs.items()}).cpu().numpy()
                for rows in torch.arange(len(gains)).split(self.batch_size)])
            self.policy.set_training_mode(was_training)
        else:  # the greedy reference of the same group, same step (0 once it has ended)
            width = self.group_size + 1
            reference = {(int(i), int(t)): g for i, t, g in zip(rollout.env_index, rollout.steps, gains)
                         if i % width == 0}
            baseline = np.array([reference.get((int(i) - int(i) % width, int(t)), 0.0)
                                 for i, t in zip(rollout.env_index, rollout.steps)])
        adv = gains - baseline
        adv[rollout.env_index % (self.group_size + 1) == 0] = 0.0
        return adv

    # ---- updates -------------------------------------------------------------------------------
    def _minibatches(self, n: int):
        for _ in range(self.n_epochs if self.n_epochs > 0 else 1):
            perm = torch.as_tensor(self._rng.permutation(n))
            for start in range(0, n, self.batch_size):
                yield perm[start: start + self.batch_size]

    def _value_loss(self, rollout: GroupRollout, rows: torch.Tensor) -> torch.Tensor:
        """Regress the greedy rollouts' return-to-go (deterministic targets: what deployment will gain)."""
        greedy = torch.as_tensor(rollout.env_index % (self.group_size + 1) == 0)
        return self._value_loss_on(rollout.obs, rollout.gains, greedy, rows)

    def _value_loss_on(self, obs: dict[str, torch.Tensor], gains: torch.Tensor, greedy: torch.Tensor,
                       rows: torch.Tensor) -> torch.Tensor:
        keep = rows[greedy[rows]]
        if self.value_coef == 0 or len(keep) == 0:
            return torch.zeros((), device=self.device)
        pred = self.policy.expected_gain({k: v[keep] for k, v in obs.items()}, scaled=False)
        return self.value_coef * ((pred - GAIN_SCALE * gains[keep]) ** 2).mean()

    def _step(self, loss: torch.Tensor) -> None:
        self.policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()

    def train_policy_gradient(self, rollout: GroupRollout) -> dict[str, float]:
        adv_state = self.state_advantages(rollout)  # before the value head is fitted to this batch
        sampled = rollout.env_index % (self.group_size + 1) != 0
        idx = torch.as_tensor(np.flatnonzero(sampled))
        adv = torch.as_tensor(adv_state[sampled], dtype=torch.float32, device=self.device)
        if self.normalize_advantage and len(adv) > 1:
            adv = adv / (adv.std() + 1e-8)
        losses, clipped = [], []
        self.policy.set_training_mode(True)
        self._fit_value(rollout)
        for mb in self._minibatches(len(idx)):
            rows = idx[mb]
            obs = {k: v[rows] for k, v in rollout.obs.items()}
            logp = log_prob(self.policy.score_items(obs) / self.temperature, rollout.orders[rows], rollout.masks[rows])
            ratio = torch.exp((logp - rollout.old_logp[rows]).clamp(max=20.0))
            a = adv[mb]
            loss = -torch.min(ratio * a, ratio.clamp(1 - self.clip_range, 1 + self.clip_range) * a).mean()
            self._step(loss)
            losses.append(loss.item())
            clipped.append(((ratio - 1).abs() > self.clip_range).float().mean().item())
        return {"train/pg_loss": float(np.mean(losses)), "train/clip_fraction": float(np.mean(clipped)),
                "train/advantage_mean": float(adv_state[sampled].mean())}

    def _fit_value(self, rollout: GroupRollout) -> None:
        if self.value_coef == 0:
            return
        rows = torch.as_tensor(np.flatnonzero(rollout.env_index % (self.group_size + 1) == 0))
        for start in range(0, len(rows), self.batch_size):
            self._step(self._value_loss(rollout, rows[start: start + self.batch_size]))

    def _remember(self, rollout: GroupRollout) -> dict[str, Any]:
        """The warm start's training data: this batch's states, plus the replay buffer's when it is on."""
        batch = {"obs": rollout.obs, "targets": rollout.targets, "masks": rollout.masks, "gains": rollout.gains,
                 "greedy": torch.as_tensor(rollout.env_index % (self.group_size + 1) == 0)}
        if self.warm_start_replay == 0:
            return batch
        if self._replay is not None:
            batch = _map_tensors(lambda old, new: torch.cat([old, new]), self._replay, batch)
        excess = len(batch["targets"]) - self.warm_start_replay
        if excess > 0:  # oldest states first out
            batch = _map_tensors(lambda t: t[excess:], batch)
        self._replay = batch
        return batch

    def train_warm_start(self, rollout: GroupRollout) -> dict[str, float]:
        """Fit the scores to the target order of the free items on the visited states (``warm_start_loss``).

        Logged as ``train/warm_start_nll`` (Plackett-Luce) or ``train/warm_start_pairwise``.
        ``warm_start_epochs`` passes' worth of minibatches per batch (as many updates as the batch's own
        states give); with ``warm_start_replay`` they are drawn from the whole replay buffer.
        """
        data = self._remember(rollout)
        losses, anchor_losses = [], []
        loss_fn = WARM_START_LOSSES[self.warm_start_loss]
        self._freeze_anchor()
        self.policy.set_training_mode(True)
        n_new, n = len(rollout.env_index), len(data["targets"])
        share = self.warm_start_anchor
        for _ in range(max(1, self.warm_start_epochs)):
            for start in range(0, n_new, self.batch_size):
                rows = torch.as_tensor(self._rng.permutation(n))[start: start + self.batch_size]
                obs, masks = {k: v[rows] for k, v in data["obs"].items()}, data["masks"][rows]
                scores = self.policy.score_items(obs)
                fit = loss_fn(scores, data["targets"][rows], masks).mean()
                loss = fit
                if self.anchor_policy is not None:
                    anchor = loss_fn(scores, self._anchor_order(obs, masks), masks).mean()
                    loss = (1 - share) * fit + share * anchor
                    anchor_losses.append(anchor.item())
                self._step(loss + self._value_loss_on(data["obs"], data["gains"], data["greedy"], rows))
                losses.append(fit.item())
        name = "nll" if self.warm_start_loss == "plackett_luce" else self.warm_start_loss
        stats = {f"train/warm_start_{name}": float(np.mean(losses))}
        if anchor_losses:
            stats["train/warm_start_anchor"] = float(np.mean(anchor_losses))
        return stats

    def _freeze_anchor(self) -> None:
        """Copy the policy into the anchor at the first warm-start update (after ``init_agent``'s weights are in)."""
        if self.anchor_policy is not None and not self._anchor_frozen:
            self.anchor_policy.load_state_dict(self.policy.state_dict())
            self.anchor_policy.set_training_mode(False)
            self._anchor_frozen = True

    @torch.no_grad()
    def _anchor_order(self, obs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """The initial policy's argmax order of the free items (free first), the anchor's target."""
        return sample_order(self.anchor_policy.score_items(obs), masks, greedy=True)

    # ---- SB3 learn -----------------------------------------------------------------------------
    def _init_callback(self, callback=None, progress_bar: bool = False) -> BaseCallback:
        """SB3's callback setup, with a bar that counts the env steps RPO takes (see ``agents.progress``)."""
        callback = super()._init_callback(callback, progress_bar=False)
        if progress_bar:
            callback = CallbackList([callback, StepProgressBar()])
            callback.init_callback(self)
        return callback

    def learn(self, total_timesteps: int, callback=None, log_interval: int = 1, tb_log_name: str = "RPO",
              reset_num_timesteps: bool = True, progress_bar: bool = False) -> RPO:
        total_timesteps, callback = self._setup_learn(total_timesteps, callback, reset_num_timesteps,
                                                      tb_log_name, progress_bar)
        callback.on_training_start(locals(), globals())
        iteration = 0
        while self.num_timesteps < total_timesteps:
            callback.on_rollout_start()
            start = time.perf_counter()
            steps_before = self.num_timesteps
            rollout = self.collect(callback)
            if rollout is None:
                break
            callback.on_rollout_end()
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self._update_learning_rate(self.policy.optimizer)
            warm = self.num_timesteps <= self.warm_start_timesteps
            if not warm and self.rl_learning_rate is not None:
                for group in self.policy.optimizer.param_groups:
                    group["lr"] = self.rl_learning_rate
            if warm:
                stats = self.train_warm_start(rollout)
            else:
                stats = self.train_policy_gradient(rollout)
            self._n_updates += 1
            iteration += 1
            self._record(rollout, stats, (self.num_timesteps - steps_before) / (time.perf_counter() - start))
            if log_interval and iteration % log_interval == 0:
                self.logger.dump(step=self.num_timesteps)
        callback.on_training_end()
        return self

    def _record(self, rollout: GroupRollout, stats: dict[str, float], fps: float) -> None:
        width = self.group_size + 1
        final = rollout.final.reshape(-1, width)
        for i in np.flatnonzero(np.arange(len(rollout.final)) % width != 0):
            self.ep_info_buffer.append({"r": float(rollout.final[i] - rollout.initial[i]),
                                        "l": int(rollout.lengths[i]), "t": 0.0})
        self.logger.record("rollout/ep_rew_mean", float(np.mean([e["r"] for e in self.ep_info_buffer])))
        self.logger.record("rollout/sampled_agreement", float(final[:, 1:].mean()))
        self.logger.record("rollout/greedy_agreement", float(final[:, 0].mean()))
        self.logger.record("time/fps", fps)
        self.logger.record("time/total_timesteps", self.num_timesteps)
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.record("train/learning_rate", self.policy.optimizer.param_groups[0]["lr"])
        for key, value in stats.items():
            self.logger.record(key, value)

