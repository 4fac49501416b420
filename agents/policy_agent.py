"""An agent saved as its policy alone: a folder that ranks without the algorithm that trained it.

RLlib's checkpoints hold a whole Ray algorithm; ranking needs only the policy. A policy folder holds
``policy.pt`` (our SB3 policy class, its constructor arguments, spaces and weights) and ``rsd_agent.json``
(algorithm, timesteps, evaluation). ``load_agent`` / ``agent:<folder>`` read it without Ray, and the
``PolicyAgent`` it returns has what ranking reads of an SB3 model: ``policy``, ``observation_space`` and
``num_timesteps``. A folder is written next to its target and renamed onto it, so a kill leaves the
previous folder or, in the instant between two renames, a hidden ``.<name>.old.tmp`` copy that
``recover_folders`` puts back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

from rsd_env.io import read_text, write_json

META_NAME = "rsd_agent.json"
WEIGHTS_NAME = "policy.pt"


@dataclass
class PolicyAgent:
    """A trained policy with what ranking reads of an SB3 model."""

    policy: BasePolicy
    num_timesteps: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def observation_space(self) -> spaces.Space:
        return self.policy.observation_space

    @property
    def action_space(self) -> spaces.Space:
        return self.policy.action_space


def policy_record(policy: BasePolicy, policy_name: str, policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What ``policy.pt`` holds: enough to rebuild ``policy`` without the trainer."""
    return {"policy": policy_name, "policy_kwargs": dict(policy_kwargs),
            "observation_space": policy.observation_space, "action_space": policy.action_space,
            "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()}}


def build_policy(name: str, observation_space: spaces.Space, action_space: spaces.Space,
                 policy_kwargs: dict[str, Any]) -> BasePolicy:
    """One of our policies by name (``agents.POLICIES``) for these spaces; it is not trained by SB3 here,
    so its optimizer's learning rate is irrelevant."""
    from agents import policy_class

    try:
        return policy_class(name)(observation_space, action_space, lambda _: 0.0, **policy_kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build policy {name!r} with policy_kwargs {policy_kwargs}: {err}") from err


def save_policy_agent(policy: BasePolicy, path: str | Path, policy_name: str, policy_kwargs: dict[str, Any],
                      meta: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write ``path/`` (``policy.pt`` + ``rsd_agent.json``) atomically; ``extra``: {name: writer(folder)}
    for more content, e.g. RLlib's own module checkpoint."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        torch.save(policy_record(policy, policy_name, policy_kwargs), tmp / WEIGHTS_NAME)
        for name, writer in (extra or {}).items():
            writer(tmp / name)
        write_json(tmp / META_NAME, {**meta, "policy": policy_name, "policy_kwargs": dict(policy_kwargs)}, indent=1)
    return path


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temp folder beside ``path``, moved onto it only if the block succeeds (the old folder is moved
    aside first, then deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.parent / f".{path.name}.old.tmp"
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_folders(folder: Path) -> None:
    """After a killed writer (call while holding the run's lock): a folder caught between ``atomic_folder``'s
    two renames gets its previous version back, half-written temp folders are deleted."""
    for tmp in Path(folder).glob(".*.tmp"):
        if not tmp.is_dir():
            continue
        if tmp.name.endswith(".old.tmp") and not (folder / tmp.name[1: -len(".old.tmp")]).exists():
            os.replace(tmp, folder / tmp.name[1: -len(".old.tmp")])
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def policy_agent_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a policy folder (algorithm, timesteps, evaluation)."""
    meta = Path(path) / META_NAME
    if not meta.exists():
        raise ValueError(f"{path} is a folder without {META_NAME}: not a policy folder; point agent: at an "
                         "RLlib run's model/ or best/ folder, or at an SB3 .zip")
    try:
        return json.loads(read_text(meta, "agent metadata"))
    except ValueError as err:
        raise ValueError(f"{meta} is not valid JSON ({err}); use another checkpoint or retrain") from err


def load_policy_agent(path: str | Path) -> PolicyAgent:
    """The ``PolicyAgent`` in a folder written by ``save_policy_agent`` (CPU, evaluation mode)."""
    path = Path(path)
    meta = policy_agent_meta(path)
    weights = path / WEIGHTS_NAME
    try:
        record = torch.load(weights, map_location="cpu", weights_only=False)
        policy = build_policy(record["policy"], record["observation_space"], record["action_space"],
                              record["policy_kwargs"])
        policy.load_state_dict(record["state_dict"])
    except (OSError, EOFError, KeyError, RuntimeError) as err:
        raise ValueError(f"{weights} is not a readable policy checkpoint ({type(err).__name__}: {err}); it may "
                         "be truncated: use another checkpoint or retrain") from err
    policy.set_training_mode(False)
    return PolicyAgent(policy, int(meta.get("num_timesteps", 0)), meta)
