"""MovieLens-100K and ML-1M, in their official layouts or as RecBole atomic files.

Tasks are LLMRank-style (``rsd_env.data.recommendation``). MovieLens may not be redistributed, so nothing is
shipped: ML-100K is read as RecBole atomic files from inside the ``recbole`` wheel file, fetched into the cache
with ``pip download`` (never installed: its dependency pins would clash with ours), or from a user-given folder.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

from rsd_env.data.recbole import read_atomic
from rsd_env.data.recommendation import Interactions, interactions
from rsd_env.data.rows import delimited_rows
from rsd_env.io import cache_root

# per dataset: RecBole's interaction file, then the official ratings file (either marks a folder as that dataset)
LAYOUTS: dict[str, tuple[str, str]] = {"ml-100k": ("ml-100k.inter", "u.data"), "ml-1m": ("ml-1m.inter", "ratings.dat")}
# the official layouts: (ratings file, separator), (titles file, separator); Latin-1 text
OFFICIAL: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "ml-100k": (("u.data", "\t"), ("u.item", "|")), "ml-1m": (("ratings.dat", "::"), ("movies.dat", "::"))}
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


def read_movielens(path: str | Path | None = None, dataset: str = "ml-100k") -> Interactions:
    """``dataset``'s ratings and titles from ``path`` (default: ML-100K from the recbole wheel).

    ``path`` holds RecBole's ``<dataset>.inter``/``.item`` or the official files (``u.data``/``u.item`` for
    ml-100k, ``ratings.dat``/``movies.dat`` for ml-1m); a folder of the other MovieLens is an error.
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown MovieLens dataset {dataset!r}; choose one of {sorted(LAYOUTS)}")
    if path is None and dataset != "ml-100k":
        raise ValueError(f"{dataset} is not bundled anywhere: pass path=<folder with {LAYOUTS[dataset][1]} "
                         f"and {OFFICIAL[dataset][1][0]}, or RecBole's {dataset}.inter and {dataset}.item>")
    folder = Path(path) if path is not None else _recbole_dir()
    recbole_file, official_file = LAYOUTS[dataset]
    if (folder / recbole_file).is_file():
        return read_atomic(folder, dataset)
    if (folder / official_file).is_file():
        return _read_official(folder, dataset)
    for other, files in LAYOUTS.items():
        found = [f for f in files if other != dataset and (folder / f).is_file()]
        if found:
            raise ValueError(f"{folder} holds {other} ({found[0]}), not {dataset}: load it as dataset={other!r}, "
                             f"or point path at a {dataset} folder ({official_file} or {recbole_file})")
    raise FileNotFoundError(f"{folder} is not a {dataset} folder: expected {recbole_file} + {dataset}.item "
                            f"(RecBole) or {official_file} + {OFFICIAL[dataset][1][0]} (official layout)")


def _read_official(folder: Path, dataset: str) -> Interactions:
    (ratings, rsep), (movies, msep) = OFFICIAL[dataset]
    rows = []
    for lineno, (user, item, _rating, ts) in delimited_rows(
            folder / ratings, rsep, "MovieLens ratings file", rsep.join(("user", "item", "rating", "timestamp")),
            width=4, encoding="latin-1"):
        try:
            rows.append((user, item, float(ts)))
        except ValueError:
            raise ValueError(f"MovieLens ratings file {folder / ratings} line {lineno}: timestamp {ts!r} is not a "
                             "number; fix that line") from None
    titles = {p[0]: p[1] for _, p in delimited_rows(folder / movies, msep, "MovieLens movies file",
                                                     msep.join(("item", "title", "...")), min_width=2,
                                                     encoding="latin-1")}
    return interactions(rows, titles, str(folder / ratings))
