"""Settings overrides, one mechanism for every YAML config and CLI: ``KEY=VALUE`` text and dotted keys.

``--set env.budget=3`` (rsd-train), ``--verifier-arg adapter=null`` (rsd-eval, rsd-main, rsd-rerank) and
the override blocks of the experiment YAMLs all go through here: values are parsed as YAML, dotted keys
reach into nested mappings, and code passes overrides as a plain dict instead of formatting text.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

__all__ = ["parse_assignment", "parse_assignments", "set_dotted", "apply_dotted", "deep_merge"]


def parse_assignment(item: str, flag: str = "--set") -> tuple[str, Any]:
    """``"env.budget=3"`` -> ``("env.budget", 3)``: the value parsed as YAML (``null``, lists, mappings)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} expects key=value (e.g. env.budget=3), got {item!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", "") or err).split())
        raise ValueError(f"{flag} {key}: {value!r} is not a valid YAML value ({problem}); quote strings "
                         f"and close brackets, e.g. {flag} 'env.budget=2'") from err


def parse_assignments(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b.c=null"]`` -> ``{"a": 1, "b.c": None}`` (later items win)."""
    return dict(parse_assignment(item, flag) for item in items)


def set_dotted(raw: dict[str, Any], key: str, value: Any, flag: str = "--set") -> None:
    """``raw["a"]["b"] = value`` for ``key = "a.b"``; a missing or null level becomes a mapping."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # e.g. eval_env: null -> a mapping of overrides
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"{flag} {key}: {part!r} is not a mapping")
    node[parts[-1]] = value


def apply_dotted(raw: Mapping[str, Any], overrides: Mapping[str, Any], flag: str = "--set") -> dict[str, Any]:
    """A deep copy of ``raw`` with ``{dotted.key: value}`` overrides applied in order (values are not
    copied: a verifier instance stays that instance)."""
    out = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        set_dotted(out, key, value, flag)
    return out


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by ``extra``, mappings merged key by key (a YAML block over its defaults)."""
    out = copy.deepcopy(dict(base))
    for key, value in (extra or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
