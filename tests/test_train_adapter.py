"""The adapter trainer's losses and data plumbing, on synthetic inputs (the real run is too long for CI)."""

import math

import numpy as np
import pytest
import torch

from experiments.adapter.data import Examples
from experiments.adapter.train import collate, identifier_scores, make_probe, micro_batches, probe_loss, ranking_losses
from rsd_env.verifiers.hf_model import peft_wrapping

N = 4
UNIFORM_PL = math.lgamma(N + 1) / N  # mean over slots of log(#items left)


def test_uniform_scores_give_the_uniform_losses():
    perm = torch.tensor([[2, 0, 3, 1]])
    pl, ranknet = ranking_losses(torch.zeros(1, N, N), perm)
    assert pl.item() == pytest.approx(UNIFORM_PL, rel=1e-6)
    assert ranknet.item() == pytest.approx(math.log(2), rel=1e-6)


def test_slot_k_ignores_the_items_the_teacher_already_placed():
    perm = torch.tensor([[2, 0, 3, 1]])
    scores = torch.randn(1, N, N, generator=torch.Generator().manual_seed(0))
    tampered = scores.clone()
    for slot in range(1, N):
        tampered[0, slot, perm[0, :slot]] += 50.0  # already used: must not change the loss
    assert ranking_losses(tampered, perm)[0].item() == pytest.approx(ranking_losses(scores, perm)[0].item())
    tampered[0, 1, perm[0, 2]] += 50.0  # not yet used: must change it
    assert ranking_losses(tampered, perm)[0].item() > ranking_losses(scores, perm)[0].item() + 1.0


def _scores_along(perm: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Every slot scores the teacher's k-th item with ``values[k]``."""
    scores = torch.zeros(len(perm), N, N)
    scores.scatter_(2, perm.unsqueeze(1).expand(-1, N, -1), values.expand(len(perm), N, N))
    return scores


def test_teacher_order_scores_beat_reversed_ones():
    perm = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])
    descending = torch.arange(N, 0, -1, dtype=torch.float) * 5
    pl_good, rn_good = ranking_losses(_scores_along(perm, descending), perm)
    pl_bad, rn_bad = ranking_losses(_scores_along(perm, descending.flip(0)), perm)
    assert pl_good.item() < 0.01 < UNIFORM_PL < pl_bad.item()
    assert rn_good.item() < 0.01 < math.log(2) < rn_bad.item()


def test_probe_loss_starts_uniform_skips_broken_rows_and_learns_a_real_signal():
    width = 8
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 12, width, generator=gen)
    tags = torch.tensor([[1, 4, 7, 10], [0, 3, 6, 9], [-1, -1, -1, -1]])  # row 2: broken tags
    perm = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3], [0, 1, 2, 3]])
    probe = make_probe(width)
    assert probe_loss(probe, hidden, tags, perm).item() == pytest.approx(UNIFORM_PL, rel=1e-6)
    assert probe_loss(probe, hidden, tags[2:], perm[2:]).item() == 0.0
    # write the teacher's preference into one hidden feature: a probe reading it must beat uniform
    for b in range(2):
        for rank, item in enumerate(perm[b].tolist()):
            hidden[b, tags[b, item], 0] = 10.0 - 3.0 * rank
    with torch.no_grad():
        probe[1].weight.zero_()
        probe[1].weight[0, 0] = 5.0
    assert probe_loss(probe, hidden, tags, perm).item() < 0.5 * UNIFORM_PL  # LayerNorm shrinks the margin


OPEN, CLOSE, BARE_OPEN, LETTERS = 1, 2, 3, [10, 11, 12, 13]
IDENT = [20, 21, 22, 23]


def _prompt(extra_tag_in_last_passage: bool = False) -> list[int]:
    """An instruction mentioning ' [A]', then four candidates '[X] text [X]' (the opening tag has no
    leading space, so only the closing ' [' matches), then the answer start."""
    ids = [5, OPEN, LETTERS[0], CLOSE, 6]
    for k, letter in enumerate(LETTERS):
        text = [7, 8] + ([OPEN, LETTERS[1], CLOSE] if extra_tag_in_last_passage and k == N - 1 else [])
        ids += [BARE_OPEN, letter, CLOSE, *text, OPEN, letter, CLOSE]
    return ids + [9]


def _write(path, prompts: list[list[int]]):
    np.savez(path, tokens=np.concatenate(prompts).astype(np.int32),
             offsets=np.cumsum([0] + [len(p) for p in prompts]),
             perms=np.array([[2, 0, 3, 1], [0, 1, 2, 3], [3, 2, 1, 0]][: len(prompts)], dtype=np.int8),
             domains=np.zeros(len(prompts), dtype=np.int8), ident_ids=np.array(IDENT),
             tag_ids=np.array([OPEN, *LETTERS, CLOSE]))
    return path


@pytest.fixture
def examples(tmp_path):
    prompts = [_prompt(), _prompt(extra_tag_in_last_passage=True), _prompt()[:-3] + [9]]
    return Examples(_write(tmp_path / "ex.npz", prompts))


def test_training_refuses_a_file_where_no_prompt_has_the_closing_tags(tmp_path):
    from experiments.adapter.train import main

    stale = _write(tmp_path / "stale.npz", [_prompt(extra_tag_in_last_passage=True), _prompt()[:-3] + [9]])
    with pytest.raises(SystemExit, match="closing tags .* delete it to rebuild, or pass --probe-weight 0"):
        main(["--data", str(stale), "--model", str(tmp_path / "unused"), "--wandb", "disabled"])


def test_closing_tags_are_found_in_identifier_order_and_broken_prompts_are_flagged(examples):
    tags = examples.closing_tags(0)
    prompt = examples.prompt(0)
    assert prompt[tags].tolist() == LETTERS
    assert (prompt[tags - 1] == OPEN).all() and (prompt[tags + 1] == CLOSE).all()
    assert tags[0] > 5  # the instruction's ' [A]' is not a passage tag
    assert len(examples.closing_tags(1)) == 0  # a passage that contains ' [B]' itself
    assert len(examples.closing_tags(2)) == 0  # the last closing tag is missing
    assert examples.sequence(0)[-N:].tolist() == [IDENT[i] for i in (2, 0, 3, 1)]


def test_collate_pads_right_drops_the_last_answer_token_and_marks_broken_tags(examples):
    ids, mask, starts, perm, tags = collate(examples, np.array([0, 1]), pad_id=0, device=torch.device("cpu"))
    lengths = [len(examples.prompt(i)) + N - 1 for i in (0, 1)]
    assert mask.sum(1).tolist() == lengths
    assert ids[0, : lengths[0]].tolist() == examples.sequence(0)[:-1].tolist()
    assert (ids[0, lengths[0]:] == 0).all()
    assert starts.tolist() == [len(examples.prompt(0)), len(examples.prompt(1))]
    assert tags[0].tolist() == examples.closing_tags(0).tolist() and (tags[1] == -1).all()
    assert perm.tolist() == [[2, 0, 3, 1], [0, 1, 2, 3]]


def test_micro_batches_cover_every_example_once_and_follow_the_seed(examples):
    def plan(seed):
        return [b.tolist() for b in micro_batches(examples, 2, np.random.default_rng(seed))]

    batches = plan(0)
    assert sorted(i for b in batches for i in b) == [0, 1, 2]
    assert all(1 <= len(b) <= 2 for b in batches)
    assert plan(0) == batches


def test_identifier_scores_equal_the_full_vocabulary_logits_at_the_answer_slots():
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    with peft_wrapping():
        model = get_peft_model(Gemma3ForCausalLM(config).eval(), LoraConfig(r=2, target_modules=["q_proj"]))
    ids = torch.randint(30, 64, (2, 15))
    mask = torch.ones_like(ids)
    starts = torch.tensor([8, 10])
    ident = torch.tensor(IDENT)
    with torch.no_grad():
        scores, hidden = identifier_scores(model, ids, mask, starts, ident, N, probe_layer=1)
        logits = model(input_ids=ids, attention_mask=mask).logits
    for b in range(2):
        expected = logits[b, starts[b] - 1 : starts[b] - 1 + N][:, ident]
        torch.testing.assert_close(scores[b], expected, rtol=1e-4, atol=1e-4)
    assert hidden.shape == (2, 15, 16)
