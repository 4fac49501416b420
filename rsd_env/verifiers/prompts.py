"""Prompt templates as data: the one source of truth for the verifier and adapter training.

A prompt is ``instruction`` (shared by all tasks of a domain and N, so its KV cache is reused) +
``body`` (the task). The answer is the ranking as compact identifiers: " A B C ...", one token each.

Identifiers: one scheme for every model. The canonical sequence is A..Z, then the two-letter codes
AA, AB, ..., ZZ (702 in all); a task of N candidates uses the first N of them that are a *single token*
(with the leading space, as in the answer) in the tokenizer in use, so single-token scores and one-pass
verification work at any N the tokenizer allows. With the usual tokenizers (every letter is a token) N <= 26
gives exactly A..Z; Gemma 3's tokenizer has 590 single-token two-letter codes, so it labels up to 616.
"""

from __future__ import annotations

import string
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import yaml

from rsd_env.data.task import RankingTask

LETTERS = string.ascii_uppercase
# the canonical identifier sequence: A..Z, then AA..ZZ; each tokenizer uses those that are single tokens
IDENTIFIERS: tuple[str, ...] = (*LETTERS, *(a + b for a in LETTERS for b in LETTERS))
# tokens kept per passage: 20 keeps a 20-passage prompt near Gemma 3's 512-token sliding window (~640
# tokens), so the ranking adapter could be trained on CPU and every prefill stays cheap (see the model card)
DEFAULT_PASSAGE_TOKENS = 20
# a prompt longer than this, with passages kept whole, is most likely an oversized passage: warned about
LONG_PROMPT_TOKENS = 8192


@dataclass(frozen=True)
class PromptTemplate:
    domain: str
    instruction: str
    body: str
    candidate: str


@cache
def load_template(domain: str) -> PromptTemplate:
    """The bundled template for ``"ir"`` or ``"rec"``."""
    if domain not in ("ir", "rec"):
        raise ValueError(f"no prompt template for domain {domain!r}; use 'ir' or 'rec'")
    text = resources.files("rsd_env.verifiers").joinpath("templates", f"{domain}.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    return PromptTemplate(domain, raw["instruction"], raw["body"], raw["candidate"])


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(IDENTIFIERS):
        raise ValueError(f"prompts support 1..{len(IDENTIFIERS)} candidates, got {n!r}")


@lru_cache(maxsize=8)
def _single_token_identifiers(tokenizer: Any) -> tuple[tuple[str, int], ...]:
    """(identifier, token id) of every canonical identifier that is one token (' X' / ' XY') here."""
    out, seen = [], set()
    for ident in IDENTIFIERS:
        ids = tokenizer(" " + ident, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and int(ids[0]) not in seen:
            seen.add(int(ids[0]))
            out.append((ident, int(ids[0])))
    return tuple(out)


def max_candidates(tokenizer: Any) -> int:
    """The largest N a prompt can label with single-token identifiers of ``tokenizer``."""
    return len(_single_token_identifiers(tokenizer))


def _usable(tokenizer: Any, n: int) -> tuple[tuple[str, int], ...]:
    _check_n(n)
    usable = _single_token_identifiers(tokenizer)
    if len(usable) < n:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"{n} candidates need {n} single-token identifiers, but this tokenizer ({name}) has only "
            f"{len(usable)} (' A'..' Z', then ' AA'..' ZZ', where single tokens): it supports at most "
            f"{len(usable)} candidates per prompt; rank fewer at a time (a smaller n, or rsd-rerank "
            f"--window <= {len(usable)}) or use a model whose vocabulary has more"
        )
    return usable[:n]


def identifiers(n: int, tokenizer: Any = None) -> list[str]:
    """The N identifiers of a prompt: the first N canonical ones that are single tokens of ``tokenizer``.

    Without a tokenizer (text for display; no model reads it) the first N canonical identifiers.
    """
    if tokenizer is None:
        _check_n(n)
        return list(IDENTIFIERS[:n])
    return [ident for ident, _ in _usable(tokenizer, n)]


def check_passage_tokens(value: int | None) -> None:
    """A passage token budget is a positive int, or None for whole passages."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"passage_tokens must be an int >= 1 or None (no truncation), got {value!r}")


def truncate(text: str, tokenizer: Any, max_tokens: int | None) -> str:
    """Cut ``text`` to ``max_tokens`` tokens of ``tokenizer`` (None keeps it whole)."""
    text = " ".join(text.split())
    if max_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens]).strip()


def render(task: RankingTask, tokenizer: Any = None, passage_tokens: int | None = None) -> tuple[str, str]:
    """(instruction, body) text for a task; passages are cut to ``passage_tokens`` tokens."""
    instruction, body, _ = render_with_tags(task, tokenizer, passage_tokens)
    return instruction, body


def render_with_tags(
    task: RankingTask, tokenizer: Any = None, passage_tokens: int | None = None
) -> tuple[str, str, list[int]]:
    """``render`` plus, per candidate, the character offset in the body just past the identifier of its
    *last* tag (the closing tag ``[X]`` after the passage): the token there has read the whole passage,
    which is where the adapter's training reads a pointwise relevance signal. Exact for any template and
    passage text (a passage that quotes a tag cannot shift it)."""
    template = load_template(task.domain)
    ids = identifiers(task.n, tokenizer)
    fmt = {"n": task.n, "first": ids[0], "last": ids[-1]}
    cut = (lambda t: truncate(t, tokenizer, passage_tokens)) if tokenizer is not None else (lambda t: t)
    before_last_id = template.candidate.rsplit("{id}", 1)[0]
    lines, ends, at = [], [], 0
    for ident, c in zip(ids, task.candidates):
        text = cut(c.text)
        lines.append(template.candidate.format(id=ident, text=text))
        ends.append(at + len(before_last_id.format(id=ident, text=text)) + len(ident))
        at += len(lines[-1]) + 1  # the "\n" that joins the lines
    lead = template.body[: template.body.index("{candidates}")].format(
        query=task.query, history="\n".join(task.history), **fmt
    )
    body = template.body.format(
        query=task.query, history="\n".join(task.history), candidates="\n".join(lines), **fmt
    )
    instruction = template.instruction.format(**fmt).rstrip("\n") + "\n\n"
    return instruction, body.rstrip("\n"), [len(lead) + e for e in ends]


def encode(
    task: RankingTask, tokenizer: Any, passage_tokens: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of (instruction incl. BOS, body); their concatenation is the full prompt."""
    instruction, body = render(task, tokenizer, passage_tokens)
    head = tokenizer(instruction, add_special_tokens=True)["input_ids"]
    tail = tokenizer(body, add_special_tokens=False)["input_ids"]
    if passage_tokens is None and len(head) + len(tail) > LONG_PROMPT_TOKENS:
        longest = max(task.candidates, key=lambda c: len(c.text))
        warnings.warn(f"task {task.task_id!r}: a prompt of {len(head) + len(tail)} tokens, because passage_tokens="
                      f"None keeps passages whole (the longest, docid {longest.docid!r}, has "
                      f"{len(longest.text)} characters); each verification re-reads it, so set passage_tokens "
                      f"(e.g. {DEFAULT_PASSAGE_TOKENS}, the bundled adapter's) to cut passages",
                      RuntimeWarning, stacklevel=2)
    return list(head), list(tail)


def identifier_token_ids(tokenizer: Any, n: int) -> list[int]:
    """Token id of each of the N answer identifiers; a clear error naming the largest N this tokenizer
    supports when it has fewer single-token identifiers than N."""
    return [token for _, token in _usable(tokenizer, n)]
