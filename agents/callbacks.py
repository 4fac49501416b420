"""Training side work as SB3 callbacks: held-out evaluation, checkpoints, and a wandb log writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter

from agents.methods import AgentMethod, evaluate, summarize


class _Every(BaseCallback):
    """Fires when ``num_timesteps`` crosses a multiple of ``every`` (robust to any vector width)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every if self.every > 0 else 0

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            self.fire()
        return True

    def fire(self) -> None:
        raise NotImplementedError


class CheckpointEvery(_Every):
    """Saves ``last`` (overwritten; resume reads it) and a numbered copy in ``keep_dir``."""

    def __init__(self, every: int, last: Path, keep_dir: Path | None = None) -> None:
        super().__init__(every)
        self.last, self.keep_dir = Path(last), keep_dir

    def fire(self) -> None:
        from agents import save_agent

        save_agent(self.model, self.last)
        if self.keep_dir is not None:
            save_agent(self.model, Path(self.keep_dir) / f"model_{self.num_timesteps}.zip")


class RankingEvalCallback(_Every):
    """Greedy evaluation on held-out tasks: agreement with the target, Kendall tau, NDCG@10.

    Logs ``eval/*`` to the SB3 logger (hence wandb), appends to ``log_path`` (JSON lines) and saves the
    model with the best agreement to ``best_path``. Also runs once when training ends.
    """

    def __init__(self, eval_env, task_ids: list[str], every: int, best_path: Path | None = None,
                 log_path: Path | None = None) -> None:
        super().__init__(every)
        self.eval_env, self.task_ids = eval_env.unwrapped, list(task_ids)
        self.best_path, self.log_path = best_path, log_path
        self.best = -np.inf
        self.last_result: dict[str, Any] = {}

    def fire(self) -> None:
        method = AgentMethod(self.model)
        method.cold = False  # monitoring, not latency: keep the verifier's prompt caches warm for training
        summary = summarize(evaluate(method, self.eval_env, self.task_ids))
        self.last_result = {"timesteps": self.num_timesteps, "updates": getattr(self.model, "_n_updates", 0), **summary}
        for key in ("final_agreement", "kendall_tau", "spearman_rho", "ndcg@10", "wall_ms"):
            if key in summary:
                self.logger.record(f"eval/{key}", summary[key])
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(self.last_result) + "\n")
        if summary["final_agreement"] > self.best:
            self.best = summary["final_agreement"]
            if self.best_path is not None:
                from agents import save_agent

                save_agent(self.model, self.best_path)

    def _on_training_end(self) -> None:
        # the last periodic evaluation may predate the final update: evaluate the model that is saved
        if self.last_result.get("updates") != getattr(self.model, "_n_updates", 0):
            self.fire()
            self.logger.dump(self.num_timesteps)


class WandbWriter(KVWriter):
    """SB3 logger output that sends every dumped key to a wandb run (no tensorboard needed)."""

    def __init__(self, run) -> None:
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        values = {k: v for k, v in key_values.items() if isinstance(v, (int, float, np.number))}
        if values:
            self.run.log({**values, "global_step": step})

    def close(self) -> None:
        pass
