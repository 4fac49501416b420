import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import rsd_env
from agents.plackett_luce import sample_order
from agents.rpo import RPO
from agents.vec_env import RSDVecEnv

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1}


def _env(count=8, budget=2, n=8, **overrides):
    config = {**rsd_env.SIM_CONFIG, "data": {"count": count}, "budget": budget, "n": n, **overrides}
    return gym.make("RSDRankSim-v0", config=config)


def _model(env=None, **kwargs):
    kwargs = {"group_size": 3, "tasks_per_batch": 4, "seed": 0, "policy_kwargs": TINY, **kwargs}
    return agents.make("rpo", env or _env(), **kwargs)


def test_collect_runs_groups_with_one_greedy_reference_per_task():
    model = _model()
    rollout = model.collect()
    venv = model.group_env()
    width = model.group_size + 1
    ids = [task.task_id for task in venv.get_attr("task")]
    for g in range(model.tasks_per_batch):
        assert len(set(ids[g * width:(g + 1) * width])) == 1  # one task per group
    greedy_rows = np.flatnonzero(rollout.env_index % width == 0)
    with torch.no_grad():
        scores = model.policy.score_items({k: v[greedy_rows] for k, v in rollout.obs.items()})
    expected = sample_order(scores, rollout.masks[greedy_rows], greedy=True)
    assert torch.equal(rollout.orders[greedy_rows], expected)  # the reference rollout is the argmax ranking
    assert model.num_timesteps == len(rollout.env_index)


def test_groups_share_a_budget_drawn_from_the_range_and_end_with_the_commit_step():
    model = _model(_env(budget=[1, 3]), tasks_per_batch=6)
    rollout = model.collect()
    width = model.group_size + 1
    budgets = np.array(model.group_env().get_attr("budget")).reshape(-1, width)
    assert (budgets == budgets[:, :1]).all() and len(set(budgets[:, 0])) > 1  # one T per group, T varies
    lengths = rollout.lengths.reshape(-1, width)
    rounds = rollout.obs["round"][:, 0].numpy()
    commits = rollout.obs["commit"][:, 0].numpy() > 0
    assert (lengths <= budgets + 1).all() and commits.sum() >= 1  # T verifications + the commit step
    assert (rounds[commits] == budgets.ravel()[rollout.env_index[commits]]).all()


def test_advantage_is_return_minus_the_greedy_rollouts_return():
    model = _model()
    rollout = model.collect()
    rollout.final = np.array([0.5, 0.7, 0.4, 0.5, 0.9, 0.8, 1.0, 0.9] + [0.6] * 8)
    adv = model.advantages(rollout)
    np.testing.assert_allclose(adv[:8], [0.0, 0.2, -0.1, 0.0, 0.0, -0.1, 0.1, 0.0], atol=1e-12)
    model.advantage = "group_mean"
    np.testing.assert_allclose(model.advantages(rollout)[1:4], [0.1666667, -0.1333333, -0.0333333], atol=1e-6)


def _sampled_return(model, repeats=3):
    """Mean final agreement of the sampled (non-reference) trajectories: the objective RPO maximises."""
    width = model.group_size + 1
    return float(np.mean([model.collect().final.reshape(-1, width)[:, 1:].mean() for _ in range(repeats)]))


@pytest.mark.parametrize("advantage", ["greedy", "value"])
def test_short_learn_improves_the_return_on_a_tiny_task_set(advantage):
    env = _env(count=4, budget=1)
    model = _model(env, learning_rate=3e-3, group_size=7, tasks_per_batch=4, n_epochs=4, batch_size=64,
                   advantage=advantage)
    before = _sampled_return(model)
    model.learn(480)
    after = _sampled_return(model)
    assert after > before + 0.05, (before, after)


@pytest.mark.parametrize("loss, key, drop", [("plackett_luce", "nll", 1.0), ("pairwise", "pairwise", 0.1)])
def test_warm_start_fits_the_target_order(loss, key, drop):
    env = _env(count=4)
    model = _model(env, learning_rate=3e-3, warm_start_timesteps=10**6, warm_start_loss=loss)
    first = model.train_warm_start(model.collect())[f"train/warm_start_{key}"]
    for _ in range(15):
        last = model.train_warm_start(model.collect())[f"train/warm_start_{key}"]
    assert last < first - drop, (first, last)


def test_unknown_warm_start_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"warm_start_loss must be one of \['pairwise', 'plackett_luce'\]"):
        _model(warm_start_loss="listnet")


def _greedy_tau(model, reference, rollout):
    """Mean Kendall tau between ``model``'s and ``reference``'s argmax orders on the rollout's states."""
    from scipy.stats import kendalltau

    with torch.no_grad():
        mine = model.policy.score_items(rollout.obs)
        theirs = reference.score_items(rollout.obs)
    taus = [kendalltau(a[m].numpy(), b[m].numpy())[0] for a, b, m in zip(mine, theirs, rollout.masks) if m.sum() > 2]
    return float(np.mean(taus))


def test_warm_start_anchor_keeps_a_fine_tuned_policy_near_its_initial_ranking():
    """Fine-tuning with an anchor stays closer to the initial policy's ranking than without, and the anchor is
    that initial policy, frozen."""
    import copy

    start = _model(_env(count=4), seed=1)
    reference = copy.deepcopy(start.policy).eval()
    runs = {}
    for share in (0.0, 0.8):
        model = _model(_env(count=4), learning_rate=3e-3, warm_start_timesteps=10**6, warm_start_anchor=share)
        model.policy.load_state_dict(reference.state_dict())
        for _ in range(12):
            stats = model.train_warm_start(model.collect())
        runs[share] = (model, stats)
    check = runs[0.0][0].collect()
    free, anchored = runs[0.0][0], runs[0.8][0]
    assert "train/warm_start_anchor" in runs[0.8][1] and "train/warm_start_anchor" not in runs[0.0][1]
    near, far = _greedy_tau(anchored, reference, check), _greedy_tau(free, reference, check)
    assert near > far + 0.05, (near, far)
    for a, b in zip(anchored.anchor_policy.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)  # the anchor is the policy as the warm start found it, frozen


def test_warm_start_anchor_is_kept_in_checkpoints(tmp_path):
    model = _model(_env(), learning_rate=3e-3, warm_start_timesteps=10**6, warm_start_anchor=0.5)
    model.learn(64)
    model.save(tmp_path / "mid")
    loaded = RPO.load(tmp_path / "mid", env=_env())
    assert loaded.warm_start_anchor == 0.5 and loaded._anchor_frozen
    for a, b in zip(model.anchor_policy.parameters(), loaded.anchor_policy.parameters()):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(model.anchor_policy.parameters(), model.policy.parameters()))


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_warm_start_anchor_outside_0_1_is_refused(share):
    with pytest.raises(ValueError, match=r"warm_start_anchor must be in \[0, 1\)"):
        _model(warm_start_anchor=share)


def test_save_load_gives_identical_predictions(tmp_path):
    env = _env()
    model = _model(env)
    model.learn(64)
    path = agents.save_agent(model, tmp_path / "rpo.zip")
    loaded = agents.load_agent(path, env=env)
    assert isinstance(loaded, RPO) and loaded.num_timesteps == model.num_timesteps
    obs = RSDVecEnv.from_env(env, 4).reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_resume_continues_the_same_run(tmp_path):
    """learn(a); save; load; learn(b) == learn(a); learn(b): weights, optimizer and sampling stream resume."""
    straight = _model(_env())
    straight.learn(96)
    straight.save(tmp_path / "mid")
    straight.learn(96, reset_num_timesteps=False)
    resumed = RPO.load(tmp_path / "mid", env=_env())
    resumed.learn(96, reset_num_timesteps=False)
    assert resumed.num_timesteps == straight.num_timesteps
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b)


def test_bad_settings_get_clear_errors():
    with pytest.raises(ValueError, match="advantage must be one of"):
        _model(advantage="mean")
    with pytest.raises(ValueError, match="group_size"):
        _model(group_size=0)
    with pytest.raises(ValueError, match="temperature"):
        _model(temperature=0.0)


def test_per_state_advantages_subtract_a_baseline_of_each_state():
    model = _model(_env(count=8, budget=3))
    rollout = model.collect()
    width = model.group_size + 1
    gains = rollout.gains.numpy()
    model.advantage = "greedy_step"
    adv = model.state_advantages(rollout)
    for s, (i, t) in enumerate(zip(rollout.env_index, rollout.steps)):
        ref = [g for g, j, u in zip(gains, rollout.env_index, rollout.steps) if j == i - i % width and u == t]
        expected = 0.0 if i % width == 0 else gains[s] - (ref[0] if ref else 0.0)
        assert adv[s] == pytest.approx(expected, abs=1e-6)
    first = rollout.steps == 0  # at the first step both start from the same state: the paper's advantage
    model.advantage = "greedy"
    episode = model.advantages(rollout)[rollout.env_index]
    np.testing.assert_allclose(adv[first], episode[first], atol=1e-5)
    model.advantage = "value"
    with torch.no_grad():
        value = model.policy.expected_gain(rollout.obs).numpy()
    sampled = rollout.env_index % width != 0
    np.testing.assert_allclose(model.state_advantages(rollout)[sampled], (gains - value)[sampled], atol=1e-5)
    assert not model.state_advantages(rollout)[~sampled].any()
