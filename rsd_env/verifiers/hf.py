"""HFVerifier: a transformers causal LM as RSD's target LLM, made fast on CPU by reusing KV states.

Cost model (Gemma 3 270M, 2 CPU cores): prefilling the prompt (~640 tokens for 20 candidates at the default
20 tokens per passage) dominates, so

* the instruction shared by all tasks of a domain and N is prefilled once (its KV is reused),
* each task's prompt is prefilled once and its KV kept in an LRU with a memory cap,
* a verification feeds only the N-1 answer tokens on top of the cached prompt KV,
* a proposal sharing a prefix with an earlier verified proposal of the task feeds only the new suffix,
* logits are computed for the N identifier rows only (final hidden state x ``lm_head`` rows).

These caches save tokens and time, not LLM passes: passes follow the protocol's definition
(``rsd_env.verifiers.base``), so a warm cache never makes a method look cheaper in passes.

The rooms around it: ``hf_model`` (which model, adapter, device; the identity digest), ``hf_kv`` (stored KV
states and the in-place cache a forward runs on), ``hf_encoding`` (prompt token ids) and ``hf_reference``
(uncached reference paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsd_env.data.task import RankingTask
from rsd_env.verifiers import prompts
from rsd_env.verifiers.base import Verifier, best_unused
from rsd_env.verifiers.hf_encoding import PromptEncoder
from rsd_env.verifiers.hf_kv import EMPTY, KV, CacheLayout, Prefix, PromptStore, Request, TaskState, concat
from rsd_env.verifiers.hf_model import (
    BUNDLED_ADAPTER,
    BUNDLED_ADAPTERS,
    FULL_LIST_ADAPTER,
    LIST_40_ADAPTER,
    LIST_60_ADAPTER,
    bundled_adapter_dir,
    load_model,
    model_digest,
    resolve_adapter,
    resolve_device,
    resolve_dtype,
    resolve_model,
    softcap,
)
from rsd_env.verifiers.hf_reference import ReferencePaths, full_forward_rows
from rsd_env.verifiers.model_store import BUNDLED_MODEL, cache_root
from rsd_env.verifiers.prompts import DEFAULT_PASSAGE_TOKENS, check_passage_tokens
from rsd_env.verifiers.target_cache import TargetCache

# names other modules import from here
__all__ = ["HFVerifier", "BUNDLED_ADAPTER", "BUNDLED_ADAPTERS", "FULL_LIST_ADAPTER", "LIST_40_ADAPTER",
           "LIST_60_ADAPTER", "BUNDLED_MODEL", "DEFAULT_PASSAGE_TOKENS", "bundled_adapter_dir", "full_forward_rows"]

_CHECK_N = 20  # identifiers checked at load time (the project's N); other N are checked on first use


@dataclass
class _Pending:
    """A proposal whose new suffix still has to be fed: where its rows go and what it reuses."""

    index: int  # position in the batch's requests
    request: Request
    reused: int  # leading fed tokens taken from ``prefix``
    prefix: Prefix | None
    fed: np.ndarray  # all N-1 answer tokens fed after the prompt


class HFVerifier(ReferencePaths, Verifier):
    """A transformers causal LM verifying whole rankings in one pass on cached prompt KV.

    ``model``: ``BUNDLED_MODEL`` (offline Gemma 3 270M), a local folder, or a hub name.
    ``adapter``: ``"bundled"`` (the shipped ranking LoRA, trained on 20 candidates, merged at load),
    ``"bundled-full"`` (its second stage, trained on whole top-100 lists), ``"bundled-40"`` (a third stage,
    trained on top-40 lists: it meets issue 21's bars at N = 40), ``"bundled-60"`` (a fourth, trained on
    top-60 lists: it meets them at N = 50, narrowly, not at 60), ``None`` (raw model), or a peft
    adapter folder. ``target_cache``: True = ``cache_root()/targets``, a folder, or False.
    ``prompt_cache_mb`` caps the per-task prompt KV kept across calls (LRU over tasks);
    ``prefix_cache_mb`` caps each task's store of verified proposals used for prefix reuse.
    ``prefill_batch_tokens`` caps the padded tokens of one batched prompt prefill (``prefill_batch``);
    ``None`` = 8192 on an accelerator, 1 (one prompt per pass) on a CPU, where batching prompts of ~600
    tokens measured no faster (``experiments.benchmarks.verifier_latency --prefill-batch``).
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
        prefill_batch_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_passage_tokens(passage_tokens)
        if prefill_batch_tokens is not None and (isinstance(prefill_batch_tokens, bool) or not isinstance(
                prefill_batch_tokens, int) or prefill_batch_tokens < 1):
            raise ValueError(f"prefill_batch_tokens must be an integer >= 1 (padded tokens per batched prompt "
                             f"prefill) or None (auto), got {prefill_batch_tokens!r}")
        self.model_name = str(model)
        self._passage_tokens = passage_tokens
        self.device = resolve_device(device)
        if prefill_batch_tokens is None:  # auto: a CPU is already saturated by one ~600-token prompt
            prefill_batch_tokens = 1 if self.device.type == "cpu" else 8192
        self.prefill_batch_tokens = prefill_batch_tokens
        self.dtype = resolve_dtype(dtype, self.device)
        source = resolve_model(self.model_name)
        adapter_path = resolve_adapter(adapter, self.model_name, bundled_adapter_dir)
        self.tokenizer, self.model = load_model(self.model_name, source, adapter_path, self.device, self.dtype)
        self.adapter = str(adapter_path) if adapter_path is not None else None
        self._decoder = self.model.get_decoder()
        self._config = self.model.config.get_text_config(decoder=True)
        self._softcap = getattr(self._config, "final_logit_softcapping", None)
        self._max_len = int(getattr(self._config, "max_position_embeddings", 1 << 30))
        self._pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._head = self.model.get_output_embeddings()
        self._id_cache: dict[int, tuple[list[int], torch.Tensor, torch.Tensor | None]] = {}
        self._layout = CacheLayout(self.model)
        self._identifiers(_CHECK_N)  # clear error now if the identifiers are not single tokens
        self._check_identifier_head()

        self._store = PromptStore(int(prompt_cache_mb) << 20, int(prefix_cache_mb) << 20)
        self._encoder = PromptEncoder()
        self._targets = TargetCache.from_option(target_cache, cache_root() / "targets")
        self._model_digest = model_digest(self.model_name, self.model, adapter_path, self.dtype)

    # ---- set-up checks -------------------------------------------------------------------------------
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
        self._encoder.clear()
        self.clear_cache()

    # ---- prompts ---------------------------------------------------------------------------------------
    def encode(self, task: RankingTask) -> tuple[list[int], list[int], str]:
        """(instruction ids, body ids, prompt hash) of a task, with the context-length check."""
        self._identifiers(task.n)  # a clear error first if this N's identifiers are not single tokens
        return self._encoder.encode(task, self.tokenizer, self.passage_tokens, self._max_len)

    def prompt_ids(self, task: RankingTask) -> list[int]:
        head, body, _ = self.encode(task)
        return head + body

    # ---- the forward pass ------------------------------------------------------------------------------
    def _forward(self, requests: Sequence[Request]) -> tuple[torch.Tensor, Any]:
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
        cache = self._layout.build([r.past for r in requests], q_max) if p_max else None
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
        return softcap(logits, self._softcap).float()

    def _rows(self, hidden: torch.Tensor, n: int) -> np.ndarray:
        return torch.log_softmax(self._id_logits(hidden, n), dim=-1).cpu().numpy().astype(np.float64)

    # ---- per-task state --------------------------------------------------------------------------------
    @torch.inference_mode()
    def _instruction_state(self, head: list[int]) -> KV:
        key = tuple(head)
        if key not in self._store.instructions:
            with self.timed("prefill", tokens=len(head)):
                _, cache = self._forward([Request(EMPTY, head)])
            self._store.instructions[key] = self._layout.snapshot(cache, len(head))
        return self._store.instructions[key]

    def _task_state(self, task: RankingTask) -> TaskState:
        head, body, key = self.encode(task)
        return self._prompt_state(head, body, key)

    @torch.inference_mode()
    def _prompt_state(self, head: list[int], body: list[int], key: str) -> TaskState:
        """The prompt's KV, prefilled once on top of the shared instruction KV and kept in the LRU."""
        state = self._store.get(key)
        if state is not None:
            return state
        past = self._instruction_state(head) if head else EMPTY
        with self.timed("prefill", tokens=len(body)):
            hidden, cache = self._forward([Request(past, body)])
        state = TaskState(self._layout.snapshot(cache, len(head) + len(body)), hidden[0, -1:].clone())
        self._store.put(key, state)
        return state

    @torch.inference_mode()
    def prefill_batch(self, tasks: Sequence[RankingTask]) -> None:
        """Prefill the uncached prompts of ``tasks`` in padded batches on their shared instruction KV.

        Bodies of different lengths are right-padded: a causal model's real tokens never attend to the
        padding after them, and each row's KV is copied out up to its own last real token. Prompts without
        a shared instruction (nothing to batch on) are prefilled one by one. Batches hold at most
        ``prefill_batch_tokens`` padded tokens (activation memory).
        """
        groups: dict[tuple[int, ...], dict[str, list[int]]] = {}
        for task in tasks:
            head, body, key = self.encode(task)
            if self._store.get(key) is None:
                if head:
                    groups.setdefault(tuple(head), {})[key] = body
                else:
                    self._prompt_state(head, body, key)
        for head, bodies in groups.items():
            past = self._instruction_state(list(head))
            todo = sorted(bodies.items(), key=lambda kv: len(kv[1]))  # similar lengths pad least
            while todo:
                size = 1
                while size < len(todo) and (size + 1) * len(todo[size][1]) <= self.prefill_batch_tokens:
                    size += 1
                chunk, todo = todo[:size], todo[size:]
                with self.timed("prefill", tokens=sum(len(body) for _, body in chunk)):
                    hidden, cache = self._forward([Request(past, body) for _, body in chunk])
                for row, (key, body) in enumerate(chunk):
                    kv = self._layout.snapshot_row(cache, row, past.length, len(body))
                    self._store.put(key, TaskState(kv, hidden[row, len(body) - 1 : len(body)].clone()))

    def clear_cache(self, keep_prompts: bool = False, keep_instruction: bool = False) -> None:
        """Drop in-memory targets and verified-proposal states, and prompt KV unless ``keep_prompts``.

        ``keep_instruction`` keeps the instruction KV shared by all prompts when the prompts go (see
        ``Verifier.clear_cache`` for which cold start each option models). The disk target cache stays.
        Tests use this to recompute rows instead of reading stored ones.
        """
        self._targets.memory.clear()
        self._store.clear(keep_prompts, keep_instruction)

    # ---- verification ----------------------------------------------------------------------------------
    def _answer_tokens(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        ids, _, _ = self._identifiers(task.n)
        return np.asarray(ids, dtype=np.int64)[ranking]

    @torch.inference_mode()
    def _rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Rows for several validated proposals; all new suffixes share one padded forward pass."""
        states = [self._task_state(task) for task, _ in requests]
        results: list[np.ndarray | None] = [None] * len(requests)
        work: list[_Pending] = []
        for i, ((task, ranking), state) in enumerate(zip(requests, states)):
            fed = self._answer_tokens(task, ranking)[:-1]
            if not len(fed):  # a single candidate: the first-token row is everything
                results[i] = self._rows(state.hidden, task.n)
                continue
            k, prefix = state.longest_prefix(fed)
            if prefix is not None and k == len(fed):
                results[i] = prefix.rows.copy()
                continue
            work.append(_Pending(i, Request(state.extended(prefix, k), fed[k:].tolist()), k, prefix, fed))
        if work:
            with self.timed("verify", tokens=sum(len(w.request.tokens) for w in work)):
                hidden, cache = self._forward([w.request for w in work])
            q_max = hidden.shape[1]
            for row, w in enumerate(work):
                task, state, k, q = requests[w.index][0], states[w.index], w.reused, len(w.request.tokens)
                rows = np.empty((task.n, task.n))
                rows[0] = self._rows(state.hidden, task.n)[0]
                if k:
                    rows[1 : k + 1] = w.prefix.rows[1 : k + 1]
                rows[k + 1 :] = self._rows(hidden[row, :q], task.n)
                new_k = [lay.keys[row : row + 1, :, -q_max:][:, :, :q] for lay in cache.layers]
                new_v = [lay.values[row : row + 1, :, -q_max:][:, :, :q] for lay in cache.layers]
                if k:
                    head_k, head_v = w.prefix.head(k)
                    new_k, new_v = concat(head_k, new_k), concat(head_v, new_v)
                prefix = Prefix(w.fed.copy(), [t.clone() for t in new_k], [t.clone() for t in new_v], rows.copy())
                self._store.remember(state, prefix)
                results[w.index] = rows
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
        """Constrained greedy AR decoding now, bypassing the target caches (the latency reference).

        The AR pass is *not* stored as a verified proposal. Its step-by-step rows differ from a one-pass
        verification's in the last float32 bits (3e-6 to 9e-6 measured), so reusing them would make every later
        verification, and an agent trained on them, depend on whether this process decoded the target or
        read it from the disk cache: a fresh machine would not reproduce a warm one's numbers.
        """
        state = self._task_state(task)
        ids, _, _ = self._identifiers(task.n)
        n = task.n
        row = self._rows(state.hidden, n)[0]
        used = np.zeros(n, dtype=bool)
        ranking: list[int] = []
        cache = self._layout.build([state.prompt], room=n - 1)
        with self.timed("ar", tokens=n - 1):
            for i in range(n):
                item = best_unused(row, used)
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
                row = self._rows(out.last_hidden_state[0, -1:], n)[0]
        return np.asarray(ranking, dtype=np.int64)
