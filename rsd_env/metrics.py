"""Agreement between two rankings of the same items, and NDCG against human labels.

Rankings are sequences of item indices, best first. Distances are normalised to [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _positions(ranking: Sequence[int] | np.ndarray) -> np.ndarray:
    r = np.asarray(ranking, dtype=np.int64)
    pos = np.empty(len(r), dtype=np.int64)
    pos[r] = np.arange(len(r))
    return pos


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b) or sorted(np.asarray(a).tolist()) != list(range(len(a))) or sorted(
        np.asarray(b).tolist()
    ) != list(range(len(b))):
        raise ValueError("rankings must order the same items: permutations of 0..n-1")
    return _positions(a), _positions(b)


def discordant_pairs(a, b) -> int:
    pa, pb = _pair(a, b)
    da = np.sign(pa[:, None] - pa[None, :])
    db = np.sign(pb[:, None] - pb[None, :])
    return int((da * db < 0).sum() // 2)


def kendall_tau(a, b) -> float:
    n = len(a)
    if n < 2:
        return 1.0
    return 1.0 - 4.0 * discordant_pairs(a, b) / (n * (n - 1))


def kemeny_distance(a, b) -> float:
    """Discordant pairs / all pairs (the Kemeny distance between permutations, normalised)."""
    n = len(a)
    return 0.0 if n < 2 else 2.0 * discordant_pairs(a, b) / (n * (n - 1))


def spearman_distance(a, b) -> float:
    """Sum of squared position differences / its maximum n(n^2-1)/3."""
    n = len(a)
    if n < 2:
        return 0.0
    pa, pb = _pair(a, b)
    return float(((pa - pb) ** 2).sum() / (n * (n * n - 1) / 3.0))


def spearman_rho(a, b) -> float:
    return 1.0 - 2.0 * spearman_distance(a, b)


def footrule_distance(a, b) -> float:
    """Sum of absolute position differences / its maximum floor(n^2/2)."""
    n = len(a)
    if n < 2:
        return 0.0
    pa, pb = _pair(a, b)
    return float(np.abs(pa - pb).sum() / (n * n // 2))


def agreement(a, b) -> float:
    """RSD's return: 1 - normalised Spearman distance, in [0, 1]; 1 iff the rankings are equal."""
    return 1.0 - spearman_distance(a, b)


def agreement_metrics(ranking, target) -> dict[str, float]:
    """The paper's four agreement measures against the target LLM's AR ranking."""
    return {
        "kendall_tau": kendall_tau(ranking, target),
        "spearman_rho": spearman_rho(ranking, target),
        "footrule": footrule_distance(ranking, target),
        "kemeny": kemeny_distance(ranking, target),
    }


def ndcg_at_k(runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int = 10
              ) -> dict[str, float]:
    """Per-query NDCG@k with trec_eval's definition (via pytrec_eval); runs are docids best first."""
    import pytrec_eval

    if not runs:
        return {}
    missing = sorted(set(runs) - set(qrels))
    if missing:
        raise ValueError(f"no qrels for queries {missing[:3]}: NDCG needs labels for every ranked query")
    scored = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in runs.items()}
    labels = {q: {d: int(g) for d, g in qrels[q].items()} for q in runs}
    measure = f"ndcg_cut_{k}"
    evaluator = pytrec_eval.RelevanceEvaluator(labels, {measure})
    return {q: float(v[measure]) for q, v in evaluator.evaluate(scored).items()}


# ---- the same measures for k rankings at once (vector envs); rows are equal-length rankings ------------
# Rankings may be padded past a task's m real items with the padding items in a fixed order (the same in
# both rankings): padding then adds no distance and no discordant pair, so ``m`` is all the formulas need.

def positions_batch(rankings: np.ndarray) -> np.ndarray:
    """(k, n) item -> position for (k, n) rankings."""
    pos = np.empty_like(rankings)
    pos[np.arange(len(rankings))[:, None], rankings] = np.arange(rankings.shape[1])
    return pos


def spearman_distance_batch(pa: np.ndarray, pb: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``spearman_distance`` of k position pairs (k, n) over m real items each."""
    return ((pa - pb) ** 2).sum(axis=1) / np.maximum(m * (m * m - 1) / 3.0, 1.0)  # m < 2: 0 / 1


def discordant_pairs_batch(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    da = np.sign(pa[:, :, None] - pa[:, None, :])
    db = np.sign(pb[:, :, None] - pb[:, None, :])
    return (da * db < 0).sum(axis=(1, 2)) // 2


def agreement_batch(pa: np.ndarray, pb: np.ndarray, m: np.ndarray, reward: str = "spearman") -> np.ndarray:
    """The env's agreement for k position pairs: ``agreement`` (spearman) or (kendall tau + 1) / 2."""
    if reward == "kendall":
        return (1.0 - 4.0 * discordant_pairs_batch(pa, pb) / np.maximum(m * (m - 1), 1) + 1.0) / 2.0
    return 1.0 - spearman_distance_batch(pa, pb, m)


def agreement_metrics_batch(pa: np.ndarray, pb: np.ndarray, m: np.ndarray) -> dict[str, np.ndarray]:
    """``agreement_metrics`` for k rankings given as positions (k, n) over m real items each."""
    pairs = np.maximum(m * (m - 1), 1)  # m < 2: no pair is discordant and no position differs (0 / 1)
    disc = discordant_pairs_batch(pa, pb)
    return {
        "kendall_tau": 1.0 - 4.0 * disc / pairs,
        "spearman_rho": 1.0 - 2.0 * spearman_distance_batch(pa, pb, m),
        "footrule": np.abs(pa - pb).sum(axis=1) / np.maximum(m * m // 2, 1),
        "kemeny": 2.0 * disc / pairs,
    }


def ndcg_batch(rankings: np.ndarray, gains: np.ndarray, ideal_dcg: np.ndarray, k: int = 10) -> np.ndarray:
    """trec_eval's NDCG@k (gain = label, discount log2(rank + 1)) for (k_envs, n) rankings over per-item
    ``gains`` (k_envs, n) and each task's ideal DCG; 0 where the ideal is 0."""
    top = rankings[:, :k]
    dcg = (np.take_along_axis(gains, top, axis=1) / np.log2(np.arange(2, top.shape[1] + 2))).sum(axis=1)
    return np.where(ideal_dcg > 0, dcg / np.where(ideal_dcg > 0, ideal_dcg, 1.0), 0.0)


def ideal_dcg(labels: Sequence[float], k: int = 10) -> float:
    best = np.sort(np.asarray(labels, dtype=np.float64))[::-1][:k]
    return float((best / np.log2(np.arange(2, len(best) + 2))).sum())
