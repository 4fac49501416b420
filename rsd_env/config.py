"""The environment's configuration: one dict of documented defaults (HighwayEnv style)."""

from __future__ import annotations

import numbers
from typing import Any

DEFAULT_CONFIG: dict[str, Any] = {
    # data: any name accepted by rsd_env.data.load_tasks; "trec-dl" test = DL19, train = DL20
    "dataset": "trec-dl",
    "split": "test",
    "n": 20,  # candidates per task = size of the action / observation item axis
    "data": {},  # extra load_tasks options: sampling, samples_per_query, shuffle, history, path, qrels, ...
    "tasks": None,  # or an explicit list of RankingTask (overrides dataset/split/data)
    "max_tasks": None,  # keep only the first k tasks
    "task_order": "random",  # "random" (seeded by reset(seed=...)) or "cycle" (in order)
    # the target LLM: "bundled" (Gemma 3 270M + listwise LoRA), "simulated", "hf:<name or path>",
    # "openai:<base url>", a dict {"kind": ..., **kwargs}, or a Verifier instance
    "verifier": "bundled",
    "verifier_kwargs": {},
    "budget": 3,  # T: verification rounds per episode
    "lock_verified_prefix": True,  # verified positions (accepted prefix + correction) stay fixed
    "reward": "spearman",  # per-step gain in agreement: "spearman" (1 - norm. Spearman dist.) or "kendall"
    "seed": 0,  # seed of data sampling (random subsets, shuffles, MovieLens negatives and user split)
}

# RSDRankSim-v0's defaults, layered under the caller's config: the fast simulated LLM on synthetic tasks
SIM_CONFIG: dict[str, Any] = {"dataset": "synthetic", "split": "train", "verifier": "simulated"}

REWARDS = ("spearman", "kendall")


def _integer(value: Any, key: str, minimum: int, meaning: str) -> int:
    """``value`` as a plain int (NumPy integers included), or a ValueError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def resolve_config(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults updated with ``overrides``; unknown keys and bad values are errors, not ignored."""
    config = dict(DEFAULT_CONFIG)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(config)}")
    config.update(overrides)
    config["budget"] = _integer(config["budget"], "budget", 1, "verification rounds")
    config["n"] = _integer(config["n"], "n", 2, "candidates per task")
    if config["max_tasks"] is not None:
        config["max_tasks"] = _integer(config["max_tasks"], "max_tasks", 1, "or None for all tasks")
    if config["reward"] not in REWARDS:
        raise ValueError(f"unknown reward {config['reward']!r}; choose one of {REWARDS}")
    if config["task_order"] not in ("random", "cycle"):
        raise ValueError(f"task_order must be 'random' or 'cycle', got {config['task_order']!r}")
    return config
