"""Agents trained by us and shipped in the package: ``make_method("shipped")`` or ``agent:shipped``.

Each agent lives in its own folder with ``model.zip`` (a ``save_agent`` checkpoint), the training
``config.yaml`` that reproduces it (``rsd-train --config``) and a ``MODEL_CARD.md`` (data, steps, seeds,
time, command, metrics).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRETRAINED", "TRAINED_N", "DEFAULT_AGENT", "FULL_LIST_AGENT", "FULL_LIST_FT_AGENT", "LIST_40_AGENT",
           "BEATS_DECODER", "RECOMMENDED", "FALLBACK_METHOD", "shipped_for", "default_method", "pretrained_path",
           "agent_path"]

_HERE = Path(__file__).resolve().parent
# name -> folder; the residual policy over the heuristic decoder, trained against the bundled LLM: at N = 20
# (sliding windows, the N = 20 adapter), at N = 40 (windows of 40, bundled-40) and at N = 100 (one prompt,
# the full-list adapter): from scratch, and the N = 40 agent fine-tuned there with an anchor to its own ranking
DEFAULT_AGENT = "residual-bundled"
FULL_LIST_AGENT = "residual-full-list"
FULL_LIST_FT_AGENT = "residual-full-list-ft"
LIST_40_AGENT = "residual-40"
PRETRAINED: dict[str, str] = {DEFAULT_AGENT: "residual_bundled", FULL_LIST_AGENT: "residual_full_list",
                              FULL_LIST_FT_AGENT: "residual_full_list_ft", LIST_40_AGENT: "residual_n40"}
# name -> the list length it was trained for (tests check it against each model's observation space)
TRAINED_N: dict[str, int] = {DEFAULT_AGENT: 20, LIST_40_AGENT: 40, FULL_LIST_AGENT: 100, FULL_LIST_FT_AGENT: 100}
# measured window length -> the shipped agents that beat the best hand-written decoder at that length on DL19
# (held out, paired p < 0.05 at T = 1 and 2), the larger gain first. A residual policy ranks any longer N
# (agents.resize; docs/long-lists.md#one-agent-for-every-n): the N = 20 agent is measured at 30, 40 and 100,
# the N = 40 agent at 60 and 100; the fine-tuned full-list agent at 100 (it ranks no shorter list); the
# full-list agent trained from scratch beats it nowhere. At 30 and 40 the agents beat it against bundled-40 and
# against bundled-60, the default target there since stop 50 (docs/long-lists.md).
BEATS_DECODER: dict[int, tuple[str, ...]] = {
    20: ("shipped",), 30: ("shipped",), 40: (f"shipped:{LIST_40_AGENT}", "shipped"),
    60: (f"shipped:{LIST_40_AGENT}",),
    100: (f"shipped:{FULL_LIST_FT_AGENT}", f"shipped:{LIST_40_AGENT}", "shipped")}
# measured window length -> the method to run there when none is named
RECOMMENDED: dict[int, str] = {n: winners[0] for n, winners in BEATS_DECODER.items()}
FALLBACK_METHOD = "heuristic"


def default_method(window: int) -> str:
    """What ``rsd-rerank`` and ``agents.rerank.rerank`` run on windows of ``window`` candidates by default: the
    ``RECOMMENDED`` method at a measured length; between two measured lengths, the first agent that beats the
    decoder at both (21-39: the N = 20 agent, 41-99: the N = 40 agent); else ``FALLBACK_METHOD``. At 100 that is
    the fine-tuned full-list agent."""
    if window in RECOMMENDED:
        return RECOMMENDED[window]
    below = max((n for n in BEATS_DECODER if n < window), default=None)
    above = min((n for n in BEATS_DECODER if n > window), default=None)
    if below is not None and above is not None:
        both = [agent for agent in BEATS_DECODER[below] if agent in BEATS_DECODER[above]]
        if both:
            return both[0]
    return FALLBACK_METHOD


def shipped_for(n: int) -> list[str]:
    """The shipped agents (as ``make_method`` specs) that may rank lists of ``n``: trained at N <= n."""
    return [f"shipped:{name}" if name != DEFAULT_AGENT else "shipped"
            for name, trained in sorted(TRAINED_N.items(), key=lambda item: item[1]) if trained <= n]


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


def agent_path(reference: str) -> Path:
    """Where an agent reference points: ``shipped`` / ``shipped:<name>`` (a shipped agent), ``agent:<path>`` or a
    plain path (a ``save_agent`` checkpoint or a policy folder). Existence is checked by whoever loads it."""
    if not isinstance(reference, str) or not reference:
        raise ValueError(f"an agent reference must be 'shipped', 'shipped:<name>', 'agent:<path>' or a path, "
                         f"got {reference!r}")
    if reference == "shipped" or reference.startswith("shipped:"):
        return pretrained_path(reference.partition(":")[2] or "shipped")
    return Path(reference[len("agent:"):] if reference.startswith("agent:") else reference)
