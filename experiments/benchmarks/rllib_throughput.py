"""RLlib vs SB3 throughput on the same vector env and policy, one JSON line per figure (a script, not a test).

    python -m experiments.benchmarks.rllib_throughput --steps 4096 --runners 1 2

Figures (simulated verifier, ``--n-envs`` episodes per vector env, our item policy): ``floor``: the policy's
forward pass + ``RSDRankVectorEnv.step`` in a plain loop (what any framework must pay); ``sb3_sample``:
SB3 PPO's rollout collection over ``RSDVecEnv``; ``rllib_sample``: one EnvRunner's ``sample()`` timed inside
the runner (connectors, episode bookkeeping; no Ray transport); ``sb3_train`` / ``rllib_train`` with 1 and
2 EnvRunners: env steps per second of whole training iterations (sampling + PPO updates, same batch and
epochs), after one warm-up iteration. ``overhead_cpu_us_per_step``: CPU time per env step above the floor's
(CPU time stays comparable when other jobs share the machine; wall time does not: report ``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

ENV = {"dataset": "synthetic", "split": "train", "budget": 2, "data": {"count": 500}}


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values}), flush=True)


def per_step(figure: str, steps: int, seconds: float, cpu: tuple[float, float] | None = None) -> None:
    """``cpu``: (CPU seconds of this figure, CPU seconds of the floor) where measured in one process."""
    extra = {}
    if cpu is not None:
        extra = {"cpu_s": round(cpu[0], 3), "steps_per_cpu_s": round(steps / cpu[0], 1),
                 "overhead_cpu_us_per_step": round(1e6 * (cpu[0] - cpu[1]) / steps, 1)}
    emit(figure, steps=steps, seconds=round(seconds, 3), steps_per_s=round(steps / seconds, 1), **extra)


def floor(policy, n_envs: int, steps: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``steps`` env steps of policy forward + vector env step, nothing else."""
    import gymnasium as gym

    from agents.policy import obs_to_tensors

    env = gym.make_vec("RSDRankSim-v0", num_envs=n_envs, vectorization_mode="vector_entry_point", config=ENV)
    obs, _ = env.reset(seed=seed)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps // n_envs):
        with torch.no_grad():
            actions = policy.get_distribution(obs_to_tensors(obs)).sample().clamp(-1, 1).numpy()
        obs = env.step(actions)[0]
    return time.perf_counter() - start, time.process_time() - cpu


def sb3(args) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    import agents
    from agents.vec_env import RSDVecEnv

    class RolloutClock(BaseCallback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu, self._t = 0.0, 0.0, (0.0, 0.0)

        def _on_rollout_start(self):
            self._t = (time.perf_counter(), time.process_time())

        def _on_rollout_end(self):
            self.wall += time.perf_counter() - self._t[0]
            self.cpu += time.process_time() - self._t[1]

        def _on_step(self):
            return True

    import gymnasium as gym

    env = RSDVecEnv.from_env(gym.make("RSDRankSim-v0", config=ENV), args.n_envs)
    env.seed(args.seed)
    model = agents.make("ppo", env, policy=args.policy, n_steps=args.fragment, batch_size=256, n_epochs=4,
                        seed=args.seed, policy_kwargs=dict(args.policy_kwargs))
    batch = args.fragment * args.n_envs
    model.learn(batch)  # warm-up iteration
    clock = RolloutClock()
    start = time.perf_counter()
    model.learn(args.steps, callback=clock, reset_num_timesteps=False)
    total = time.perf_counter() - start
    args.floor = floor(model.policy, args.n_envs, args.steps, args.seed)
    per_step("floor", args.steps, args.floor[0], (args.floor[1], args.floor[1]))
    per_step("sb3_sample", args.steps, clock.wall, (clock.cpu, args.floor[1]))
    per_step("sb3_train", args.steps, total)


def rllib(args, runners: int) -> None:
    from ray.tune.registry import register_env

    from agents.ray_cluster import connect
    from agents.rllib_train import ENV_NAME, algorithm_config, make_vector_env
    from agents.train import TrainConfig

    connect(None, num_cpus=max(2, runners))
    register_env(ENV_NAME, make_vector_env)
    config = TrainConfig(algo="rllib:PPO", env_id="RSDRankSim-v0", env=ENV, n_envs=args.n_envs, seed=args.seed,
                         policy=args.policy, policy_kwargs=dict(args.policy_kwargs), torch_threads=1,
                         algo_kwargs={"num_env_runners": runners, "rollout_fragment_length": args.fragment,
                                      "train_batch_size_per_learner": args.fragment * args.n_envs * runners,
                                      "minibatch_size": 256, "num_epochs": 4, "use_kl_loss": False,
                                      "vf_clip_param": 1e6, "grad_clip": 0.5})
    algo = algorithm_config(config).build_algo()
    algo.train()  # warm-up iteration
    steps, start = 0, time.perf_counter()
    while steps < args.steps:
        steps += int(algo.train()["env_runners"]["num_env_steps_sampled"])
    per_step(f"rllib_train_{runners}_runner", steps, time.perf_counter() - start)
    if runners == 1:
        def timed_sample(runner, n=args.steps):
            t, cpu = time.perf_counter(), time.process_time()
            runner.sample(num_timesteps=n, random_actions=False)
            return time.perf_counter() - t, time.process_time() - cpu

        seconds, cpu = algo.env_runner_group.foreach_env_runner(timed_sample, local_env_runner=False)[0]
        per_step("rllib_sample", args.steps, seconds, (cpu, args.floor[1]))
    algo.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4096)
    p.add_argument("--n-envs", type=int, default=16)
    p.add_argument("--fragment", type=int, default=64, help="steps per env per iteration (SB3's n_steps)")
    p.add_argument("--runners", type=int, nargs="+", default=[1, 2])
    p.add_argument("--policy", default="ItemTransformerPolicy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.policy_kwargs = {"d_model": 64, "n_layers": 2, "n_heads": 4}
    torch.set_num_threads(1)
    emit("machine", cpus=os.cpu_count(), load_1min=round(os.getloadavg()[0], 2), policy=args.policy,
         n_envs=args.n_envs, numpy=np.__version__, torch=torch.__version__)
    sb3(args)
    for runners in args.runners:
        rllib(args, runners)
    emit("machine_after", load_1min=round(os.getloadavg()[0], 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
