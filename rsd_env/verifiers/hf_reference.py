"""Uncached paths of an ``HFVerifier``: references for tests and benchmarks, and full-vocabulary log-probs.

None of these is on RSD's hot path. ``rows_without_cache`` is what the cached rows must equal (and the "no
KV reuse" cost in the benchmark); ``next_token_logprobs`` is what the local OpenAI-style server returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rsd_env.data.task import RankingTask
from rsd_env.verifiers.base import validate_ranking
from rsd_env.verifiers.hf_encoding import ids_key
from rsd_env.verifiers.hf_kv import Request
from rsd_env.verifiers.hf_model import softcap


@torch.inference_mode()
def full_forward_rows(
    model: Any,
    prompt_ids: Sequence[int],
    identifier_ids: Sequence[int],
    ranking: np.ndarray,
    device: Any = "cpu",
) -> np.ndarray:
    """(N, N) rows of any causal LM from one full forward over prompt + answer[:-1] (no cache, full vocab)."""
    columns = torch.tensor([int(t) for t in identifier_ids], device=device)
    answer = [int(identifier_ids[j]) for j in ranking]
    ids = torch.tensor([list(prompt_ids) + answer[:-1]], device=device)
    logits = model(input_ids=ids, logits_to_keep=len(answer)).logits[0].float()
    return torch.log_softmax(logits[:, columns], dim=-1).cpu().numpy().astype(np.float64)


class ReferencePaths:
    """Mixed into ``HFVerifier``: the paths that bypass its identifier-row shortcut and answer KV reuse."""

    @torch.inference_mode()
    def rows_without_cache(self: Any, task: RankingTask, ranking: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows from one fresh full forward over prompt + answer with the model's own full logits.

        The reference the cached path must equal; also the "no KV reuse" cost in the benchmark.
        """
        arr = validate_ranking(task, ranking)
        ids, _, _ = self._identifiers(task.n)
        with self.timed("fresh", passes=1, tokens=len(self.prompt_ids(task)) + task.n - 1):
            return full_forward_rows(self.model, self.prompt_ids(task), ids, arr, self.device)

    @torch.inference_mode()
    def next_token_logprobs(self: Any, ids: Sequence[int], start: int) -> torch.Tensor:
        """Full-vocabulary log-probs at positions ``start-1 .. len(ids)-1`` of a token sequence.

        Row r predicts ``ids[start + r]`` (the last row: the token after the sequence). ``ids[:start]``
        is prefilled once and kept in the same LRU as task prompts, like a server's prefix cache.
        """
        ids = [int(t) for t in ids]
        if not 1 <= start <= len(ids):
            raise ValueError(f"start must be in 1..{len(ids)} (the prefix to cache), got {start}")
        if len(ids) > self._max_len:
            raise ValueError(f"{len(ids)} tokens exceed the model's context length {self._max_len}")
        state = self._prompt_state([], ids[:start], "ids:" + ids_key(ids[:start]))
        hidden = state.hidden
        if start < len(ids):
            with self.timed("verify", tokens=len(ids) - start):
                out, _ = self._forward([Request(state.prompt, ids[start:])])
            hidden = torch.cat([hidden, out[0]], dim=0)
        logits = softcap(self._head(hidden), self._softcap)
        return torch.log_softmax(logits.float(), dim=-1)
