"""Experiment YAML files that build on each other with ``extends: other.yaml``.

Several experiments run one recipe at several settings: the adapter curriculum's stages (40 -> 60 -> 100)
and the simulator fits to each bundled target. A file that names its recipe with ``extends`` (a path beside
it) lists only what differs, so a change to the recipe reaches every file built on it. Mappings merge key by
key (``real: {verifier_kwargs: {adapter: bundled-60}}`` changes only the adapter); any other value, lists
included, replaces the base's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rsd_env.io import read_text

__all__ = ["load_yaml_config", "merged"]


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s keys: nested mappings merged key by key, every other value replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml_config(path: str | Path, what: str = "config", example: str | None = None,
                     _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping a YAML config sets, its ``extends`` chain applied. ``what`` names the kind of file in
    errors (``"trainer config"``), ``example`` a file to point a missing one's user at. A missing file,
    a loop, malformed YAML or a file that is not a mapping is a ``ValueError`` naming the file."""
    path = Path(path)
    if path.resolve() in _chain:
        raise ValueError(f"{path}: 'extends' loops back to it ({' -> '.join(str(p) for p in (*_chain, path))})")
    try:
        text = read_text(path, what)  # the project's reader: folders, encoding, BOM
    except FileNotFoundError as err:
        hint = f" (e.g. {example})" if example else ""
        raise ValueError(f"{what} {path} not found; pass an existing YAML file{hint}") from err
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{what} {path}{where} is not valid YAML ({problem}); fix the file") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a {what} is a YAML mapping of option: value, not {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    parent = load_yaml_config(path.parent / str(base), what, example, (*_chain, path.resolve()))
    return merged(parent, raw)
