"""rsd_env: the RSDRank Gymnasium environments, their data, metrics and verifiers.

``import rsd_env`` registers ``RSDRank-v0`` (bundled real LLM on TREC DL19 by default) and
``RSDRankSim-v0`` (the fast simulated verifier on synthetic tasks).
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from rsd_env.config import DEFAULT_CONFIG, SIM_CONFIG
from rsd_env.data import RankingTask, load_tasks
from rsd_env.env import RSDRankEnv, RSDRankSimEnv

__all__ = ["RSDRankEnv", "RSDRankSimEnv", "RankingTask", "load_tasks", "DEFAULT_CONFIG", "SIM_CONFIG"]

if "RSDRank-v0" not in registry:
    register(id="RSDRank-v0", entry_point="rsd_env.env:RSDRankEnv")
if "RSDRankSim-v0" not in registry:
    register(id="RSDRankSim-v0", entry_point="rsd_env.env:RSDRankSimEnv")
