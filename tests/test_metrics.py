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


@given(st.lists(two_perms(), min_size=1, max_size=4))
def test_batched_measures_equal_the_one_by_one_definitions(pairs):
    n = max(len(a) for a, _ in pairs)
    pad = lambda r: np.concatenate([r, np.arange(len(r), n)])  # noqa: E731  padding items last, as in the env
    pa = metrics.positions_batch(np.stack([pad(a) for a, _ in pairs]))
    pb = metrics.positions_batch(np.stack([pad(b) for _, b in pairs]))
    m = np.array([len(a) for a, _ in pairs])
    batch = metrics.agreement_metrics_batch(pa, pb, m)
    for i, (a, b) in enumerate(pairs):
        for key, value in metrics.agreement_metrics(a, b).items():
            assert batch[key][i] == pytest.approx(value, abs=1e-12)
        assert metrics.agreement_batch(pa, pb, m)[i] == pytest.approx(metrics.agreement(a, b), abs=1e-12)
        kendall = (metrics.kendall_tau(a, b) + 1) / 2
        assert metrics.agreement_batch(pa, pb, m, "kendall")[i] == pytest.approx(kendall, abs=1e-12)


def test_batched_ndcg_equals_pytrec_eval():
    from rsd_env.data import load_tasks

    rng = np.random.default_rng(0)
    tasks = load_tasks("dl19", "all", 20)[:20] + load_tasks("dl19", "all", 7)[:5]
    for task in tasks:
        labels = task.relevance()
        gains = np.array([[labels.get(d, 0) for d in task.docids]], dtype=float)
        ranking = rng.permutation(task.n)
        want = metrics.ndcg_at_k({task.task_id: [task.docids[j] for j in ranking]}, {task.task_id: labels})
        got = metrics.ndcg_batch(ranking[None], gains, np.array([metrics.ideal_dcg(list(labels.values()))]))
        assert got[0] == pytest.approx(want[task.task_id], abs=1e-12)
