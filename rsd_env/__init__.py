"""rsd_env: the RSDRank Gymnasium environments, their data, metrics and verifiers.

``import rsd_env`` registers ``RSDRank-v0`` (bundled real LLM on TREC DL19 by default) and
``RSDRankSim-v0`` (the fast simulated verifier on synthetic tasks); ``gym.make_vec(id, num_envs=k)`` gives
one ``RSDRankVectorEnv`` that steps all k episodes as arrays with one batched verification per step.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from rsd_env.config import DEFAULT_CONFIG, SIM_CONFIG
from rsd_env.data import RankingTask, load_tasks
from rsd_env.env import RSDRankEnv, RSDRankSimEnv
from rsd_env.vector import RSDRankSimVectorEnv, RSDRankVectorEnv

__all__ = ["RSDRankEnv", "RSDRankSimEnv", "RSDRankVectorEnv", "RSDRankSimVectorEnv", "RankingTask", "load_tasks",
           "DEFAULT_CONFIG", "SIM_CONFIG"]

if "RSDRank-v0" not in registry:
    register(id="RSDRank-v0", entry_point="rsd_env.env:RSDRankEnv",
             vector_entry_point="rsd_env.vector:RSDRankVectorEnv")
if "RSDRankSim-v0" not in registry:
    register(id="RSDRankSim-v0", entry_point="rsd_env.env:RSDRankSimEnv",
             vector_entry_point="rsd_env.vector:RSDRankSimVectorEnv")
