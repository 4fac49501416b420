import json

import pytest

import agents
from agents.train import load_train_config, main

TINY = [
    "env_id=RSDRankSim-v0", "env={dataset: synthetic, split: train, budget: 2, n: 8, data: {count: 8}}",
    "eval_env={dataset: synthetic, split: test, budget: 2, n: 8, data: {count: 4}}", "eval_tasks=4",
    "policy_kwargs={d_model: 16, n_heads: 2, n_layers: 1}", "progress_bar=false", "torch_threads=1",
]
RPO_TINY = ["algo=rpo", "algo_kwargs={group_size: 3, tasks_per_batch: 2, warm_start_timesteps: 32}"]


def _argv(tmp_path, *extra):
    args = ["--wandb-mode", "disabled", "--run-name", "r"]
    for item in [*TINY, f"run_dir={tmp_path}", *extra]:
        args += ["--set", item]
    return args


def test_config_overrides_and_errors(tmp_path):
    config = load_train_config("experiments/configs/train_rpo_sim.yaml", ["env.budget=3", "algo_kwargs.group_size=4"])
    assert config.env["budget"] == 3 and config.algo_kwargs["group_size"] == 4 and config.algo == "rpo"
    assert config.env["dataset"] == "synthetic" and config.wandb.mode == "offline"
    with pytest.raises(ValueError, match="unknown train config keys"):
        load_train_config(None, ["budgett=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_train_config(None, ["budget"])
    with pytest.raises(ValueError, match="wandb mode"):
        load_train_config(None, ["wandb.mode=cloud"])
    assert load_train_config(None, ["eval_env.budget=3"]).eval_env == {"budget": 3}  # layered over env at run time
    with pytest.raises(FileNotFoundError):
        load_train_config(tmp_path / "none.yaml")


def test_train_cli_writes_a_run_and_resume_continues_it(tmp_path):
    assert main(_argv(tmp_path, *RPO_TINY, "total_timesteps=48", "eval_freq=24", "checkpoint_freq=24")) == 0
    run = tmp_path / "r"
    for name in ("model.zip", "model.json", "best.zip", "checkpoints/last.zip", "config.yaml", "progress.csv"):
        assert (run / name).exists(), name
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals and {"kendall_tau", "final_agreement", "ndcg@10"} <= set(evals[-1])
    first = agents.load_agent(run / "model.zip")
    wandb_id = json.loads((run / "state.json").read_text())["wandb_id"]

    assert main(_argv(tmp_path, *RPO_TINY, "total_timesteps=96", "eval_freq=24", "checkpoint_freq=24")) == 0
    resumed = agents.load_agent(run / "model.zip")
    assert first.num_timesteps >= 48 and resumed.num_timesteps >= 96
    assert resumed._n_updates > first._n_updates  # continued, not restarted
    assert json.loads((run / "state.json").read_text())["wandb_id"] == wandb_id
    later = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert later[: len(evals)] == evals and later[-1]["timesteps"] >= 96
    assert all(e["timesteps"] > first.num_timesteps for e in later[len(evals):])  # no restart from 0


def test_train_cli_runs_ppo_with_our_policy(tmp_path):
    from agents.policy import ItemTransformerPolicy

    assert main(_argv(tmp_path, "algo=ppo", "n_envs=2", "algo_kwargs={n_steps: 16, batch_size: 16}",
                      "total_timesteps=32", "eval_freq=0", "checkpoint_freq=0")) == 0
    model = agents.load_agent(tmp_path / "r" / "model.zip")
    assert type(model).__name__ == "PPO" and isinstance(model.policy, ItemTransformerPolicy)
    assert model.num_timesteps == 32 and model._n_updates > 0  # two envs x 16 steps, then PPO's epochs
    assert (tmp_path / "r" / "config.yaml").exists() and not list((tmp_path / "r").rglob("*.tmp"))


def test_env_mix_pools_the_tasks_of_several_datasets():
    from agents.train import make_train_env

    env = make_train_env("RSDRankSim-v0", {"n": 8, "mix": [{"dataset": "synthetic", "split": "train", "count": 3},
                                                     {"dataset": "synthetic", "split": "test", "count": 2}]})
    assert [t.task_id for t in env.unwrapped.tasks] == [
        "synthetic:train:0", "synthetic:train:1", "synthetic:train:2", "synthetic:test:0", "synthetic:test:1"]
    with pytest.raises(ValueError, match="env.mix"):
        make_train_env("RSDRankSim-v0", {"mix": ["synthetic"]})


def test_the_full_list_config_trains_on_whole_dl20_top_100s_in_two_orders():
    """The full-list agent's tasks: each DL20 query's BM25 top-100 once in BM25 order and once shuffled,
    with distinct ids, N = 100, and never a DL19 query."""
    from agents.train import train_env_config
    from rsd_env.data.trec import load_bundled

    config = load_train_config("experiments/configs/train_residual_full_list.yaml")
    assert config.policy == "ResidualRankingPolicy" and config.env["n"] == 100
    tasks = train_env_config(config.env_id, config.env)["tasks"]
    dl20 = {q.qid: [h.docid for h in q.hits[:100]] for q in load_bundled("dl20")[0]}
    dl19 = {q.qid for q in load_bundled("dl19")[0]}
    assert len(tasks) == 2 * len(dl20) and len({t.task_id for t in tasks}) == len(tasks)
    in_order = {t.task_id: [c.docid for c in t.candidates] for t in tasks if "#" not in t.task_id}
    shuffled = {t.task_id.split("#")[0]: [c.docid for c in t.candidates] for t in tasks if "#" in t.task_id}
    assert in_order == dl20 and not dl19 & set(in_order)
    assert all(sorted(shuffled[q]) == sorted(dl20[q]) and shuffled[q] != dl20[q] for q in dl20)
    # the fine-tuning recipe trains on the same tasks, from the shipped N = 40 agent's weights
    from agents.train import validate

    finetune = load_train_config("experiments/configs/train_residual_full_list_from_n40.yaml")
    validate(finetune)
    assert finetune.env == config.env and finetune.policy_kwargs == config.policy_kwargs
    assert finetune.init_agent == "shipped:residual-40"


def test_the_residual_configs_select_the_residual_policy(tmp_path):
    from agents.residual import ResidualRankingPolicy

    for name in ("train_residual_sim.yaml", "train_residual_bundled.yaml"):
        config = load_train_config(f"experiments/configs/{name}")
        assert config.policy == "ResidualRankingPolicy"
    argv = _argv(tmp_path, "algo=rpo", "policy=ResidualRankingPolicy", "algo_kwargs={group_size: 2, "
                 "tasks_per_batch: 2, warm_start_timesteps: 12}", "total_timesteps=24", "eval_freq=0")
    assert main(argv) == 0
    assert isinstance(agents.load_agent(tmp_path / "r" / "model.zip").policy, ResidualRankingPolicy)


def test_cache_targets_shards_cover_every_task_once(monkeypatch, capsys):
    """``--shard I/M`` lets M processes fill one target cache side by side: together they ask for every
    task's target exactly once; a malformed shard is a usage error that shows the expected form."""
    import types

    import experiments.paper.cache_targets as cache_targets
    from rsd_env.data import synthetic_tasks

    asked: list[str] = []
    verifier = types.SimpleNamespace(target_ranking=lambda task: asked.append(task.task_id), clear_cache=lambda: None)
    env = types.SimpleNamespace(tasks=synthetic_tasks(7, n=4), verifier=verifier)
    monkeypatch.setattr(cache_targets, "_tasks_and_env", lambda args: env)
    for shard in ("1/3", "2/3", "3/3"):
        assert cache_targets.main(["--dataset", "synthetic", "--shard", shard]) == 0
    assert sorted(asked) == sorted(t.task_id for t in env.tasks) and len(asked) == 7
    for bad in ("0/2", "3/2", "two"):
        with pytest.raises(SystemExit):
            cache_targets.main(["--dataset", "synthetic", "--shard", bad])
        assert "--shard" in capsys.readouterr().err
    for bad, message in (("0", "must be >= 1, got 0"), ("one", "expected an integer >= 1, got 'one'")):
        with pytest.raises(SystemExit):  # a thread count is refused, not clamped
            cache_targets.main(["--dataset", "synthetic", "--threads", bad])
        assert f"argument --threads: {message}" in capsys.readouterr().err
