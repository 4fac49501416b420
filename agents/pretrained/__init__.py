"""Agents trained by us and shipped in the package: ``make_method("shipped")`` or ``agent:shipped``.

Each agent lives in its own folder with ``model.zip`` (a ``save_agent`` checkpoint), the training
``config.yaml`` that reproduces it (``rsd-train --config``) and a ``MODEL_CARD.md`` (data, steps, seeds,
time, command, metrics).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED", "DEFAULT_AGENT", "FULL_LIST_AGENT", "pretrained_path"]

_HERE = Path(__file__).resolve().parent
# name -> folder; the residual policy over the heuristic decoder, trained against the bundled LLM: at N = 20
# (sliding windows, the N = 20 adapter) and at N = 100 (one prompt, the full-list adapter)
DEFAULT_AGENT = "residual-bundled"
FULL_LIST_AGENT = "residual-full-list"
PRETRAINED: dict[str, str] = {DEFAULT_AGENT: "residual_bundled", FULL_LIST_AGENT: "residual_full_list"}


def pretrained_path(name: str = DEFAULT_AGENT) -> Path:
    """The ``model.zip`` of a shipped agent (``shipped`` = the default one)."""
    key = DEFAULT_AGENT if name in ("shipped", "") else name
    if key not in PRETRAINED:
        raise ValueError(f"unknown shipped agent {name!r}; choose one of {sorted(PRETRAINED)} (or 'shipped')")
    path = _HERE / PRETRAINED[key] / "model.zip"
    if not path.exists():
        raise FileNotFoundError(f"the shipped agent {key!r} is missing from this install ({path}); reinstall rsd "
                                "or train one with rsd-train --config " + str(path.parent / "config.yaml"))
    return path
