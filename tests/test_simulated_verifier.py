import numpy as np
import pytest

from rsd_env.data import load_tasks
from rsd_env.metrics import kendall_tau
from rsd_env.verifiers import SimulatedVerifier, Verifier, make_verifier


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("synthetic", "test", count=60)


def test_deterministic_per_task(tasks):
    a, b = SimulatedVerifier(seed=3), SimulatedVerifier(seed=3)
    t = tasks[0]
    np.testing.assert_array_equal(a.target_ranking(t), b.target_ranking(t))
    r = np.arange(t.n)
    np.testing.assert_array_equal(a.verify(t, r).logprobs, b.verify(t, r).logprobs)
    assert not np.array_equal(SimulatedVerifier(seed=4).first_token_scores(t), a.first_token_scores(t))


def test_rows_are_distributions_that_depend_on_the_prefix(tasks):
    v, t = SimulatedVerifier(), tasks[1]
    rows = v.verify(t, np.arange(t.n)).logprobs
    np.testing.assert_allclose(np.exp(rows).sum(axis=1), 1.0)
    other = v.verify(t, np.arange(t.n)[::-1]).logprobs
    np.testing.assert_allclose(rows[0], other[0])  # same empty prefix
    assert not np.allclose(rows[5], other[5])  # different prefixes


def test_single_token_is_good_at_the_head_and_poor_at_the_tail(tasks):
    v = SimulatedVerifier("legacy")  # the hand-set profile with a strong prefix effect
    head, tail, taus = [], [], []
    for t in tasks:
        target, std = v.target_ranking(t), v.single_token_ranking(t)
        head.append(np.mean(std[:5] == target[:5]))
        tail.append(np.mean(std[-10:] == target[-10:]))
        taus.append(kendall_tau(std, target))
    assert np.mean(head) > 0.7 > 0.4 > np.mean(tail)
    assert 0.5 < np.mean(taus) < 0.97  # AR differs from single-token, but they are related


def test_first_slot_noise_blurs_the_single_token_scores_only(tasks):
    plain, blurred = SimulatedVerifier(), SimulatedVerifier(first_slot_noise=3.0)
    # at its default the term is left out of the fingerprint: targets cached before it existed stay valid
    assert SimulatedVerifier(first_slot_noise=0).fingerprint() == plain.fingerprint()
    assert "first_slot_noise=3.0" in blurred.fingerprint()
    t = tasks[2]
    a, b = plain.verify(t, np.arange(t.n)).logprobs, blurred.verify(t, np.arange(t.n)).logprobs
    assert not np.allclose(a[0], b[0])
    np.testing.assert_allclose(a[1:], b[1:])  # the slots after the first see only the prefix, as before
    np.testing.assert_allclose(b[0], blurred.first_token_scores(t))
    taus = {name: np.mean([kendall_tau(v.single_token_ranking(x), v.target_ranking(x)) for x in tasks])
            for name, v in (("plain", plain), ("blurred", blurred))}
    assert taus["blurred"] < taus["plain"] - 0.2
    for x in tasks[:5]:  # the target is still a fixed point of verification
        assert blurred.verify(x, blurred.target_ranking(x)).accepted == x.n


def test_fast_target_equals_the_generic_verify_based_decoder(tasks):
    v = SimulatedVerifier()
    for t in tasks[:10]:
        np.testing.assert_array_equal(v.target_ranking(t), Verifier.target_ranking(v, t))


def test_verifying_the_target_accepts_everything(tasks):
    v = SimulatedVerifier()
    for t in tasks[:10]:
        res = v.verify(t, v.target_ranking(t))
        assert res.accepted == t.n and res.correction is None


def test_bad_rankings_are_named(tasks):
    v, t = SimulatedVerifier(), tasks[0]
    with pytest.raises(ValueError, match="duplicate"):
        v.verify(t, [0] * t.n)
    with pytest.raises(ValueError, match="unknown items"):
        v.verify(t, list(range(1, t.n + 1)))
    with pytest.raises(ValueError, match="must list all"):
        v.verify(t, [0, 1])


def test_accounting_counts_passes(tasks):
    v, t = SimulatedVerifier(), tasks[0]
    before = v.stats.snapshot()
    v.first_token_scores(t)
    v.verify(t, np.arange(t.n))
    used = v.stats.since(before)
    assert used.forward_passes == 2 and used.calls == {"prefill": 1, "verify": 1}
    before = v.stats.snapshot()
    v.decode_target(t)
    v.verify_batch([(t, np.arange(t.n)), (t, np.arange(t.n)[::-1])])
    assert v.stats.since(before).forward_passes == t.n + 2  # AR = prefill + N - 1 steps; a batch of k = k


def test_make_verifier_specs():
    assert isinstance(make_verifier("simulated"), SimulatedVerifier)
    assert make_verifier({"kind": "simulated", "seed": 5}).params["seed"] == 5
    with pytest.raises(ValueError, match="unknown verifier"):
        make_verifier("gpt-17")
    with pytest.raises(ValueError, match="'kind'"):
        make_verifier({"seed": 1})


def test_batched_rows_and_acceptance_equal_one_by_one(tasks):
    from rsd_env.data import load_tasks
    from rsd_env.verifiers.base import greedy_acceptance

    mixed = tasks[:6] + load_tasks("synthetic", "train", n=7, count=3)  # two task sizes in one batch
    rng = np.random.default_rng(0)
    requests = [(t, rng.permutation(t.n)) for t in mixed]
    requests.append((mixed[0], SimulatedVerifier().target_ranking(mixed[0])))  # one accepts everything
    same_size = requests[:6] + requests[-1:]  # acceptance of all of them in one call too
    single, batched = SimulatedVerifier(), SimulatedVerifier()
    for batch in (requests, same_size):
        for (task, ranking), v in zip(batch, batched.verify_batch(batch)):
            one = single.verify(task, ranking)
            np.testing.assert_array_equal(v.logprobs, one.logprobs)
            assert (v.accepted, v.correction) == (one.accepted, one.correction) == \
                greedy_acceptance(ranking, v.logprobs)
    assert batched.stats.forward_passes == single.stats.forward_passes == len(requests) + len(same_size)
    assert batched.stats.calls["verify"] == 3  # one numpy call per task size and batch
    assert batched.verify_batch(same_size)[-1].accepted == mixed[0].n


def test_clear_cache_is_on_every_verifier_and_a_no_op_by_default(tasks):
    """Callers forget a verifier's caches without probing for the method; one that keeps none is unchanged."""
    v, t = SimulatedVerifier(), tasks[2]
    assert SimulatedVerifier.clear_cache is Verifier.clear_cache  # the base class's default
    rows = v.verify(t, np.arange(t.n)).logprobs
    before = v.stats.snapshot()
    for options in ({}, {"keep_prompts": True}, {"keep_instruction": True}):
        assert v.clear_cache(**options) is None
    assert v.stats.since(before).forward_passes == 0
    np.testing.assert_array_equal(v.verify(t, np.arange(t.n)).logprobs, rows)


def test_prefix_noise_blurs_rows_whose_prefix_strays_from_the_targets_own(tasks):
    plain, noisy = SimulatedVerifier(), SimulatedVerifier(prefix_noise=2.0)
    assert SimulatedVerifier(prefix_noise=0).fingerprint() == plain.fingerprint()
    assert "prefix_noise=2.0" in noisy.fingerprint()
    t = tasks[3]
    # the target's own ranking without the term holds its first i at every position: no noise anywhere
    in_order = plain.target_ranking(t)
    np.testing.assert_allclose(noisy.verify(t, in_order).logprobs, plain.verify(t, in_order).logprobs)
    # its reverse holds none of them at the head: the first row (no prefix) is unchanged, the others blur
    reverse = in_order[::-1].copy()
    a, b = plain.verify(t, reverse).logprobs, noisy.verify(t, reverse).logprobs
    np.testing.assert_allclose(a[0], b[0])
    assert np.abs(a[1:] - b[1:]).mean(axis=1).min() > 0.05
    np.testing.assert_array_equal(b, SimulatedVerifier(prefix_noise=2.0).verify(t, reverse).logprobs)
    # a vector env's batched call gives each task the rows a single call does
    batch = noisy.verify_batch([(t, reverse), (tasks[4], np.arange(tasks[4].n))])
    np.testing.assert_allclose(batch[0].logprobs, b)
    np.testing.assert_allclose(batch[1].logprobs, noisy.verify(tasks[4], np.arange(tasks[4].n)).logprobs)
