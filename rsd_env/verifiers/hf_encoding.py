"""Token ids of task prompts for an ``HFVerifier``, kept in an LRU so that each task is tokenized once.

The prompt hash is the key of the task's KV state: tasks with the same text share one prefill.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from rsd_env.data.task import RankingTask
from rsd_env.verifiers import prompts

ENCODED_TASKS = 4096  # tokenized prompts kept (a few MB of ints)


def ids_key(ids: Sequence[int]) -> str:
    """A hash of a token sequence (the key of its KV state)."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class PromptEncoder:
    """(instruction ids, body ids, prompt hash) per task, with the context-length check."""

    def __init__(self) -> None:
        self._encoded: OrderedDict[RankingTask, tuple[list[int], list[int], str]] = OrderedDict()

    def encode(
        self, task: RankingTask, tokenizer: Any, passage_tokens: int | None, max_len: int
    ) -> tuple[list[int], list[int], str]:
        hit = self._encoded.get(task)
        if hit is not None:
            self._encoded.move_to_end(task)
            return hit
        head, body = prompts.encode(task, tokenizer, passage_tokens)
        total = len(head) + len(body) + task.n
        if total > max_len:
            raise ValueError(
                f"task {task.task_id!r}: prompt of {len(head) + len(body)} tokens + {task.n} answer tokens "
                f"exceeds the model's context length {max_len}; lower passage_tokens "
                f"(now {passage_tokens}) or the number of candidates"
            )
        entry = (head, body, ids_key(head + body))
        self._encoded[task] = entry
        if len(self._encoded) > ENCODED_TASKS:
            self._encoded.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._encoded.clear()
