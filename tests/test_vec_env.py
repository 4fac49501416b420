import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import rsd_env
from agents.vec_env import RSDVecEnv

SIM = {**rsd_env.SIM_CONFIG, "data": {"count": 16}, "budget": 2}


def _make():
    return gym.make("RSDRankSim-v0", config=SIM)


def _rollout(venv, steps=7, seed=5):
    venv.seed(seed)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    trace = [obs]
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (venv.num_envs, 20)).astype(np.float32)
        obs, rewards, dones, infos = venv.step(actions)
        trace.append((obs, rewards, dones, [i.get("terminal_observation") for i in infos],
                      [i.get("episode", {}).get("r") for i in infos]))
    return trace


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif a is None or isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-9) if a is not None else b is None
    else:
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_batched_vec_env_gives_the_same_episodes_as_dummy_vec_env():
    batched = _rollout(RSDVecEnv.from_env(_make(), 3))
    plain = _rollout(DummyVecEnv([_make for _ in range(3)]))
    for b, p in zip(batched[1:], plain[1:]):
        _assert_same(b[:4], p[:4])
    _assert_same(batched[0], plain[0])
    assert any(any(d) for _, _, d, _, _ in batched[1:])  # episodes ended and auto-reset


def test_one_verify_batch_call_per_vector_step():
    venv = RSDVecEnv.from_env(_make(), 4)
    verifier = venv.base_env.verifier
    calls = []
    original = verifier.verify_batch
    verifier.verify_batch = lambda requests: calls.append(len(requests)) or original(requests)
    venv.seed(0)
    venv.reset()
    expected = []
    for _ in range(4):
        verifying = int((~venv.vector_env.in_commit_step).sum())  # envs in their commit step call nothing
        if verifying:
            expected.append(verifying)
        venv.step(np.zeros((4, 20), dtype=np.float32))
    assert calls == expected  # one call per vector step that verifies anything, with every such env in it
    assert len(calls) == 3  # verify, verify, commit (no call), verify (after auto-reset)


def test_envs_in_their_commit_step_get_no_verifier_call():
    venv = RSDVecEnv.from_env(_make(), 4)
    verifier = venv.base_env.verifier
    requests = []
    original = verifier.verify_batch
    verifier.verify_batch = lambda reqs: requests.append([t.task_id for t, _ in reqs]) or original(reqs)
    ids = [t.task_id for t in venv.base_env.tasks[:4]]
    venv.reset_to(ids, budgets=[1, 2, 1, 2])
    passes = verifier.stats.forward_passes
    steps = [venv.step_some(range(4), np.zeros((4, 20), dtype=np.float32)),
             venv.step_some(range(4), np.zeros((4, 20), dtype=np.float32)),
             venv.step_some([1, 3], np.zeros((2, 20), dtype=np.float32))]
    assert requests == [ids, [ids[1], ids[3]]]  # step 2: envs 0 and 2 commit; step 3: 1 and 3 commit
    assert verifier.stats.forward_passes - passes == 6
    assert [r[2] for r in steps[1]] == [True, False, True, False] and all(r[2] for r in steps[2])
    assert all(r[4]["committed"] for r in steps[2]) and steps[1][0][4]["llm_passes"] == 2


def test_episode_infos_follow_sb3_semantics():
    venv = RSDVecEnv([_make, _make])
    venv.seed(0)
    venv.reset()
    total = np.zeros(2)
    for _ in range(3):  # T = 2 verifications and the commit step
        _, rewards, dones, infos = venv.step(np.zeros((2, 20), dtype=np.float32))
        total += rewards
    assert dones.all()
    for i, info in enumerate(infos):
        assert info["episode"]["r"] == pytest.approx(total[i], abs=1e-6) and info["episode"]["l"] == 3
        assert info["terminal_observation"]["round"][0] == 2


def test_subproc_vec_env_runs_our_env_like_dummy_vec_env():
    actions = np.random.default_rng(1).uniform(-1, 1, (3, 2, 20)).astype(np.float32)
    runs = {}
    for cls, kwargs in ((SubprocVecEnv, {"start_method": "fork"}), (DummyVecEnv, {})):
        venv = cls([_make, _make], **kwargs)
        try:
            venv.seed(0)
            obs = [venv.reset()]
            steps = [venv.step(a) for a in actions]
        finally:
            venv.close()
        runs[cls.__name__] = (obs + [s[0] for s in steps], np.array([s[1] for s in steps]),
                              np.array([s[2] for s in steps]), [s[3] for s in steps])
    (obs_a, rew_a, done_a, info_a), (obs_b, rew_b, done_b, info_b) = runs.values()
    assert rew_a.shape == (3, 2) and np.abs(rew_a).sum() > 0
    np.testing.assert_allclose(rew_a, rew_b, atol=1e-12)
    np.testing.assert_array_equal(done_a, done_b)
    assert done_a[-1].all() and not done_a[:-1].any()  # budget 2: two verifications, then the commit step
    for a, b in zip(obs_a, obs_b):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for a, b in zip(info_a[-1], info_b[-1]):  # SB3's same-step reset keeps the episode's last observation
        assert a["terminal_observation"]["round"][0] == 2 and a["kendall_tau"] == b["kendall_tau"]
        np.testing.assert_array_equal(a["terminal_observation"]["committed"], b["terminal_observation"]["committed"])


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="at least one env"):
        RSDVecEnv([])
    with pytest.raises(TypeError, match="DummyVecEnv"):
        RSDVecEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match="same n and max_budget"):
        RSDVecEnv([_make, lambda: gym.make("RSDRankSim-v0", config={**SIM, "max_budget": 3})])
    RSDVecEnv([_make, lambda: gym.make("RSDRankSim-v0", config={**SIM, "budget": 3})])  # budgets may differ
    venv = RSDVecEnv.from_env(_make(), 2)
    with pytest.raises(ValueError, match="one task id per env"):
        venv.reset_to(["x"])
    with pytest.raises(ValueError, match="one budget per env"):
        venv.reset_to([t.task_id for t in venv.base_env.tasks[:2]], budgets=[1])


def test_ppo_trains_through_the_adapter():
    import torch
    from stable_baselines3 import PPO

    venv = RSDVecEnv.from_env(_make(), 4)
    model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(64)
    assert model.num_timesteps >= 64 and len(model.ep_info_buffer) > 0  # episodes ended and were recorded
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))


def test_adapter_is_a_thin_layer_over_the_gymnasium_vector_env():
    from rsd_env.vector import RSDRankVectorEnv

    venv = RSDVecEnv.from_env(_make(), 3)
    assert isinstance(venv.vector_env, RSDRankVectorEnv) and venv.vector_env.num_envs == 3
    venv.seed(4)
    obs = venv.reset()
    core_obs, _ = RSDRankVectorEnv(3, env=_make()).reset(seed=4)  # same seeds, same first observations
    for key in obs:
        np.testing.assert_array_equal(obs[key], core_obs[key])
    assert venv.get_attr("budget") == [2, 2, 2] and len(venv.get_attr("task")) == 3
