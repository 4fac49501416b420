import pickle

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rsd_env
from rsd_env import RSDRankEnv
from rsd_env.data import load_tasks

SIM = {"dataset": "synthetic", "split": "test", "verifier": "simulated", "data": {"count": 32}}


def make(**overrides):
    return RSDRankEnv({**SIM, **overrides})


def run_episode(env, seed, policy=None):
    obs, info = env.reset(seed=seed)
    trace, done, rng = [info["task_id"]], False, np.random.default_rng(seed)
    while not done:
        action = policy(obs) if policy else rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, reward, term, trunc, info = env.step(action)
        trace.append(round(reward, 12))
        done = term or trunc
    return trace, info["final_docids"], info["kendall_tau"]


def test_registration_is_idempotent():
    import importlib

    importlib.reload(rsd_env)
    assert "RSDRank-v0" in gym.registry and "RSDRankSim-v0" in gym.registry
    env = gym.make("RSDRankSim-v0")
    assert env.unwrapped.config["verifier"] == "simulated"
    layered = gym.make("RSDRankSim-v0", config={"budget": 2}).unwrapped.config  # overrides layer on top
    assert layered["verifier"] == "simulated" and layered["dataset"] == "synthetic" and layered["budget"] == 2


def test_gymnasium_and_sb3_env_checkers_pass_without_warnings(recwarn):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(gym.make("RSDRankSim-v0", config=SIM).unwrapped)
    sb3_check_env(gym.make("RSDRankSim-v0", config=SIM).unwrapped)
    ours = [w for w in recwarn if "rsd" in str(w.filename) or "env_checker" in str(w.filename)]
    assert not ours, [str(w.message) for w in ours]


def test_same_seed_same_episodes():
    a, b = make(), make()
    assert run_episode(a, 11) == run_episode(b, 11)
    assert run_episode(a, 11)[0] != run_episode(a, 12)[0]


def test_return_is_final_minus_initial_agreement():
    env = make(budget=3)
    obs, info = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, r, done, _, last = env.step(env.action_space.sample())
        total += r
    assert total == pytest.approx(last["final_agreement"] - info["agreement"])
    assert last["llm_passes"] == 1 + last["rounds"]
    assert {"kendall_tau", "spearman_rho", "footrule", "kemeny", "ndcg@10", "final_ranking"} <= set(last)


def test_observation_records_every_round():
    env = make(budget=3)
    obs, _ = env.reset(seed=1)
    assert not obs["verified"].any() and obs["round"][0] == 0
    obs, *_ = env.step(np.zeros(20, dtype=np.float32))
    verified = obs["verified"].reshape(3, 20, 20)
    assert verified[0].any() and not verified[1:].any()
    assert sorted(obs["proposals"].reshape(3, 20)[0].tolist()) == list(range(20))
    assert obs["locked"].sum() >= 1 and obs["round"][0] == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.integers(1, 5),
       actions=st.lists(st.lists(st.floats(-1, 1, width=32), min_size=20, max_size=20), min_size=5, max_size=5))
def test_properties_valid_permutation_and_locked_prefix_matches_target(seed, budget, actions):
    env = make(budget=budget)
    env.reset(seed=seed)
    target = env.target(env.task)
    for t, action in enumerate(actions, 1):
        proposal = env.propose(np.asarray(action, dtype=np.float32))
        assert sorted(proposal.tolist()) == list(range(env.task.n))
        _, _, done, _, _ = env.step(np.asarray(action, dtype=np.float32))
        committed = env.committed_ranking()
        assert sorted(committed.tolist()) == list(range(env.task.n))
        k = min(t, env.task.n)
        np.testing.assert_array_equal(committed[:k], target[:k])
        if done:
            break


def test_verifying_the_target_accepts_all_and_ends_the_episode():
    env = make(budget=3)
    env.reset(seed=2)
    target = env.target(env.task)
    scores = np.empty(20, dtype=np.float32)
    scores[target] = np.linspace(1, -1, 20)
    _, reward, done, _, info = env.step(scores)
    assert info["accepted"] == 20 and done and info["final_agreement"] == 1.0 and info["rounds"] == 1


def test_unlocked_ablation_lets_the_agent_move_verified_items():
    env = make(budget=2, lock_verified_prefix=False)
    env.reset(seed=3)
    first = env.committed_ranking()[0]
    scores = np.ones(20, dtype=np.float32)
    scores[first] = -1.0
    assert env.propose(scores)[-1] == first


def test_padding_for_tasks_with_fewer_candidates():
    tasks = load_tasks("synthetic", "test", n=12, count=4)
    env = RSDRankEnv({"tasks": tasks, "verifier": "simulated", "n": 20})
    obs, _ = env.reset(seed=0)
    assert obs["valid"].sum() == 12 and (obs["committed"][12:] == -1).all()
    assert env.observation_space.contains(obs)
    obs, *_ , info = env.step(np.random.default_rng(0).uniform(-1, 1, 20).astype(np.float32))
    assert sorted(env.committed_ranking().tolist()) == list(range(12))


def test_reset_by_task_id_and_render():
    env = RSDRankEnv({**SIM, "budget": 1}, render_mode="ansi")
    env.reset(options={"task_id": "synthetic:test:5"})
    assert env.task.task_id == "synthetic:test:5"
    text = env.render()
    assert "synthetic:test:5" in text and "target#" in text and len(text.splitlines()) == 22
    with pytest.raises(KeyError, match="unknown task_id"):
        env.reset(options={"task_id": "nope"})


@pytest.mark.parametrize(
    "config, message",
    [
        ({"budget": 0}, "budget must be an integer >= 1"),
        ({"budget": 1.5}, "budget must be an integer >= 1"),
        ({"dataset": "nope"}, "unknown dataset"),
        ({"split": "dev"}, "unknown split"),
        ({"reward": "ndcg"}, "unknown reward"),
        ({"colour": "blue"}, "unknown config keys"),
        ({"n": 8, "dataset": "dl19", "split": "all", "verifier": "simulated", "data": {"sampling": "windows"}},
         None),
    ],
)
def test_bad_config_is_named(config, message):
    if message is None:  # a valid config: windows of 8 over the top-100
        assert len(RSDRankEnv({**SIM, **config}).tasks) == 43 * 12
        return
    with pytest.raises(ValueError, match=message):
        RSDRankEnv({**SIM, **config})


def test_bad_actions_are_named():
    env = make()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(20, dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(19, dtype=np.float32))
    bad = np.zeros(20, dtype=np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(bad)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(bad)


def test_pickles_and_keeps_behaviour():
    env = make()
    clone = pickle.loads(pickle.dumps(env))
    assert run_episode(env, 4) == run_episode(clone, 4)


def test_vector_envs():
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [lambda: make() for _ in range(2)]
    sync = gym.vector.SyncVectorEnv(fns)
    obs, _ = sync.reset(seed=0)
    assert obs["verified"].shape == (2, 3 * 20 * 20)
    for _ in range(4):
        obs, rew, term, trunc, _ = sync.step(sync.action_space.sample())
    sync.close()
    for cls in (DummyVecEnv, SubprocVecEnv):
        venv = cls(fns)
        venv.seed(0)
        venv.reset()
        for _ in range(4):
            venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
        venv.close()


def test_ppo_learns_on_the_registered_simulated_env():
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", gym.make("RSDRankSim-v0"), n_steps=256, batch_size=64, seed=0)
    model.learn(2048)
    assert model.num_timesteps >= 2048


def test_clone_shares_tasks_verifier_and_target_memo():
    env = make(budget=2)
    twin = env.clone()
    assert all(a is b for a, b in zip(twin.tasks, env.tasks)) and len(twin.tasks) == len(env.tasks)
    assert twin.verifier is env.verifier and twin.config["budget"] == 2
    task = env.task_by_id("synthetic:test:3")
    env.target(task)
    assert task.task_id in twin._targets  # computed once, seen by both
    assert run_episode(env, 9) == run_episode(twin, 9)
    with pytest.raises(KeyError, match="unknown task_id"):
        env.task_by_id("nope")
