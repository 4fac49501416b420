"""HFVerifier: a transformers causal LM as RSD's target LLM, made fast on CPU by reusing KV states.

Cost model (Gemma 3 270M, 2 CPU cores): prefilling the ~1.5k-token prompt dominates, so

* the instruction shared by all tasks of a domain and N is prefilled once (its KV is reused),
* each task's prompt is prefilled once and its KV kept in an LRU with a memory cap,
* a verification feeds only the N-1 answer tokens on top of the cached prompt KV,
* a proposal sharing a prefix with an earlier verified proposal of the task feeds only the new suffix,
* logits are computed for the N identifier rows only (final hidden state x ``lm_head`` rows).

These caches save tokens and time, not LLM passes: passes follow the protocol's definition
(``rsd_env.verifiers.base``), so a warm cache never makes a method look cheaper in passes.

KV states are kept as plain per-layer tensors and a fresh ``DynamicCache`` is assembled for every forward:
``DynamicCache.crop`` cannot roll back sliding-window layers, and ``update`` concatenates (never writes in
place), so the stored tensors stay valid. Several requests share one forward by left-padding their KV.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from rsd_env.data.task import RankingTask
from rsd_env.verifiers import prompts
from rsd_env.verifiers.base import Verifier, best_unused, validate_ranking
from rsd_env.verifiers.model_store import BUNDLED_MODEL, bundled_model_dir, cache_root
from rsd_env.verifiers.prompts import DEFAULT_PASSAGE_TOKENS, check_passage_tokens
from rsd_env.verifiers.target_cache import TargetCache

BUNDLED_ADAPTER = "bundled"
_CHECK_N = 20  # identifiers checked at load time (the project's N); other N are checked on first use


def bundled_adapter_dir() -> Path:
    """Where the shipped LoRA ranking adapter for the bundled model lives (issue 7)."""
    return Path(str(resources.files("rsd_env.verifiers").joinpath("adapters", "gemma3-270m-rank-lora")))


# ---------------------------------------------------------------------------------------------------------
# KV states
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _KV:
    """Per-layer keys/values after ``length`` tokens (sliding layers hold only their window)."""

    keys: list[torch.Tensor]  # each (1, heads, S_l, head_dim)
    values: list[torch.Tensor]
    length: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


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


@dataclass
class _Prefix:
    """A verified proposal: its fed answer tokens, their KV (on top of the prompt) and its rows."""

    tokens: np.ndarray  # (N-1,) token ids fed after the prompt
    keys: list[torch.Tensor]  # each (1, heads, N-1, head_dim)
    values: list[torch.Tensor]
    rows: np.ndarray  # (N, N)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class _TaskState:
    """Everything kept per prompt: its KV, the last token's final hidden state, and the prefix store."""

    prompt: _KV
    hidden: torch.Tensor  # (1, d): the next-token distribution after the prompt comes from it
    prefixes: OrderedDict[bytes, _Prefix] = field(default_factory=OrderedDict)

    @property
    def nbytes(self) -> int:
        return self.prompt.nbytes + sum(p.nbytes for p in self.prefixes.values())


@dataclass
class _Request:
    """One row of a batched forward: a past KV state plus the tokens to feed on top of it."""

    past: _KV
    tokens: list[int]


# ---------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1


def _resolve_model(model: str) -> str:
    """A folder or hub name that ``from_pretrained`` accepts, or a clear error."""
    if model == BUNDLED_MODEL:
        return str(bundled_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a transformers model folder; pass a folder "
                f"written by save_pretrained, a hub name, or {BUNDLED_MODEL!r}"
            )
        return str(path)
    if _looks_like_path(model):
        raise FileNotFoundError(
            f"no model folder at {model!r}; pass an existing folder, a hub name such as "
            f"'google/gemma-3-270m-it', or {BUNDLED_MODEL!r} for the bundled offline model"
        )
    return model  # a hub name


def _resolve_adapter(adapter: str | Path | None, model: str) -> Path | None:
    if adapter is None:
        return None
    if str(adapter) == BUNDLED_ADAPTER:
        if model != BUNDLED_MODEL:
            raise ValueError(
                f"the bundled adapter belongs to the bundled model {BUNDLED_MODEL!r}, not {model!r}; "
                "pass adapter=None (raw model) or the folder of an adapter trained for that model"
            )
        path = bundled_adapter_dir()
        if not (path / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"the bundled ranking adapter is not installed (expected {path}); pass adapter=None to use "
                "the raw base model"
            )
        return path
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"no peft adapter at {path} (expected adapter_config.json there); pass a folder written by "
            "PeftModel.save_pretrained, 'bundled', or None"
        )
    return path


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:0'") from err


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 by default: verification rows must match the AR target to well below logit gaps."""
    if dtype == "auto":
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(table)}")
    if device.type == "cpu" and table[dtype] == torch.float16:
        raise ValueError("float16 is not supported on CPU; use dtype='float32' or 'bfloat16'")
    return table[dtype]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# the verifier
# ---------------------------------------------------------------------------------------------------------
class HFVerifier(Verifier):
    """A transformers causal LM verifying whole rankings in one pass on cached prompt KV.

    ``model``: ``BUNDLED_MODEL`` (offline Gemma 3 270M), a local folder, or a hub name.
    ``adapter``: ``"bundled"`` (the shipped ranking LoRA, merged at load), ``None`` (raw model), or a
    peft adapter folder. ``target_cache``: True = ``cache_root()/targets``, a folder, or False.
    ``prompt_cache_mb`` caps the per-task prompt KV kept across calls (LRU over tasks);
    ``prefix_cache_mb`` caps each task's store of verified proposals used for prefix reuse.
    """

    name = "hf"

    def __init__(
        self,
        model: str = BUNDLED_MODEL,
        adapter: str | Path | None = BUNDLED_ADAPTER,
        device: str = "auto",
        dtype: str = "auto",
        passage_tokens: int | None = DEFAULT_PASSAGE_TOKENS,
        target_cache: str | Path | bool = True,
        prompt_cache_mb: int = 1024,
        prefix_cache_mb: int = 32,
    ) -> None:
        super().__init__()
        check_passage_tokens(passage_tokens)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = str(model)
        self._passage_tokens = passage_tokens
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        source = _resolve_model(self.model_name)
        adapter_path = _resolve_adapter(adapter, self.model_name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=self.dtype)
        except OSError as err:
            where = "the Hugging Face hub" if source == self.model_name else source
            raise RuntimeError(
                f"could not load model {self.model_name!r} from {where}: {err}. Offline, pass a local folder "
                f"or {BUNDLED_MODEL!r}; online, check the name and your access to it"
            ) from err
        self.adapter = str(adapter_path) if adapter_path is not None else None
        if adapter_path is not None:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, str(adapter_path)).merge_and_unload()
        self.model = lm.to(self.device).eval()
        self._decoder = self.model.get_decoder()
        self._config = self.model.config.get_text_config(decoder=True)
        self._softcap = getattr(self._config, "final_logit_softcapping", None)
        self._max_len = int(getattr(self._config, "max_position_embeddings", 1 << 30))
        self._pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._head = self.model.get_output_embeddings()
        self._id_cache: dict[int, tuple[list[int], torch.Tensor, torch.Tensor | None]] = {}
        self._layer_windows = self._cache_layout()
        self._identifiers(_CHECK_N)  # clear error now if the identifiers are not single tokens
        self._check_identifier_head()

        self.prompt_cache_bytes = int(prompt_cache_mb) << 20
        self.prefix_cache_bytes = int(prefix_cache_mb) << 20
        self._instructions: dict[tuple[int, ...], _KV] = {}
        self._tasks: OrderedDict[str, _TaskState] = OrderedDict()
        self._encoded: OrderedDict[RankingTask, tuple[list[int], list[int], str]] = OrderedDict()
        self._targets = TargetCache.from_option(target_cache, cache_root() / "targets")
        self._model_digest = self._make_digest(adapter_path)

    # ---- set-up checks -------------------------------------------------------------------------------
    def _cache_layout(self) -> list[int | None]:
        """Sliding window per layer (None = full attention); other cache kinds are not supported."""
        from transformers import DynamicCache

        windows: list[int | None] = []
        for layer in DynamicCache(config=self.model.config).layers:
            if isinstance(layer, DynamicSlidingWindowLayer):
                windows.append(int(layer.sliding_window))
            elif type(layer) is DynamicLayer:
                windows.append(None)
            else:
                raise NotImplementedError(
                    f"{type(self.model).__name__} uses {type(layer).__name__} cache layers; HFVerifier "
                    "supports full-attention and sliding-window decoder models (Llama, Qwen, Mistral, Gemma)"
                )
        return windows

    def _identifiers(self, n: int) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """Identifier token ids and their ``lm_head`` rows (and biases)."""
        if n not in self._id_cache:
            ids = prompts.identifier_token_ids(self.tokenizer, n)
            index = torch.tensor(ids, device=self.device)
            weight = self._head.weight.index_select(0, index).detach()
            bias = self._head.bias.index_select(0, index).detach() if self._head.bias is not None else None
            self._id_cache[n] = (ids, weight, bias)
        return self._id_cache[n]

    @torch.inference_mode()
    def _check_identifier_head(self) -> None:
        """The identifier-rows shortcut must equal the model's own logits (e.g. no unknown logit scaling)."""
        ids, _, _ = self._identifiers(_CHECK_N)
        probe = self.tokenizer("Rank: [A] x [B] y. Ranking: A B", return_tensors="pt")["input_ids"]
        probe = probe.to(self.device)
        full = self.model(input_ids=probe, logits_to_keep=1).logits[0, -1, ids].float()
        hidden = self._decoder(input_ids=probe).last_hidden_state[0, -1:]
        mine = self._id_logits(hidden, _CHECK_N)[0]
        if not torch.allclose(full, mine, atol=1e-3 * (1 + full.abs().max().item()), rtol=1e-3):
            raise NotImplementedError(
                f"{type(self.model).__name__} transforms its output logits in a way HFVerifier does not "
                "reproduce (only final_logit_softcapping is supported)"
            )

    def _make_digest(self, adapter_path: Path | None) -> str:
        """Model identity: name, config, a weight checksum (so merged adapters count), dtype."""
        h = hashlib.sha256()
        h.update(self.model_name.encode())
        h.update(self.model.config.to_json_string(use_diff=False).encode())
        with torch.inference_mode():
            for pname, p in self.model.named_parameters():
                h.update(pname.encode())
                h.update(p.detach().reshape(-1)[:2048].float().cpu().numpy().tobytes())
        if adapter_path is not None:
            for f in sorted(adapter_path.glob("adapter_model.*")):
                h.update(_file_digest(f).encode())
        h.update(str(self.dtype).encode())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        return f"hf:{self.model_name}:{self._model_digest}:pt={self._passage_tokens}"

    @property
    def passage_tokens(self) -> int | None:
        """Token budget per passage; changing it drops the prompt caches (it changes every prompt)."""
        return self._passage_tokens

    @passage_tokens.setter
    def passage_tokens(self, value: int | None) -> None:
        check_passage_tokens(value)
        self._passage_tokens = value
        self._encoded.clear()
        self.clear_cache()

    # ---- prompts ---------------------------------------------------------------------------------------
    def encode(self, task: RankingTask) -> tuple[list[int], list[int], str]:
        """(instruction ids, body ids, prompt hash) of a task, with the context-length check."""
        hit = self._encoded.get(task)
        if hit is not None:
            self._encoded.move_to_end(task)
            return hit
        self._identifiers(task.n)
        head, body = prompts.encode(task, self.tokenizer, self.passage_tokens)
        total = len(head) + len(body) + task.n
        if total > self._max_len:
            raise ValueError(
                f"task {task.task_id!r}: prompt of {len(head) + len(body)} tokens + {task.n} answer tokens "
                f"exceeds the model's context length {self._max_len}; lower passage_tokens "
                f"(now {self.passage_tokens}) or the number of candidates"
            )
        key = hashlib.sha256(np.asarray(head + body, dtype=np.int64).tobytes()).hexdigest()
        self._encoded[task] = (head, body, key)
        if len(self._encoded) > 4096:
            self._encoded.popitem(last=False)
        return head, body, key

    def prompt_ids(self, task: RankingTask) -> list[int]:
        head, body, _ = self.encode(task)
        return head + body

    # ---- the forward pass ------------------------------------------------------------------------------
    def _snapshot(self, cache: Any, length: int) -> _KV:
        """Own copies of a cache's tensors after ``length`` tokens (sliding layers: their window only)."""
        keys, values = [], []
        for li, lay in enumerate(cache.layers):
            s = self._window_len(li, length)
            keys.append(lay.keys[..., lay.keys.shape[2] - s :, :].clone())
            values.append(lay.values[..., lay.values.shape[2] - s :, :].clone())
        return _KV(keys, values, length)

    def _window_len(self, layer: int, length: int) -> int:
        window = self._layer_windows[layer]
        return length if window is None else min(length, window - 1)

    def _build_cache(self, pasts: Sequence[_KV], room: int) -> Any:
        """A cache holding the given states, left-padded to a common length, with ``room`` free slots.

        One copy into preallocated buffers; new tokens are then written in place (no per-forward
        concatenation of the whole KV, which matters for batches and AR steps).
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        p_max = max(p.length for p in pasts)
        for li in range(len(cache.layers)):
            s_max = self._window_len(li, p_max)
            ref = pasts[0].keys[li]
            shape = (len(pasts), ref.shape[1], s_max + room, ref.shape[3])
            bufs = ref.new_empty(shape), ref.new_empty(shape)
            for buf, per_past in zip(bufs, ([p.keys[li] for p in pasts], [p.values[li] for p in pasts])):
                for i, (past, t) in enumerate(zip(pasts, per_past)):
                    s_i = self._window_len(li, past.length)
                    buf[i, :, : s_max - s_i].zero_()  # left padding: masked, but must be finite
                    buf[i, :, s_max - s_i : s_max] = t[0, :, t.shape[2] - s_i :]
            window = self._layer_windows[li]
            layer = _InPlaceFull() if window is None else _InPlaceSliding(window)
            cache.layers[li] = layer.attach(bufs[0], bufs[1], s_max, p_max)
        return cache

    def _forward(self, requests: Sequence[_Request]) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, q_max, d) of the fed tokens, and the cache after them."""
        b = len(requests)
        q_max = max(len(r.tokens) for r in requests)
        lengths = [r.past.length for r in requests]
        p_max = max(lengths)
        tokens = torch.full((b, q_max), self._pad_id, dtype=torch.long)
        for i, r in enumerate(requests):
            tokens[i, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long)
        positions = torch.tensor(lengths).unsqueeze(1) + torch.arange(q_max).unsqueeze(0)
        mask = None
        if b > 1 and min(lengths) != p_max:
            mask = torch.ones((b, p_max + q_max), dtype=torch.long)
            for i, length in enumerate(lengths):
                mask[i, : p_max - length] = 0
            mask = mask.to(self.device)
        cache = self._build_cache([r.past for r in requests], q_max) if p_max else None
        out = self._decoder(
            input_ids=tokens.to(self.device),
            position_ids=positions.to(self.device),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
        )
        return out.last_hidden_state, out.cache

    def _id_logits(self, hidden: torch.Tensor, n: int) -> torch.Tensor:
        """Logits of the N identifiers only: hidden x lm_head rows (+ the model's final soft-capping)."""
        _, weight, bias = self._identifiers(n)
        logits = hidden @ weight.T
        if bias is not None:
            logits = logits + bias
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.float()

    def _rows(self, hidden: torch.Tensor, n: int) -> np.ndarray:
        return torch.log_softmax(self._id_logits(hidden, n), dim=-1).cpu().numpy().astype(np.float64)

    # ---- per-task state --------------------------------------------------------------------------------
    @torch.inference_mode()
    def _instruction_state(self, head: list[int]) -> _KV:
        key = tuple(head)
        if key not in self._instructions:
            with self.timed("prefill", tokens=len(head)):
                _, cache = self._forward([_Request(_KV([], [], 0), head)])
            self._instructions[key] = self._snapshot(cache, len(head))
        return self._instructions[key]

    def _task_state(self, task: RankingTask) -> _TaskState:
        head, body, key = self.encode(task)
        return self._prompt_state(head, body, key)

    @torch.inference_mode()
    def _prompt_state(self, head: list[int], body: list[int], key: str) -> _TaskState:
        """The prompt's KV, prefilled once on top of the shared instruction KV and kept in the LRU."""
        state = self._tasks.get(key)
        if state is not None:
            self._tasks.move_to_end(key)
            return state
        past = self._instruction_state(head) if head else _KV([], [], 0)
        with self.timed("prefill", tokens=len(body)):
            hidden, cache = self._forward([_Request(past, body)])
        state = _TaskState(self._snapshot(cache, len(head) + len(body)), hidden[0, -1:].clone())
        self._evict(state.nbytes)
        self._tasks[key] = state
        return state

    def _evict(self, incoming: int) -> None:
        total = incoming + sum(s.nbytes for s in self._tasks.values())
        while self._tasks and total > self.prompt_cache_bytes:
            _, old = self._tasks.popitem(last=False)
            total -= old.nbytes

    def _remember(self, state: _TaskState, prefix: _Prefix) -> None:
        key = prefix.tokens.tobytes()
        state.prefixes[key] = prefix
        state.prefixes.move_to_end(key)
        size = sum(p.nbytes for p in state.prefixes.values())
        while len(state.prefixes) > 1 and size > self.prefix_cache_bytes:
            size -= state.prefixes.popitem(last=False)[1].nbytes
        self._evict(0)  # the prompt-cache cap counts prefix stores too

    def clear_cache(self, keep_prompts: bool = False) -> None:
        """Drop in-memory targets and verified-proposal states (and, unless ``keep_prompts``, prompt KV).

        The disk target cache stays. Tests use this to recompute rows instead of reading stored ones.
        """
        self._targets.memory.clear()
        for state in self._tasks.values():
            state.prefixes.clear()
        if not keep_prompts:
            self._instructions.clear()
            self._tasks.clear()

    # ---- verification ----------------------------------------------------------------------------------
    def _answer_tokens(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        ids, _, _ = self._identifiers(task.n)
        return np.asarray(ids, dtype=np.int64)[ranking]

    def _plan(self, state: _TaskState, fed: np.ndarray) -> tuple[int, _Prefix | None]:
        """Longest common prefix with a stored proposal: (tokens reusable, that proposal)."""
        best_k, best = 0, None
        for prefix in state.prefixes.values():
            diff = np.flatnonzero(prefix.tokens != fed)
            k = int(diff[0]) if diff.size else len(fed)
            if k > best_k:
                best_k, best = k, prefix
        if best is not None:
            state.prefixes.move_to_end(best.tokens.tobytes())
        return best_k, best

    @torch.inference_mode()
    def _rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Rows for several validated proposals; all new suffixes share one padded forward pass."""
        states = [self._task_state(task) for task, _ in requests]
        results: list[np.ndarray | None] = [None] * len(requests)
        work: list[tuple[int, _Request, int, _Prefix | None, np.ndarray]] = []
        for i, ((task, ranking), state) in enumerate(zip(requests, states)):
            fed = self._answer_tokens(task, ranking)[:-1]
            if not len(fed):  # a single candidate: the first-token row is everything
                results[i] = self._rows(state.hidden, task.n)
                continue
            k, prefix = self._plan(state, fed)
            if prefix is not None and k == len(fed):
                results[i] = prefix.rows.copy()
                continue
            past = state.prompt
            if k:
                past = _KV(
                    [torch.cat([pk, ak[..., :k, :]], dim=2) for pk, ak in zip(past.keys, prefix.keys)],
                    [torch.cat([pv, av[..., :k, :]], dim=2) for pv, av in zip(past.values, prefix.values)],
                    past.length + k,
                )
            work.append((i, _Request(past, fed[k:].tolist()), k, prefix, fed))
        if work:
            tokens = sum(len(w[1].tokens) for w in work)
            with self.timed("verify", tokens=tokens):
                hidden, cache = self._forward([w[1] for w in work])
            q_max = hidden.shape[1]
            for row, (i, req, k, prefix, fed) in enumerate(work):
                task, _ = requests[i]
                state = states[i]
                q = len(req.tokens)
                rows = np.empty((task.n, task.n))
                rows[0] = self._rows(state.hidden, task.n)[0]
                if k:
                    rows[1 : k + 1] = prefix.rows[1 : k + 1]
                rows[k + 1 :] = self._rows(hidden[row, :q], task.n)
                new_k = [lay.keys[row : row + 1, :, -q_max:][:, :, :q] for lay in cache.layers]
                new_v = [lay.values[row : row + 1, :, -q_max:][:, :, :q] for lay in cache.layers]
                if k:
                    new_k = [torch.cat([ak[..., :k, :], nk], dim=2) for ak, nk in zip(prefix.keys, new_k)]
                    new_v = [torch.cat([av[..., :k, :], nv], dim=2) for av, nv in zip(prefix.values, new_v)]
                self._remember(
                    state,
                    _Prefix(fed.copy(), [t.clone() for t in new_k], [t.clone() for t in new_v], rows.copy()),
                )
                results[i] = rows
        return [r for r in results if r is not None]

    def _first_token(self, task: RankingTask) -> np.ndarray:
        return self._rows(self._task_state(task).hidden, task.n)[0]

    def _verify_rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        return self._rows_batch([(task, ranking)])[0]

    def _verify_rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Several (task, ranking) pairs in one padded forward pass (tasks may differ)."""
        return self._rows_batch(requests)

    # ---- target ---------------------------------------------------------------------------------------
    def target_ranking(self, task: RankingTask) -> np.ndarray:
        """Constrained greedy AR on the cached prompt KV; cached in memory and on disk."""
        return self._targets.get_or_compute(
            self.fingerprint(), self.prompt_ids(task), task.n, lambda: self.decode_target(task),
            {"task_id": task.task_id},
        )

    @torch.inference_mode()
    def _decode_target(self, task: RankingTask) -> np.ndarray:
        """Constrained greedy AR decoding now, bypassing the target caches (the latency reference)."""
        state = self._task_state(task)
        ids, _, _ = self._identifiers(task.n)
        n = task.n
        rows = np.empty((n, n))
        rows[0] = self._rows(state.hidden, n)[0]
        used = np.zeros(n, dtype=bool)
        ranking: list[int] = []
        cache = self._build_cache([state.prompt], room=n - 1)
        with self.timed("ar", tokens=n - 1):
            for i in range(n):
                item = best_unused(rows[i], used)
                ranking.append(item)
                used[item] = True
                if i == n - 1:
                    break
                out = self._decoder(
                    input_ids=torch.tensor([[ids[item]]], device=self.device),
                    position_ids=torch.tensor([[state.prompt.length + i]], device=self.device),
                    cache=cache,
                    use_cache=True,
                )
                cache = out.cache
                rows[i + 1] = self._rows(out.last_hidden_state[0, -1:], n)[0]
        arr = np.asarray(ranking, dtype=np.int64)
        if n > 1:  # the AR pass is a verified proposal too: later proposals sharing its prefix reuse it
            fed = self._answer_tokens(task, arr)[:-1]
            self._remember(
                state,
                _Prefix(
                    fed,
                    [lay.keys[..., -(n - 1) :, :].clone() for lay in cache.layers],
                    [lay.values[..., -(n - 1) :, :].clone() for lay in cache.layers],
                    rows,
                ),
            )
        return arr


    # ---- full-vocabulary log-probs (what an OpenAI-style server returns) ---------------------------------
    @torch.inference_mode()
    def next_token_logprobs(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Full-vocabulary log-probs at positions ``start-1 .. len(ids)-1`` of a token sequence.

        Row r predicts ``ids[start + r]`` (the last row: the token after the sequence). ``ids[:start]``
        is prefilled once and kept in the same LRU as task prompts, like a server's prefix cache.
        """
        ids = [int(t) for t in ids]
        if not 1 <= start <= len(ids):
            raise ValueError(f"start must be in 1..{len(ids)} (the prefix to cache), got {start}")
        if len(ids) > self._max_len:
            raise ValueError(f"{len(ids)} tokens exceed the model's context length {self._max_len}")
        key = "ids:" + hashlib.sha256(np.asarray(ids[:start], dtype=np.int64).tobytes()).hexdigest()
        state = self._prompt_state([], ids[:start], key)
        hidden = state.hidden
        if start < len(ids):
            with self.timed("verify", tokens=len(ids) - start):
                out, _ = self._forward([_Request(state.prompt, ids[start:])])
            hidden = torch.cat([hidden, out[0]], dim=0)
        logits = self._head(hidden)
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return torch.log_softmax(logits.float(), dim=-1)

    # ---- references for tests and benchmarks -------------------------------------------------------------
    @torch.inference_mode()
    def rows_without_cache(self, task: RankingTask, ranking: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows from one fresh full forward over prompt + answer with the model's own full logits.

        The reference the cached path must equal; also the "no KV reuse" cost in the benchmark.
        """
        arr = validate_ranking(task, ranking)
        ids, _, _ = self._identifiers(task.n)
        with self.timed("fresh", passes=1, tokens=len(self.prompt_ids(task)) + task.n - 1):
            return full_forward_rows(self.model, self.prompt_ids(task), ids, arr, self.device)


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
