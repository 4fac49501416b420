"""The env-throughput benchmark's options reach the verifier they name (none is silently dropped)."""

import pytest

from experiments.benchmarks.env_steps import main


def test_real_verifier_options_without_a_real_verifier_are_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["--verifier-arg", "adapter=null"])
    assert "--sim-arg" in capsys.readouterr().err


def test_sim_arg_options_reach_the_simulated_verifier(monkeypatch):
    """``--sim-arg`` goes all the way to the env the benchmark builds (it once dropped simulated options)."""
    from experiments.benchmarks import env_steps

    seen, original = [], env_steps.make_bench_env

    class Built(Exception):
        pass

    def build(verifier, budget, max_tasks, verifier_kwargs, n=20):
        seen.append(original(verifier, budget, max_tasks, verifier_kwargs, n))
        raise Built  # the env is what is checked; the timed loops are not run

    monkeypatch.setattr(env_steps, "make_bench_env", build)
    with pytest.raises(Built):
        main(["--n", "100", "--max-tasks", "2", "--sim-arg", "profile=calibrated-full-list"])
    [env] = seen
    assert env.n == 100 and env.verifier.profile == "calibrated-full-list" and env.verifier.params["prefix_noise"] > 0
