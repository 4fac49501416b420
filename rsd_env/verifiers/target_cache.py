"""On-disk cache of target rankings: AR decoding is the expensive part, so train and eval pay it once.

Keys hash everything the target depends on (model fingerprint incl. adapter and dtype, the prompt's token
ids, N). Each entry is one small JSON file written to a temp file and renamed, so a crash never leaves a
half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rsd_env.io import write_json


def target_key(fingerprint: str, prompt_ids: Sequence[int], n: int) -> str:
    """Stable hex key of (model fingerprint, prompt token ids, N)."""
    h = hashlib.sha256()
    h.update(fingerprint.encode("utf-8"))
    h.update(b"\0")
    h.update(np.asarray(prompt_ids, dtype=np.int64).tobytes())
    h.update(f"\0n={n}".encode())
    return h.hexdigest()


class TargetCache:
    """Target rankings in memory and, unless ``folder`` is None, as ``<key>.json`` files on disk."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.memory: dict[str, np.ndarray] = {}

    @classmethod
    def from_option(cls, option: str | Path | bool | None, default: Path) -> TargetCache:
        """``True`` = ``default`` folder, ``False``/``None`` = memory only, else that folder."""
        if option is True:
            return cls(default)
        if option is False or option is None:
            return cls(None)
        return cls(option)

    def get_or_compute(
        self,
        fingerprint: str,
        prompt_ids: Sequence[int],
        n: int,
        compute: Callable[[], np.ndarray],
        meta: dict | None = None,
    ) -> np.ndarray:
        """The target for (model, prompt, N): from memory, else disk, else ``compute()`` (then stored)."""
        key = target_key(fingerprint, prompt_ids, n)
        ranking = self.memory.get(key)
        if ranking is None and self.folder is not None:
            ranking = self.get(key, n)
        if ranking is None:
            ranking = np.asarray(compute(), dtype=np.int64)
            if self.folder is not None:
                self.put(key, ranking, {"model": fingerprint, **(meta or {})})
        self.memory[key] = ranking
        return ranking.copy()

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str, n: int) -> np.ndarray | None:
        """The cached ranking, or None when absent or unreadable (then it is recomputed and rewritten)."""
        path = self._path(key)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            ranking = np.asarray(raw["ranking"], dtype=np.int64)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if ranking.shape != (n,) or sorted(ranking.tolist()) != list(range(n)):
            return None
        return ranking

    def put(self, key: str, ranking: np.ndarray, meta: dict | None = None) -> None:
        payload = {"ranking": [int(x) for x in ranking], **(meta or {})}
        write_json(self._path(key), payload)
