"""RecBole atomic files: ``<name>.inter`` and ``<name>.item``, tab-separated with typed headers.

The layout RecBole publishes its datasets in (Amazon_Video_Games, ml-1m, ...; ML-100K ships inside the
recbole wheel in it), so any of them gives LLMRank-style tasks (``rsd_env.data.recommendation``) without a
converter. Headers name each field and its type (``user_id:token  item_id:token  timestamp:float``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rsd_env.data.recommendation import Interactions, interactions
from rsd_env.data.rows import delimited_rows
from rsd_env.io import read_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
INTER_FIELDS = ("user_id", "item_id", "timestamp")  # RecBole's default USER_ID / ITEM_ID / TIME fields
# an item's display text: the first of these fields the .item file has ...
TITLE_FIELDS = ("title", "movie_title", "item_title", "product_title", "book_title", "name", "item_name")
# ... followed by " (<year>)" where the file has a release year (MovieLens titles are known that way)
YEAR_FIELDS = ("release_year", "year")


def _header(path: Path | Traversable) -> list[str]:
    """The field names of an atomic file's first line (``name:type`` each)."""
    lines = read_text(path, "RecBole file").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path} line 1: no header; RecBole atomic files start with a typed header such as "
                         "'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    names = []
    for k, column in enumerate(lines[0].split("\t"), 1):
        name, sep, kind = column.partition(":")
        if not sep or kind not in FIELD_TYPES or not name:
            raise ValueError(f"{path} line 1: header field {k} is {column!r}, not 'name:type' with a type in "
                             f"{FIELD_TYPES}; is this a RecBole atomic file? (tab-separated, typed header)")
        names.append(name)
    return names


def _require(path: Path | Traversable, names: list[str], needed: tuple[str, ...], fix: str) -> None:
    missing = [f for f in needed if f not in names]
    if missing:
        raise ValueError(f"{path} line 1: the header has no {missing} field(s) (found {names}); {fix}")


def read_atomic(folder: str | Path | Traversable, name: str) -> Interactions:
    """Interactions and titles of the RecBole dataset ``name`` in ``folder``.

    Needs ``<name>.inter`` with ``user_id``, ``item_id`` and ``timestamp`` fields (the order of each user's
    items) and ``<name>.item`` with ``item_id`` and a title-like field (``TITLE_FIELDS``).
    """
    folder = Path(folder) if isinstance(folder, str) else folder
    files = {kind: folder / f"{name}.{kind}" for kind in ("inter", "item")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".inter")) if folder.is_dir() else []
        raise FileNotFoundError(f"RecBole dataset {name!r}: {missing} not found; expected <name>.inter and "
                                f"<name>.item in {folder}" + (f" (its .inter files: {found}; pass name=<one of "
                                                               "their stems>)" if found else ""))
    return interactions(_interactions(files["inter"]), _titles(files["item"]), str(files["inter"]))


def _interactions(path: Path | Traversable) -> list[tuple[str, str, float]]:
    names = _header(path)
    _require(path, names, INTER_FIELDS, "RecBole's interaction files need user_id:token, item_id:token and "
             "timestamp:float (the timestamp orders each user's history); rename the fields to these names")
    user, item, time = (names.index(f) for f in INTER_FIELDS)
    rows = []
    for lineno, parts in delimited_rows(path, "\t", "RecBole file", f"the header's {len(names)} fields",
                                        width=len(names), skip=1):
        if not parts[user] or not parts[item]:
            raise ValueError(f"{path} line {lineno}: empty {'user_id' if not parts[user] else 'item_id'}; every "
                             "interaction needs a user and an item: fill it in or delete the line")
        try:
            rows.append((parts[user], parts[item], float(parts[time])))
        except ValueError:
            raise ValueError(f"{path} line {lineno}: timestamp {parts[time]!r} is not a number; fix that "
                             "line") from None
    if not rows:
        raise ValueError(f"{path}: no interactions below the header")
    return rows


def _titles(path: Path | Traversable) -> dict[str, str]:
    names = _header(path)
    _require(path, names, ("item_id",), "name the item id field item_id:token")
    title_field = next((f for f in TITLE_FIELDS if f in names), None)
    if title_field is None:
        raise ValueError(f"{path} line 1: no title-like field among {names}; the LLM ranks items by their titles, "
                         f"so the .item file needs one of {TITLE_FIELDS} (rename the field that holds them)")
    item, title = names.index("item_id"), names.index(title_field)
    year = next((names.index(f) for f in YEAR_FIELDS if f in names), None)
    titles: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for lineno, parts in delimited_rows(path, "\t", "RecBole file", f"the header's {len(names)} fields",
                                        width=len(names), skip=1):
        key = parts[item]
        if not key or not parts[title].strip():
            raise ValueError(f"{path} line {lineno}: empty {'item_id' if not key else title_field}; give the "
                             "item an id and a title, or delete it and its interactions")
        if key in line_of:
            raise ValueError(f"{path} lines {line_of[key]} and {lineno}: item id {key!r} appears twice; keep one")
        line_of[key] = lineno
        titles[key] = f"{parts[title]} ({parts[year]})" if year is not None and parts[year] else parts[title]
    return titles
