"""A training progress bar that counts env steps as ``num_timesteps`` counts them.

SB3's ``ProgressBarCallback`` adds ``training_env.num_envs`` per callback step. RPO steps a shrinking set of
its own group envs per callback step, so that bar ran far past its total ("4,400/3,000"). This one advances
by what ``num_timesteps`` advanced, and since a rollout always runs to its end (the last one may pass the
requested total), it ends showing the steps actually taken as its total.
"""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm  # plain tqdm, like the evaluation bars (SB3's rich one warns it is experimental)


class StepProgressBar(BaseCallback):
    """Env steps done in this ``learn`` call out of the steps it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.pbar = None
        self.start = 0

    def _on_training_start(self) -> None:
        self.start = self.model.num_timesteps
        self.pbar = tqdm(total=self.locals["total_timesteps"] - self.start, unit="step")

    def done(self) -> int:
        return self.model.num_timesteps - self.start

    def _on_step(self) -> bool:
        self.pbar.update(min(self.done(), self.pbar.total) - self.pbar.n)
        return True

    def _on_training_end(self) -> None:
        if self.done() > self.pbar.total:  # the last rollout ran past the request: show what was taken
            self.pbar.total = self.done()
        self.pbar.update(self.done() - self.pbar.n)
        self.pbar.refresh()
        self.pbar.close()
