"""The environment's configuration: one dict of documented defaults (HighwayEnv style)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from rsd_env.verifiers.length_defaults import with_length_defaults

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
    # its options; with none naming them, n picks the shipped target for that length: on "bundled" with
    # n > 20 the adapter ("bundled-60" up to 60, "bundled-full" beyond: model_store.long_list_adapter), on
    # "simulated" the profile that stands in for that adapter's target ("n40-b60-approx" up to 60,
    # "calibrated-full-list" beyond: rsd_env.verifiers.length_defaults)
    "verifier_kwargs": {},
    # T: verification rounds per episode; an int, or [lo, hi] to draw T per episode from the env's seeded
    # RNG (training one agent for every budget); reset(options={"budget": t}) sets it for one episode
    "budget": 3,
    "max_budget": 5,  # the observation holds this many rounds, so one agent serves every T <= max_budget
    # after the T-th verification one more action commits the final ranking (no LLM pass); False = the
    # old protocol (the episode ends with the last verification) to reproduce earlier tables
    "commit_step": True,
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
    max_budget = config["max_budget"] = _integer(config["max_budget"], "max_budget", 1,
                                                 "rounds the observation holds")
    lo, hi = budget_range(config["budget"])
    if hi > max_budget:
        raise ValueError(f"budget {config['budget']!r} exceeds max_budget={max_budget}; raise max_budget "
                         f"(the observation's round axis) or lower the budget")
    config["budget"] = lo if _is_int(config["budget"]) else [lo, hi]  # plain ints (NumPy integers accepted)
    if not isinstance(config["commit_step"], bool):
        raise ValueError(f"commit_step must be True or False, got {config['commit_step']!r}")
    config["n"] = _integer(config["n"], "n", 2, "candidates per task")
    if not isinstance(config["data"], dict):
        raise ValueError(f"config 'data' must be a dict of load_tasks options (sampling, shuffle, path, ...), "
                         f"got {config['data']!r}")
    clash = sorted(set(config["data"]) & {"dataset", "split", "n", "seed"})
    if clash:
        raise ValueError(f"config 'data' sets {clash}: these are top-level config keys; write "
                         f"config={{{clash[0]!r}: ...}}, not config={{'data': {{{clash[0]!r}: ...}}}}")
    if not isinstance(config["verifier_kwargs"], dict):
        raise ValueError(f"config 'verifier_kwargs' must be a dict of verifier options, got "
                         f"{config['verifier_kwargs']!r}")
    config["verifier_kwargs"] = with_length_defaults(config["verifier"], config["verifier_kwargs"], config["n"])
    if config["max_tasks"] is not None:
        config["max_tasks"] = _integer(config["max_tasks"], "max_tasks", 1, "or None for all tasks")
    if config["reward"] not in REWARDS:
        raise ValueError(f"unknown reward {config['reward']!r}; choose one of {REWARDS}")
    if config["task_order"] not in ("random", "cycle"):
        raise ValueError(f"task_order must be 'random' or 'cycle', got {config['task_order']!r}")
    return config


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def budget_range(budget: Any) -> tuple[int, int]:
    """``(lo, hi)`` of a config budget: an int T, or ``[lo, hi]`` (inclusive) drawn per episode."""
    if _is_int(budget):
        lo = hi = int(budget)
    elif isinstance(budget, (list, tuple)) and len(budget) == 2 and all(_is_int(b) for b in budget):
        lo, hi = int(budget[0]), int(budget[1])
        if lo > hi:
            raise ValueError(f"budget range [lo, hi] needs lo <= hi, got {list(budget)}")
    else:
        raise ValueError(f"budget must be an integer >= 1 (verification rounds) or a range [lo, hi] of them, "
                         f"got {budget!r}")
    if lo < 1:
        raise ValueError(f"budget must be an integer >= 1 (verification rounds), got {budget!r}")
    return lo, hi
