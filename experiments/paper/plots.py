"""The evaluation figures per dataset: agreement vs budget T, agreement vs latency (Pareto), and the
paper's summary: mean relative improvement over the best of STD and SD per method and T."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.report import atomic_path  # noqa: E402

METRIC, METRIC_LABEL = "kendall_tau", "Kendall τ vs target (AR) ranking"


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    cmap = plt.get_cmap("tab10")
    markers = "osD^vP*Xh<>"
    return {lab: {"color": cmap(k % 10), "marker": markers[k % len(markers)]} for k, lab in enumerate(labels)}


def budget_curve(cells: Sequence[dict[str, Any]], dataset: str, labels: Sequence[str], path: str | Path) -> Path:
    """Kendall tau (95 % CI band) vs T; budget-free methods (AR, STD, ...) as horizontal lines."""
    mine = [c for c in cells if c["dataset"] == dataset]
    budgets = sorted({c["budget"] for c in mine if c["budget"] is not None})
    style = _styles(labels)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in labels:
        pts = sorted((c for c in mine if c["method"] == label), key=lambda c: c["budget"] or 0)
        if not pts:
            continue
        if pts[0]["budget"] is None:
            ax.axhline(pts[0][METRIC]["mean"], ls="--", lw=1.2, color=style[label]["color"], label=label)
            continue
        x = [c["budget"] for c in pts]
        y = [c[METRIC]["mean"] for c in pts]
        ax.plot(x, y, label=label, lw=1.8, **style[label])
        ax.fill_between(x, [c[METRIC]["ci_low"] for c in pts], [c[METRIC]["ci_high"] for c in pts],
                        color=style[label]["color"], alpha=0.12, lw=0)
    ax.set_xticks(budgets)
    ax.set_xlabel("verification budget T (rounds)")
    ax.set_ylabel(METRIC_LABEL)
    tasks = mine[0]["tasks"] if mine else 0
    ax.set_title(f"{dataset}: agreement vs budget ({tasks} tasks, 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def pareto(cells: Sequence[dict[str, Any]], dataset: str, labels: Sequence[str], path: str | Path) -> Path:
    """Kendall tau vs mean decode time per ranking (log x), with the Pareto frontier over all cells.

    Decode time = wall time after the prompt prefill; the prefill is the same for every method (the mean
    is in the title) and on CPU it would squash every method into one point.
    """
    mine = [c for c in cells if c["dataset"] == dataset and c.get("decode_ms") is not None
            and c["method"] in labels]
    x = {id(c): max(c["decode_ms"], 0.01) for c in mine}
    style = _styles(labels)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in labels:
        pts = [c for c in mine if c["method"] == label]
        if not pts:
            continue
        ax.scatter([x[id(c)] for c in pts], [c[METRIC]["mean"] for c in pts], s=36, label=label,
                   color=style[label]["color"], marker=style[label]["marker"], zorder=3)
        for c in pts:
            if c["budget"] is not None:
                ax.annotate(f"T={c['budget']}", (x[id(c)], c[METRIC]["mean"]), fontsize=6,
                            xytext=(3, -8), textcoords="offset points", color=style[label]["color"])
    frontier, best = [], -2.0
    for c in sorted(mine, key=lambda c: (x[id(c)], -c[METRIC]["mean"])):
        if c[METRIC]["mean"] > best:
            frontier.append(c)
            best = c[METRIC]["mean"]
    if len(frontier) > 1:
        ax.step([x[id(c)] for c in frontier], [c[METRIC]["mean"] for c in frontier], where="post",
                color="grey", lw=1, ls=":", label="Pareto frontier", zorder=2)
    prefill = [c["latency_ms"] - c["decode_ms"] for c in mine]
    ax.set_xscale("log")
    ax.set_xlabel("mean decode time per ranking (ms, log scale; after the prompt prefill)")
    ax.set_ylabel(METRIC_LABEL)
    ax.set_title(f"{dataset}: agreement vs wall time (+ {sum(prefill) / max(len(prefill), 1):.0f} ms "
                 "prefill for every method)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def relative_improvement(cells: Sequence[dict[str, Any]], dataset: str, labels: Sequence[str],
                         path: str | Path) -> Path:
    """Bars: mean relative improvement (%) over the best of STD and SD (Kendall, Spearman, Footrule,
    Kemeny; distances improve by going down), one group per T, one bar per method."""
    mine = [c for c in cells if c["dataset"] == dataset and c.get("rel_improvement_pct") is not None
            and c["method"] in labels]
    budgets = sorted({c["budget"] for c in mine})
    shown = [lab for lab in labels if any(c["method"] == lab for c in mine)]
    style = _styles(labels)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(len(shown), 1)
    for k, label in enumerate(shown):
        by_t = {c["budget"]: c["rel_improvement_pct"] for c in mine if c["method"] == label}
        xs = [i + (k - (len(shown) - 1) / 2) * width for i, t in enumerate(budgets) if t in by_t]
        ax.bar(xs, [by_t[t] for t in budgets if t in by_t], width, label=label, color=style[label]["color"])
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(budgets)), [str(t) for t in budgets])
    ax.set_xlabel("verification budget T (rounds)")
    ax.set_ylabel("mean relative improvement over best of STD, SD (%)")
    ax.set_title(f"{dataset}: improvement over the best of STD and SD (τ, ρ, Footrule, Kemeny)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)
