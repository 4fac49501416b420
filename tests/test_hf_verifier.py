"""HFVerifier on the bundled Gemma 3 270M: exactness of the cached paths, SD/AR consistency, bad input.

Small tasks (5 candidates, 16 passage tokens) keep it to about a minute on 2 CPU cores. The verifier is the
bundled model *with* its ranking adapter: the raw base model copies the presentation order, so its AR target
is [0, 1, 2, ...] and a ``decode_target`` returning ``arange(n)`` would pass every AR/SD check (the tests
assert the targets differ from it). Tolerance: 1e-4 on log-probs (the cached and fresh paths differ by
float32 summation order, measured ~2e-5).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rsd_env.data import load_tasks
from rsd_env.data.task import Candidate, RankingTask
from rsd_env.verifiers import hf, make_verifier, prompts
from rsd_env.verifiers.base import greedy_acceptance
from rsd_env.verifiers.hf_model import model_digest, peft_wrapping
from rsd_env.verifiers.model_store import BUNDLED_MODEL
from rsd_env.verifiers.target_cache import TargetCache

pytestmark = pytest.mark.llm
ATOL = 1e-4
N = 5


@pytest.fixture(scope="module")
def verifier() -> hf.HFVerifier:
    """Loaded once per process: make_verifier shares instances with equal settings across test modules."""
    return make_verifier("bundled", passage_tokens=16, target_cache=False)


@pytest.fixture(scope="module")
def base_verifier() -> hf.HFVerifier:
    """The raw base model (no adapter), for the LoRA-merge test."""
    return make_verifier("bundled", adapter=None, passage_tokens=16, target_cache=False)


@pytest.fixture(scope="module")
def tasks() -> list[RankingTask]:
    return load_tasks("trec-dl", "test", n=N, max_tasks=2)


def _not_presentation_order(target: np.ndarray) -> np.ndarray:
    assert not np.array_equal(target, np.arange(len(target))), "the target must not be the order shown"
    return target


def test_cached_rows_equal_a_fresh_full_forward(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    task = tasks[0]
    ranking = np.array([3, 0, 4, 2, 1])
    v = verifier.verify(task, ranking)
    fresh = verifier.rows_without_cache(task, ranking)
    np.testing.assert_allclose(v.logprobs, fresh, atol=ATOL)
    np.testing.assert_allclose(v.logprobs[0], verifier.first_token_scores(task), atol=ATOL)
    np.testing.assert_allclose(np.exp(v.logprobs).sum(axis=1), 1.0, atol=1e-6)
    assert (v.accepted, v.correction) == greedy_acceptance(ranking, fresh)


def test_prefix_reuse_feeds_only_the_new_suffix(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    task = tasks[1]
    verifier.verify(task, [0, 1, 2, 3, 4])
    before = verifier.stats.snapshot()
    second = [0, 1, 4, 3, 2]  # shares two identifiers with the first proposal
    rows = verifier.verify(task, second).logprobs
    spent = verifier.stats.since(before)
    assert spent.tokens == (N - 1) - 2 and spent.forward_passes == 1
    np.testing.assert_allclose(rows, verifier.rows_without_cache(task, second), atol=ATOL)
    before = verifier.stats.snapshot()
    again = verifier.verify(task, second).logprobs  # fully known: no model call at all
    spent = verifier.stats.since(before)
    assert spent.tokens == 0 and not spent.calls.get("verify")  # nothing computed ...
    assert spent.forward_passes == 1  # ... yet it is one LLM pass of the protocol (one definition for all)
    np.testing.assert_array_equal(again, rows)


def test_ar_costs_n_passes_cold_or_warm(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    """AR = prefill + N - 1 decode steps, the same count as the simulated verifier's, whatever is cached."""
    task = tasks[0]
    for keep_prompts in (False, True):
        verifier.clear_cache(keep_prompts=keep_prompts)
        before = verifier.stats.snapshot()
        verifier.decode_target(task)
        assert verifier.stats.since(before).forward_passes == N
    before = verifier.stats.snapshot()
    verifier.first_token_scores(task)  # the prompt KV is cached: still the episode's one prefill pass
    assert verifier.stats.since(before).forward_passes == 1


def test_target_is_accepted_whole_and_left_to_right_sd_reproduces_it(
    verifier: hf.HFVerifier, tasks: list[RankingTask]
) -> None:
    for task in tasks:
        target = _not_presentation_order(verifier.target_ranking(task))
        verifier.clear_cache(keep_prompts=True)  # verify in one fresh pass, not from the AR pass's rows
        assert verifier.verify(task, target).accepted == N
        verifier.clear_cache(keep_prompts=True)
        order = list(verifier.single_token_ranking(task))
        locked: list[int] = []
        for _ in range(N):  # T = N rounds always suffice: each round locks at least one more position
            draft = locked + [j for j in order if j not in locked]
            locked = list(verifier.verify(task, draft).verified_prefix)
            if len(locked) >= N - 1:
                locked += [j for j in range(N) if j not in locked]
                break
        np.testing.assert_array_equal(np.asarray(locked), target)


def test_rows_do_not_depend_on_whether_the_target_was_decoded(
    verifier: hf.HFVerifier, tasks: list[RankingTask]
) -> None:
    """A fresh machine decodes every target in-process; a warm one reads them from the disk cache. The rows a
    verification returns must be the same bits either way, or an agent trained on a fresh machine would not
    reproduce one trained on a warm machine (same seed and config, different numbers)."""
    task = tasks[0]
    verifier.clear_cache()
    target = _not_presentation_order(verifier.decode_target(task))
    proposals = [target, np.concatenate([target[:2], target[2:][::-1]])]  # the AR ranking; its head, reversed

    def rows_after(decode_first: bool) -> list[np.ndarray]:
        verifier.clear_cache()  # nothing cached: not the prompt, not the instruction, no target
        if decode_first:
            verifier.decode_target(task)
        verifier.first_token_scores(task)  # the prompt KV (cached by the AR pass already, or prefilled now)
        before = verifier.stats.snapshot()
        rows = [verifier.verify(task, p).logprobs for p in proposals]
        assert verifier.stats.since(before).tokens == 2 * (N - 1) - 2  # only the 2nd reuses (the 1st's head)
        return rows

    decoded, read = rows_after(True), rows_after(False)
    for proposal, a, b in zip(proposals, decoded, read):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, verifier.rows_without_cache(task, proposal), atol=ATOL)


def test_env_episode_is_the_same_with_a_cold_or_warm_target_cache(
    verifier: hf.HFVerifier, tasks: list[RankingTask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through RSDRank: reset decodes the target (empty disk cache) or reads it (filled); a step's
    observation is bit-identical, and its rows equal the uncached reference."""
    import gymnasium as gym

    from agents.methods import order_to_action

    monkeypatch.setattr(verifier, "_targets", TargetCache(tmp_path / "targets"))
    task = tasks[1]
    observations = []
    for cache_state in ("cold", "warm"):
        verifier.clear_cache()  # in-memory targets and KV go; the disk cache stays
        env = gym.make("RSDRank-v0", config={"tasks": tasks, "verifier": verifier, "n": N, "budget": 2}).unwrapped
        before = verifier.stats.snapshot()
        env.reset(options={"task_id": task.task_id})
        assert bool(verifier.stats.since(before).calls.get("ar")) == (cache_state == "cold")
        target = _not_presentation_order(env.target(task))
        proposal = np.concatenate([target[:1], target[1:][::-1]])
        obs, *_ = env.step(order_to_action(proposal, N))
        observations.append(obs)
    for key in observations[0]:
        np.testing.assert_array_equal(observations[0][key], observations[1][key])
    rows = observations[0]["verified"].reshape(env.config["max_budget"], N, N)[0]
    np.testing.assert_allclose(rows, verifier.rows_without_cache(task, proposal), atol=ATOL)


def test_rows_stay_exact_after_lru_eviction(
    verifier: hf.HFVerifier, tasks: list[RankingTask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caps small enough to evict: a prompt pushed out of the LRU, and a verified proposal pushed out of its
    prompt's prefix store, are recomputed (costing tokens again) to the same rows as the uncached reference."""
    from rsd_env.verifiers.hf_kv import PromptStore

    verifier.clear_cache(keep_instruction=True)
    sizes = [verifier._task_state(task).nbytes for task in tasks]
    cap = int(1.5 * max(sizes))
    assert sum(sizes) > cap, "the two prompts must not fit together"
    store = PromptStore(cap, 1)  # one prompt at a time; one verified proposal per prompt
    store.instructions = verifier._store.instructions
    monkeypatch.setattr(verifier, "_store", store)
    first, second = np.array([4, 3, 2, 1, 0]), np.array([1, 0, 2, 3, 4])
    fresh = {(i, tuple(r)): verifier.rows_without_cache(tasks[i], r) for i in (0, 1) for r in (first, second)}
    for i in (0, 1, 0):  # the third prompt state was evicted by the second: prefilled again
        before = verifier.stats.snapshot()
        rows = verifier.verify(tasks[i], first).logprobs
        spent = verifier.stats.since(before)
        assert spent.calls.get("prefill") == 1 and len(store.tasks) == 1
        np.testing.assert_allclose(rows, fresh[(i, tuple(first))], atol=ATOL)
    state = store.get(verifier.encode(tasks[0])[2])
    for ranking in (second, first):  # the 1-byte prefix cap keeps only the latest proposal
        before = verifier.stats.snapshot()
        rows = verifier.verify(tasks[0], ranking).logprobs
        assert verifier.stats.since(before).tokens == N - 1 and len(state.prefixes) == 1
        np.testing.assert_allclose(rows, fresh[(0, tuple(ranking))], atol=ATOL)


def test_same_input_gives_the_same_output(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    ranking = [4, 3, 2, 1, 0]
    verifier.clear_cache(keep_prompts=True)
    first = verifier.verify(tasks[0], ranking)
    verifier.clear_cache(keep_prompts=True)
    second = verifier.verify(tasks[0], ranking)
    np.testing.assert_array_equal(first.logprobs, second.logprobs)
    assert (first.accepted, first.correction) == (second.accepted, second.correction)


def test_batch_equals_single_calls(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    rng = np.random.default_rng(0)
    requests = [(tasks[i % 2], rng.permutation(N)) for i in range(4)]
    assert len({len(verifier.prompt_ids(t)) for t in tasks}) == 2, "tasks must differ in prompt length"
    for task, _ in requests:
        verifier.first_token_scores(task)  # prompts cached, so the batch below is one verify pass
    verifier.clear_cache(keep_prompts=True)
    before = verifier.stats.snapshot()
    batch = verifier.verify_batch(requests)
    assert verifier.stats.since(before).calls.get("verify") == 1
    verifier.clear_cache(keep_prompts=True)
    for (task, ranking), got in zip(requests, batch):
        single = verifier.verify(task, ranking)
        np.testing.assert_allclose(got.logprobs, single.logprobs, atol=ATOL)
        assert (got.accepted, got.correction) == (single.accepted, single.correction)


def test_prompts_longer_than_the_sliding_window(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    """Gemma 3's sliding layers keep 511 tokens: cached, prefix-reused and padded-batch rows stay exact."""
    long = dataclasses.replace(tasks[1], task_id="long", query=" ".join([tasks[1].query] * 40))
    window = verifier.model.config.sliding_window
    assert len(verifier.prompt_ids(long)) > window > len(verifier.prompt_ids(tasks[0]))
    first, second = np.array([4, 2, 0, 1, 3]), np.array([4, 2, 3, 1, 0])
    fresh = {}
    for proposal in (first, second):  # the second reuses the first's 2-item prefix
        got = verifier.verify(long, proposal).logprobs
        fresh[proposal.tobytes()] = verifier.rows_without_cache(long, proposal)
        np.testing.assert_allclose(got, fresh[proposal.tobytes()], atol=ATOL)
    verifier.clear_cache(keep_prompts=True)
    batch = verifier.verify_batch([(tasks[0], first), (long, second)])  # one row past the window, one not
    np.testing.assert_allclose(batch[0].logprobs, verifier.rows_without_cache(tasks[0], first), atol=ATOL)
    np.testing.assert_allclose(batch[1].logprobs, fresh[second.tobytes()], atol=ATOL)
    target = verifier.target_ranking(long)
    verifier.clear_cache(keep_prompts=True)
    assert verifier.verify(long, target).accepted == N


def test_batched_prefill_equals_one_by_one(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    """Prompts of different lengths (one past the sliding window) prefilled in one right-padded pass give
    the rows a fresh forward gives, count no pass, and later calls read them from the cache."""
    long = dataclasses.replace(tasks[1], task_id="long-prefill", query=" ".join([tasks[1].query] * 40))
    batch = [tasks[0], long, tasks[1]]
    assert len({len(verifier.prompt_ids(t)) for t in batch}) == 3
    ranking = np.array([2, 4, 0, 3, 1])
    fresh = [verifier.rows_without_cache(task, ranking) for task in batch]
    old = verifier.prefill_batch_tokens
    try:
        for cap in (8192, 1):  # one padded pass for all three; a cap of 1 token: one prompt per pass
            verifier.prefill_batch_tokens = cap
            verifier.clear_cache(keep_instruction=True)
            before = verifier.stats.snapshot()
            verifier.prefill_batch(batch)
            spent = verifier.stats.since(before)
            assert spent.forward_passes == 0 and spent.calls.get("prefill") == (1 if cap > 1 else 3)
            assert spent.tokens == sum(len(verifier.encode(t)[1]) for t in batch)
            before = verifier.stats.snapshot()
            for task, rows in zip(batch, fresh):
                np.testing.assert_allclose(verifier.first_token_scores(task), rows[0], atol=ATOL)
                np.testing.assert_allclose(verifier.verify(task, ranking).logprobs, rows, atol=ATOL)
            spent = verifier.stats.since(before)
            assert not spent.calls.get("prefill") and spent.forward_passes == 2 * len(batch)
    finally:
        verifier.prefill_batch_tokens = old
    with pytest.raises(ValueError, match="prefill_batch_tokens"):
        hf.HFVerifier(adapter=None, prefill_batch_tokens=0)


def test_target_disk_cache_round_trip(
    verifier: hf.HFVerifier, tasks: list[RankingTask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "targets"
    monkeypatch.setattr(verifier, "_targets", TargetCache(cache_dir))
    task = tasks[0]
    target = verifier.target_ranking(task)
    files = list(cache_dir.rglob("*.json"))
    assert files and not list(cache_dir.rglob("*.tmp"))
    verifier.clear_cache(keep_prompts=True)
    before = verifier.stats.snapshot()
    np.testing.assert_array_equal(verifier.target_ranking(task), target)
    assert verifier.stats.since(before).calls.get("ar", 0) == 0
    for f in files:  # a corrupt entry is recomputed and rewritten, never trusted
        f.write_text("{not json")
    verifier.clear_cache(keep_prompts=True)
    np.testing.assert_array_equal(verifier.target_ranking(task), target)
    assert verifier.stats.since(before).calls.get("ar", 0) == 1


def test_bad_rankings_are_rejected(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        verifier.verify(tasks[0], [0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="unknown items"):
        verifier.verify(tasks[0], [0, 1, 2, 3, 9])
    with pytest.raises(ValueError, match="all 5 items"):
        verifier.verify_batch([(tasks[0], [0, 1, 2])])


def test_prompt_over_context_length_is_a_clear_error(
    verifier: hf.HFVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = RankingTask("long", "ir", tuple(Candidate(str(i), "word " * 40) for i in range(3)), query="q")
    monkeypatch.setattr(verifier, "_max_len", 64)
    with pytest.raises(ValueError, match="context length 64; lower passage_tokens"):
        verifier.first_token_scores(task)


def test_cold_start_with_and_without_the_instruction_kv(verifier: hf.HFVerifier, tasks: list[RankingTask]) -> None:
    """A new process prefills the shared instruction too; a deployed ranker's cold start only the task's tokens."""
    task = tasks[0]
    head, body, _ = verifier.encode(task)
    assert head and body
    scores = {}
    for keep_instruction, prefilled in ((False, len(head) + len(body)), (True, len(body))):
        verifier.first_token_scores(task)  # whatever ran before, the instruction KV is held now
        verifier.clear_cache(keep_instruction=keep_instruction)
        before = verifier.stats.snapshot()
        scores[keep_instruction] = verifier.first_token_scores(task)
        spent = verifier.stats.since(before)
        assert spent.tokens == prefilled and spent.forward_passes == 1
        assert spent.calls["prefill"] == (1 if keep_instruction else 2)
    np.testing.assert_allclose(scores[True], scores[False], atol=ATOL)


class _TwoTokenTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [7, 8]}


def test_identifiers_must_be_single_tokens(verifier: hf.HFVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier, "tokenizer", _TwoTokenTokenizer())
    with pytest.raises(ValueError, match="single-token identifiers"):
        verifier._identifiers(7)  # a new N: checked on first use
    with pytest.raises(ValueError, match="single-token identifiers"):
        prompts.identifier_token_ids(_TwoTokenTokenizer(), 3)


def test_model_and_adapter_paths_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder"):
        hf.HFVerifier(model="/nonexistent/model", adapter=None)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.HFVerifier(model=str(tmp_path), adapter=None)
    with pytest.raises(FileNotFoundError, match="no peft adapter"):
        hf.HFVerifier(adapter=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="adapter=None"):
        hf.HFVerifier(model="someorg/some-model")  # the bundled adapter is only for the bundled model
    with pytest.raises(ValueError, match="'bundled-full' adapter belongs to the bundled model"):
        hf.HFVerifier(model="someorg/some-model", adapter="bundled-full")
    with pytest.raises(ValueError, match=r"unknown bundled adapter 'full'; choose one of \['bundled', 'bun"):
        hf.bundled_adapter_dir("full")
    monkeypatch.setattr(hf, "bundled_adapter_dir", lambda name="bundled": tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="pass adapter=None"):
        hf.HFVerifier(model=BUNDLED_MODEL)
    with pytest.raises(ValueError, match="passage_tokens"):
        hf.HFVerifier(adapter=None, passage_tokens=0)


def test_lora_adapter_is_merged_exactly(
    base_verifier: hf.HFVerifier, tasks: list[RankingTask], tmp_path: Path
) -> None:
    """A random LoRA saved in peft format: merged rows == the unmerged peft model's rows != base rows."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with peft_wrapping():  # peft's own deprecated transformers call
        peft_model = get_peft_model(copy.deepcopy(base_verifier.model), config).eval()
    peft_model.save_pretrained(tmp_path / "lora")
    task, ranking = tasks[0], np.array([1, 0, 2, 4, 3])
    ids = prompts.identifier_token_ids(base_verifier.tokenizer, N)
    reference = hf.full_forward_rows(peft_model, base_verifier.prompt_ids(task), ids, ranking)
    del peft_model
    adapted = hf.HFVerifier(adapter=str(tmp_path / "lora"), passage_tokens=16, target_cache=False)
    rows = adapted.verify(task, ranking).logprobs
    np.testing.assert_allclose(rows, reference, atol=ATOL)
    assert np.abs(rows - base_verifier.rows_without_cache(task, ranking)).max() > 1e-2  # the adapter did something
    assert adapted.fingerprint() != base_verifier.fingerprint()


def test_a_full_list_of_100_candidates(verifier: hf.HFVerifier) -> None:
    """One prompt with DL19's BM25 top-100 (identifiers A..Z, then two-letter codes): single-token scores
    for all 100, a 100-item permutation as the AR target (not the order shown), and verification rows equal
    to a fresh full forward. Passages cut to 4 tokens keep the prompt near 1,300 tokens."""
    task = load_tasks("dl19", "all", n=100, max_tasks=1)[0]
    old = verifier.passage_tokens
    try:
        verifier.passage_tokens = 4
        scores = verifier.first_token_scores(task)
        assert scores.shape == (100,) and np.isfinite(scores).all()
        assert np.exp(scores).sum() == pytest.approx(1.0, abs=1e-6)  # a distribution over the 100 identifiers
        target = _not_presentation_order(verifier.decode_target(task))
        assert sorted(target.tolist()) == list(range(100))
        assert verifier.verify(task, target).accepted == 100
        proposal = np.argsort(-scores, kind="stable")
        verification = verifier.verify(task, proposal)
        np.testing.assert_allclose(verification.logprobs, verifier.rows_without_cache(task, proposal), atol=ATOL)
        assert 1 <= len(verification.verified_prefix) <= 100
    finally:
        verifier.passage_tokens = old


@pytest.mark.parametrize("adapter, n", [(hf.FULL_LIST_ADAPTER, 100), (hf.LIST_40_ADAPTER, 40),
                                        (hf.LIST_60_ADAPTER, 50)])
def test_the_long_list_adapters_ship_and_load_by_name(verifier: hf.HFVerifier, adapter: str, n: int) -> None:
    """adapter="bundled-full" / "bundled-40" / "bundled-60" merge the shipped long-list adapters (other weights
    than the N = 20 one, so another model fingerprint and other scores) and score a prompt of the N each is
    meant for."""
    long_list = hf.HFVerifier(adapter=adapter, passage_tokens=4, target_cache=False)
    assert long_list.adapter == str(hf.bundled_adapter_dir(adapter))
    assert long_list.fingerprint() != verifier.fingerprint()
    task = load_tasks("dl19", "all", n=n, max_tasks=1)[0]
    scores = long_list.first_token_scores(task)
    assert scores.shape == (n,) and np.exp(scores).sum() == pytest.approx(1.0, abs=1e-6)
    old = verifier.passage_tokens
    try:
        verifier.passage_tokens = 4
        assert np.abs(scores - verifier.first_token_scores(task)).max() > 0.1
    finally:
        verifier.passage_tokens = old


def test_model_digest_names_the_model_not_the_folder_it_was_loaded_from(
    verifier: hf.HFVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same converted model under another $RSD_CACHE keeps its digest (its cached targets and resumable
    runs stay valid); another weight or dtype changes it."""
    model = verifier.model
    digest = model_digest(verifier.model_name, model, None, verifier.dtype)
    monkeypatch.setattr(model.config, "_name_or_path", "/elsewhere/gemma-3-270m-q4_k_m-hf")
    assert model_digest(verifier.model_name, model, None, verifier.dtype) == digest
    assert model_digest(verifier.model_name, model, None, verifier.dtype) != model_digest(
        verifier.model_name, model, None, torch.float16)
    weight = next(model.parameters())
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.view(-1)[0] += 1.0
        assert model_digest(verifier.model_name, model, None, verifier.dtype) != digest
    finally:
        with torch.no_grad():
            weight.copy_(original)
