import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import rsd_env
from agents.decoders import decode, read_observation
from agents.methods import AgentMethod, HeuristicMethod, evaluate
from agents.plackett_luce import sample_order
from agents.policy import obs_to_tensors
from agents.residual import ResidualRankingPolicy

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1}


def _env(budget=2, n=8, count=6, **overrides):
    config = {**rsd_env.SIM_CONFIG, "data": {"count": count}, "budget": budget, "n": n, **overrides}
    return gym.make("RSDRankSim-v0", config=config)


def _model(env, decoder="heuristic", **kwargs):
    kwargs = {"group_size": 3, "tasks_per_batch": 2, "seed": 0, **kwargs}
    return agents.make("rpo", env, policy="ResidualRankingPolicy", policy_kwargs={**TINY, "decoder": decoder},
                       **kwargs)


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_the_untrained_policy_is_the_heuristic_decoder(budget):
    env = _env(budget).unwrapped
    model = _model(env)
    assert isinstance(model.policy, ResidualRankingPolicy)
    ours = evaluate(AgentMethod(model), env)
    theirs = evaluate(HeuristicMethod(), env)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.ranking, b.ranking)
        assert a.info["kendall_tau"] == b.info["kendall_tau"]


def test_the_untrained_policy_is_the_stale_aware_decoder_at_every_state():
    env = _env(3).unwrapped
    model = _model(env, decoder="stale_aware")
    for task in env.tasks:
        obs, _ = env.reset(options={"task_id": task.task_id})
        for _ in range(3):
            batch = obs_to_tensors(obs)
            with torch.no_grad():
                greedy = sample_order(model.policy.score_items(batch), batch["valid"] > 0.5, greedy=True)
            np.testing.assert_array_equal(greedy[0].numpy(), decode(read_observation(batch), "stale_aware")[0])
            obs, _, terminated, _, _ = env.step(model.predict(obs, deterministic=True)[0])
            if terminated:
                break


def test_pl_sampling_around_the_decoder_mostly_keeps_neighbours():
    env = _env(2, n=20).unwrapped
    model = _model(env)
    obs, _ = env.reset(seed=0)
    batch = obs_to_tensors(obs)
    with torch.no_grad():
        scores = model.policy.score_items(batch)
    mask = (batch["valid"] > 0.5).expand(400, -1)
    greedy = sample_order(scores, mask[:1], greedy=True).expand(400, -1)
    uniform = torch.rand(400, 20, generator=torch.Generator().manual_seed(0))
    sampled = sample_order(scores.expand(400, -1) / 0.3, mask, uniform=uniform)
    displacement = (torch.argsort(sampled, 1) - torch.argsort(greedy, 1)).abs().float()
    assert 0.0 < displacement.mean() < 0.2  # explores, but close to the decoded order
    assert (displacement <= 1).float().mean() > 0.97  # and nearly always by one slot at most


def test_warm_start_then_rl_train_the_residual_and_reload(tmp_path):
    env = _env(2, count=6)
    model = _model(env, warm_start_timesteps=60, learning_rate=3e-3, advantage="value")
    head = model.policy.score_head.linear
    assert not head.weight.any()
    model.learn(120)
    assert head.weight.abs().sum() > 0  # the residual moved off zero
    path = agents.save_agent(model, tmp_path / "residual.zip")
    loaded = agents.load_agent(path, env=env)
    assert isinstance(loaded.policy, ResidualRankingPolicy) and loaded.policy.arch["decoder"] == "heuristic"
    obs, _ = env.reset(seed=3)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_bad_residual_settings_get_clear_errors():
    env = _env(1)
    with pytest.raises(ValueError, match="unknown decoder"):
        _model(env, decoder="oracle")
    with pytest.raises(ValueError, match="base_scale"):
        agents.make("rpo", env, policy="ResidualRankingPolicy", policy_kwargs={**TINY, "base_scale": 0.0})
