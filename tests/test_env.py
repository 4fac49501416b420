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


@pytest.mark.parametrize("env_id", ["RSDRankSim-v0", "RSDRank-v0"])
@pytest.mark.parametrize("extra", [{}, {"budget": [1, 5]}, {"commit_step": False}, {"n": 100}])
def test_gymnasium_and_sb3_env_checkers_pass_without_warnings(recwarn, env_id, extra):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(gym.make(env_id, config={**SIM, **extra}).unwrapped)  # RSDRank-v0 with the simulated LLM
    sb3_check_env(gym.make(env_id, config={**SIM, **extra}).unwrapped)
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


def test_observation_records_every_round_and_masks_the_unfilled_ones():
    env = make(budget=3)
    neutral = np.float32(np.log(1 / 20))  # uniform over the 20 items, never log-prob 0 (= probability 1)
    obs, _ = env.reset(seed=1)
    assert (obs["verified"] == neutral).all() and obs["round"][0] == 0 and not obs["round_mask"].any()
    assert obs["budget"][0] == 3 and obs["commit"][0] == 0 and (obs["proposals"] == -1).all()
    obs, *_ = env.step(np.zeros(20, dtype=np.float32))
    verified = obs["verified"].reshape(5, 20, 20)  # sized for max_budget = 5
    assert (verified[0] != neutral).any() and (verified[1:] == neutral).all()
    np.testing.assert_array_equal(obs["round_mask"], [1, 0, 0, 0, 0])
    assert sorted(obs["proposals"].reshape(5, 20)[0].tolist()) == list(range(20))
    assert obs["locked"].sum() >= 1 and obs["round"][0] == 1


def test_commit_step_keeps_the_verified_prefix_and_costs_no_pass():
    env = make(budget=2)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(2):
        obs, _, done, _, info = env.step(rng.uniform(-1, 1, 20).astype(np.float32))
        assert not done
    assert obs["commit"][0] == 1 and env.in_commit_step and info["llm_passes"] == 3
    prefix = env.committed_ranking()[: info["verified_prefix"]]
    before_agreement = env._agreement(env.committed_ranking())
    stats = env.verifier.stats.snapshot()
    with pytest.raises(RuntimeError, match="commit step"):
        env.propose(np.zeros(20, dtype=np.float32))
    scores = rng.uniform(-1, 1, 20).astype(np.float32)
    obs, reward, done, _, info = env.step(scores)
    cost = env.verifier.stats.since(stats)
    assert done and info["committed"] and cost.forward_passes == 0 and not any(cost.calls.values())
    final = info["final_ranking"]
    np.testing.assert_array_equal(final[: len(prefix)], prefix)  # the verified prefix stays first
    rest = [j for j in range(20) if j not in set(prefix.tolist())]
    np.testing.assert_array_equal(final[len(prefix):], sorted(rest, key=lambda j: -scores[j]))
    assert reward == pytest.approx(info["final_agreement"] - before_agreement)
    assert info["llm_passes"] == 3 and info["rounds"] == 2 and obs["commit"][0] == 0
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(scores)


def test_the_old_protocol_is_reproduced_with_commit_step_off():
    """Same seed and actions: the old protocol ends at the T-th verification with the committed ranking."""
    new, old = make(budget=3), make(budget=3, commit_step=False)
    for seed in range(4):
        new.reset(seed=seed)
        old.reset(seed=seed)
        rng = np.random.default_rng(seed)
        for _ in range(3):
            action = rng.uniform(-1, 1, 20).astype(np.float32)
            a, b = new.step(action), old.step(action)
            assert a[1] == b[1]
            np.testing.assert_array_equal(a[0]["verified"], b[0]["verified"])
            if b[2]:
                break
        assert b[2] and not b[0]["commit"][0] and (a[2] or a[0]["commit"][0] == 1)
        np.testing.assert_array_equal(b[4]["final_ranking"], new.committed_ranking())
        assert b[4]["llm_passes"] == 1 + b[4]["rounds"]


def test_budget_per_episode_from_reset_options_or_a_range():
    env = make(budget=3)
    obs, info = env.reset(seed=0, options={"budget": 1})
    assert obs["budget"][0] == 1 and info["budget"] == 1
    _, _, done, _, _ = env.step(np.zeros(20, dtype=np.float32))
    assert not done and env.in_commit_step  # T = 1: one verification, then the commit step
    assert env.step(np.zeros(20, dtype=np.float32))[2]
    assert env.reset(seed=0)[1]["budget"] == 3  # the option holds for one episode only
    for bad in (0, 6, 1.5, True):
        with pytest.raises(ValueError, match="reset option budget must be an integer in 1..max_budget=5"):
            env.reset(options={"budget": bad})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"rounds": 2})
    drawn = [make(budget=[1, 5]).reset(seed=s)[1]["budget"] for s in range(40)]
    assert set(drawn) == {1, 2, 3, 4, 5}
    ranged = make(budget=[2, 4])
    again = make(budget=[2, 4])
    a = [ranged.reset(seed=7 if k == 0 else None)[1]["budget"] for k in range(20)]
    b = [again.reset(seed=7 if k == 0 else None)[1]["budget"] for k in range(20)]
    assert a == b and set(a) <= {2, 3, 4}  # seeded: same draws
    assert make(budget=2, max_budget=8).observation_space["verified"].shape == (8 * 20 * 20,)


def _actions(data, n: int, steps: int) -> list:
    return data.draw(st.lists(st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n), min_size=steps,
                              max_size=steps))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.integers(1, 5), n=st.sampled_from([20, 100]), data=st.data())
def test_properties_valid_permutation_and_locked_prefix_matches_target(seed, budget, n, data):
    env = make(budget=budget, n=n)
    actions = _actions(data, n, 5)
    env.reset(seed=seed)
    assert env.task.n == n
    target = env.target(env.task)
    for action in actions:
        if not env.in_commit_step:
            proposal = env.propose(np.asarray(action, dtype=np.float32))
            assert sorted(proposal.tolist()) == list(range(env.task.n))
        _, _, done, _, info = env.step(np.asarray(action, dtype=np.float32))
        committed = env.committed_ranking()
        assert sorted(committed.tolist()) == list(range(env.task.n))
        k = min(info["round"], env.task.n)  # after t verifications (and after the commit step)
        np.testing.assert_array_equal(committed[:k], target[:k])
        if done:
            break


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.integers(1, 5), commit_step=st.booleans(),
       n=st.sampled_from([20, 100]), data=st.data())
def test_guarantee_each_round_locks_at_least_one_more_target_position(seed, budget, commit_step, n, data):
    """What locking guarantees (not "never worse than SD"): after t verifications the verified prefix has
    at least min(t, N) items, exactly the target's first ones; every later step, the commit included, keeps
    it, so the output's first min(T, N) positions equal the target's whatever the actions."""
    env = make(budget=budget, commit_step=commit_step, n=n)
    env.reset(seed=seed)
    assert env.task.n == n
    actions = _actions(data, n, 6)
    target = env.target(env.task)
    locked = 0
    for action in actions:
        _, _, done, _, info = env.step(np.asarray(action, dtype=np.float32))
        if not info.get("committed"):
            assert info["verified_prefix"] >= min(locked + 1, env.task.n)  # each round adds >= 1
        locked = info["verified_prefix"]
        assert locked >= min(info["round"], env.task.n)
        np.testing.assert_array_equal(env.committed_ranking()[:locked], target[:locked])
        if done:
            break
    assert done and info["rounds"] <= budget and info["llm_passes"] == 1 + info["rounds"]
    k = min(budget, env.task.n)
    np.testing.assert_array_equal(info["final_ranking"][:k], target[:k])


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


def test_rgb_array_frames_show_what_the_llm_said():
    """rgb_array (what SB3's make_vec_env and RecordVideo ask for): black until verified, the target green,
    the verified prefix blue; once the target itself is verified every row's brightest item is its own."""
    from agents.methods import order_to_action
    from rsd_env.render import MAX_SIDE

    env = RSDRankEnv({**SIM, "n": 12, "budget": 2, "data": {"count": 4}}, render_mode="rgb_array")
    assert env.render() is None  # nothing to draw before reset
    env.reset(seed=0)
    cell = MAX_SIDE // 12
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (12 * cell, 13 * cell, 3)
    cells = frame[cell // 2 :: cell, cell // 2 :: cell]  # one pixel per cell; column 0 is the stripe
    green = (cells == (40, 200, 60)).all(axis=2)
    assert green[:, 1:].sum(axis=1).tolist() == [1] * 12  # one target mark per position
    assert cells[0, 1:][~green[0, 1:]].max() > 0  # the first-token row is known ...
    assert cells[1:, 1:][~green[1:, 1:]].max() == 0  # ... the rest is not, before the first round
    target = env.target(env.task)
    env.step(order_to_action(target, 12))
    cells = env.render()[cell // 2 :: cell, cell // 2 :: cell]
    assert (cells[: env._locked, 0] == (40, 90, 220)).all() and env._locked > 0
    assert np.diagonal((cells[:, 1:] == (40, 200, 60)).all(axis=2)).all()  # target = shown: on the diagonal


def test_sb3_make_vec_env_and_gymnasium_check_env_with_rgb_array():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("RSDRankSim-v0", n_envs=2, seed=0, env_kwargs={"config": SIM})  # rgb_array by default
    assert venv.reset().keys() == venv.observation_space.spaces.keys()
    assert venv.get_images()[0].ndim == 3
    check_env(gym.make("RSDRankSim-v0", config=SIM, render_mode="rgb_array").unwrapped)
    with pytest.raises(ValueError, match="'ansi' \\(text\\) or 'rgb_array'"):
        RSDRankEnv(SIM, render_mode="human")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"budget": 0}, "budget must be an integer >= 1"),
        ({"budget": 1.5}, "budget must be an integer >= 1"),
        ({"budget": [3, 1]}, "lo <= hi"),
        ({"budget": [0, 2]}, "budget must be an integer >= 1"),
        ({"budget": 6}, "exceeds max_budget=5; raise max_budget"),
        ({"budget": [1, 6]}, "exceeds max_budget=5"),
        ({"max_budget": 0}, "max_budget must be an integer >= 1"),
        ({"commit_step": "yes"}, "commit_step must be True or False"),
        ({"dataset": "nope"}, "unknown dataset"),
        ({"split": "dev"}, "unknown split"),
        ({"reward": "ndcg"}, "unknown reward"),
        ({"data": {"n": 12}}, "config 'data' sets \\['n'\\]: these are top-level config keys"),
        ({"data": [1]}, "config 'data' must be a dict"),
        ({"colour": "blue"}, "unknown config keys"),
        ({"verifier_kwargs": [("seed", 1)]}, "'verifier_kwargs' must be a dict"),
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


@pytest.mark.parametrize(
    "config, adapter",
    [
        ({"n": 20}, "unset"),
        ({"n": 21}, "bundled-60"),
        ({"n": 40}, "bundled-60"),
        ({"n": 50}, "bundled-60"),
        ({"n": 40, "verifier_kwargs": {"adapter": "bundled-40"}}, "bundled-40"),
        ({"n": 51}, "bundled-60"),
        ({"n": 60}, "bundled-60"),
        ({"n": 61}, "bundled-full"),
        ({"n": 100}, "bundled-full"),
        ({"n": 100, "verifier_kwargs": {"adapter": "bundled"}}, "bundled"),
        ({"n": 100, "verifier_kwargs": {"adapter": None}}, None),
        ({"n": 100, "verifier": "simulated"}, "unset"),
        ({"n": 100, "verifier": {"kind": "bundled"}}, "bundled-full"),
    ],
)
def test_long_lists_on_the_bundled_model_get_the_adapter_for_their_length(config, adapter):
    """gym.make("RSDRank-v0", config={"n": 40}) must not run the N = 20 adapter, which copies the shown order
    in long prompts; an adapter the user names (None: the base model) is kept, other verifiers untouched."""
    resolved = rsd_env.config.resolve_config(config)
    assert resolved["verifier_kwargs"].get("adapter", "unset") == adapter
    given = config.get("verifier_kwargs")
    assert given is None or resolved["verifier_kwargs"] == given  # the caller's dict is neither changed nor replaced


@pytest.mark.parametrize(
    "config, profile",
    [
        ({"n": 20}, "calibrated"),
        ({"n": 21}, "n40-b60-approx"),
        ({"n": 50}, "n40-b60-approx"),
        ({"n": 60}, "n40-b60-approx"),
        ({"n": 61}, "calibrated-full-list"),
        ({"n": 100}, "calibrated-full-list"),
        ({"n": 100, "verifier_kwargs": {"profile": "legacy"}}, "legacy"),
        ({"n": 100, "verifier": {"kind": "simulated", "profile": "legacy"}}, "legacy"),
        ({"n": 100, "verifier": {"kind": "simulated", "seed": 3}}, "calibrated-full-list"),
    ],
)
def test_the_simulator_stands_in_for_the_target_of_its_length(config, profile):
    """RSDRankSim-v0 at n = 100 simulates the full-list target (whose single-token ranking agrees with its AR
    order at tau ~0.6), not the N = 20 fit (~0.97 there); a profile the caller names is kept."""
    env = gym.make("RSDRankSim-v0", config={"split": "test", "data": {"count": 4}, **config}).unwrapped
    assert env.verifier.profile == profile
    overrides = {k: v for k, v in (config.get("verifier") or {}).items() if k not in ("kind", "profile")}
    assert env.verifier.params == {**rsd_env.verifiers.simulated.profile_params(profile), **overrides}


def test_length_defaults_keep_what_the_caller_names():
    """A dict spec's own adapter or profile wins over the length default (make_verifier would let options
    override it), and verifiers without shipped targets get their options back unchanged."""
    from rsd_env.verifiers.length_defaults import with_length_defaults

    assert with_length_defaults({"kind": "bundled"}, {}, 100) == {"adapter": "bundled-full"}
    assert with_length_defaults({"kind": "bundled", "adapter": None}, {}, 100) == {}
    assert with_length_defaults({"kind": "simulated", "profile": "legacy"}, {}, 100) == {}
    assert with_length_defaults("simulated", {"seed": 2}, 100) == {"seed": 2, "profile": "calibrated-full-list"}
    assert with_length_defaults("hf:some/model", {"dtype": "float32"}, 100) == {"dtype": "float32"}


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


def test_vector_envs_give_the_same_episodes_as_single_envs():
    """SyncVectorEnv, SB3's DummyVecEnv and SubprocVecEnv over our env: env i seeded with seed + i, the same
    actions -> the same observations and rewards as a single env stepped by hand, episodes ending together."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [lambda: make(budget=2) for _ in range(2)]
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 20)).astype(np.float32)
    expected = []  # per env: (reset obs, rewards of the 3 steps: 2 verifications + the commit)
    for i in range(2):
        env = make(budget=2)
        obs, _ = env.reset(seed=i)
        expected.append((obs, [env.step(actions[t, i])[1] for t in range(3)]))
    sync = gym.vector.SyncVectorEnv(fns)
    obs, _ = sync.reset(seed=0)
    assert obs["verified"].shape == (2, 5 * 20 * 20)  # max_budget rounds
    rewards = []
    for t in range(3):
        _, rew, term, _, _ = sync.step(actions[t])
        rewards.append(rew)
    sync.close()
    assert term.all()
    for i, (first_obs, env_rewards) in enumerate(expected):
        np.testing.assert_array_equal(obs["first_token"][i], first_obs["first_token"])
        np.testing.assert_allclose(np.array(rewards)[:, i], env_rewards, atol=1e-12)
    for cls in (DummyVecEnv, SubprocVecEnv):
        venv = cls(fns)
        venv.seed(0)
        obs = venv.reset()
        rewards = []
        for t in range(3):
            _, rew, dones, _ = venv.step(actions[t])
            rewards.append(rew)
        venv.close()
        assert dones.all(), cls.__name__
        for i, (first_obs, env_rewards) in enumerate(expected):
            np.testing.assert_array_equal(obs["first_token"][i], first_obs["first_token"])
            np.testing.assert_allclose(np.array(rewards)[:, i], env_rewards, atol=1e-6, err_msg=cls.__name__)


def test_sb3_ppo_trains_on_the_registered_simulated_env():
    """SB3's own MultiInputPolicy takes the observation unchanged and PPO updates it (no learning claimed:
    tests/test_rpo.py and tests/test_residual.py show learning on cases built for it)."""
    import torch
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", gym.make("RSDRankSim-v0"), n_steps=256, batch_size=64, seed=0)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(512)
    assert model.num_timesteps == 512 and model._n_updates == 2 * model.n_epochs
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(model.env.reset(), deterministic=True)
    assert action.shape == (1, 20) and np.all(np.abs(action) <= 1.0)


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
