"""Training side work as SB3 callbacks: held-out evaluation, checkpoints, and a wandb log writer."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, KVWriter

from agents.methods import AgentMethod, rank_tasks, summarize


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
    """Saves ``last`` (overwritten; resume reads it) and a numbered copy in ``keep_dir``, atomically.

    The save waits for the next rollout boundary (after the update that follows the crossing), when the
    weights, optimizer, timestep count and sampling generator all describe the same moment: a run resumed
    from it takes exactly the steps the uninterrupted run took.
    """

    def __init__(self, every: int, last: Path, keep_dir: Path | None = None) -> None:
        super().__init__(every)
        self.last, self.keep_dir = Path(last), keep_dir
        self._due = False

    def fire(self) -> None:
        self._due = True

    def _on_rollout_start(self) -> None:
        if self._due:
            self._due = False
            self.save()

    def save(self) -> None:
        from agents import save_agent

        if self.keep_dir is not None:
            save_agent(self.model, Path(self.keep_dir) / f"model_{self.num_timesteps}.zip")
        save_agent(self.model, self.last)


class WarmStartSnapshot(BaseCallback):
    """Saves ``path`` once: the model as the supervised warm start left it, before the first RL update.

    RPO decides per batch: a batch collected past ``warm_start_timesteps`` trains the RL stage. So the
    snapshot is taken at the end of that batch's collection (its update has not run yet), which makes
    "warm start only" vs "warm start + RL" an exact comparison of the same run.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._before = 0

    def _on_rollout_start(self) -> None:
        self._before = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        warm = int(getattr(self.model, "warm_start_timesteps", 0) or 0)
        if 0 < warm and self._before <= warm < self.num_timesteps:
            from agents import save_agent

            save_agent(self.model, self.path, meta={"stage": "warm start only"})


def evaluate_agent(agent: Any, eval_env: Any, task_ids: list[str]) -> dict[str, float]:
    """Greedy ranking of held-out tasks by ``agent`` (anything with our ``policy``): mean metrics."""
    method = AgentMethod(agent)
    method.cold = False  # monitoring, not latency: keep the verifier's prompt caches warm for training
    return summarize(rank_tasks(method, eval_env, task_ids))


EVAL_KEYS = ("final_agreement", "kendall_tau", "spearman_rho", "ndcg@10", "wall_ms")  # logged as eval/<key>


class RankingEvalCallback(_Every):
    """Greedy evaluation on held-out tasks: agreement with the target, Kendall tau, NDCG@10.

    Logs ``eval/*`` to the SB3 logger (hence wandb), appends to ``log_path`` (JSON lines) and saves the
    model with the best agreement to ``best_path``. Also runs once when training ends.
    """

    def __init__(self, eval_env, task_ids: list[str], every: int, best_path: Path | None = None,
                 log_path: Path | None = None, best: float = -np.inf) -> None:
        super().__init__(every)
        self.eval_env, self.task_ids = eval_env.unwrapped, list(task_ids)
        self.best_path, self.log_path = best_path, log_path
        self.best = best  # a resumed run passes the score its best.zip was saved with
        self.last_result: dict[str, Any] = {}

    def fire(self) -> None:
        summary = evaluate_agent(self.model, self.eval_env, self.task_ids)
        self.last_result = {"timesteps": self.num_timesteps, "updates": getattr(self.model, "_n_updates", 0), **summary}
        for key in EVAL_KEYS:
            if key in summary:
                self.logger.record(f"eval/{key}", summary[key])
        if summary["final_agreement"] > self.best:
            self.best = summary["final_agreement"]
            if self.best_path is not None:
                from agents import save_agent

                # the score goes into the checkpoint itself, so a resumed run compares against it
                save_agent(self.model, self.best_path, meta={"eval": self.last_result})
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(self.last_result) + "\n")

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


class ResumableCSVWriter(CSVOutputFormat):
    """SB3's ``progress.csv`` writer that continues an interrupted run's file instead of truncating it.

    Rows logged after ``until_timesteps`` (the checkpoint a run resumes from) are dropped, since those
    steps are taken again; the kept rows stay and new rows are appended under the same header.
    """

    def __init__(self, filename: str | Path, until_timesteps: int | None = None) -> None:
        path = Path(filename)
        if until_timesteps is None or not path.exists():
            super().__init__(str(path))
            return
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, body = (rows[0], rows[1:]) if rows else ([], [])
        step = header.index("time/total_timesteps") if "time/total_timesteps" in header else None
        kept = [r for r in body if len(r) == len(header) and (step is None or _num(r[step]) <= until_timesteps)]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *kept] if header else [])
        self.file = open(path, "r+", encoding="utf-8")
        self.file.seek(0, 2)
        self.keys = list(header)
        self.separator, self.quotechar = ",", '"'


def _num(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
