"""Statistics for the evaluation table: mean with a 95 % confidence interval, and a paired test.

Tasks are the unit of replication: every method ranks the same tasks, so method differences are tested
per task (paired), which is far more sensitive than comparing two independent means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and the Student-t confidence interval of the mean over tasks."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(x.mean())
    if x.size < 2 or float(x.std()) == 0.0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": int(x.size)}
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(x.size)}


def paired_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of per-task differences ``a - b`` (1.0 when identical).

    Wilcoxon rather than a paired t-test: agreement scores are bounded and skewed near 1.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired test needs the same tasks on both sides, got {x.shape} vs {y.shape}")
    if x.size == 0 or np.allclose(x, y):
        return 1.0
    return float(sps.wilcoxon(x, y, zero_method="zsplit").pvalue)


def group_mean_differences(a: Sequence[float], b: Sequence[float], groups: Sequence[str]) -> np.ndarray:
    """Per group (sorted by name), the mean of its tasks' differences ``a - b``: what the grouped test ranks."""
    if not len(a) == len(b) == len(groups):
        raise ValueError(f"grouped test needs one group per task pair, got {len(a)}, {len(b)}, {len(groups)}")
    keys = sorted(set(groups))
    index = {g: k for k, g in enumerate(keys)}
    rows = np.fromiter((index[g] for g in groups), dtype=np.int64, count=len(groups))
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.bincount(rows, weights=diff, minlength=len(keys)) / np.bincount(rows, minlength=len(keys))


def grouped_paired_test(a: Sequence[float], b: Sequence[float], groups: Sequence[str]) -> tuple[float, int]:
    """``paired_test`` over groups (e.g. a query's windows): each group's tasks are averaged first, so
    several tasks cut from one query count as one piece of evidence. Returns (p, number of groups)."""
    mean_diff = group_mean_differences(a, b, groups)
    return paired_test(mean_diff, np.zeros(len(mean_diff))), len(mean_diff)
