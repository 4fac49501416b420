"""OpenAIVerifier: the target LLM behind an OpenAI-compatible completions server (e.g. vLLM).

For users who outgrow one machine: ``vllm serve <model> --enable-prefix-caching --max-logprobs 40``.
One request verifies a whole ranking: the prompt is sent as token ids (prompt + the N answer
identifiers) with vLLM's ``prompt_logprobs`` option, so the server returns, at every answer slot, the
top-k next-token log-probs given the proposal's prefix; the prompt itself hits the server's prefix cache.
Rows are the log-softmax over the N identifiers, which equals the local HFVerifier's rows whenever all N
identifiers are in the returned top-k. An identifier outside the top-k gets the smallest returned
log-prob (an upper bound) and is counted in ``missing_logprobs``; raise ``top_logprobs`` if that happens.

Wire format read (vLLM): ``choices[0].prompt_logprobs[pos] = {"<token id>": {"logprob": float, ...}}``.
The request also carries ``prompt_logprobs_start`` (the prompt length; servers that do not know it
ignore it), which lets ``serve_local`` skip positions nobody reads. Standard library only (urllib).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rsd_env.data.task import RankingTask
from rsd_env.verifiers import prompts
from rsd_env.verifiers.base import Verifier
from rsd_env.verifiers.model_store import BUNDLED_MODEL, bundled_model_dir, cache_root
from rsd_env.verifiers.prompts import DEFAULT_PASSAGE_TOKENS, check_passage_tokens
from rsd_env.verifiers.target_cache import TargetCache

_RETRY_HTTP = {408, 429, 500, 502, 503, 504}
log = logging.getLogger(__name__)


def _reason(err: Exception | None) -> str:
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return "no answer: timed out"
    return str(getattr(err, "reason", None) or err)


class ServerError(ConnectionError):
    """The server is unreachable or answered with an error after all retries."""


class _Answered(Exception):
    """An HTTP error status worth a retry (5xx, 429, 408): the server is reachable."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code, self.detail = code, detail


class OpenAIVerifier(Verifier):
    """Verifier backed by ``POST {base_url}/v1/completions`` with prompt log-probs.

    ``tokenizer`` must be the served model's tokenizer (``BUNDLED_MODEL``, a folder, a hub name, or a loaded
    tokenizer): the client builds token ids itself so that identifiers and prompt boundaries are exact.
    ``model``: the served model's name (default: the first one ``/v1/models`` lists).
    ``timeout`` (seconds per attempt), ``retries`` and ``backoff`` (seconds, doubled per retry) bound how long
    a silent server can stall a request: ``worst_case_seconds`` (47 s with the defaults). Each retry is
    logged as a warning; raise ``timeout`` for a slow, busy server.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        tokenizer: Any = BUNDLED_MODEL,
        passage_tokens: int | None = DEFAULT_PASSAGE_TOKENS,
        top_logprobs: int = 20,
        timeout: float = 15.0,
        retries: int = 2,
        backoff: float = 0.5,
        api_key: str | None = None,
        target_cache: str | Path | bool = True,
        max_workers: int = 8,
    ) -> None:
        super().__init__()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        check_passage_tokens(passage_tokens)
        if top_logprobs < 1:
            raise ValueError(f"top_logprobs must be >= 1, got {top_logprobs}")
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        from transformers import AutoTokenizer

        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.top_logprobs = int(top_logprobs)
        self.passage_tokens = passage_tokens
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_workers = max(1, int(max_workers))
        self.model = model if model is not None else self._first_model()  # before the tokenizer: fail fast
        if isinstance(tokenizer, str):
            source = str(bundled_model_dir()) if tokenizer == BUNDLED_MODEL else tokenizer
            self.tokenizer_name = tokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        else:  # an already loaded tokenizer
            self.tokenizer_name = str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
            self.tokenizer = tokenizer
        self.missing_logprobs = 0
        self._first: OrderedDict[str, np.ndarray] = OrderedDict()
        self._targets = TargetCache.from_option(target_cache, cache_root() / "targets")

    def fingerprint(self) -> str:
        return f"openai:{self.base_url}:{self.model}:tok={self.tokenizer_name}:pt={self.passage_tokens}"

    # ---- HTTP -----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """JSON request with timeout and retries (exponential backoff) on connection errors and 5xx/429."""
        url = self.base_url + path
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                log.warning("verifier server %s: %s %s attempt %d/%d failed (%s); retrying in %.1f s",
                            self.base_url, method, path, attempt, self.retries + 1, _reason(last), wait)
                time.sleep(wait)
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:500].decode("utf-8", "replace")
                if err.code not in _RETRY_HTTP:
                    raise ServerError(f"{method} {url} failed with HTTP {err.code}: {detail}") from err
                last = _Answered(err.code, detail)
                continue
            except (urllib.error.URLError, OSError) as err:  # refused, reset, DNS, timeout
                last = err
                continue
            try:
                return json.loads(body)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{method} {url} returned malformed JSON ({err.msg}): {body[:200]!r}; is base_url an "
                    "OpenAI-compatible server?"
                ) from err
        if isinstance(last, _Answered):  # the server is up but failing: what it said is the lead
            raise ServerError(
                f"verifier server {self.base_url} answered HTTP {last.code} to {method} {path} on all "
                f"{self.retries + 1} attempts: {last.detail or '(empty body)'}; see the server's log (the request "
                "reached it, so base_url and timeout are not the problem)"
            ) from last
        raise ServerError(
            f"verifier server {self.base_url} unreachable after {self.retries + 1} attempts of {self.timeout:g} s "
            f"({_reason(last)}); start it (e.g. `vllm serve <model> --enable-prefix-caching` or "
            "`python -m rsd_env.verifiers.serve_local`), fix base_url, or give a slow server more time "
            "(verifier option timeout=<seconds>, retries=<n>)"
        ) from last

    @property
    def worst_case_seconds(self) -> float:
        """The longest one request can take before ``ServerError``: every attempt times out."""
        return (self.retries + 1) * self.timeout + sum(self.backoff * 2 ** k for k in range(self.retries))

    def _first_model(self) -> str:
        data = self._request("GET", "/v1/models")
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{self.base_url}/v1/models returned no model list: {str(data)[:200]}") from err

    def _slot_logprobs(self, ids: list[int], start: int) -> list[dict]:
        """The prompt_logprobs entries at positions ``start..len(ids)-1``."""
        payload = {
            "model": self.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.top_logprobs,
            "prompt_logprobs_start": start,
        }
        data = self._request("POST", "/v1/completions", payload)
        try:
            entries = data["choices"][0]["prompt_logprobs"]
            slots = entries[start:]
            if len(entries) != len(ids) or not all(isinstance(e, dict) and e for e in slots):
                raise TypeError("prompt_logprobs has the wrong length or empty entries")
            return slots
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"{self.base_url} returned malformed prompt log-probs ({err}): {str(data)[:300]}; the server "
                "must support vLLM's prompt_logprobs option for completions"
            ) from err

    # ---- rows -----------------------------------------------------------------------------------------
    def _to_rows(self, slots: list[dict], identifier_ids: list[int]) -> np.ndarray:
        rows = np.empty((len(slots), len(identifier_ids)))
        for r, entry in enumerate(slots):
            try:
                returned = {int(k): float(v["logprob"] if isinstance(v, dict) else v) for k, v in entry.items()}
            except (TypeError, ValueError, KeyError) as err:
                raise ValueError(f"malformed prompt log-prob entry from {self.base_url}: {entry!r}") from err
            floor = min(returned.values())
            for j, tok in enumerate(identifier_ids):
                if tok not in returned:
                    self.missing_logprobs += 1
                rows[r, j] = returned.get(tok, floor)
        if not np.isfinite(rows).all():
            raise ValueError(f"{self.base_url} returned non-finite log-probs")
        return rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)

    def _prompt(self, task: RankingTask) -> tuple[list[int], list[int]]:
        head, body = prompts.encode(task, self.tokenizer, self.passage_tokens)
        return head + body, prompts.identifier_token_ids(self.tokenizer, task.n)

    def _first_token(self, task: RankingTask) -> np.ndarray:
        prompt, ids = self._prompt(task)
        key = hashlib.sha256(np.asarray(prompt, dtype=np.int64).tobytes()).hexdigest()
        if key not in self._first:
            with self.timed("prefill", tokens=len(prompt) + 1):
                slots = self._slot_logprobs(prompt + ids[:1], len(prompt))
            self._first[key] = self._to_rows(slots, ids)[0]
            if len(self._first) > 4096:
                self._first.popitem(last=False)
        return self._first[key].copy()

    def _verify_rows(self, task: RankingTask, ranking: np.ndarray) -> np.ndarray:
        prompt, ids = self._prompt(task)
        answer = [ids[j] for j in ranking]
        with self.timed("verify", tokens=len(answer)):
            slots = self._slot_logprobs(prompt + answer, len(prompt))
        return self._to_rows(slots, ids)

    def _verify_rows_batch(self, requests: Sequence[tuple[RankingTask, np.ndarray]]) -> list[np.ndarray]:
        """Concurrent requests, which the server batches (continuous batching in vLLM)."""
        calls = []
        for task, ranking in requests:
            prompt, ids = self._prompt(task)
            calls.append((prompt + [ids[j] for j in ranking], len(prompt), ids))
        with self.timed("verify", tokens=sum(len(c[0]) - c[1] for c in calls)):
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(calls))) as pool:
                slots = list(pool.map(lambda c: self._slot_logprobs(c[0], c[1]), calls))
        return [self._to_rows(got, call[2]) for call, got in zip(calls, slots)]

    def target_ranking(self, task: RankingTask) -> np.ndarray:
        """Greedy AR via growing verified prefixes (each request locks >= 1 item); cached like HFVerifier."""
        prompt, _ = self._prompt(task)
        return self._targets.get_or_compute(
            self.fingerprint(), prompt, task.n, lambda: self.decode_target(task),
            {"task_id": task.task_id},
        )

