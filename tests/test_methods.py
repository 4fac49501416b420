import time

import gymnasium as gym
import numpy as np
import pytest

import agents
import agents.methods
import rsd_env
from agents.methods import MethodResult, RankingMethod, make_method, rank_tasks, summarize
from rsd_env.metrics import kendall_tau

SIM = {**rsd_env.SIM_CONFIG, "split": "test", "data": {"count": 12}}


def _env(**overrides):
    return gym.make("RSDRankSim-v0", config={**SIM, **overrides}).unwrapped


def _ids(env, k=6):
    return [t.task_id for t in env.tasks[:k]]


def test_every_method_returns_a_valid_ranking_with_its_costs():
    env = _env(budget=2)
    for name in agents.methods.METHODS:
        method = make_method(name)
        assert isinstance(method, RankingMethod)
        for tid in _ids(env, 3):
            start = time.perf_counter()
            r = method.rank(env, tid)
            outer_ms = 1000.0 * (time.perf_counter() - start)
            assert isinstance(r, MethodResult) and r.task_id == tid
            assert sorted(r.ranking.tolist()) == list(range(20))
            task = next(t for t in env.tasks if t.task_id == tid)
            assert r.docids == [task.candidates[j].docid for j in r.ranking]
            assert 0 < r.wall_ms <= outer_ms  # milliseconds of this ranking, inside the call
            # the simulated LLM counts N = 20 tokens per call: AR one decode call, the others a prefill + rounds
            assert r.tokens == 20 * (1 if name == "ar" else 1 + r.info["rounds"])
            assert {"kendall_tau", "spearman_rho", "footrule", "kemeny", "ndcg@10"} <= set(r.info)


def test_make_method_cold_option_reaches_every_kind_of_method():
    """Cold (drop the verifier's caches per ranking) is the default; agreement-only callers ask for warm."""
    for spec in ("sd", "heuristic", "shipped"):
        assert make_method(spec).cold is True
        assert make_method(spec, cold=False).cold is False


def test_cost_accounting_matches_each_method():
    env = _env(budget=2)
    tid = _ids(env, 1)[0]
    task = env.tasks[0]
    std = make_method("std").rank(env, tid)
    assert std.llm_passes == 1 and std.info["kendall_tau"] == kendall_tau(
        env.verifier.single_token_ranking(task), env.target(task))
    assert np.array_equal(std.ranking, env.verifier.single_token_ranking(task))
    sd = make_method("sd").rank(env, tid)
    assert 2 <= sd.llm_passes <= 3 and sd.llm_passes == 1 + sd.info["rounds"]
    ar = make_method("ar").rank(env, tid)  # pays for its N decode steps although the env memoised the target
    assert ar.llm_passes == 20 and ar.info["kendall_tau"] == 1.0
    assert np.array_equal(ar.ranking, env.target(task))


def test_sd_with_budget_n_reproduces_the_target():
    env = _env(budget=20, max_budget=20)
    for tid in _ids(env):
        r = make_method("sd").rank(env, tid)
        assert r.info["kendall_tau"] == 1.0


def test_verified_positions_match_the_target_for_every_method():
    env = _env(budget=3)
    for name in ("sd", "heuristic", "stale-aware", "sd-decode", "random", "identity"):
        for tid in _ids(env, 4):
            r = make_method(name).rank(env, tid)
            target = r.info["target_ranking"]
            assert np.array_equal(r.ranking[:r.info["rounds"]], target[:r.info["rounds"]])


def test_decoders_use_the_commit_step_and_differ_from_sd_at_t1():
    env = _env(budget=1)
    ids = _ids(env, 12)
    sd = {r.task_id: r for r in rank_tasks(make_method("sd"), env, ids)}
    old_sd = rank_tasks(make_method("sd"), _env(budget=1, commit_step=False), ids)
    for r in old_sd:  # plain SD's commit keeps its proposal order: the classic SD output
        np.testing.assert_array_equal(r.ranking, sd[r.task_id].ranking)
    assert set(agents.methods.DECODERS) == {"heuristic", "stale-aware", "sd-decode"}
    for name in agents.methods.DECODERS:
        results = rank_tasks(make_method(name), env, ids)
        assert all(r.llm_passes == 2 and r.info["rounds"] == 1 for r in results)  # the commit step is free
        differ = [r.task_id for r in results if not np.array_equal(r.ranking, sd[r.task_id].ranking)]
        assert len(differ) >= 3, (name, differ)
        for r in results:  # the same verified prefix as SD: only the rest is decoded
            k = sd[r.task_id].info["rounds"]
            np.testing.assert_array_equal(r.ranking[:k], sd[r.task_id].ranking[:k])


def test_stale_aware_decoder_keeps_the_rejected_items_own_evidence():
    """Proposal [0, 1, 2, 3], LLM prefers 1 first: item 0 (rejected) keeps its slot-0 evidence."""
    from agents.methods import HeuristicMethod, StaleAwareMethod

    n = 4
    rows = np.log(np.array([
        [0.30, 0.40, 0.20, 0.10],   # position 0 given []: 1 wins, 0 is a close second
        [0.01, 0.60, 0.20, 0.19],   # position 1 given [0]: 0 looks used (stale for it)
        [0.01, 0.01, 0.30, 0.68],   # position 2 given [0, 1]
        [0.01, 0.01, 0.01, 0.97],
    ]))
    obs = {"first_token": np.zeros(n, np.float32), "round": np.array([1.0]),
           "verified": np.concatenate([rows[None], np.full((1, n, n), np.log(0.25))]).ravel(),
           "proposals": np.array([0, 1, 2, 3, -1, -1, -1, -1], dtype=np.float32),
           "locked": np.array([0, 1, 0, 0], np.float32), "committed": np.array([1, 0, 2, 3], np.float32),
           "valid": np.ones(n, np.float32)}
    np.testing.assert_array_equal(HeuristicMethod().decode(obs, n), [1, 2, 3, 0])  # 0 sinks to the bottom
    np.testing.assert_array_equal(StaleAwareMethod().decode(obs, n), [1, 0, 3, 2])


def test_same_seed_same_results_and_summary():
    env = _env(budget=2)
    a = summarize(rank_tasks(make_method("random", seed=1), env, _ids(env)))
    b = summarize(rank_tasks(make_method("random", seed=1), env, _ids(env)))
    c = summarize(rank_tasks(make_method("random", seed=2), env, _ids(env)))
    assert a["kendall_tau"] == b["kendall_tau"] != c["kendall_tau"]
    assert a["tasks"] == 6 and a["llm_passes"] <= 3


def test_bad_method_specs_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        make_method("beam")
    with pytest.raises(FileNotFoundError, match="no agent checkpoint"):
        make_method(f"agent:{tmp_path / 'missing.zip'}")
    with pytest.raises(KeyError, match="unknown task_id"):
        make_method("sd").rank(_env(), "nope")


def test_agent_checkpoints_rank_through_the_same_interface(tmp_path):
    env = gym.make("RSDRankSim-v0", config={**SIM, "split": "train", "budget": 2})
    model = agents.make("rpo", env, group_size=2, tasks_per_batch=2, seed=0,
                        policy_kwargs={"d_model": 16, "n_heads": 2})
    path = agents.save_agent(model, tmp_path / "rpo")
    method = make_method(f"agent:{path}")
    test_env = _env(budget=3)  # a different budget than in training: the policy is budget-agnostic
    r = method.rank(test_env, _ids(test_env, 1)[0])
    assert sorted(r.ranking.tolist()) == list(range(20)) and r.llm_passes >= 2


def test_adaptive_budget_stops_when_the_value_head_expects_no_gain():
    env = gym.make("RSDRankSim-v0", config={**SIM, "split": "train", "budget": 2})
    tiny = {"d_model": 16, "n_heads": 2}
    model = agents.make("rpo", env, group_size=2, tasks_per_batch=2, seed=0, policy_kwargs=tiny)
    test_env = _env(budget=2)
    tid = _ids(test_env, 1)[0]
    never = agents.methods.AgentMethod(model, min_gain=float("inf")).rank(test_env, tid)
    always = agents.methods.AgentMethod(model, min_gain=float("-inf")).rank(test_env, tid)
    assert never.llm_passes == 1 and never.info["rounds"] == 0  # the single-token ranking, no verification
    assert always.info["rounds"] >= 1
    ppo = agents.make("ppo", env, n_steps=8, batch_size=8, policy_kwargs=tiny)
    with pytest.raises(ValueError, match="expected_gain"):
        agents.methods.AgentMethod(ppo, min_gain=0.01)


def test_anytime_deadline_stops_before_new_rounds():
    env = _env(budget=3)
    tid = _ids(env, 1)[0]
    r = make_method("sd", deadline_ms=0.0).rank(env, tid)
    assert r.info["rounds"] == 0 and r.llm_passes == 1  # valid output: the single-token ranking
    assert make_method("sd", deadline_ms=1e9).rank(env, tid).info["rounds"] >= 1


def test_stop_rules_are_one_mechanism_for_deadline_value_head_and_llm_verdict():
    from agents.stopping import Deadline, LLMVerdict, ValueHead

    env = _env(budget=3)
    tid = _ids(env, 1)[0]
    sd = make_method("sd", deadline_ms=5.0)
    assert sd.deadline_ms == 5.0 and [type(r) for r in sd.stop_rules] == [Deadline]
    sd.deadline_ms = None
    assert sd.stop_rules == ()
    verdict = make_method("heuristic")
    verdict.stop_rules = (LLMVerdict(1e9),)  # never worth another round once the LLM has spoken
    assert verdict.rank(env, tid).info["rounds"] == 1
    head = make_method("heuristic")
    head.stop_rules = (ValueHead(lambda obs: 0.0, min_gain=0.5),)  # the value says nothing is left to gain
    assert head.rank(env, tid).info["rounds"] == 0
    with pytest.raises(ValueError, match="milliseconds"):
        Deadline(-1)
