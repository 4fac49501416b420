import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rsd_env import metrics


@st.composite
def two_perms(draw):
    n = draw(st.integers(2, 12))
    a = draw(st.permutations(list(range(n))))
    b = draw(st.permutations(list(range(n))))
    return np.array(a), np.array(b)


def test_identical_and_reversed():
    a = np.arange(6)
    m = metrics.agreement_metrics(a, a)
    assert m == {"kendall_tau": 1.0, "spearman_rho": 1.0, "footrule": 0.0, "kemeny": 0.0}
    r = metrics.agreement_metrics(a, a[::-1])
    assert r["kendall_tau"] == -1.0 and r["spearman_rho"] == pytest.approx(-1.0)
    assert r["footrule"] == 1.0 and r["kemeny"] == 1.0


def test_against_brute_force_definitions():
    a, b = [2, 0, 3, 1, 4], [0, 1, 2, 3, 4]
    pa = {x: i for i, x in enumerate(a)}
    pb = {x: i for i, x in enumerate(b)}
    disc = sum((pa[i] - pa[j]) * (pb[i] - pb[j]) < 0 for i, j in itertools.combinations(range(5), 2))
    assert metrics.kendall_tau(a, b) == pytest.approx(1 - 2 * disc / 10)
    d2 = sum((pa[x] - pb[x]) ** 2 for x in range(5))
    assert metrics.spearman_rho(a, b) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert metrics.footrule_distance(a, b) == pytest.approx(sum(abs(pa[x] - pb[x]) for x in range(5)) / 12)


@given(two_perms())
def test_ranges_and_relations(pair):
    a, b = pair
    m = metrics.agreement_metrics(a, b)
    assert -1 <= m["kendall_tau"] <= 1 and -1 <= m["spearman_rho"] <= 1 + 1e-12
    assert 0 <= m["footrule"] <= 1 and 0 <= m["kemeny"] <= 1
    assert m["kemeny"] == pytest.approx((1 - m["kendall_tau"]) / 2)
    assert metrics.agreement(a, b) == pytest.approx((1 + m["spearman_rho"]) / 2)
    assert metrics.kendall_tau(a, b) == pytest.approx(metrics.kendall_tau(b, a))


def test_different_item_sets_rejected():
    with pytest.raises(ValueError, match="same items"):
        metrics.kendall_tau([0, 1, 2], [0, 1, 3])


def test_ndcg_matches_trec_eval_on_bundled_bm25():
    from rsd_env.data.trec import load_bundled

    queries, qrels = load_bundled("dl19")
    runs = {q.qid: [h.docid for h in q.hits] for q in queries}
    assert np.mean(list(metrics.ndcg_at_k(runs, qrels, 10).values())) == pytest.approx(0.5058, abs=1e-4)
    with pytest.raises(ValueError, match="no qrels"):
        metrics.ndcg_at_k({"nope": ["a"]}, qrels)
