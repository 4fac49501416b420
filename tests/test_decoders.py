import gymnasium as gym
import numpy as np
import pytest
import torch

import rsd_env
from agents.decoders import (
    common_prefix_length,
    decode,
    decoded_ranks,
    greedy_decode,
    read_observation,
    stale_aware_evidence,
)
from agents.methods import make_method, order_to_action
from agents.policy import obs_to_tensors
from rsd_env.data.sampling import synthetic_tasks
from rsd_env.data.task import Candidate, RankingTask
from rsd_env.verifiers.base import Verifier


def _env(budget, n=8, count=12, task_n=None, **overrides):
    config = {**rsd_env.SIM_CONFIG, "data": {"count": count}, "budget": budget, "n": n, **overrides}
    if task_n is not None:  # tasks smaller than n: padded, masked items
        config["tasks"] = synthetic_tasks(count, task_n, "train", 0)
    return gym.make("RSDRankSim-v0", config=config).unwrapped


def _decoded(obs, decoder="heuristic"):
    return decode(read_observation(obs_to_tensors(obs)), decoder)[0].numpy()


def test_decoders_keep_the_verified_prefix_and_return_permutations():
    env = _env(3, n=10)
    for task in env.tasks:
        obs, _ = env.reset(options={"task_id": task.task_id})
        for _ in range(3):
            for decoder in ("heuristic", "stale_aware"):
                order = _decoded(obs, decoder)
                assert sorted(order.tolist()) == list(range(env.n))
                prefix = env.committed_ranking()[: int(obs["locked"].sum())]
                np.testing.assert_array_equal(order[: len(prefix)], prefix)
            obs, _, terminated, _, _ = env.step(order_to_action(_decoded(obs), env.n))
            if terminated:
                break


def test_stale_aware_evidence_keeps_an_items_own_slot_after_it():
    # one round, 4 items: the proposal was [2, 0, 1, 3]; row p was conditioned on proposal[:p]
    rows = torch.log(torch.tensor([[0.1, 0.2, 0.6, 0.1],  # p0: 2 wins (it is in the proposal's slot 0)
                                   [0.35, 1e-6, 1e-6, 0.65],  # p1: the LLM prefers 3 over the proposed 0
                                   [0.1, 0.3, 1e-6, 0.6],  # p2..: conditioned on [2, 0]: 0 looks "said"
                                   [1e-6, 0.3, 1e-6, 0.7]]).clamp(min=1e-6))
    obs = {"first_token": torch.zeros(1, 4), "verified": rows.reshape(1, 16),
           "proposals": torch.tensor([[1.0, 2.0, 0.0, 3.0]]), "committed": torch.tensor([[2.0, 3.0, 0.0, 1.0]]),
           "locked": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "round": torch.tensor([[1.0]]),
           "valid": torch.ones(1, 4)}
    x = read_observation(obs)  # verified prefix [2, 3]: 3 was the correction, 0 the rejected item
    evidence = stale_aware_evidence(x)[0]
    assert torch.allclose(evidence[2:, 0], rows[1, 0].expand(2))  # 0 keeps its slot-1 log-prob (0.35)
    assert torch.allclose(evidence[:, 1], rows[:, 1])  # 1 was proposed at slot 2: rows 0..2 are its own
    assert decode(x, "heuristic")[0].tolist() == [2, 3, 1, 0]  # the rejected item sinks
    assert decode(x, "stale_aware")[0].tolist() == [2, 3, 0, 1]  # 0.35 at its own slot beats 0.3


def test_decoded_ranks_and_common_prefix():
    order = torch.tensor([[2, 0, 1, 3]])
    assert decoded_ranks(order).tolist() == [[1, 2, 0, 3]]
    assert common_prefix_length(torch.tensor([[2, 0, 3, 1], [1, 0, 2, 3]]), order).tolist() == [2, 0]


def test_unknown_decoder_is_a_clear_error():
    env = _env(1)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown decoder"):
        decode(read_observation(obs_to_tensors(obs)), "best")


# ---- hand-computed multi-round cases ---------------------------------------------------------------------
# A six-item task whose LLM is a table: ROWS[prefix] = weights of the next item given that answer prefix
# (normalised; 0 stands for a tiny probability). A verification of a proposal returns, at position p, the row
# of the proposal's first p items, exactly as a causal LM conditions on them. A prefix missing from the table
# fails the test: it means a method verified a proposal other than the one worked out by hand below.
FIRST = [6, 5, 4, 3, 2, 1]  # single-token order 0 1 2 3 4 5
ROWS = {
    (): [9, 1, 1, 1, 1, 1],
    (0,): [0, 4, 1, 0, 5, 0],  # 4 beats the proposed 1: round 1 accepts [0] and corrects with 4
    (0, 1): [0, 0, 2, 6, 3, 1],
    (0, 1, 2): [0, 0, 0, 3, 2, 2],
    (0, 1, 2, 3): [0, 2, 1, 0, 3, 2],
    (0, 4): [0, 1, 5, 3, 0, 1],  # round 2 (every method proposed [0, 4, ...]): 2 is the correction at 2
    (0, 4, 3): [0, 4, 1, 0, 0, 2],  # the latest round says 1 next; round 1's rows said 3 (3/7) here
    (0, 4, 3, 5): [0, 0, 0, 1, 0, 3],
    (0, 4, 3, 1): [0, 0, 3, 0, 0, 1],  # 3 looks "said" in this row: only its own slot's evidence (0.3) is fresh
    (0, 4, 1): [0, 0, 1, 4, 0, 3],
    (0, 4, 1, 2): [0, 0, 0, 1, 0, 2],
}
# Round 1, every method: the single-token order [0 1 2 3 4 5]; accepted [0], correction 4 -> prefix [0 4].
# heuristic, round 2: rows of round 1 at positions 2.. over the free items {1 2 3 5}:
#   p2 (0,1): 3 (6/12); p3 (0,1,2): 5 (2/7, 1 and 2 ~0); p4 (0,1,2,3): 1 (2/8 > 1/8); p5: 2 -> [0 4 3 5 1 2];
#   verified: 0, 4 accepted, 2 corrects 3 -> prefix [0 4 2]; commit from round 2's rows over {1 3 5}:
#   p3 (0,4,3): 1 (4/7); p4 (0,4,3,5): 5 (3 vs 1); p5: 3 -> [0 4 2 1 5 3].
# stale-aware, round 2: an item keeps its own slot's log-prob after it (slots of [0 1 2 3 4 5] = item ids):
#   p2: 1 -> 0.4 (its slot 1), 2 -> 2/12, 3 -> 6/12, 5 -> 1/12: 3;  p3: 1 -> 0.4, 2 -> 2/12, 5 -> 2/7: 1;
#   p4: 2 -> 2/12, 5 -> 2/8: 5;  p5: 2 -> [0 4 3 1 5 2]; verified: prefix [0 4 2] (the same rows (0,4));
#   commit over {1 3 5}, slots of [0 4 3 1 5 2]: 1 -> 3, 3 -> 2, 5 -> 4:
#   p3: 1 -> 4/7 (row (0,4,3)), 3 -> 3/10 (its slot 2, row (0,4)), 5 -> 2/7: 1;
#   p4: 3 -> 3/10, 5 -> 1/4 (row (0,4,3,1)): 3 (plain greedy would take 5: 3 is ~0 in that row); p5: 5
#   -> [0 4 2 1 3 5].
# sd-decode, round 2: SD's proposal, the prefix then the single-token order of the rest: [0 4 1 2 3 5];
#   verified: prefix [0 4 2]; commit greedy from round 2's rows over {1 3 5}: p3 (0,4,1): 3 (4/8);
#   p4 (0,4,1,2): 5 (2/3); p5: 1 -> [0 4 2 3 5 1].  Plain SD keeps its proposal order: [0 4 2 1 3 5].
HAND_WORKED = {
    "heuristic": ([[0, 1, 2, 3, 4, 5], [0, 4, 3, 5, 1, 2]], [0, 4, 2, 1, 5, 3]),
    "stale-aware": ([[0, 1, 2, 3, 4, 5], [0, 4, 3, 1, 5, 2]], [0, 4, 2, 1, 3, 5]),
    "sd-decode": ([[0, 1, 2, 3, 4, 5], [0, 4, 1, 2, 3, 5]], [0, 4, 2, 3, 5, 1]),
    "sd": ([[0, 1, 2, 3, 4, 5], [0, 4, 1, 2, 3, 5]], [0, 4, 2, 1, 3, 5]),
}


def _logp(weights) -> np.ndarray:
    w = np.maximum(np.asarray(weights, dtype=np.float64), 1e-3)
    return np.log(w / w.sum())


class TableVerifier(Verifier):
    """The table above as a verifier; it records every proposal it verifies."""

    name = "table"

    def __init__(self) -> None:
        super().__init__()
        self.proposals: list[list[int]] = []

    def _first_token(self, task):
        return _logp(FIRST)

    def _verify_rows(self, task, ranking):
        self.proposals.append(ranking.tolist())
        missing = [tuple(ranking[:p].tolist()) for p in range(task.n - 1) if tuple(ranking[:p].tolist()) not in ROWS]
        assert not missing, f"proposal {ranking.tolist()} was not worked out by hand (rows for {missing})"
        last = [1.0 if j not in ranking[:-1] else 0.0 for j in range(task.n)]  # one item is left
        return np.stack([_logp(ROWS[tuple(ranking[:p].tolist())]) for p in range(task.n - 1)] + [_logp(last)])

    def target_ranking(self, task):
        return np.array([0, 4, 2, 1, 5, 3])


@pytest.mark.parametrize("name", sorted(HAND_WORKED))
def test_decoders_reproduce_hand_worked_proposals_and_commits(name):
    task = RankingTask("hand", "ir", tuple(Candidate(f"d{j}", f"passage {j}") for j in range(6)), query="q")
    verifier = TableVerifier()
    env = gym.make("RSDRankSim-v0", config={"tasks": [task], "verifier": verifier, "n": 6, "budget": 2}).unwrapped
    result = make_method(name).rank(env, "hand")
    proposals, final = HAND_WORKED[name]
    assert verifier.proposals == proposals
    assert result.ranking.tolist() == final
    assert result.llm_passes == 3 and result.info["rounds"] == 2


def test_decoders_read_the_latest_round_where_rounds_disagree():
    """After round 2 of the hand-worked case, round 1's rows order the free items {1 3 5} differently."""
    task = RankingTask("hand", "ir", tuple(Candidate(f"d{j}", f"passage {j}") for j in range(6)), query="q")
    env = gym.make("RSDRankSim-v0", config={"tasks": [task], "verifier": TableVerifier(), "n": 6,
                                            "budget": 2}).unwrapped
    obs, _ = env.reset(options={"task_id": "hand"})
    for proposal in ([0, 1, 2, 3, 4, 5], [0, 4, 3, 5, 1, 2]):
        obs, *_ = env.step(order_to_action(np.array(proposal), 6))
    assert obs["commit"][0] == 1
    x = read_observation(obs_to_tensors(obs))
    assert decode(x, "heuristic")[0].tolist() == [0, 4, 2, 1, 5, 3]  # round 2: 1 (4/7), then 5
    oldest = greedy_decode(x.rows[:, 0], x)  # what reading round 1 instead would give: 3 (3/7) first
    assert oldest[0].tolist() == [0, 4, 2, 3, 1, 5]
