"""The adapter trainer's losses and data plumbing, on synthetic inputs (the real run is too long for CI)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.adapter.data import Examples
from experiments.adapter.train import collate, identifier_scores, make_probe, micro_batches, probe_loss, ranking_losses
from rsd_env.data.task import Candidate, RankingTask
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


def test_probe_loss_starts_uniform_and_learns_a_real_signal():
    width = 8
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 12, width, generator=gen)
    tags = torch.tensor([[1, 4, 7, 10], [0, 3, 6, 9]])
    perm = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    probe = make_probe(width)
    assert probe_loss(probe, hidden, tags, perm).item() == pytest.approx(UNIFORM_PL, rel=1e-6)
    # write the teacher's preference into one hidden feature: a probe reading it must beat uniform
    for b in range(2):
        for rank, item in enumerate(perm[b].tolist()):
            hidden[b, tags[b, item], 0] = 10.0 - 3.0 * rank
    with torch.no_grad():
        probe[1].weight.zero_()
        probe[1].weight[0, 0] = 5.0
    assert probe_loss(probe, hidden, tags, perm).item() < 0.5 * UNIFORM_PL  # LayerNorm shrinks the margin


IDENT = list(range(20, 26))  # identifier token ids of the synthetic files: the first N of them label N items


def _write(path, prompts: list[list[int]], perms: list[list[int]]):
    """A synthetic example file: prompt i ends with its N candidates' tags at the last N even positions."""
    tags = [[len(p) - 2 * (len(q) - j) for j in range(len(q))] for p, q in zip(prompts, perms)]
    np.savez(path, tokens=np.concatenate(prompts).astype(np.int32),
             offsets=np.cumsum([0] + [len(p) for p in prompts]), sizes=np.array([len(q) for q in perms]),
             perms=np.concatenate(perms).astype(np.int8), tags=np.concatenate(tags).astype(np.int32),
             budgets=np.full(len(prompts), 20, dtype=np.int16), domains=np.zeros(len(prompts), dtype=np.int8),
             ident_ids=np.array(IDENT))
    return path


@pytest.fixture
def examples(tmp_path):
    """Two 4-candidate examples and two 6-candidate ones, of different lengths."""
    prompts = [list(range(1, 12)), list(range(1, 15)), list(range(1, 19)), list(range(1, 17))]
    perms = [[2, 0, 3, 1], [0, 1, 2, 3], [5, 3, 1, 0, 2, 4], [0, 1, 2, 3, 4, 5]]
    return Examples(_write(tmp_path / "ex.npz", prompts, perms))


def test_ragged_examples_give_each_prompt_its_own_n_permutation_tags_and_answer(examples):
    assert len(examples) == 4 and [examples.n(i) for i in range(4)] == [4, 4, 6, 6]
    assert examples.perm(2).tolist() == [5, 3, 1, 0, 2, 4]
    assert examples.closing_tags(2).tolist() == [6, 8, 10, 12, 14, 16]
    assert examples.sequence(0)[-4:].tolist() == [IDENT[i] for i in (2, 0, 3, 1)]
    assert examples.sequence(2)[-6:].tolist() == [IDENT[i] for i in (5, 3, 1, 0, 2, 4)]
    assert examples.sequence(2)[:-6].tolist() == examples.prompt(2).tolist() == list(range(1, 19))


def test_an_example_file_of_the_old_fixed_n_format_is_refused_with_the_fix(tmp_path):
    old = tmp_path / "old.npz"
    np.savez(old, tokens=np.arange(10, dtype=np.int32), offsets=np.array([0, 10]),
             perms=np.array([[1, 0, 2, 3]], dtype=np.int8), ident_ids=np.array(IDENT[:4]), tag_ids=np.arange(6))
    with pytest.raises(ValueError, match="older experiments.adapter.data .* delete it to rebuild"):
        Examples(old)


def test_collate_pads_right_drops_the_last_answer_token_and_refuses_mixed_n(examples):
    ids, mask, starts, perm, tags = collate(examples, np.array([2, 3]), pad_id=0, device=torch.device("cpu"))
    lengths = [len(examples.prompt(i)) + 6 - 1 for i in (2, 3)]
    assert mask.sum(1).tolist() == lengths
    assert ids[0, : lengths[0]].tolist() == examples.sequence(2)[:-1].tolist()
    assert (ids[1, lengths[1]:] == 0).all() and lengths[1] < lengths[0]
    assert starts.tolist() == [len(examples.prompt(2)), len(examples.prompt(3))]
    assert tags.tolist() == [examples.closing_tags(2).tolist(), examples.closing_tags(3).tolist()]
    assert perm.tolist() == [[5, 3, 1, 0, 2, 4], [0, 1, 2, 3, 4, 5]]
    with pytest.raises(ValueError, match=r"mixes examples of \[4, 6\] candidates"):
        collate(examples, np.array([0, 2]), pad_id=0, device=torch.device("cpu"))


def test_micro_batches_cover_every_example_once_never_mix_n_and_follow_the_seed(examples):
    def plan(seed):
        return [b.tolist() for b in micro_batches(examples, 2, np.random.default_rng(seed))]

    batches = plan(0)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert all(len({examples.n(i) for i in b}) == 1 for b in batches)
    assert sorted(map(sorted, batches)) == [[0, 1], [2, 3]]  # one N each: the two pairs, whatever the seed
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
    ident = torch.tensor(IDENT[:N])
    with torch.no_grad():
        scores, hidden = identifier_scores(model, ids, mask, starts, ident, N, probe_layer=1)
        logits = model(input_ids=ids, attention_mask=mask).logits
    for b in range(2):
        expected = logits[b, starts[b] - 1 : starts[b] - 1 + N][:, ident]
        torch.testing.assert_close(scores[b], expected, rtol=1e-4, atol=1e-4)
    assert hidden.shape == (2, 15, 16)


# --- with the bundled tokenizer: full lists (two-letter identifiers) and a mixed-N training step -----------

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rsd_env.verifiers.model_store import bundled_model_dir

    return AutoTokenizer.from_pretrained(str(bundled_model_dir()))


@pytest.mark.llm  # the bundled tokenizer comes with the converted model
@pytest.mark.parametrize("n", [20, 100])
def test_closing_tags_are_the_identifier_after_each_passage_even_when_a_passage_quotes_a_tag(tokenizer, n):
    from experiments.adapter.data import encode_with_tags
    from rsd_env.verifiers.prompts import encode, identifiers

    labels = identifiers(n, tokenizer)
    texts = [f"passage {j} about topic {j % 7}." for j in range(n)]
    texts[3] = f"see [{labels[5]}] and [{labels[-1]}] for more"  # quotes two other candidates' tags
    texts[-1] = "ends with a bracket ["
    task = RankingTask("q1", "ir", tuple(Candidate(f"d{j}", t) for j, t in enumerate(texts)), query="topic")
    ids, tags = encode_with_tags(task, tokenizer, 20)
    head, body = encode(task, tokenizer, 20)
    assert ids == head + body  # exactly the verifier's prompt
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[k] for k in tags] == labels  # "AB" inside "[AB]" is one token, without the space
    assert all(tokens[k - 1] == "▁[" and tokens[k + 1].startswith("]") for k in tags)
    assert all(a < b for a, b in zip(tags, tags[1:]))
    # the tag after each passage, not the one a passage quotes: candidate j's text lies between its two tags
    for j in (3, 4, n - 1):
        assert tokenizer.decode(ids[tags[j - 1] + 2 : tags[j]]).strip().startswith(f"[{labels[j]}] {texts[j][:5]}")


class FirstStageTeacher:
    """The teacher interface ``build_examples`` uses, ordering by first-stage (BM25) score: the MiniLM teacher
    is an optional extra, and this test is about the data and training plumbing, not the teacher."""

    def embed(self, texts):
        return np.zeros((len(list(texts)), 1))

    def order(self, task):
        return sorted(range(task.n), key=lambda j: (-(task.candidates[j].score or 0.0), task.candidates[j].docid))


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory, tokenizer):
    """Two DL20 20-candidate windows + one DL20 BM25 top-100 shown shuffled, 6-token passages."""
    from experiments.adapter.data import build_examples, reorder
    from rsd_env.data import load_tasks

    windows = load_tasks("dl20", "all", n=20, sampling="random", seed=0, max_tasks=2)
    full = reorder(load_tasks("dl20", "all", n=100, sampling="top", max_tasks=1)[0], 7, "#f0")
    arrays = build_examples([*windows, full], tokenizer, FirstStageTeacher(), [6], seed=0)
    path = tmp_path_factory.mktemp("mixed") / "examples.npz"
    np.savez(path, **arrays)
    return path, [*windows, full]


@pytest.mark.llm
def test_a_mixed_n_file_holds_each_tasks_own_n_teacher_order_and_answer_ids(mixed_file, tokenizer):
    from rsd_env.verifiers.prompts import identifier_token_ids

    path, tasks = mixed_file
    data = Examples(path)
    assert [data.n(i) for i in range(len(data))] == [20, 20, 100]
    assert np.load(path)["perms"].dtype == np.int8  # 100 items still fit
    for i, task in enumerate(tasks):
        assert data.perm(i).tolist() == FirstStageTeacher().order(task)
        assert sorted(data.perm(i).tolist()) == list(range(task.n))
        answer = data.sequence(i)[len(data.prompt(i)) :]
        assert answer.tolist() == [identifier_token_ids(tokenizer, task.n)[j] for j in data.perm(i)]
    assert 1000 < len(data.prompt(2)) < 2000  # 100 passages of 6 tokens + tags and instruction


@pytest.mark.llm
def test_one_training_step_on_a_mixed_n_file_moves_the_adapter_and_it_can_seed_a_second_stage(mixed_file, tmp_path):
    from peft.utils import load_peft_weights
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from experiments.adapter.train import LORA_TARGETS, add_lora, load_adapter_folder, main

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=262144, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    Gemma3ForCausalLM(config).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "adapter"
    main(["--data", str(mixed_file[0]), "--model", str(tmp_path / "tiny"), "--work-dir", str(tmp_path / "run"),
          "--out", str(out), "--max-steps", "1", "--accum", "3", "--rank", "2", "--alpha", "4", "--first-layer", "0",
          "--probe-layer", "1", "--lr", "1e-2", "--warmup", "0", "--wandb", "disabled"])
    weights = load_peft_weights(str(out), device="cpu")
    b_mats = [v for k, v in weights.items() if "lora_B" in k]
    assert b_mats and all(v.abs().sum() > 0 for v in b_mats)  # zero at start: one step over N = 20 and 100 moved them
    # the saved folder seeds a second stage (--init-from <adapter folder>) if the LoRA shape matches ...
    def fresh(rank):
        torch.manual_seed(1)
        return add_lora(Gemma3ForCausalLM(config), rank, 4, 0.0, LORA_TARGETS, first_layer=0)

    model = fresh(2)
    load_adapter_folder(model, out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert len(loaded) == len(b_mats)
    assert all(torch.equal(v.to(torch.bfloat16), weights[k.replace(".default", "")]) for k, v in loaded.items())
    # ... and says what to change if it does not
    with pytest.raises(SystemExit, match="its r is 2, this run's is 4; set rank/alpha/first_layer"):
        load_adapter_folder(fresh(4), out)


REPO = Path(__file__).resolve().parents[1]
SHIPPED_ADAPTERS = sorted(REPO.glob("rsd_env/verifiers/adapters/*/training_meta.json"))


@pytest.mark.parametrize("meta_file", SHIPPED_ADAPTERS, ids=lambda p: p.parent.name)
def test_each_shipped_adapters_config_still_gives_the_options_it_was_trained_with(meta_file, monkeypatch):
    """The stage configs share a recipe through ``extends``: each must still resolve to what its card records."""
    from experiments.adapter.train import parse_args

    monkeypatch.chdir(REPO)  # the recorded config paths are relative to the repo
    recorded = json.loads(meta_file.read_text())["args"]

    def options(argv):
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(parse_args(argv)).items()}

    parsed, defaults = options(["--config", recorded["config"]]), options([])
    for key, value in parsed.items():  # options added after a stage was trained must be at their default
        assert value == recorded.get(key, defaults[key]), key


def test_extends_fills_the_keys_a_config_does_not_set_and_bad_configs_say_what_is_wrong(tmp_path, capsys):
    from experiments.adapter.train import load_config, parse_args

    (tmp_path / "base.yaml").write_text("lr: 0.001\nrank: 4\n")
    (tmp_path / "stage.yaml").write_text("extends: base.yaml\nrank: 8\n")
    assert load_config(tmp_path / "stage.yaml") == {"lr": 0.001, "rank": 8}
    args = parse_args(["--config", str(tmp_path / "stage.yaml"), "--rank", "2"])
    assert (args.lr, args.rank) == (0.001, 2)  # the flag beats the file, the file beats its base

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match="missing.yaml not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "typo.yaml")])
    assert "unknown option(s) learning_rate" in capsys.readouterr().err  # not silently ignored
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load_config(tmp_path / "list.yaml")
