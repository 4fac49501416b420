"""KV states of an ``HFVerifier``: what is kept between forwards, and the cache one forward runs on.

States are kept as plain per-layer tensors (``KV``, ``Prefix``), and a fresh cache is assembled for every
forward: ``DynamicCache.crop`` cannot roll back sliding-window layers, so stored states must never be the
cache a forward writes to. ``CacheLayout.build`` copies the states once into preallocated buffers (several
requests left-padded to a common length) whose layers then write new tokens in place; ``snapshot`` copies
them out again. ``PromptStore`` keeps prompt states across calls under a memory cap.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def concat(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer tensors joined along the token axis."""
    return [torch.cat([a, b], dim=2) for a, b in zip(first, second)]


@dataclass
class KV:
    """Per-layer keys/values after ``length`` tokens (sliding layers hold only their window)."""

    keys: list[torch.Tensor]  # each (1, heads, S_l, head_dim)
    values: list[torch.Tensor]
    length: int

    @property
    def nbytes(self) -> int:
        return _nbytes([*self.keys, *self.values])


EMPTY = KV([], [], 0)


@dataclass
class Prefix:
    """A verified proposal: its fed answer tokens, their KV (on top of the prompt) and its rows."""

    tokens: np.ndarray  # (N-1,) token ids fed after the prompt
    keys: list[torch.Tensor]  # each (1, heads, N-1, head_dim)
    values: list[torch.Tensor]
    rows: np.ndarray  # (N, N)

    @property
    def nbytes(self) -> int:
        return _nbytes([*self.keys, *self.values])

    def head(self, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values of its first ``k`` fed tokens."""
        return [t[..., :k, :] for t in self.keys], [t[..., :k, :] for t in self.values]


@dataclass
class TaskState:
    """Everything kept per prompt: its KV, the last token's final hidden state, and the prefix store."""

    prompt: KV
    hidden: torch.Tensor  # (1, d): the next-token distribution after the prompt comes from it
    prefixes: OrderedDict[bytes, Prefix] = field(default_factory=OrderedDict)

    @property
    def nbytes(self) -> int:
        return self.prompt.nbytes + sum(p.nbytes for p in self.prefixes.values())

    def longest_prefix(self, fed: np.ndarray) -> tuple[int, Prefix | None]:
        """Longest common prefix of ``fed`` with a stored proposal: (tokens reusable, that proposal)."""
        best_k, best = 0, None
        for prefix in self.prefixes.values():
            diff = np.flatnonzero(prefix.tokens != fed)
            k = int(diff[0]) if diff.size else len(fed)
            if k > best_k:
                best_k, best = k, prefix
        if best is not None:
            self.prefixes.move_to_end(best.tokens.tobytes())
        return best_k, best

    def extended(self, prefix: Prefix | None, k: int) -> KV:
        """The prompt's KV followed by the first ``k`` fed tokens of ``prefix``."""
        if not k or prefix is None:
            return self.prompt
        keys, values = prefix.head(k)
        return KV(concat(self.prompt.keys, keys), concat(self.prompt.values, values), self.prompt.length + k)


@dataclass
class Request:
    """One row of a batched forward: a past KV state plus the tokens to feed on top of it."""

    past: KV
    tokens: list[int]


class _InPlaceMixin:
    """A cache layer over a preallocated buffer: the past in ``[:filled]``, new tokens written in place.

    Subclassing transformers' own layer types keeps mask sizes (``get_seq_length``, ``cumulative_length``)
    right; only ``update`` changes, from concatenating everything to writing the new slots.
    """

    window: int | None = None

    def attach(self, keys: torch.Tensor, values: torch.Tensor, filled: int, length: int) -> _InPlaceMixin:
        self.lazy_initialization(keys, values)
        self.buf_k, self.buf_v, self.filled = keys, values, filled
        self.keys, self.values = keys[..., :filled, :], values[..., :filled, :]
        if self.window is not None:
            self.cumulative_length = length
        return self

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        q = key_states.shape[-2]
        end = self.filled + q
        if end > self.buf_k.shape[-2]:
            raise RuntimeError(f"KV buffer overflow: {end} > {self.buf_k.shape[-2]} slots")
        self.buf_k[..., self.filled : end, :] = key_states
        self.buf_v[..., self.filled : end, :] = value_states
        self.filled = end
        # a sliding layer attends to at most window-1 past tokens (what its get_mask_sizes announces)
        begin = 0 if self.window is None else max(0, end - (self.window - 1) - q)
        self.keys, self.values = self.buf_k[..., begin:end, :], self.buf_v[..., begin:end, :]
        if self.window is not None:
            self.cumulative_length += q
        return self.keys, self.values


class _InPlaceFull(_InPlaceMixin, DynamicLayer):
    pass


class _InPlaceSliding(_InPlaceMixin, DynamicSlidingWindowLayer):
    def __init__(self, sliding_window: int) -> None:
        super().__init__(sliding_window=sliding_window)
        self.window = sliding_window


class CacheLayout:
    """A model's cache layers (full attention or a sliding window each): how to build and copy its KV."""

    def __init__(self, model: Any) -> None:
        import transformers
        from transformers import DynamicCache

        decoder = model.get_decoder()
        if "cache" not in inspect.signature(decoder.forward).parameters:  # else it would vanish into **kwargs
            raise ImportError(
                f"{type(decoder).__name__}.forward takes no `cache` argument (transformers "
                f"{transformers.__version__}; before 5.24 the KV cache was passed as `past_key_values`), so the "
                "verifier's KV reuse cannot work: pip install 'transformers>=5.24,<6'"
            )
        self.config = model.config
        self.windows: list[int | None] = []
        for layer in DynamicCache(config=self.config).layers:
            if isinstance(layer, DynamicSlidingWindowLayer):
                self.windows.append(int(layer.sliding_window))
            elif type(layer) is DynamicLayer:
                self.windows.append(None)
            else:
                raise NotImplementedError(
                    f"{type(model).__name__} uses {type(layer).__name__} cache layers; HFVerifier "
                    "supports full-attention and sliding-window decoder models (Llama, Qwen, Mistral, Gemma)"
                )

    def window_len(self, layer: int, length: int) -> int:
        window = self.windows[layer]
        return length if window is None else min(length, window - 1)

    def snapshot(self, cache: Any, length: int) -> KV:
        """Own copies of a cache's tensors after ``length`` tokens (sliding layers: their window only)."""
        keys, values = [], []
        for li, lay in enumerate(cache.layers):
            s = self.window_len(li, length)
            keys.append(lay.keys[..., lay.keys.shape[2] - s :, :].clone())
            values.append(lay.values[..., lay.values.shape[2] - s :, :].clone())
        return KV(keys, values, length)

    def snapshot_row(self, cache: Any, row: int, past_length: int, fed: int) -> KV:
        """Own copy of one batch row's KV from a cache ``build`` made on pasts of one common length
        ``past_length``, after its first ``fed`` new tokens (right padding fed after them is left out)."""
        keys, values = [], []
        length = past_length + fed
        for li, lay in enumerate(cache.layers):
            end = self.window_len(li, past_length) + fed  # this row's last real slot in the layer's buffer
            s = self.window_len(li, length)
            keys.append(lay.buf_k[row : row + 1, :, end - s : end].clone())
            values.append(lay.buf_v[row : row + 1, :, end - s : end].clone())
        return KV(keys, values, length)

    def build(self, pasts: Sequence[KV], room: int) -> Any:
        """A cache holding the given states, left-padded to a common length, with ``room`` free slots.

        One copy into preallocated buffers; new tokens are then written in place (no per-forward
        concatenation of the whole KV, which matters for batches and AR steps).
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        p_max = max(p.length for p in pasts)
        for li in range(len(cache.layers)):
            s_max = self.window_len(li, p_max)
            ref = pasts[0].keys[li]
            shape = (len(pasts), ref.shape[1], s_max + room, ref.shape[3])
            bufs = ref.new_empty(shape), ref.new_empty(shape)
            for buf, per_past in zip(bufs, ([p.keys[li] for p in pasts], [p.values[li] for p in pasts])):
                for i, (past, t) in enumerate(zip(pasts, per_past)):
                    s_i = self.window_len(li, past.length)
                    buf[i, :, : s_max - s_i].zero_()  # left padding: masked, but must be finite
                    buf[i, :, s_max - s_i : s_max] = t[0, :, t.shape[2] - s_i :]
            window = self.windows[li]
            layer = _InPlaceFull() if window is None else _InPlaceSliding(window)
            cache.layers[li] = layer.attach(bufs[0], bufs[1], s_max, p_max)
        return cache


class PromptStore:
    """Prompt KV kept across calls: the shared instruction states, and per-prompt states in an LRU.

    ``prompt_bytes`` caps all prompt states together (their prefix stores included); ``prefix_bytes`` caps
    each prompt's store of verified proposals.
    """

    def __init__(self, prompt_bytes: int, prefix_bytes: int) -> None:
        self.prompt_bytes = prompt_bytes
        self.prefix_bytes = prefix_bytes
        self.instructions: dict[tuple[int, ...], KV] = {}
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()

    def get(self, key: str) -> TaskState | None:
        state = self.tasks.get(key)
        if state is not None:
            self.tasks.move_to_end(key)
        return state

    def put(self, key: str, state: TaskState) -> None:
        self._evict(state.nbytes)
        self.tasks[key] = state

    def _evict(self, incoming: int) -> None:
        total = incoming + sum(s.nbytes for s in self.tasks.values())
        while self.tasks and total > self.prompt_bytes:
            _, old = self.tasks.popitem(last=False)
            total -= old.nbytes

    def remember(self, state: TaskState, prefix: Prefix) -> None:
        """Store a verified proposal of ``state``'s prompt, evicting the least recently used ones."""
        key = prefix.tokens.tobytes()
        state.prefixes[key] = prefix
        state.prefixes.move_to_end(key)
        size = sum(p.nbytes for p in state.prefixes.values())
        while len(state.prefixes) > 1 and size > self.prefix_bytes:
            size -= state.prefixes.popitem(last=False)[1].nbytes
        self._evict(0)  # the prompt-cache cap counts prefix stores too

    def clear(self, keep_prompts: bool = False, keep_instruction: bool = False) -> None:
        """Drop verified proposals, and prompt states unless ``keep_prompts`` (instructions: see there)."""
        for state in self.tasks.values():
            state.prefixes.clear()
        if not keep_prompts:
            self.tasks.clear()
            if not keep_instruction:
                self.instructions.clear()
