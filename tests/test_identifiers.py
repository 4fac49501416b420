"""Prompt identifiers past 26: one token each in the tokenizer in use, and a clear error past its limit."""

from __future__ import annotations

import pytest

from rsd_env.data.task import Candidate, RankingTask
from rsd_env.verifiers import prompts

pytestmark = pytest.mark.llm  # the bundled tokenizer comes with the converted model


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rsd_env.verifiers.model_store import bundled_model_dir

    return AutoTokenizer.from_pretrained(str(bundled_model_dir()))


def test_up_to_26_candidates_are_a_to_z(tokenizer) -> None:
    assert prompts.identifiers(20, tokenizer) == list("ABCDEFGHIJKLMNOPQRST")  # what the adapter was trained on
    assert prompts.identifiers(26, tokenizer) == prompts.identifiers(26) == list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@pytest.mark.parametrize("n", [27, 100, 616])
def test_every_identifier_is_one_distinct_token_of_the_answer(tokenizer, n: int) -> None:
    names = prompts.identifiers(n, tokenizer)
    ids = prompts.identifier_token_ids(tokenizer, n)
    assert len(set(names)) == len(set(ids)) == n and names[:26] == list(prompts.LETTERS)
    assert all(len(name) == 2 for name in names[26:])  # then two-letter codes, in canonical order
    assert names == [i for i in prompts.IDENTIFIERS if i in set(names)]
    for name, token in zip(names, ids):
        assert tokenizer(" " + name, add_special_tokens=False)["input_ids"] == [token]
    # an answer is exactly one token per item: what single-token scores and one-pass verification need
    answer = "".join(" " + name for name in reversed(names))
    assert tokenizer(answer, add_special_tokens=False)["input_ids"] == ids[::-1]


def test_gemma_supports_616_and_the_error_names_the_limit(tokenizer) -> None:
    assert prompts.max_candidates(tokenizer) == 616  # 26 letters + 590 single-token two-letter codes
    with pytest.raises(ValueError, match="617 candidates need 617 single-token identifiers.*at most 616"):
        prompts.identifier_token_ids(tokenizer, 617)
    with pytest.raises(ValueError, match="prompts support 1..702 candidates"):
        prompts.identifiers(703, tokenizer)


class _FewTokens:
    """A tokenizer in which only ' A'..' Z' and ' AA'..' AD' are single tokens (30 identifiers)."""

    name_or_path = "few-tokens"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        word = text.strip()
        if len(word) == 1 or word in ("AA", "AB", "AC", "AD"):
            return {"input_ids": [1000 + prompts.IDENTIFIERS.index(word)]}
        return {"input_ids": [ord(c) for c in word]}


def test_a_tokenizer_with_fewer_identifiers_than_n() -> None:
    few = _FewTokens()
    assert prompts.max_candidates(few) == 30
    assert prompts.identifiers(30, few)[-4:] == ["AA", "AB", "AC", "AD"]
    with pytest.raises(ValueError, match=r"only 30 .* supports at most 30 candidates per prompt"):
        prompts.identifier_token_ids(few, 31)
    task = RankingTask("q", "ir", tuple(Candidate(str(i), f"text {i}") for i in range(31)), query="q")
    with pytest.raises(ValueError, match="few-tokens"):
        prompts.render(task, few)


def test_prompts_of_100_candidates_tag_each_with_its_identifier(tokenizer) -> None:
    task = RankingTask("q", "ir", tuple(Candidate(str(i), f"passage {i}") for i in range(100)), query="q")
    instruction, body = prompts.render(task, tokenizer)
    names = prompts.identifiers(100, tokenizer)
    assert f"[{names[0]}] to [{names[-1]}]" in instruction and "I will give you 100 passages" in instruction
    for j, name in enumerate(names):
        assert f"[{name}] passage {j} [{name}]" in body
