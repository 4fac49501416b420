"""The verifier's KV reuse on transformers' current cache API (``cache=``, transformers >= 5.24).

What the model is actually fed is read with hooks on the model itself, not from the verifier's own token
counts: if a transformers release stopped taking our cache (a renamed argument vanishes into ``**kwargs``),
or the verifier fell back to re-feeding the prompt, these tests fail.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from rsd_env.data import load_tasks
from rsd_env.verifiers import hf, make_verifier
from rsd_env.verifiers.model_store import BUNDLED_MODEL

pytestmark = pytest.mark.llm
N = 5


@contextmanager
def _model_calls(verifier: hf.HFVerifier) -> Iterator[list[tuple[int, int, int]]]:
    """Per decoder forward: (tokens fed, past length in the cache it got, the cache's length after it)."""
    full = verifier._layout.windows.index(None)  # a full-attention layer holds the whole past
    calls: list[tuple[int, int, int]] = []

    def length(cache) -> int:
        return 0 if cache is None else cache.layers[full].get_seq_length()

    def before(module, args, kwargs):
        calls.append((int(kwargs["input_ids"].shape[1]), length(kwargs.get("cache")), -1))

    def after(module, args, kwargs, output):
        given = kwargs.get("cache")
        assert given is None or output.cache is given  # the model wrote into the cache it was given
        calls[-1] = (*calls[-1][:2], length(output.cache))

    hooks = [verifier._decoder.register_forward_pre_hook(before, with_kwargs=True),
             verifier._decoder.register_forward_hook(after, with_kwargs=True)]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def test_a_verification_feeds_only_the_answer_on_the_cached_prompt() -> None:
    verifier = make_verifier("bundled", adapter=None, passage_tokens=16, target_cache=False)  # shared instance
    task, other = load_tasks("trec-dl", "test", n=N, max_tasks=2)
    verifier.clear_cache()
    head, body, _ = verifier.encode(task)
    with _model_calls(verifier) as calls:
        verifier.first_token_scores(task)
    assert calls == [(len(head), 0, len(head)), (len(body), len(head), len(head) + len(body))]

    prompt = len(head) + len(body)
    ranking = np.array([3, 0, 4, 2, 1])
    with _model_calls(verifier) as calls:
        rows = verifier.verify(task, ranking).logprobs
    # N-1 answer tokens on a cache holding the prompt, which the model extended: the cache was used ...
    assert calls == [(N - 1, prompt, prompt + N - 1)]
    # ... and the rows equal one uncached forward over prompt + answer, impossible from the 4 tokens alone
    np.testing.assert_allclose(rows, verifier.rows_without_cache(task, ranking), atol=1e-4)

    second = np.array([3, 0, 1, 2, 4])  # shares two identifiers with the first proposal
    with _model_calls(verifier) as calls:
        rows = verifier.verify(task, second).logprobs
    assert calls == [(N - 1 - 2, prompt + 2, prompt + N - 1)]
    np.testing.assert_allclose(rows, verifier.rows_without_cache(task, second), atol=1e-4)

    verifier.first_token_scores(other)
    with _model_calls(verifier) as calls:  # AR: one token per step on the growing cache
        verifier.decode_target(other)
    start = sum(map(len, verifier.encode(other)[:2]))
    assert calls == [(1, start + i, start + i + 1) for i in range(N - 1)]


def test_loading_and_every_verifier_path_use_no_deprecated_transformers_call() -> None:
    """Deprecations show as warnings or as transformers log lines (``warning_once``); neither may appear."""
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    transformers_log = logging.getLogger("transformers")
    transformers_log.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # a message logged earlier in this process is logged again
    tasks = load_tasks("trec-dl", "test", n=4, max_tasks=2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            verifier = hf.HFVerifier(BUNDLED_MODEL, passage_tokens=8, target_cache=False)  # with the adapter
            verifier.prefill_batch(tasks)
            verifier.first_token_scores(tasks[0])
            verifier.verify(tasks[0], [1, 0, 2, 3])
            verifier.verify_batch([(tasks[0], [1, 0, 3, 2]), (tasks[1], [3, 2, 1, 0])])
            verifier.decode_target(tasks[1])
    finally:
        transformers_log.removeHandler(handler)
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not deprecations
    assert not [line for line in logged if "deprecat" in line.lower()]
