"""Benchmark of one adapter training example (forward + backward, micro-batch 1) at each N: what a
full-list training run of the bundled Gemma 3 270M costs before it is started.

    python -m experiments.benchmarks.adapter_step --n 20 100 --threads 1   # ~5 min on a loaded 2-core CPU

The model, LoRA shape and losses are the trainer's own (``experiments.adapter.train``, shape from
``--config``); prompts are DL20 BM25 top-N lists shown in a seeded random order with ``--passage-tokens``
per passage, exactly as the example builder tokenises them; the teacher order is a seeded random
permutation (it does not change the cost). One JSON line per N (prompt tokens, seconds per example:
median of ``--examples`` after one warm-up) and the peak memory. No optimizer step: with micro-batch 1
and ``accum`` examples per step, it adds well under 1 % (LoRA weights only). The load average is printed:
other processes on the machine inflate every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from experiments.adapter.data import encode_with_tags, reorder
from experiments.adapter.train import LORA_TARGETS, add_lora, load_base, load_config, make_probe, micro_batch_losses
from experiments.cli_args import add_threads_argument, apply_threads
from rsd_env.data import load_tasks
from rsd_env.verifiers.model_store import bundled_model_dir
from rsd_env.verifiers.prompts import identifier_token_ids


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[20, 100], help="candidates per prompt")
    p.add_argument("--passage-tokens", type=int, default=20)
    p.add_argument("--examples", type=int, default=3, help="timed examples per N (after one warm-up)")
    p.add_argument("--config", type=Path, default=Path("experiments/configs/adapter.yaml"),
                   help="trainer config whose LoRA shape and probe layer are timed")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    cfg = load_config(args.config)  # follows `extends`, as the trainer does
    from transformers import AutoTokenizer

    model_path = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = load_base(model_path, torch.device("cpu"))
    model = add_lora(base, cfg["rank"], cfg["alpha"], cfg["dropout"], cfg.get("targets", LORA_TARGETS),
                     cfg["first_layer"])
    probe = make_probe(base.config.hidden_size)
    model.train()
    ident = torch.as_tensor(identifier_token_ids(tokenizer, max(args.n)))
    rng = np.random.default_rng(0)
    print(json.dumps({"load_average": os.getloadavg(), "threads": torch.get_num_threads(),
                      "config": str(args.config)}), flush=True)
    for n in args.n:
        tasks = load_tasks("dl20", "all", n=n, sampling="top", max_tasks=args.examples + 1)
        seconds, tokens = [], []
        for k, task in enumerate(tasks):
            ids, tags = encode_with_tags(reorder(task, k, "#b"), tokenizer, args.passage_tokens)
            perm = rng.permutation(n)
            seq = np.concatenate([ids, ident.numpy()[perm]])[:-1]
            batch = tuple(torch.as_tensor(np.asarray(x))[None] for x in (seq, np.ones_like(seq), len(ids), perm, tags))
            start = time.perf_counter()
            pl, ranknet, aux, _ = micro_batch_losses(model, probe, batch, ident, cfg["probe_layer"])
            (pl + ranknet + aux).backward()
            model.zero_grad(set_to_none=True)
            probe.zero_grad(set_to_none=True)
            if k > 0:  # the first one warms up allocators and kernels
                seconds.append(time.perf_counter() - start)
                tokens.append(len(ids))
        print(json.dumps({"figure": "train_example", "n": n, "passage_tokens": args.passage_tokens,
                          "prompt_tokens": round(statistics.mean(tokens)),
                          "seconds": round(statistics.median(seconds), 2),
                          "all_seconds": [round(x, 2) for x in seconds],
                          "load_average": os.getloadavg()}), flush=True)
    print(json.dumps({"figure": "peak_rss", "value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "unit": "MiB"}), flush=True)


if __name__ == "__main__":
    main()
