"""LLMRank-style recommendation tasks from any user-item interaction log (MovieLens, RecBole atomic files).

Per user: the chronologically last ``history`` items (before the held-out item) as context; candidates =
the held-out next item + N-1 seeded random items the user never interacted with, in a seeded order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rsd_env.data.task import Candidate, RankingTask


@dataclass(frozen=True)
class Interactions:
    """Each user's items, oldest first, and every item's title."""

    by_user: dict[str, list[str]]
    titles: dict[str, str]


def id_order(key: str) -> tuple[int, int, str]:
    """Sort key for ids: numeric ids by value (MovieLens), then any others (Amazon ASINs) as text."""
    return (0, int(key), "") if key.isascii() and key.isdigit() else (1, 0, key)


def interactions(rows: Iterable[tuple[str, str, float]], titles: dict[str, str], source: str) -> Interactions:
    """``(user, item, timestamp)`` rows as each user's items, oldest first; every item needs a title."""
    rows = list(rows)
    unknown = {i for _, i, _ in rows} - set(titles)
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} rated items have no title (e.g. {sorted(unknown)[:3]}); add "
                         "them to the item file or delete their interactions")
    return Interactions(_sorted_histories(rows), titles)


def _sorted_histories(rows: list[tuple[str, str, float]]) -> dict[str, list[str]]:
    by_user: dict[str, list[tuple[float, str]]] = {}
    for user, item, ts in rows:
        by_user.setdefault(user, []).append((ts, item))
    # stable by (timestamp, item id): MovieLens has many equal timestamps
    return {u: [i for _, i in sorted(v, key=lambda p: (p[0], id_order(p[1])))] for u, v in by_user.items()}


def user_split(users: list[str], split: str, test_fraction: float, seed: int) -> list[str]:
    """Seeded user-level split: hold-out users are never seen in training."""
    order = sorted(users, key=id_order)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(order))
    n_test = int(round(len(order) * test_fraction))
    test = {order[k] for k in perm[:n_test]}
    if split == "test":
        return [u for u in order if u in test]
    if split == "train":
        return [u for u in order if u not in test]
    if split == "all":
        return order
    raise ValueError(f"unknown split {split!r} for a recommendation dataset; use 'train', 'test' or 'all'")


def _user_rng(seed: int, user: str) -> np.random.Generator:
    """Negatives and order depend on the user alone, not on which other users were loaded."""
    key = int(user) if user.isascii() and user.isdigit() else zlib.crc32(user.encode("utf-8"))
    return np.random.default_rng([seed, key])


def recommendation_tasks(
    data: Interactions,
    n: int = 20,
    history: int = 10,
    split: str = "test",
    test_fraction: float = 0.2,
    seed: int = 0,
    shuffle: bool = True,
    name: str = "ml-100k",
) -> list[RankingTask]:
    """One task per user with more than ``history`` interactions (fewer leave no held-out item to rank)."""
    all_items = np.array(sorted(data.titles, key=id_order), dtype=object)
    index = {item: k for k, item in enumerate(all_items)}
    if n > len(all_items):
        raise ValueError(f"n={n} is larger than the {len(all_items)} items in {name}; lower n")
    tasks = []
    for user in user_split(list(data.by_user), split, test_fraction, seed):
        seq = data.by_user[user]
        if len(seq) <= history:
            continue
        held_out, context = seq[-1], seq[-1 - history : -1]
        rng = _user_rng(seed, user)
        unseen = np.ones(len(all_items), dtype=bool)
        unseen[[index[i] for i in seq]] = False
        pool = all_items[unseen]  # the items the user never rated, in id order
        if len(pool) < n - 1:
            continue  # this user rated nearly everything: no room for negatives
        negatives = [pool[k] for k in rng.choice(len(pool), size=n - 1, replace=False)]
        items = [held_out, *negatives]
        if shuffle:
            items = [items[k] for k in rng.permutation(len(items))]
        tasks.append(
            RankingTask(
                task_id=f"{name}:u{user}",
                domain="rec",
                candidates=tuple(Candidate(i, data.titles[i]) for i in items),
                history=tuple(data.titles[i] for i in context),
                held_out=held_out,
            )
        )
    return tasks
