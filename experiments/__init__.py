"""Experiments on top of the env and the agents, one subpackage per pipeline.

- ``experiments.paper``: the paper's pipeline — ``rsd-eval`` (evaluate), ``rsd-main`` (main), sweeps,
  ablations, the simulator's calibration, plots and statistics.
- ``experiments.adapter``: the bundled LLM's listwise LoRA adapter — data, training, evaluation.
- ``experiments.benchmarks``: env steps/s, verifier latency, the kill-and-resume check.
- ``experiments.rerank``: ``rsd-rerank``, reranking a user's own first-stage run.
- ``experiments.report``: result files (atomic writes, tables, TREC runs) shared by all of them.
"""

from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"  # every experiment's YAML lives here
