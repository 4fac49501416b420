"""Fill the on-disk target cache for a training config's tasks (and optionally an eval set) ahead of training.

The target LLM's AR ranking costs N decode steps per task (~2 s on 2 CPU cores for the bundled model) and
does not depend on the agent, so it is worth paying once, in the background, before a long run: training
then pays only the prompt prefill and the verifications. Entries are written atomically one by one, so an
interrupted run keeps what it finished and a rerun skips it.

    python -m experiments.paper.cache_targets --config experiments/configs/train_residual_bundled.yaml
    python -m experiments.paper.cache_targets --dataset ml-100k --split test

``--shard I/M`` takes every M-th task from the I-th (1-based), so M processes (one torch thread each) fill
one cache side by side on an M-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm.auto import tqdm

from experiments.cli_args import add_threads_argument, apply_threads


def _tasks_and_env(args: argparse.Namespace):
    from agents.train import load_train_config, make_train_env

    if args.config is not None:
        config = load_train_config(args.config, args.set)
        env = make_train_env(config.env_id, config.env)
    else:
        env = make_train_env("RSDRank-v0", {"dataset": args.dataset, "split": args.split, "verifier": args.verifier})
    return env.unwrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.paper.cache_targets",
                                     description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a training YAML (rsd-train --config): its env's tasks")
    source.add_argument("--dataset", help="a dataset name (rsd_env.data.load_tasks), with --split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--verifier", default="bundled", help="with --dataset (default: bundled)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override a training-config key (as rsd-train --set)")
    parser.add_argument("--max-tasks", type=int, default=None, help="only the first K tasks")
    parser.add_argument("--shard", default="1/1", metavar="I/M",
                        help="every M-th task, starting at the I-th (1-based): run M of these side by side")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.max_tasks is not None and args.max_tasks < 1:
        parser.error(f"--max-tasks must be >= 1, got {args.max_tasks}")
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard takes I/M with integers, e.g. 1/2; got {args.shard!r}")
    if not 1 <= shard <= shards:
        parser.error(f"--shard I/M needs 1 <= I <= M, got {args.shard!r}")
    apply_threads(args.threads)
    try:
        env = _tasks_and_env(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    tasks = env.tasks[: args.max_tasks][shard - 1 :: shards]
    start = time.perf_counter()
    for task in tqdm(tasks, desc="targets", unit="task"):
        env.verifier.target_ranking(task)
        env.verifier.clear_cache()  # one prompt KV at a time: memory stays flat over thousands of tasks
    print(f"{len(tasks)} targets cached in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
