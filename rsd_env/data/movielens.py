"""Recommendation tasks from MovieLens, LLMRank-style.

Per user: the chronologically last ``history`` watched titles (before the held-out item) as context;
candidates = the held-out next item + N-1 seeded random items the user never rated. MovieLens may not
be redistributed, so nothing is shipped: the files are read from inside the ``recbole`` wheel file, fetched
into the cache with ``pip download`` (never installed: its dependency pins would clash with ours), or from
a user-given folder in the official layouts.
"""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_env.data.task import Candidate, RankingTask
from rsd_env.io import cache_root


@dataclass(frozen=True)
class Interactions:
    """Each user's rated items, oldest first, and every item's title."""

    by_user: dict[str, list[str]]
    titles: dict[str, str]


RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"


def _recbole_dir() -> Path | zipfile.Path:
    """ML-100K's folder inside the recbole wheel in ``cache_root()/wheels``, else in an installed recbole."""
    wheels = cache_root() / "wheels"
    wheel = wheels / RECBOLE_WHEEL
    if wheel.exists():
        try:
            return zipfile.Path(zipfile.ZipFile(wheel), "recbole/dataset_example/ml-100k/")
        except zipfile.BadZipFile as err:
            raise FileNotFoundError(f"{wheel} is not a valid wheel ({err}): delete it and fetch it again with "
                                    f"`pip download --no-deps -d {wheels} recbole==1.2.1`") from err
    spec = importlib.util.find_spec("recbole")  # an earlier install (pip install --no-deps recbole==1.2.1)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"MovieLens-100K is read from the recbole wheel, which is not in {wheels}: run "
            f"`pip download --no-deps -d {wheels} recbole==1.2.1`, or pass path=<folder with u.data and u.item>"
        )
    return Path(spec.origin).parent / "dataset_example" / "ml-100k"


def _sorted_histories(rows: list[tuple[str, str, float]]) -> dict[str, list[str]]:
    by_user: dict[str, list[tuple[float, str]]] = {}
    for user, item, ts in rows:
        by_user.setdefault(user, []).append((ts, item))
    # stable by (timestamp, item id): MovieLens has many equal timestamps
    return {u: [i for _, i in sorted(v, key=lambda p: (p[0], int(p[1]) if p[1].isdigit() else p[1]))]
            for u, v in by_user.items()}


def read_movielens(path: str | Path | None = None) -> Interactions:
    """Read ml-100k (recbole atomic files or official ``u.data``/``u.item``) or ml-1m (``*.dat``)."""
    folder = Path(path) if path is not None else _recbole_dir()
    if (folder / "ml-100k.inter").exists():
        inter = [ln.split("\t") for ln in (folder / "ml-100k.inter").read_text("utf-8").splitlines()[1:] if ln]
        items = [ln.split("\t") for ln in (folder / "ml-100k.item").read_text("utf-8").splitlines()[1:] if ln]
        rows = [(u, i, float(ts)) for u, i, _r, ts in inter]
        titles = {r[0]: f"{r[1]} ({r[2]})" if len(r) > 2 and r[2] else r[1] for r in items}
    elif (folder / "u.data").exists():
        rows = [(u, i, float(ts)) for u, i, _r, ts in
                (ln.split("\t") for ln in (folder / "u.data").read_text("latin-1").splitlines() if ln)]
        titles = {p[0]: p[1] for p in
                  (ln.split("|") for ln in (folder / "u.item").read_text("latin-1").splitlines() if ln)}
    elif (folder / "ratings.dat").exists():
        rows = [(u, i, float(ts)) for u, i, _r, ts in
                (ln.split("::") for ln in (folder / "ratings.dat").read_text("latin-1").splitlines() if ln)]
        titles = {p[0]: p[1] for p in
                  (ln.split("::") for ln in (folder / "movies.dat").read_text("latin-1").splitlines() if ln)}
    else:
        raise FileNotFoundError(
            f"{folder} is not a MovieLens folder: expected ml-100k.inter/.item (recbole), "
            "u.data/u.item (official ml-100k) or ratings.dat/movies.dat (official ml-1m)"
        )
    unknown = {i for _, i, _ in rows} - set(titles)
    if unknown:
        raise ValueError(f"{folder}: {len(unknown)} rated items have no title (e.g. {sorted(unknown)[:3]})")
    return Interactions(_sorted_histories(rows), titles)


def user_split(users: list[str], split: str, test_fraction: float, seed: int) -> list[str]:
    """Seeded user-level split: hold-out users are never seen in training."""
    order = sorted(users, key=lambda u: int(u) if u.isdigit() else u)
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
    raise ValueError(f"unknown split {split!r} for MovieLens; use 'train', 'test' or 'all'")


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
    """One LLMRank-style task per user with more than ``history`` ratings."""
    all_items = sorted(data.titles, key=lambda i: int(i) if i.isdigit() else i)
    if n > len(all_items):
        raise ValueError(f"n={n} is larger than the {len(all_items)} items in {name}")
    tasks = []
    for user in user_split(list(data.by_user), split, test_fraction, seed):
        seq = data.by_user[user]
        if len(seq) <= history:
            continue
        held_out, context = seq[-1], seq[-1 - history : -1]
        rng = np.random.default_rng([seed, int(user) if user.isdigit() else len(tasks)])
        seen = set(seq)
        pool = [i for i in all_items if i not in seen]
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
