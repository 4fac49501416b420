"""Environment and training throughput, one JSON line per figure (a script, not a timed test).

    python -m experiments.benchmarks.env_steps                       # simulated verifier
    python -m experiments.benchmarks.env_steps --verifier bundled    # + the real LLM on DL19 (slow: prefills)
    python -m experiments.benchmarks.env_steps --n 100               # full lists: 5 x 100 x 100 verified log-probs
    python -m experiments.benchmarks.env_steps --n 100 --sim-arg profile=calibrated-full-list

Figures, side by side in one run and on the same tasks: env steps/s (a step = one verification round
or the commit step) for 1 env (``gym.make``); 8 envs stepped one by one (SB3 ``DummyVecEnv`` and
Gymnasium's ``SyncVectorEnv``, i.e. ``gym.make_vec(..., vectorization_mode="sync")``: one LLM call per
env); ``gym.make_vec(id, num_envs=k)`` (``rsd_env.vector.RSDRankVectorEnv``: all k envs as arrays, one
``verify_batch`` per vector step) for each k of ``--vector-envs``; the SB3 adapter over it
(``agents.vec_env.RSDVecEnv``, 8 envs); RPO training env-steps/s and updates/s; peak resident memory
after each figure. ``steps_per_s`` is wall time; ``steps_per_cpu_s`` counts this process's CPU time, which
stays comparable when other jobs share the machine.
LLM phase latencies are ``experiments/benchmarks/verifier_latency.py``'s job.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import rsd_env  # noqa: F401  (registers the envs)
from rsd_env.env import RSDRankEnv
from rsd_env.settings import parse_assignments
from rsd_env.vector import RSDRankVectorEnv


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def make_bench_env(verifier: str, budget: int, max_tasks: int | None, verifier_kwargs: dict,
                   n: int = 20) -> RSDRankEnv:
    dataset = {"dataset": "synthetic", "split": "train"} if verifier == "simulated" else \
        {"dataset": "dl19", "split": "all"}
    return gym.make("RSDRank-v0", config={**dataset, "verifier": verifier, "budget": budget, "n": n,
                                          "max_tasks": max_tasks, "verifier_kwargs": verifier_kwargs}).unwrapped


def _timed(run: Callable[[], int], min_seconds: float) -> dict[str, float]:
    """Env steps per wall second of repeated ``run()`` calls (each returns the steps it took), after one
    untimed call (first-call allocations and lazy initialisation are not throughput), and per CPU second
    of this process (what the figure would be on an idle core: on a loaded machine the two differ)."""
    run()
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        steps += run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return {"steps_per_s": round(steps / elapsed, 1),
                    "steps_per_cpu_s": round(steps / max(time.process_time() - cpu, 1e-9), 1), "steps": steps}


def bench_single(env: RSDRankEnv, seconds: float, rng: np.random.Generator) -> dict[str, float]:
    def episode() -> int:
        env.reset()
        steps, done = 0, False
        while not done:
            _, _, done, _, _ = env.step(rng.uniform(-1, 1, env.n).astype(np.float32))
            steps += 1
        return steps

    return _timed(episode, seconds)


def warm_targets(venv) -> None:
    """Fill every env's target memo before timing, as for the single env (a SyncVectorEnv's envs each
    have their own; the batched envs share one)."""
    inner = getattr(venv, "vector_env", venv)
    envs = [inner.env] if isinstance(inner, RSDRankVectorEnv) else [e.unwrapped for e in getattr(venv, "envs", [])]
    for env in envs:
        for task in env.tasks:
            env.target(task)


def bench_vector(venv, seconds: float, rng: np.random.Generator, seed: int) -> dict[str, float]:
    """Steps/s of an SB3 VecEnv or a Gymnasium VectorEnv (both take a (k, n) action array)."""
    if isinstance(venv, gym.vector.VectorEnv):
        venv.reset(seed=seed)
        n = venv.single_action_space.shape[0]
    else:
        venv.seed(seed)
        venv.reset()
        n = venv.action_space.shape[0]

    def vector_step() -> int:
        venv.step(rng.uniform(-1, 1, (venv.num_envs, n)).astype(np.float32))
        return venv.num_envs

    return _timed(vector_step, seconds)


def bench_training(env: RSDRankEnv, seconds: float, seed: int) -> dict[str, float]:
    from agents.rpo import RPO

    model = RPO("RankingPolicy", env, group_size=4, tasks_per_batch=4, n_epochs=1, seed=seed, device="cpu",
                policy_kwargs={"d_model": 32, "n_layers": 1})
    model.learn(1)  # warm-up: builds the group env, first rollout
    steps, updates, start = model.num_timesteps, model._n_updates, time.perf_counter()
    chunk = model.group_env().num_envs * env.budget
    while time.perf_counter() - start < seconds:
        model.learn(chunk, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    return {"env_steps_per_s": round((model.num_timesteps - steps) / elapsed, 1),
            "updates_per_s": round((model._n_updates - updates) / elapsed, 2),
            "envs": model.group_env().num_envs, "seconds": round(elapsed, 1)}


def run(verifier: str, budget: int, seconds: float, max_tasks: int | None, seed: int,
        verifier_kwargs: dict, vector_envs: list[int], n: int = 20) -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.vec_env import RSDVecEnv

    env = make_bench_env(verifier, budget, max_tasks, verifier_kwargs, n)
    env.reset(seed=seed)
    for task in env.tasks:  # targets and prompt prefills out of the timed loops
        env.target(task)
    base = dict(verifier=env.verifier.fingerprint(), budget=budget, tasks=len(env.tasks), n=env.n,
                obs_floats=sum(int(np.prod(space.shape)) for space in env.observation_space.values()))
    rng = np.random.default_rng(seed)
    emit("env_steps_per_s", envs=1, batched=False, vec_env="gym_make", **bench_single(env, seconds, rng), **base)
    clones = [env] + [env.clone() for _ in range(7)]  # 8 envs sharing tasks, verifier and targets
    shared = {**env.config, "verifier": env.verifier, "tasks": env.tasks, "max_tasks": None}
    make_vec = lambda k, mode: gym.make_vec("RSDRank-v0", num_envs=k, vectorization_mode=mode,  # noqa: E731
                                            config=shared)
    candidates: list[tuple[str, int, bool, Callable[[], object]]] = [
        ("sb3_dummy", 8, False, lambda: DummyVecEnv([lambda e=e: e for e in clones])),
        ("gym_sync", 8, False, lambda: make_vec(8, "sync")),
        *[("gym_make_vec", k, True, lambda k=k: make_vec(k, "vector_entry_point")) for k in vector_envs],
        ("sb3_rsd_vec_env", 8, True, lambda: RSDVecEnv.from_env(env, 8)),
    ]
    for name, k, is_batched, build in candidates:
        venv = build()
        warm_targets(venv)
        emit("env_steps_per_s", envs=k, batched=is_batched, vec_env=name,
             **bench_vector(venv, seconds, rng, seed), **base)
    emit("rpo_training_throughput", **bench_training(env, seconds, seed), **base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmarks.env_steps",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--verifier", nargs="+", default=["simulated"], help="simulated and/or bundled, hf:<m>")
    p.add_argument("--budget", type=int, default=3)
    p.add_argument("--n", type=int, default=20, help="candidates per task (100: full lists)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per figure")
    p.add_argument("--max-tasks", type=int, default=None, help="tasks to cycle through (real LLM: prefills)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vector-envs", type=int, nargs="+", default=None,
                   help="num_envs for the gym.make_vec figures (default: 8 64 simulated, 8 for a real LLM)")
    p.add_argument("--verifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="real verifier option (YAML value), repeatable, e.g. adapter=null")
    p.add_argument("--sim-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="simulated verifier option, repeatable, e.g. profile=calibrated-full-list (with --n 100)")
    args = p.parse_args(argv)
    kwargs = parse_assignments(args.verifier_arg, "--verifier-arg")
    sim_kwargs = parse_assignments(args.sim_arg, "--sim-arg")
    if kwargs and set(args.verifier) == {"simulated"}:
        p.error("--verifier-arg sets a real verifier's options and no real verifier is benchmarked; for the "
                "simulated one use --sim-arg (e.g. --sim-arg profile=calibrated-full-list)")
    emit("setup", python=sys.version.split()[0], argv=sys.argv[1:])
    for verifier in args.verifier:
        max_tasks = args.max_tasks if args.max_tasks or verifier == "simulated" else 8
        vector_envs = args.vector_envs or ([8, 64] if verifier == "simulated" else [8])
        options = sim_kwargs if verifier == "simulated" else kwargs
        run(verifier, args.budget, args.seconds, max_tasks, args.seed, options, vector_envs, args.n)


if __name__ == "__main__":
    main()
