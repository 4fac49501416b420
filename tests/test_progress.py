"""The training progress bar counts env steps as num_timesteps does, and ends at the steps taken."""

import gymnasium as gym

import agents
import agents.rpo
import rsd_env
from agents.progress import StepProgressBar

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1}


def _env():
    return gym.make("RSDRankSim-v0", config={**rsd_env.SIM_CONFIG, "data": {"count": 8}, "budget": 2, "n": 8})


class _Recorded(StepProgressBar):
    """Keeps every instance and the largest count it showed while running."""

    made: list = []

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        _Recorded.made.append(self)

    def _on_step(self) -> bool:
        result = super()._on_step()
        self.peak = max(self.peak, self.pbar.n)
        assert self.pbar.n <= self.pbar.total  # never "4,400/3,000"
        return result


def test_rpo_progress_bar_counts_the_env_steps_taken(monkeypatch):
    monkeypatch.setattr(agents.rpo, "StepProgressBar", _Recorded)
    _Recorded.made = []
    model = agents.make("rpo", _env(), group_size=3, tasks_per_batch=4, seed=0, policy_kwargs=TINY)
    model.learn(50, progress_bar=True)  # one rollout is 4 groups x 4 trajectories x up to 3 steps
    bar = _Recorded.made[-1]
    assert model.num_timesteps > 50  # the last rollout runs to its end, past the request
    assert bar.pbar.n == bar.pbar.total == model.num_timesteps  # so the bar ends at the steps taken
    assert bar.peak == 50  # and while running it stopped at the request, not past it

    first = model.num_timesteps
    model.learn(30, progress_bar=True, reset_num_timesteps=False)  # a resumed run counts only its own steps
    bar = _Recorded.made[-1]
    assert bar.pbar.n == bar.pbar.total == model.num_timesteps - first


def test_any_sb3_algorithm_gets_the_same_count():
    model = agents.make("ppo", _env(), n_steps=16, batch_size=16, seed=0, policy_kwargs=TINY)
    bar = StepProgressBar()
    model.learn(40, callback=bar)  # PPO collects whole rollouts of n_steps too: 48 steps
    assert bar.pbar.n == bar.pbar.total == model.num_timesteps == 48
