"""Agents for RSDRank: baselines, the item-Transformer policy, RPO, and any SB3 on-policy algorithm.

``agents.make(name, env, **kwargs)`` builds an algorithm that uses our item policy:

- ``"rpo"``: ranking-tailored policy optimisation (``agents.rpo.RPO``, Plackett-Luce ``RankingPolicy``);
- ``"ppo"``, ``"a2c"`` (stable-baselines3), ``"trpo"`` (sb3-contrib), ... any on-policy algorithm by name,
  with ``ItemTransformerPolicy`` (Gaussian over item scores);
- ``"<module>:<Class>"``: your own algorithm class, e.g. ``agents.make("my_pkg.algos:MyPPO", env)``;
- RLlib's PPO through ``rsd-train`` (``algo: rllib:PPO``, ``agents.rllib_train``), with the same
  policy classes as an RLModule (``agents.rllib_module``).

Plugging in another algorithm, e.g. sb3-contrib's TRPO or your own PPO subclass::

    import agents, gymnasium as gym, rsd_env
    env = gym.make("RSDRankSim-v0")
    model = agents.make("sb3_contrib:TRPO", env, policy_kwargs={"d_model": 32})  # or simply "trpo"
    model.learn(4096)
    agents.save_agent(model, "runs/trpo/model.zip")  # then make_method("agent:runs/trpo/model.zip")

Any class with SB3's ``BaseAlgorithm`` constructor ``(policy, env, **kwargs)`` works; an
``OnPolicyAlgorithm`` gets ``ItemTransformerPolicy``, one whose ``policy_aliases`` has
``"RankingPolicy"`` gets ``RankingPolicy``.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from rsd_env.io import atomic_path, write_json

__all__ = ["make", "algorithm_class", "policy_class", "save_agent", "load_agent", "agent_location", "agent_meta",
           "ALGORITHMS", "POLICIES"]

# short names -> "module:Class"
ALGORITHMS: dict[str, str] = {
    "rpo": "agents.rpo:RPO",
    "ppo": "stable_baselines3:PPO",
    "a2c": "stable_baselines3:A2C",
    "trpo": "sb3_contrib:TRPO",
    "recurrent_ppo": "sb3_contrib:RecurrentPPO",
}

# our policies by name (``policy:`` in a training YAML), for algorithms whose own aliases do not know them
POLICIES: dict[str, str] = {
    "ItemTransformerPolicy": "agents.policy:ItemTransformerPolicy",
    "ResidualItemPolicy": "agents.residual:ResidualItemPolicy",
    "RankingPolicy": "agents.policy:RankingPolicy",
    "ResidualRankingPolicy": "agents.residual:ResidualRankingPolicy",
}


def _import(spec: str, what: str) -> Any:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {what} {spec!r}: {err}") from err


def policy_class(name: str) -> type:
    """One of our policy classes by name (``POLICIES``) or ``"module:Class"``."""
    spec = POLICIES.get(name, name)
    if ":" not in spec:
        raise ValueError(f"unknown policy {name!r}; use one of {sorted(POLICIES)} or 'module:Class'")
    return _import(spec, "policy")


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The algorithm class for a short name or a ``"module:Class"`` path."""
    spec = ALGORITHMS.get(name.lower(), name)
    if ":" not in spec:
        raise ValueError(f"unknown algorithm {name!r}; use one of {sorted(ALGORITHMS)} or 'module:Class'")
    cls = _import(spec, "algorithm")
    if not (isinstance(cls, type) and issubclass(cls, BaseAlgorithm)):
        raise TypeError(f"{spec!r} is not a stable-baselines3 BaseAlgorithm subclass")
    return cls


def _policy_for(cls: type[BaseAlgorithm]):
    if "RankingPolicy" in getattr(cls, "policy_aliases", {}):
        return "RankingPolicy"
    if cls.__name__ == "RecurrentPPO":
        raise ValueError("recurrent_ppo needs an LSTM policy; our item policy already sees every round, "
                         "use 'ppo' instead")
    from agents.policy import ItemTransformerPolicy

    return ItemTransformerPolicy


def make(name: str, env: Any, **kwargs: Any) -> BaseAlgorithm:
    """An algorithm (by short name or ``"module:Class"``) on ``env`` with our item policy.

    ``kwargs`` go to the algorithm's constructor (``policy_kwargs`` for the Transformer: d_model, n_layers,
    n_heads, dropout). ``policy=`` overrides the policy.
    """
    cls = algorithm_class(name)
    policy = kwargs.pop("policy", None) or _policy_for(cls)
    if isinstance(policy, str) and policy not in getattr(cls, "policy_aliases", {}):
        policy = policy_class(policy)
    return cls(policy, env, **kwargs)


AGENT_META = "rsd_agent.json"  # inside the zip: SB3's loader reads only "data" and "*.pth" entries


def save_agent(model: BaseAlgorithm, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """``model.save(path)`` atomically, with metadata naming the algorithm, so ``load_agent`` needs no hint.

    The zip is written to a temp file and renamed, so a kill mid-write leaves the previous checkpoint. The
    metadata (algorithm, timesteps, ``meta``) is stored inside the zip, atomic with the weights, and copied
    to ``<path>.json`` for people and older readers.
    """
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_suffix(".zip")
    info = {"algorithm": f"{type(model).__module__}:{type(model).__name__}",
            "num_timesteps": int(model.num_timesteps), **(meta or {})}
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(AGENT_META, json.dumps(info))
    write_json(path.with_suffix(".json"), info)
    return path


def agent_meta(path: str | Path) -> dict[str, Any]:
    """The metadata ``save_agent`` stored in a checkpoint (falls back to the ``.json`` beside older zips)."""
    path = Path(path)
    if path.is_dir():  # a policy folder (agents.policy_agent)
        from agents.policy_agent import policy_agent_meta

        return policy_agent_meta(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if AGENT_META in archive.namelist():
                return json.loads(archive.read(AGENT_META))
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable agent checkpoint ({err}); it may be truncated by an "
                         "interrupted write: use another checkpoint or retrain") from err
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise ValueError(f"{path} has no {sidecar.name} saying which algorithm made it; pass algorithm=")
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{sidecar} is not valid JSON ({err}); pass algorithm= to load {path.name}") from err


def agent_location(path: str | Path) -> Path:
    """What ``load_agent(path)`` reads: a policy folder, or a checkpoint file (``.zip`` may be left off).
    Raises ``FileNotFoundError`` when there is neither."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".zip").exists():
        path = path.with_suffix(".zip")
    if not path.exists():
        raise FileNotFoundError(f"no agent checkpoint at {path}")
    return path


def load_agent(path: str | Path, algorithm: str | None = None, env: Any = None, **kwargs: Any) -> Any:
    """Load a checkpoint saved by ``save_agent`` (or any SB3 zip, given ``algorithm``), or a policy folder
    (``agents.policy_agent``: what an RLlib run saves as ``model/``), which ranks but does not train on."""
    path = agent_location(path)
    if path.is_dir():
        from agents.policy_agent import load_policy_agent

        return load_policy_agent(path)
    if algorithm is None:
        algorithm = agent_meta(path)["algorithm"]
    try:
        return algorithm_class(algorithm).load(path, env=env, **kwargs)
    except (zipfile.BadZipFile, EOFError, KeyError) as err:
        raise ValueError(f"{path} is not a readable agent checkpoint ({err!r}); it may be truncated by an "
                         "interrupted write: use another checkpoint or retrain") from err
