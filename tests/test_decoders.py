import gymnasium as gym
import numpy as np
import pytest
import torch

import rsd_env
from agents.decoders import common_prefix_length, decode, decoded_ranks, read_observation, stale_aware_evidence
from agents.methods import HeuristicMethod, order_to_action
from agents.policy import obs_to_tensors
from rsd_env.data.sampling import synthetic_tasks


def _env(budget, n=8, count=12, task_n=None, **overrides):
    config = {**rsd_env.SIM_CONFIG, "data": {"count": count}, "budget": budget, "n": n, **overrides}
    if task_n is not None:  # tasks smaller than n: padded, masked items
        config["tasks"] = synthetic_tasks(count, task_n, "train", 0)
    return gym.make("RSDRankSim-v0", config=config).unwrapped


def _decoded(obs, decoder="heuristic"):
    return decode(read_observation(obs_to_tensors(obs)), decoder)[0].numpy()


@pytest.mark.parametrize("budget,task_n", [(1, None), (2, None), (3, None), (3, 6)])
def test_heuristic_decode_reproduces_the_heuristic_methods_proposals(budget, task_n):
    env = _env(budget, task_n=task_n)
    method, after_a_round = HeuristicMethod(), 0
    for task in env.tasks:
        obs, _ = env.reset(options={"task_id": task.task_id})
        for _ in range(budget):
            m = env.task.n
            expected = env.propose(method.act(obs, env))
            order = _decoded(obs)
            assert sorted(order[m:].tolist()) == list(range(m, env.n))  # padding last
            np.testing.assert_array_equal(env.propose(order_to_action(order[:m], env.n)), expected)
            after_a_round += int(obs["round"][0] > 0)
            obs, _, terminated, _, _ = env.step(order_to_action(order[:m], env.n))
            if terminated:
                break
    assert after_a_round > 0 or budget == 1  # the decode from verified rows was exercised


def test_decoders_keep_the_verified_prefix_and_return_permutations():
    env = _env(3, n=10)
    for task in env.tasks:
        obs, _ = env.reset(options={"task_id": task.task_id})
        for _ in range(3):
            for decoder in ("heuristic", "stale_aware"):
                order = _decoded(obs, decoder)
                assert sorted(order.tolist()) == list(range(env.n))
                prefix = env.committed_ranking()[: int(obs["locked"].sum())]
                np.testing.assert_array_equal(order[: len(prefix)], prefix)
            obs, _, terminated, _, _ = env.step(order_to_action(_decoded(obs), env.n))
            if terminated:
                break


def test_stale_aware_evidence_keeps_an_items_own_slot_after_it():
    # one round, 4 items: the proposal was [2, 0, 1, 3]; row p was conditioned on proposal[:p]
    rows = torch.log(torch.tensor([[0.1, 0.2, 0.6, 0.1],  # p0: 2 wins (it is in the proposal's slot 0)
                                   [0.35, 1e-6, 1e-6, 0.65],  # p1: the LLM prefers 3 over the proposed 0
                                   [0.1, 0.3, 1e-6, 0.6],  # p2..: conditioned on [2, 0]: 0 looks "said"
                                   [1e-6, 0.3, 1e-6, 0.7]]).clamp(min=1e-6))
    obs = {"first_token": torch.zeros(1, 4), "verified": rows.reshape(1, 16),
           "proposals": torch.tensor([[1.0, 2.0, 0.0, 3.0]]), "committed": torch.tensor([[2.0, 3.0, 0.0, 1.0]]),
           "locked": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "round": torch.tensor([[1.0]]),
           "valid": torch.ones(1, 4)}
    x = read_observation(obs)  # verified prefix [2, 3]: 3 was the correction, 0 the rejected item
    evidence = stale_aware_evidence(x)[0]
    assert torch.allclose(evidence[2:, 0], rows[1, 0].expand(2))  # 0 keeps its slot-1 log-prob (0.35)
    assert torch.allclose(evidence[:, 1], rows[:, 1])  # 1 was proposed at slot 2: rows 0..2 are its own
    assert decode(x, "heuristic")[0].tolist() == [2, 3, 1, 0]  # the rejected item sinks
    assert decode(x, "stale_aware")[0].tolist() == [2, 3, 0, 1]  # 0.35 at its own slot beats 0.3


def test_decoded_ranks_and_common_prefix():
    order = torch.tensor([[2, 0, 1, 3]])
    assert decoded_ranks(order).tolist() == [[1, 2, 0, 3]]
    assert common_prefix_length(torch.tensor([[2, 0, 3, 1], [1, 0, 2, 3]]), order).tolist() == [2, 0]


def test_unknown_decoder_is_a_clear_error():
    env = _env(1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown decoder"):
        decode(read_observation(obs_to_tensors(obs)), "best")
