"""The Gymnasium vector env (gym.make_vec): spaces, seeding, NEXT_STEP autoreset, info layout, batched
verification, and step-for-step equality with k single envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

import rsd_env
from rsd_env import RSDRankEnv, RSDRankSimVectorEnv, RSDRankVectorEnv
from rsd_env.data import load_tasks
from rsd_env.vector import env_info

SIM = {**rsd_env.SIM_CONFIG, "data": {"count": 16}, "budget": [1, 3]}


def _same(a, b, where="") -> None:
    """Deep equality of observations / infos: keys, dtypes, shapes and values (floats to 1e-9)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)) or (isinstance(a, np.ndarray) and a.dtype == object):
        assert len(a) == len(b), where
        for x, y in zip(a, b):
            _same(x, y, where)
    elif a is None or isinstance(a, str):
        assert a == b, where
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, (where, a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_allclose(a, b, atol=1e-9, err_msg=where)


def test_make_vec_gives_one_vector_env_with_batched_spaces():
    for mode in (None, "vector_entry_point"):
        venv = gym.make_vec("RSDRankSim-v0", num_envs=4, vectorization_mode=mode, config=SIM)
        assert isinstance(venv, RSDRankSimVectorEnv) and venv.num_envs == 4
        assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        assert venv.observation_space == batch_space(venv.single_observation_space, 4)
        assert venv.action_space == batch_space(venv.single_action_space, 4)
        assert venv.single_observation_space == gym.make("RSDRankSim-v0", config=SIM).observation_space
        obs, _ = venv.reset(seed=0)
        assert venv.observation_space.contains(obs)
        obs, *_ = venv.step(venv.action_space.sample())
        assert venv.observation_space.contains(obs)
        assert venv.spec.id == "RSDRankSim-v0"
    real = gym.make_vec("RSDRank-v0", num_envs=2, config=SIM)  # the real id with the simulated LLM
    assert type(real) is RSDRankVectorEnv and real.config["verifier"] == "simulated"


@pytest.mark.parametrize("extra", [{}, {"reward": "kendall", "lock_verified_prefix": False, "task_order": "cycle"},
                                   {"commit_step": False, "budget": [2, 5]}, {"n": 100, "data": {"count": 6}}])
def test_same_episodes_as_k_single_envs_in_a_sync_vector_env(extra):
    config = {**SIM, **extra}
    n = config.get("n", 20)
    k = 5
    venv = gym.make_vec("RSDRankSim-v0", num_envs=k, config=config)
    sync = SyncVectorEnv([lambda: gym.make("RSDRankSim-v0", config=config) for _ in range(k)],
                         autoreset_mode=AutoresetMode.NEXT_STEP)
    _same(venv.reset(seed=3), sync.reset(seed=3), "reset")
    rng = np.random.default_rng(0)
    ended = 0
    for t in range(24):
        actions = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        got, want = venv.step(actions), sync.step(actions)
        _same(got, want, f"step {t}")  # obs, rewards, terminations, truncations, infos (with _masks)
        ended += got[2].sum()
    assert ended >= k  # episodes ended and were auto-reset along the way


def test_same_episodes_as_single_envs_with_tasks_of_different_sizes():
    tasks = load_tasks("synthetic", "train", 20, count=6) + load_tasks("dl19", "all", 12)[:6]
    config = {"tasks": tasks, "verifier": "simulated", "budget": [1, 3]}
    k = 4
    venv = RSDRankVectorEnv(k, config)
    singles = [RSDRankEnv(config) for _ in range(k)]
    obs, infos = venv.reset(seed=11)
    for i, env in enumerate(singles):
        o, info = env.reset(seed=11 + i)
        _same({key: v[i] for key, v in obs.items()}, o)
        _same(env_info(infos, i), info)
    rng = np.random.default_rng(1)
    restart = np.zeros(k, dtype=bool)
    sizes, ndcgs = set(), 0
    for _ in range(30):
        actions = rng.uniform(-1, 1, (k, 20)).astype(np.float32)
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        for i, env in enumerate(singles):
            if restart[i]:  # NEXT_STEP: this step resets env i and ignores its action
                o, info = env.reset()
                r, term = 0.0, False
            else:
                o, r, term, _, info = env.step(actions[i])
            _same({key: v[i] for key, v in obs.items()}, o)
            assert rewards[i] == pytest.approx(r, abs=1e-12) and terminated[i] == term and not truncated[i]
            _same(env_info(infos, i), info)
            if term:
                sizes.add(len(info["final_ranking"]))
                ndcgs += "ndcg@10" in info
        restart = terminated.copy()
    assert sizes == {12, 20} and ndcgs > 0  # padded tasks and labelled (DL19) tasks both finished


def test_reset_seeds_env_i_with_seed_plus_i_and_takes_per_env_options():
    venv = RSDRankSimVectorEnv(3, SIM)
    first, info = venv.reset(seed=7)
    again, info_again = venv.reset(seed=[7, 8, 9])
    _same(first, again)
    _same(info, info_again)
    for i in range(3):
        o, single = RSDRankEnv({**SIM, "dataset": "synthetic", "split": "train"}).reset(seed=7 + i)
        _same({key: v[i] for key, v in first.items()}, o)
        assert single["task_id"] == info["task_id"][i]
    ids = [t.task_id for t in venv.tasks[:3]]
    obs, info = venv.reset(options={"task_id": ids, "budget": [1, 2, 3]})
    assert list(info["task_id"]) == ids and obs["budget"][:, 0].tolist() == [1, 2, 3]
    venv.step(np.zeros((3, 20), dtype=np.float32))
    obs, info = venv.reset(options={"reset_mask": [False, True, False], "budget": 2})
    assert obs["round"][:, 0].tolist() == [1, 0, 1] and info["_task_id"].tolist() == [False, True, False]
    assert obs["budget"][1, 0] == 2


def test_next_step_autoreset_ignores_the_action_and_returns_the_first_observation():
    venv = RSDRankSimVectorEnv(3, {**SIM, "budget": 1})
    venv.reset(seed=0)
    venv.step(np.zeros((3, 20), dtype=np.float32))  # the verification
    obs, rewards, terminated, truncated, infos = venv.step(np.zeros((3, 20), dtype=np.float32))  # commit
    assert terminated.all() and not truncated.any() and infos["_final_ranking"].all()
    assert infos["committed"].all() and (obs["commit"] == 0).all()
    nan = np.full((3, 20), np.nan, dtype=np.float32)  # ignored: every env is being reset
    obs, rewards, terminated, truncated, infos = venv.step(nan)
    assert (rewards == 0).all() and not terminated.any() and not truncated.any()
    assert (obs["round"] == 0).all() and (obs["round_mask"] == 0).all()
    assert infos["_task_id"].all() and infos["_agreement"].all() and "accepted" not in infos
    with pytest.raises(ValueError, match="NaN or inf"):
        venv.step(nan)  # now the envs are running: the scores count


def test_one_verify_batch_per_step_and_none_for_envs_in_their_commit_step():
    venv = RSDRankSimVectorEnv(4, SIM)
    for task in venv.tasks:  # targets (AR decodes, N passes each) out of the pass count below
        venv.env.target(task)
    requests = []
    original = venv.verifier.verify_batch
    venv.verifier.verify_batch = lambda reqs: requests.append([t.task_id for t, _ in reqs]) or original(reqs)
    _, info = venv.reset(seed=0, options={"budget": [1, 2, 1, 2]})
    ids = list(info["task_id"])
    before = venv.verifier.stats.forward_passes
    zeros = np.zeros((4, 20), dtype=np.float32)
    steps = [venv.step(zeros)]
    assert venv.in_commit_step.tolist() == [True, False, True, False]
    steps += [venv.step(zeros) for _ in range(2)]
    assert requests == [ids, [ids[1], ids[3]]]  # step 2: envs 0 and 2 commit; step 3: resets and commits
    assert venv.verifier.stats.forward_passes - before == 6 + 2  # 6 verifications + 2 new prompts (resets)
    infos = steps[1][4]
    assert infos["_committed"].tolist() == [True, False, True, False]
    assert steps[1][2].tolist() == [True, False, True, False] and steps[2][2].tolist() == [False, True, False, True]
    assert infos["llm_passes"].tolist() == [2, 3, 2, 3] and infos["accepted"][[0, 2]].tolist() == [0, 0]


def test_budget_ranges_are_drawn_per_env_and_episodes_last_budget_plus_one_steps():
    config = {**SIM, "budget": [1, 4], "max_budget": 4}
    venv = RSDRankSimVectorEnv(12, config)
    obs, info = venv.reset(seed=1)
    budgets = info["budget"]
    assert set(budgets.tolist()) <= {1, 2, 3, 4} and len(set(budgets.tolist())) > 1
    assert budgets.tolist() == [RSDRankEnv({**config, "dataset": "synthetic", "split": "train"}).reset(seed=1 + i)[1]
                                ["budget"] for i in range(12)]
    lengths = np.zeros(12, dtype=int)
    finished = np.zeros(12, dtype=bool)
    rng = np.random.default_rng(2)
    for _ in range(5):
        obs, _, terminated, _, infos = venv.step(rng.uniform(-1, 1, (12, 20)))
        lengths += ~finished
        for i in np.flatnonzero(terminated & ~finished):
            full = infos["verified_prefix"][i] == 20
            assert infos["rounds"][i] <= budgets[i] and (full or lengths[i] == budgets[i] + 1)
        finished |= terminated
    assert finished.all()


def test_step_envs_steps_a_subset_without_autoreset():
    venv = RSDRankSimVectorEnv(4, {**SIM, "budget": 1})
    venv.reset(seed=0)
    obs, rewards, terminated, _, infos = venv.step_envs([3, 1], np.zeros((2, 20), dtype=np.float32))
    assert obs["round"][:, 0].tolist() == [1, 1] and venv.round.tolist() == [0, 1, 0, 1]
    assert infos["round"].tolist() == [1, 1] and rewards.shape == (2,)
    venv.step_envs([1], np.zeros((1, 20), dtype=np.float32))  # env 1 commits: its episode is over
    with pytest.raises(RuntimeError, match="episode is over"):
        venv.step_envs([1], np.zeros((1, 20), dtype=np.float32))
    obs, *_ = venv.step(np.zeros((4, 20), dtype=np.float32))  # the next full step auto-resets env 1
    assert obs["round"][1, 0] == 0


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="num_envs"):
        RSDRankSimVectorEnv(0, SIM)
    with pytest.raises(ValueError, match="exceed max_budget"):
        RSDRankSimVectorEnv(2, SIM, budget_ranges=[(1, 2), (1, 9)])
    with pytest.raises(ValueError, match="lo <= hi"):
        RSDRankSimVectorEnv(1, SIM, budget_ranges=[(3, 2)])
    with pytest.raises(ValueError, match="does not render"):
        gym.make_vec("RSDRankSim-v0", num_envs=2, config=SIM, render_mode="ansi")
    venv = RSDRankSimVectorEnv(2, SIM)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 20\)"):
        venv.step(np.zeros((3, 20)))
    with pytest.raises(ValueError, match="numeric item scores"):
        venv.step(np.full((2, 20), "a"))
    with pytest.raises(ValueError, match="unknown reset options"):
        venv.reset(options={"taskid": "x"})
    with pytest.raises(ValueError, match="max_budget"):
        venv.reset(options={"budget": 9})
    with pytest.raises(KeyError, match="unknown task_id"):
        venv.reset(options={"task_id": "nope"})
    with pytest.raises(ValueError, match="one seed per env"):
        venv.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="one value per env"):
        venv.reset(options={"budget": [1, 2, 3]})
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"reset_mask": [True]})
    with pytest.raises(ValueError, match="distinct env indices"):
        venv.step_envs([0, 0], np.zeros((2, 20)))
