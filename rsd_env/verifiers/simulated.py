"""A fast, deterministic stand-in for a target LLM (for tests and fast RL research, not the default).

Real listwise rankers are not position-independent scorers: what they put at position i depends on what
they already placed (they avoid redundant items, follow a topic thread). This simulator reproduces that
structure so that single-token ranking is right at the head and drifts at the tail, and AR differs:

    logit_i(j | prefix) = quality_j + w_i * (cohesion * sim(last, j) - redundancy * max_{k in prefix} sim(k, j))

with ``w_i = i / (N - 1)`` growing with the position. Quality follows the task's relevance labels
(plus noise) where it has them. Everything is seeded by the task id: same task, same answers.

Only the first answer slot (what single-token ranking reads, and the only slot that sees no prefix) adds
``first_slot_noise`` times an item's own seeded noise: a long-list target's first-token scores separate
the clearly relevant head but blur the rest, while its later slots still rank the tail by quality. At
N = 100 the real full-list target is like that (STD far from AR, the up-to-down decoders close to it);
without the term, STD can be far from AR only through a strong prefix context, which drags every
decoder down with it. It defaults to 0 (the N = 20 profiles do not use it).

``prefix_noise`` makes a row less reliable the further its prefix strays from what the target itself would
have written: row i adds ``prefix_noise * d_i`` times seeded noise (one draw per position and item), where
``d_i`` is the share of the i items placed before position i that are not among the first i of the
target's own ranking without the term (its greedy AR order, computed once per task). A real target that
reads a prefix it would not have written (the first round's single-token order at N = 100) answers less
sharply than one that reads a prefix close to its own, so later rounds, closer to the target, gain more.
It defaults to 0 (profiles fitted before it existed are unchanged).

The parameters come in named profiles (``profiles/simulated.yaml``): ``calibrated`` (the default) was
fitted by ``experiments/paper/calibrate_simulator.py`` so that STD, SD and the hand-written decoder agree with
their target as much as they do on the bundled real LLM; ``legacy`` is the hand-set profile used before,
kept to reproduce earlier tables. Keyword arguments override single parameters of the chosen profile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rsd_env.data.task import RankingTask
from rsd_env.verifiers.base import Verifier, best_unused


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _stacked(parts: Sequence[np.ndarray]) -> np.ndarray:
    """(k, ...) from k per-task arrays; one task (a single env's step) is a view, not a copy."""
    return np.stack(parts) if len(parts) > 1 else parts[0][None]


def _off_prefix_noise(rank: np.ndarray, noise: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """(k, m - 1, m) rows 1.. of the ``prefix_noise`` term for k tasks: each position's noise (k, m, m), already
    scaled by ``prefix_noise``, times the share of its prefix outside the reference's first i, where ``rank``
    (k, m) is each item's position in the reference order (0 for a prefix in that order, 1 for one holding
    none of its first i)."""
    k, m = rankings.shape
    placed_rank = rank[np.arange(k)[:, None], rankings]  # (k, m) the reference rank of the item at each position
    pos = np.arange(m)
    # inside[k, i, q]: the item placed at q < i is among the reference's first i
    inside = (pos[None, None, :] < pos[None, :, None]) & (placed_rank[:, None, :] < pos[None, :, None])
    stray = 1.0 - inside.sum(-1)[:, 1:] / pos[1:]
    return stray[:, :, None] * noise[:, 1:]


PROFILES_FILE = Path(__file__).with_name("profiles") / "simulated.yaml"
DEFAULT_PROFILE = "calibrated"
PARAMETERS = ("seed", "dim", "label_weight", "noise", "cohesion", "redundancy", "temperature")
# parameters a profile may leave out, with the value that reproduces profiles written before they existed
OPTIONAL_PARAMETERS: dict[str, float] = {"first_slot_noise": 0.0, "prefix_noise": 0.0}


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, dict[str, Any]]:
    """Every named profile: ``{name: {"params": {...}, ...provenance}}``."""
    with open(path, encoding="utf-8") as fh:
        profiles = yaml.safe_load(fh) or {}
    for name, entry in profiles.items():
        missing = set(PARAMETERS) - set(entry.get("params", {}))
        if missing:
            raise ValueError(f"simulator profile {name!r} in {path} lacks {sorted(missing)}")
    return profiles


def profile_params(profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """The parameters of one named profile."""
    profiles = load_profiles()
    if profile not in profiles:
        raise ValueError(f"unknown simulator profile {profile!r}; choose one of {sorted(profiles)} "
                         f"(defined in {PROFILES_FILE})")
    return {**OPTIONAL_PARAMETERS, **profiles[profile]["params"]}


class SimulatedVerifier(Verifier):
    """Prefix-dependent next-item distributions from seeded latent item features."""

    name = "simulated"
    reads_labels = True  # quality follows the task's relevance labels

    def __init__(self, profile: str = DEFAULT_PROFILE, **overrides: Any) -> None:
        super().__init__()
        unknown = sorted(set(overrides) - set(PARAMETERS) - set(OPTIONAL_PARAMETERS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for verifier 'simulated'; valid options: "
                             f"{['profile', *PARAMETERS, *OPTIONAL_PARAMETERS]}")
        self.profile = profile
        self.params = {**profile_params(profile), **overrides}
        self.params["seed"], self.params["dim"] = int(self.params["seed"]), int(self.params["dim"])
        self._latent = lru_cache(maxsize=4096)(self._make_latent)
        self._own_rank = lru_cache(maxsize=4096)(self._make_own_rank)

    def fingerprint(self) -> str:
        # an optional parameter at its default is left out: earlier profiles keep their cached targets
        kept = {k: v for k, v in self.params.items() if OPTIONAL_PARAMETERS.get(k, object()) != v}
        return "simulated:" + ",".join(f"{k}={v}" for k, v in sorted(kept.items()))

    def _make_latent(self, task: RankingTask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        p = self.params
        digest = hashlib.sha256(f"{p['seed']}|{task.task_id}|{task.docids}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        labels = task.relevance()
        grades = np.array([labels.get(d, 0) for d in task.docids], dtype=np.float64)
        quality = p["label_weight"] * grades + p["noise"] * rng.standard_normal(task.n)
        emb = rng.standard_normal((task.n, p["dim"]))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        # drawn last, so the quality and features above stay those of profiles without the term
        first = quality + p["first_slot_noise"] * rng.standard_normal(task.n)
        # (position, item) noise of the prefix_noise term, drawn only where it is on (N x N floats per task)
        off_prefix = p["prefix_noise"] * rng.standard_normal((task.n, task.n)) if p["prefix_noise"] else None
        return quality, emb @ emb.T, first, off_prefix

    def _make_own_rank(self, task: RankingTask) -> np.ndarray:
        """(N,) each item's position in the target's greedy AR ranking without the ``prefix_noise`` term: the
        prefix it would write itself, which that term measures a proposal's prefix against."""
        order = self._greedy(task, lambda ranking: self._rows_stacked([task], ranking[None], off_prefix=False)[0])
        return np.argsort(order)

    @staticmethod
    def _greedy(task: RankingTask, rows: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Greedy AR under ``rows``: per position, the best unused item given the ranking so far."""
        ranking: list[int] = []
        used = np.zeros(task.n, dtype=bool)
        for i in range(task.n):
            padded = np.asarray(ranking + [j for j in range(task.n) if not used[j]], dtype=np.int64)
            best = best_unused(rows(padded)[i], used)
            ranking.append(best)
            used[best] = True
        return np.asarray(ranking, dtype=np.int64)

    def _rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        return self._rows_stacked([task], np.asarray(ranking)[None])[0]

    def _rows_stacked(self, tasks: Sequence[RankingTask], rankings: np.ndarray, off_prefix: bool = True) -> np.ndarray:
        """(k, m, m) rows for k tasks of m items each and their proposals (k, m), in one numpy pass
        (``off_prefix=False``: without the ``prefix_noise`` term)."""
        p = self.params
        latents = [self._latent(task) for task in tasks]
        quality, sims, first = (_stacked(parts) for parts in list(zip(*latents))[:3])  # (k, m), (k, m, m), (k, m)
        k, m = rankings.shape
        placed = sims[np.arange(k)[:, None], rankings]  # (k, m, m): row i = sim of the i-th placed item
        # position i sees the item placed at i - 1 (cohesion) and the prefix's running max (redundancy)
        last = placed[:, :-1]
        worst = np.maximum.accumulate(last, axis=1)
        context = p["cohesion"] * last - p["redundancy"] * np.clip(worst, 0.0, None)
        w = np.arange(1, m)[:, None] / max(m - 1, 1)
        logits = np.empty((k, m, m))
        logits[:, 0] = first
        logits[:, 1:] = quality[:, None, :] + w * context
        if p["prefix_noise"] and off_prefix:
            own_rank = _stacked([self._own_rank(task) for task in tasks])
            logits[:, 1:] += _off_prefix_noise(own_rank, _stacked([lat[3] for lat in latents]), rankings)
        return _log_softmax(logits / p["temperature"])

    def _first_token(self, task: RankingTask) -> np.ndarray:
        with self.timed("prefill", tokens=task.n):
            return _log_softmax(self._latent(task)[2] / self.params["temperature"])

    def _verify_rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        with self.timed("verify", tokens=task.n):
            return self._rows(task, ranking)

    def _verify_rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """All proposals of one task size in one numpy call (a vector env's step is one call)."""
        out: list[np.ndarray | None] = [None] * len(requests)
        by_size: dict[int, list[int]] = {}
        for i, (task, _) in enumerate(requests):
            by_size.setdefault(task.n, []).append(i)
        for members in by_size.values():
            with self.timed("verify", tokens=sum(requests[i][0].n for i in members)):
                rows = self._rows_stacked([requests[i][0] for i in members],
                                          np.stack([requests[i][1] for i in members]))
            for i, r in zip(members, rows):
                out[i] = r
        return out  # type: ignore[return-value]

    def _decode_target(self, task: RankingTask) -> np.ndarray:
        """Greedy AR, one simulated decode step per position (nothing is cached)."""
        with self.timed("ar", tokens=task.n):
            return self._greedy(task, lambda ranking: self._rows(task, ranking))
