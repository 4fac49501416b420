"""Writing evaluation results: atomic files, JSON/CSV, TREC runs and the Markdown table.

Every file is written to a temp file in the target folder and renamed into place, so an interrupted run
leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsd_env.io import atomic_path, write_text

__all__ = ["atomic_path", "write_text", "write_json", "write_csv", "write_trec_run", "ensure_writable",
           "markdown_tables", "flat_cell"]

AGREEMENT = ("kendall_tau", "spearman_rho", "footrule", "kemeny")  # footrule/kemeny: distances, lower = better
HIGHER_IS_BETTER = ("kendall_tau", "spearman_rho")
QUALITY = ("ndcg@10", "hr@1", "ndcg@5")  # vs human labels (IR) / the held-out item (recommendation)
COST = ("llm_passes", "tokens", "wall_ms", "latency_ms", "decode_ms", "rounds")


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove we can write there, before hours of evaluation are spent."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        raise OSError(f"output directory {str(path)!r} is not writable ({err.strerror or err}); "
                      "choose another with --output") from err
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(data), indent=1, default=str) + "\n")


def flat_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: ``{metric}`` = mean, ``{metric}_lo``/``_hi`` = the 95 % CI."""
    row: dict[str, Any] = {}
    for key, value in cell.items():
        if isinstance(value, dict):
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = value["mean"], value["ci_low"], value["ci_high"]
        else:
            row[key] = value
    return row


def write_csv(path: str | Path, cells: Sequence[dict[str, Any]]) -> Path:
    rows = [flat_cell(c) for c in cells]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_jsonable(rows))
    return write_text(path, buf.getvalue())


def write_trec_run(path: str | Path, rankings: dict[str, Sequence[str]], tag: str) -> Path:
    """TREC run format: ``qid Q0 docid rank score tag`` (score = N - rank, so higher is better)."""
    lines = [f"{qid} Q0 {docid} {rank} {len(docids) - rank + 1} {tag}"
             for qid, docids in rankings.items() for rank, docid in enumerate(docids, start=1)]
    return write_text(path, "\n".join(lines) + "\n")


# ---- Markdown -----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, dict):
        return _fmt(value["mean"], digits)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_ci(value: Any) -> str:
    if not isinstance(value, dict) or value["mean"] is None:
        return _fmt(value)
    return f"{value['mean']:.3f} ± {(value['ci_high'] - value['ci_low']) / 2:.3f}"


def _times(value: float | None) -> str:
    return f"{value:.2f}×" if value else "–"


def _budget(cell: dict[str, Any]) -> str:
    return "–" if cell["budget"] is None else str(cell["budget"])


def _order(cells: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    rank = {m: k for k, m in enumerate(methods)}
    return sorted(cells, key=lambda c: (c["budget"] is not None, c["budget"] or 0, rank.get(c["method"], 99)))


def markdown_tables(cells: Sequence[dict[str, Any]], datasets: Sequence[str], methods: Sequence[str]) -> str:
    """Table 1 in the paper's layout (agreement with the target, datasets side by side), then one
    cost-and-quality table per dataset."""
    keyed = {(c["dataset"], c["method"], c["budget"]): c for c in cells}
    rows = sorted({(c["method"], c["budget"]) for c in cells},
                  key=lambda mb: (mb[1] is not None, mb[1] or 0, methods.index(mb[0]) if mb[0] in methods else 99))
    arrows = {"kendall_tau": "τ ↑", "spearman_rho": "ρ ↑", "footrule": "F ↓", "kemeny": "K ↓"}
    head = ["T", "Method"] + [f"{d} {arrows[m]}" for d in datasets for m in AGREEMENT]
    out = ["**Agreement with the target LLM's AR ranking** (mean over tasks; ↓ = distance)", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, budget in rows:
        line = ["–" if budget is None else str(budget), method]
        for d in datasets:
            cell = keyed.get((d, method, budget))
            line += [_fmt(cell[m]) if cell else "" for m in AGREEMENT]
        out.append("| " + " | ".join(line) + " |")
    out += _improvement_table(cells, datasets, rows)
    for d in datasets:
        mine = [c for c in cells if c["dataset"] == d]
        if not mine:
            continue
        quality = [q for q in QUALITY if any(c.get(q) is not None for c in mine)]
        by_query = any(c.get("p_value_by_query") is not None for c in mine)
        head = ["T", "Method", "τ (95 % CI)", *quality, "LLM passes", "tokens", "ms / ranking", "speedup vs AR",
                "decode ms", "decode speedup", "Δτ vs the decoder to beat", "p (Wilcoxon)"]
        head += [f"p, {max(c.get('queries', 0) for c in mine)} queries"] if by_query else []
        out += ["", f"**{d}**: quality, cost and significance ({mine[0]['tasks']} tasks; ★ = the decoder to "
                "beat: the strongest hand-written decoder at that T, which the paired test compares against)", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in _order(mine, methods):
            delta = c.get("delta_tau_pct")
            name = f"★ {c['method']}" if c.get("decoder_to_beat") else c["method"]
            line = [_budget(c), name, _with_ci(c["kendall_tau"]), *[_fmt(c.get(q)) for q in quality],
                    _fmt(c["llm_passes"], 1), _fmt(c["tokens"], 0), _fmt(c["latency_ms"], 1),
                    _times(c.get("speedup_vs_ar")), _fmt(c.get("decode_ms"), 1),
                    _times(c.get("decode_speedup_vs_ar")),
                    "" if delta is None else f"{delta:+.1f} % vs {c['vs_baseline']}",
                    _fmt_p(c.get("p_value"))]
            line += [_fmt_p(c.get("p_value_by_query"))] if by_query else []
            out.append("| " + " | ".join(line) + " |")
    return "\n".join(out) + "\n"


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def _improvement_table(cells: Sequence[dict[str, Any]], datasets: Sequence[str],
                       rows: Sequence[tuple[str, Any]]) -> list[str]:
    """The paper's summary figure as a table: mean relative improvement (%) over the best of STD and SD."""
    keyed = {(c["dataset"], c["method"], c["budget"]): c for c in cells}
    shown = [(m, b) for m, b in rows if any("rel_improvement_pct" in keyed.get((d, m, b), {}) for d in datasets)]
    if not shown:
        return []
    out = ["", "**Mean relative improvement over the best of STD and SD** (%, averaged over Kendall τ, "
           "Spearman ρ, Footrule and Kemeny; for the distances improvement = reduction)", "",
           "| T | Method | " + " | ".join(datasets) + " |", "|" + "---|" * (2 + len(datasets))]
    for method, budget in shown:
        vals = [keyed.get((d, method, budget), {}).get("rel_improvement_pct") for d in datasets]
        out.append(f"| {budget} | {method} | " + " | ".join("" if v is None else f"{v:+.2f}" for v in vals) + " |")
    return out
