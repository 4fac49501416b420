import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import rsd_env
from agents.policy import ItemTransformerPolicy, RankingPolicy, item_scores, obs_to_tensors

SIM = {**rsd_env.SIM_CONFIG, "data": {"count": 16}}


def _obs_after_one_round(budget=2, n=8):
    env = gym.make("RSDRankSim-v0", config={**SIM, "budget": budget, "n": n})
    obs, _ = env.reset(seed=3)
    obs, *_ = env.step(env.action_space.sample())
    return env, obs


def _permute(obs, perm, n, budget):
    """Relabel items: new item k is old item perm[k]; positions stay."""
    out = dict(obs)
    for key in ("first_token", "committed", "locked", "valid"):
        out[key] = obs[key][perm]
    out["verified"] = obs["verified"].reshape(-1, n, n)[:, :, perm].ravel()
    out["proposals"] = obs["proposals"].reshape(-1, n)[:, perm].ravel()
    return out


@pytest.mark.parametrize("policy_cls", [RankingPolicy, ItemTransformerPolicy])
def test_item_scores_are_permutation_equivariant(policy_cls):
    torch.manual_seed(0)
    env, obs = _obs_after_one_round()
    policy = policy_cls(env.observation_space, env.action_space, lambda _: 1e-3, d_model=16, n_heads=2)
    perm = np.random.default_rng(0).permutation(8)
    scores = item_scores(policy, obs)
    permuted = item_scores(policy, _permute(obs, perm, 8, 2))
    np.testing.assert_allclose(permuted, scores[perm], atol=1e-5)


def test_one_network_serves_any_budget():
    env3 = gym.make("RSDRankSim-v0", config={**SIM, "budget": 3, "n": 8, "max_budget": 3})
    _, obs2 = _obs_after_one_round(budget=2)  # max_budget 5: a different round axis
    policy = RankingPolicy(env3.observation_space, env3.action_space, lambda _: 1e-3, d_model=16, n_heads=2)
    assert item_scores(policy, obs2).shape == (8,)


def test_policy_reads_the_round_mask_budget_and_commit_flag():
    torch.manual_seed(0)
    env, obs = _obs_after_one_round(budget=2)
    policy = RankingPolicy(env.observation_space, env.action_space, lambda _: 1e-3, d_model=16, n_heads=2)
    scores = item_scores(policy, obs)
    junk = dict(obs)  # unverified rounds (round_mask 0) are ignored whatever they hold
    verified = obs["verified"].reshape(5, 8, 8).copy()
    verified[1:] = np.random.default_rng(0).uniform(-30, 0, verified[1:].shape)
    junk["verified"] = verified.ravel()
    np.testing.assert_allclose(item_scores(policy, junk), scores, atol=1e-5)
    for key, value in (("commit", 1.0), ("budget", 4.0)):
        changed = {**obs, key: np.array([value], dtype=np.float32)}
        assert not np.allclose(item_scores(policy, changed), scores, atol=1e-5), key


def test_policy_rejects_a_different_number_of_items():
    env, _ = _obs_after_one_round(n=8)
    _, other = _obs_after_one_round(n=6)
    policy = RankingPolicy(env.observation_space, env.action_space, lambda _: 1e-3, d_model=16, n_heads=2)
    with pytest.raises(ValueError, match="N=8"):
        policy.score_items(obs_to_tensors(other))


def test_ppo_and_a2c_update_our_policy():
    """Both SB3 algorithms build and update our item policy (no learning claimed at 32 steps)."""
    env = gym.make("RSDRankSim-v0", config={**SIM, "n": 8})
    for name in ("ppo", "a2c"):
        model = agents.make(name, env, n_steps=16, seed=0, policy_kwargs={"d_model": 16, "n_heads": 2},
                            **({"batch_size": 16} if name == "ppo" else {}))
        before = [p.detach().clone() for p in model.policy.parameters()]
        model.learn(32)
        assert isinstance(model.policy, ItemTransformerPolicy) and model.num_timesteps == 32
        assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters())), name
        action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
        assert action.shape == (8,) and np.all(np.abs(action) <= 1.0)


def test_sb3_ppo_updates_our_policy_on_100_items():
    env = gym.make("RSDRankSim-v0", config={**SIM, "n": 100, "data": {"count": 4}})
    model = agents.make("ppo", env, n_steps=8, batch_size=8, seed=0, policy_kwargs={"d_model": 16, "n_heads": 2})
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(8)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert action.shape == (100,) and np.all(np.abs(action) <= 1.0)


def test_make_rejects_unknown_algorithms():
    env = gym.make("RSDRankSim-v0", config=SIM)
    with pytest.raises(ValueError, match="unknown algorithm"):
        agents.make("dqnx", env)
    with pytest.raises(ValueError, match="cannot import"):
        agents.make("no_such_module:Algo", env)
    model = agents.make("sb3_contrib:TRPO", env, n_steps=16, batch_size=16, policy_kwargs={"d_model": 16, "n_heads": 2})
    assert isinstance(model.policy, ItemTransformerPolicy)
