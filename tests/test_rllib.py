"""RLlib (new API stack) with our policies, and rsd-rerank on Ray: a local ``ray.init(num_cpus=2)``, no dashboard.

The bad-address tests come first: they must run before this process joins (starts) a Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

import agents
import rsd_env  # noqa: F401  (registers the ids)
from agents.methods import AgentMethod, HeuristicMethod, make_method, rank_tasks
from agents.policy import obs_to_tensors
from agents.train import load_train_config, prepare
from agents.train import main as train_main
from experiments import rerank as rerank_cli

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "train_rllib_sim.yaml")
TINY_POLICY = {"d_model": 16, "n_layers": 1, "n_heads": 2}
SIM_ENV = {"dataset": "synthetic", "split": "train", "budget": 2, "n": 10, "data": {"count": 24}}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_bad_ray_address_is_a_one_line_error(tmp_path, capsys):
    assert not ray.is_initialized()
    argv = ["--dataset", "dl19", "--verifier", "simulated", "--max-queries", "2", "--output", str(tmp_path / "o"),
            "--no-progress", "--ray", "127.0.0.1:1"]
    assert rerank_cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert "no Ray cluster answers at 127.0.0.1:1" in err and "ray start --head" in err
    assert rerank_cli.main([*argv[:-1], "not-an-address"]) == 2
    assert "bad Ray address 'not-an-address': use HOST:PORT" in _one_line_error(capsys)
    assert train_main(["--config", CONFIG, "--set", f"run_dir={tmp_path}",
                       "--set", "env.data.count=8", "--set", "eval_tasks=2", "--ray-address", "127.0.0.1:1"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in _one_line_error(capsys)
    assert not list(tmp_path.glob("rllib_*"))  # nothing written for a run that could not start
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


# ---- one policy definition for both stacks ----------------------------------------------------------------
@pytest.mark.parametrize("policy", ["ItemTransformerPolicy", "ResidualItemPolicy"])
def test_the_rl_module_is_the_sb3_policy(policy):
    """RLlib's Gaussian inputs (N means, N log-stds) and value are the SB3 policy's, from the same weights."""
    from ray.rllib.core.columns import Columns

    from agents.rllib_module import ItemPolicyRLModule

    env = gym.make("RSDRankSim-v0", config=SIM_ENV)
    module = ItemPolicyRLModule(observation_space=env.observation_space, action_space=env.action_space,
                                model_config={"policy": policy, "policy_kwargs": TINY_POLICY})
    obs, _ = env.reset(seed=0)
    for _ in range(2):  # a state with verified rounds too
        obs = env.step(env.action_space.sample())[0]
    batch = {Columns.OBS: obs_to_tensors(obs)}
    with torch.no_grad():
        out = module.forward_train(batch)
        mean, value = module.policy.get_distribution(batch[Columns.OBS]).distribution.mean, \
            module.policy.predict_values(batch[Columns.OBS])
    inputs = out[Columns.ACTION_DIST_INPUTS]
    assert inputs.shape == (1, 2 * env.unwrapped.n)
    torch.testing.assert_close(inputs[:, :10], mean)
    torch.testing.assert_close(inputs[:, 10:].exp(), module.policy.log_std.exp()[None])
    torch.testing.assert_close(module.compute_values(batch), value[:, 0])
    assert module.compute_values(batch, embeddings=out[Columns.EMBEDDINGS]).shape == (1,)


def test_the_untrained_residual_gaussian_policy_ranks_as_its_decoder():
    env = gym.make("RSDRankSim-v0", config={**SIM_ENV, "split": "test"}).unwrapped
    model = agents.make("ppo", env, policy="ResidualItemPolicy", n_steps=8, batch_size=8, seed=0,
                        policy_kwargs=TINY_POLICY)
    ids = [t.task_id for t in env.tasks[:6]]
    learned = [r.ranking.tolist() for r in rank_tasks(AgentMethod(model), env, ids)]
    assert learned == [r.ranking.tolist() for r in rank_tasks(HeuristicMethod(), env, ids)]


# ---- rsd-train algo: rllib:PPO --------------------------------------------------------------------------
def _rllib_config(tmp: Path, total: int):
    sets = {"run_dir": str(tmp), "env": SIM_ENV, "eval_env": {"split": "test"}, "eval_tasks": 6,
            "eval_freq": 64, "checkpoint_freq": 64, "total_timesteps": total, "n_envs": 4,
            "policy_kwargs": TINY_POLICY, "wandb": {"mode": "disabled"}, "progress_bar": False,
            "algo_kwargs": {"num_env_runners": 1, "rollout_fragment_length": 16, "train_batch_size_per_learner": 64,
                            "minibatch_size": 32, "num_epochs": 1, "lr": 0.001, "grad_clip": 0.5}}
    return load_train_config(CONFIG, sets)


def _weights(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def test_rllib_trains_saves_resumes_and_ranks(local_ray, tmp_path):
    session = prepare(_rllib_config(tmp_path, 128))
    # every EnvRunner steps our batched vector env, made by gym.make_vec
    envs = session.model.algo.env_runner_group.foreach_env_runner(
        lambda runner: (type(runner.env.unwrapped).__name__, runner.env.unwrapped.num_envs), local_env_runner=False)
    assert envs == [("RSDRankSimVectorEnv", 4)]
    start = _weights(session.model.policy)
    from agents.train import learn

    path = learn(session)  # 2 iterations of 64 steps
    run = path.parent
    assert path == run / "model" and (path / "rl_module").is_dir()
    meta = agents.agent_meta(path)
    assert (meta["algorithm"], meta["num_timesteps"], meta["iterations"]) == ("rllib:PPO", 128, 2)
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["timesteps"] for e in evals] == [64, 128]
    assert agents.agent_meta(run / "best")["eval"]["final_agreement"] == max(e["final_agreement"] for e in evals)
    trained = agents.load_agent(path)
    assert any(not torch.equal(start[k], v) for k, v in _weights(trained.policy).items())  # it learned

    # agent:<model/> ranks like any agent, and its greedy ranking is what the run evaluated
    env = gym.make("RSDRankSim-v0", config={**SIM_ENV, "split": "test"}).unwrapped
    method = make_method(f"agent:{path}")
    results = rank_tasks(method, env, [t.task_id for t in env.tasks[:6]])
    assert np.isclose(np.mean([r.info["final_agreement"] for r in results]), evals[-1]["final_agreement"])

    # resume: the learner comes back with the saved weights and the run continues to 192 steps
    session = prepare(_rllib_config(tmp_path, 192))
    assert session.resumed_from == run / "checkpoints" / "last" and session.model.num_timesteps == 128
    session.model.sync_policy()
    for key, value in _weights(trained.policy).items():
        torch.testing.assert_close(session.model.policy.state_dict()[key], value)
    learn(session)
    assert agents.agent_meta(run / "model")["num_timesteps"] == 192
    state = json.loads((run / "state.json").read_text())
    assert state["resumes"][0]["timesteps"] == 128
    assert [json.loads(line)["timesteps"] for line in (run / "eval.jsonl").read_text().splitlines()] == [64, 128, 192]


def test_rllib_settings_fail_before_a_run_starts(tmp_path):
    with pytest.raises(ValueError, match="unknown algo_kwargs \\['n_steps'\\] for rllib:PPO"):
        load_train_config(CONFIG, {"algo_kwargs": {"n_steps": 8}})
    for name in ("rllib:SAC", "rllib:APPO"):
        with pytest.raises(ValueError, match=f"unsupported RLlib algorithm '{name}'; use one of \\['rllib:PPO'\\]"):
            load_train_config(CONFIG, {"algo": name})
    with pytest.raises(ValueError, match="Gaussian actor-critic"):
        load_train_config(CONFIG, {"policy": "ResidualRankingPolicy"})


# ---- rsd-rerank --ray -----------------------------------------------------------------------------------
def _costless(path: Path) -> list[dict]:
    """rerank.jsonl without the timing fields (wall and CPU time differ between any two runs)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["rsd"].pop("wall_ms"), record["rsd"].pop("cpu_ms")
    return records


def test_rerank_on_ray_equals_the_one_process_run(local_ray, tmp_path, capsys):
    args = ["--dataset", "dl19", "--verifier", "simulated", "--method", "heuristic", "--top", "40", "--batch", "2",
            "--no-progress"]
    assert rerank_cli.main([*args, "--max-queries", "7", "--output", str(tmp_path / "one")]) == 0
    assert rerank_cli.main([*args, "--max-queries", "3", "--output", str(tmp_path / "ray"), "--ray",
                            "--ray-actors", "2"]) == 0
    capsys.readouterr()
    # resumed on Ray: the 3 done queries are kept, the other 4 spread over the actors
    assert rerank_cli.main([*args, "--max-queries", "7", "--output", str(tmp_path / "ray"), "--ray",
                            "--ray-actors", "2"]) == 0
    assert "resuming: 3 queries already" in capsys.readouterr().err
    one, on_ray = tmp_path / "one", tmp_path / "ray"
    assert (on_ray / "run.trec").read_bytes() == (one / "run.trec").read_bytes()
    assert _costless(on_ray / "rerank.jsonl") == _costless(one / "rerank.jsonl")
    summary = json.loads((on_ray / "summary.json").read_text())
    assert summary["queries_this_session"] == 4 and summary["settings"] == json.loads(
        (one / "summary.json").read_text())["settings"]


def test_a_folder_caught_between_two_renames_comes_back(tmp_path):
    from agents.policy_agent import atomic_folder, recover_folders

    target = tmp_path / "last"
    for text in ("old", "new"):
        with atomic_folder(target) as tmp:
            (tmp / "weights").write_text(text)
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last"]
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:  # a writer that fails keeps the old folder
        (tmp / "weights").write_text("half")
        raise RuntimeError
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last"]
    target.rename(tmp_path / ".last.old.tmp")  # killed after moving the old folder aside
    (tmp_path / ".last.abc.tmp").mkdir()  # and a half-written new one
    recover_folders(tmp_path)
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last"]


def test_starting_over_moves_an_rllib_run_aside(tmp_path):
    from agents.train import _start_over

    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "rsd_checkpoint.json").write_text("{}")
    _start_over(run)  # --no-resume: a run with a checkpoint folder is kept aside, not deleted
    assert not list(run.iterdir())
    aside = next(tmp_path.glob("run.replaced-*"))
    assert (aside / "checkpoints" / "last" / "rsd_checkpoint.json").exists()
    (run / "eval.jsonl").write_text("")
    _start_over(run)  # no checkpoint at all: nothing worth keeping
    assert not list(run.iterdir()) and len(list(tmp_path.glob("run.replaced-*"))) == 1
