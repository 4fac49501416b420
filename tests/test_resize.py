"""One agent for every N: a residual policy trained at one list length ranks others with the same weights."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import rsd_env
from agents.methods import AgentMethod, HeuristicMethod, rank_tasks
from agents.policy import obs_to_tensors
from agents.resize import policy_n, resized_policy, size_agnostic
from experiments import rerank as cli
from rsd_env.data.trec import load_bundled, read_rank_llm

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1}


def _env(n, budget=2, count=4, **overrides):
    config = {**rsd_env.SIM_CONFIG, "data": {"count": count}, "budget": budget, "n": n, **overrides}
    return gym.make("RSDRankSim-v0", config=config).unwrapped


def _residual(env, algo="rpo", **kwargs):
    policy = "ResidualRankingPolicy" if algo == "rpo" else "ResidualItemPolicy"
    extra = {"group_size": 3, "tasks_per_batch": 2} if algo == "rpo" else {"n_steps": 8, "batch_size": 8}
    return agents.make(algo, env, policy=policy, policy_kwargs=TINY, seed=0, **extra, **kwargs)


def _randomise_residual(policy, seed=0):
    """A residual large enough to reorder the decoder's ranking (the trained head starts at zero)."""
    head = policy.score_head.linear if hasattr(policy, "score_head") else policy.action_net.linear
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * 3)


def _permutations(results, env):
    for result in results:
        n = env.task_by_id(result.task_id).n
        assert sorted(result.ranking.tolist()) == list(range(n)), result.ranking


def test_the_untrained_residual_resized_to_another_n_is_that_n_s_heuristic():
    """The base scores ``-scale * rank`` are rebuilt at the new N: with a zero residual the agent trained at
    N = 8 ranks N = 20 (budget 3) exactly as the heuristic decoder does there."""
    small, large = _env(8), _env(20, budget=3, max_budget=4)
    method = AgentMethod(_residual(small))
    assert method.n == 8 and method.resize_problem(20) is None
    ours, theirs = rank_tasks(method, large), rank_tasks(HeuristicMethod(), large)
    assert policy_n(method.policy) == 20 and method.policy is not method.agent.policy
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.ranking, b.ranking)


def test_resizing_keeps_every_weight_and_the_residual_reorders_at_the_new_n(tmp_path):
    small, large = _env(8), _env(20)
    model = _residual(small)
    _randomise_residual(model.policy)
    loaded = agents.load_agent(agents.save_agent(model, tmp_path / "r8.zip"))  # the path users take
    bigger = resized_policy(loaded, large.observation_space, large.action_space)
    for (name, a), (_, b) in zip(loaded.policy.state_dict().items(), bigger.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    back = resized_policy(type("Agent", (), {"policy": bigger, "policy_kwargs": loaded.policy_kwargs}),
                          small.observation_space, small.action_space, allow_shorter=True)
    obs, _ = small.reset(seed=1)
    loaded.policy.set_training_mode(False)  # as ``resized_policy`` leaves it (the fast eval path's rounding)
    with torch.no_grad():
        there_and_back, original = (p.score_items(obs_to_tensors(obs)) for p in (back, loaded.policy))
    np.testing.assert_allclose(there_and_back, original, rtol=1e-6)
    ours = rank_tasks(AgentMethod(loaded), large)
    _permutations(ours, large)
    heuristic = rank_tasks(HeuristicMethod(), large)
    assert any(not np.array_equal(a.ranking, b.ranking) for a, b in zip(ours, heuristic, strict=True))


def test_a_ppo_residual_policy_resizes_its_per_item_noise():
    small, large = _env(8), _env(20)
    model = _residual(small, algo="ppo")
    with torch.no_grad():
        model.policy.log_std.copy_(torch.linspace(-3.0, -1.0, 8))
    bigger = resized_policy(model, large.observation_space, large.action_space)
    assert bigger.log_std.shape == (20,) and torch.allclose(bigger.log_std, torch.full((20,), -2.0))
    _permutations(rank_tasks(AgentMethod(model), large), large)


def test_a_policy_sized_by_n_is_refused_with_the_n_it_needs():
    small, large = _env(8), _env(20)
    method = AgentMethod(agents.make("rpo", small, policy_kwargs=TINY, seed=0, group_size=2, tasks_per_batch=1))
    assert not size_agnostic(method.agent.policy) and method.resize_problem(20) is not None
    with pytest.raises(ValueError, match="trained for N=8 candidates and its weights depend on N.*use N=8"):
        rank_tasks(method, large)


def test_a_residual_agent_is_refused_on_shorter_lists_than_its_training():
    """Its residual is in positions and its features in fractions of N, so a correction learned at a large N
    can outweigh the decoder's order at a smaller one (the full-list agent on windows of 40: tau -0.06):
    only N >= the training N is allowed, and the error says which agents fit."""
    method = AgentMethod(_residual(_env(20)))
    assert method.resize_problem(8) is not None and method.resize_problem(40) is None
    with pytest.raises(ValueError, match=r"trained for N=20 candidates and ranks only N >= 20.*N <= 8"):
        rank_tasks(method, _env(8))


def test_rsd_rerank_takes_a_residual_agent_on_longer_windows_and_refuses_shorter_ones(tmp_path, capsys):
    queries, _ = load_bundled("dl19")
    model = _residual(_env(10))
    _randomise_residual(model.policy)
    path = agents.save_agent(model, tmp_path / "r10.zip")

    def rerank(window: int, stride: int, out: str) -> int:
        return cli.main(["--dataset", "dl19", "--max-queries", "2", "--method", f"agent:{path}", "--top", "30",
                         "--window", str(window), "--stride", str(stride), "--verifier", "simulated",
                         "--output", str(tmp_path / out), "--no-progress"])

    assert rerank(20, 10, "out") == 0
    results = read_rank_llm(tmp_path / "out" / "rerank.jsonl")
    assert [r.qid for r in results] == [q.qid for q in queries[:2]]
    for r, q in zip(results, queries, strict=False):
        ours, bm25 = [h.docid for h in r.hits], [h.docid for h in q.hits]
        assert sorted(ours) == sorted(bm25) and ours[30:] == bm25[30:]  # every docid kept, below --top as given
        assert ours[:30] != bm25[:30]
    capsys.readouterr()
    assert rerank(8, 4, "short") == 2
    err = capsys.readouterr().err
    assert "trained for 10 candidates, the windows have 8" in err and "ranks only N >= 10" in err, err
    assert not (tmp_path / "short").exists()  # refused before the output folder is touched


def test_a_policy_folder_from_rllib_resizes_like_an_sb3_checkpoint(tmp_path):
    """``agents.policy_agent`` folders (what an RLlib run saves) keep the policy's name and kwargs in their
    metadata; the resized policy is rebuilt from those, with the same weights."""
    from agents.policy_agent import load_policy_agent, save_policy_agent

    small, large = _env(8), _env(20)
    model = _residual(small)
    _randomise_residual(model.policy)
    folder = save_policy_agent(model.policy, tmp_path / "policy", "ResidualRankingPolicy", model.policy_kwargs,
                               meta={"algorithm": "rllib-ppo"})
    agent = load_policy_agent(folder)
    bigger = resized_policy(agent, large.observation_space, large.action_space)
    assert type(bigger).__name__ == "ResidualRankingPolicy" and policy_n(bigger) == 20
    np.testing.assert_array_equal(
        [r.ranking for r in rank_tasks(AgentMethod(agent), large)],
        [r.ranking for r in rank_tasks(AgentMethod(model), large)])


# ---- fine-tuning: a new training run starts from an agent trained at another N --------------------------
def _finetune_sets(tmp_path, n, init, *extra):
    return ["env_id=RSDRankSim-v0", f"env={{dataset: synthetic, split: train, budget: 2, n: {n}, data: {{count: 6}}}}",
            f"eval_env={{dataset: synthetic, split: test, budget: 2, n: {n}, data: {{count: 3}}}}", "eval_tasks=3",
            "policy=ResidualRankingPolicy", "policy_kwargs={d_model: 16, n_heads: 2, n_layers: 1}",
            "algo_kwargs={group_size: 3, tasks_per_batch: 2, warm_start_timesteps: 16}", "total_timesteps=32",
            "progress_bar=false", "torch_threads=1", "wandb.mode=disabled", f"run_dir={tmp_path}", f"init_agent={init}",
            *extra]


def test_a_training_run_starts_from_an_agent_trained_at_another_n(tmp_path):
    """``init_agent`` loads a trained residual agent's weights into a new run at another N (longer or shorter:
    the run trains at that N), then training moves them; the CLI's ``--init-agent`` is the same key."""
    from agents.train import load_train_config, main, prepare

    source = _residual(_env(8))
    _randomise_residual(source.policy)
    path = agents.save_agent(source, tmp_path / "r8.zip")
    for n in (12, 6):
        session = prepare(load_train_config(None, _finetune_sets(tmp_path, n, f"agent:{path}", f"run_name=n{n}")))
        try:
            assert policy_n(session.model.policy) == n
            started = session.model.policy.state_dict()
            for name, weight in source.policy.state_dict().items():
                assert torch.equal(started[name], weight), name
        finally:
            session.lock.release()
    sets = [item for item in _finetune_sets(tmp_path, 12, "x", "run_name=cli") if not item.startswith("init_agent")]
    assert main(["--init-agent", str(path), *[a for item in sets for a in ("--set", item)]]) == 0
    trained = agents.load_agent(tmp_path / "cli" / "model.zip")
    assert policy_n(trained.policy) == 12 and trained.num_timesteps >= 32
    head = "score_head.linear.weight"
    assert not torch.equal(trained.policy.state_dict()[head], source.policy.state_dict()[head])  # trained on


def test_init_agent_errors_name_what_to_fix(tmp_path, capsys):
    from agents.train import load_train_config, main, validate

    path = agents.save_agent(_residual(_env(8)), tmp_path / "r8.zip")

    def run(*extra) -> str:
        sets = _finetune_sets(tmp_path, 12, *extra)
        try:
            code = main([a for item in sets for a in ("--set", item)])
        except SystemExit as exit_:  # refused while reading the config (argparse's error)
            code = exit_.code
        assert code == 2
        return capsys.readouterr().err

    assert "init_agent 'agent:nowhere.zip': no agent at nowhere.zip" in run("agent:nowhere.zip", "run_name=a")
    err = run(f"agent:{path}", "run_name=b", "policy_kwargs={d_model: 32, n_heads: 2, n_layers: 1}")
    assert "differ in ['d_model']" in err and "use the agent's policy_kwargs" in err, err
    err = run(f"agent:{path}", "run_name=c", "policy=ResidualItemPolicy", "algo=ppo", "algo_kwargs={n_steps: 8}")
    assert "has a ResidualRankingPolicy" in err and "set policy: ResidualRankingPolicy" in err, err
    assert not any((tmp_path / name).exists() for name in "abc")  # no half-made run folder is left
    with pytest.raises(ValueError, match="init_agent is for SB3 algorithms"):
        validate(load_train_config(None, ["algo=rllib:PPO", f"init_agent={path}"]))
