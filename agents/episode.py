"""One method's episode on an env, advanced a verification round at a time.

``RankingMethod.rank`` runs an episode alone (one verification per round); ``rsd-rerank`` advances the
episodes of many windows together, so that their verifications share one batched LLM call. Both go through
``Episode``: the sequence of verification rounds, stop rules and the final commit step is written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rsd_env.verifiers.base import Verification

if TYPE_CHECKING:
    from rsd_env.env import RSDRankEnv


class Episode:
    """A reset episode of ``method`` on ``env``'s task ``task_id``.

    Drive it with ``wants_round`` / ``propose`` / ``apply`` (the verification in between is the caller's:
    one ``verify`` or a share of a ``verify_batch``), then ``finish`` for the final ranking. ``spent_ms``:
    cost already paid for this ranking elsewhere (a shared prompt prefill), which deadlines count.
    """

    def __init__(self, method: Any, env: RSDRankEnv, task_id: str, spent_ms: float = 0.0) -> None:
        self.method, self.env = method, env
        self.rules = [rule.begin(spent_ms) for rule in method.stop_rules]  # this episode's own copies
        self.obs, _ = env.reset(options={"task_id": task_id})
        method.start(env, env.task)
        self.done = False  # the env terminated: everything verified, or the ranking committed

    @property
    def rounds(self) -> int:
        """Verification rounds so far."""
        return int(self.obs["round"][0])

    def wants_round(self) -> bool:
        """Whether the method verifies another proposal: budget left, no stop rule fired, not committing."""
        return (not self.done and not self.env.in_commit_step and self.rounds < self.method.rounds(self.env)
                and not any(rule.should_stop(self.obs, self.env) for rule in self.rules))

    def propose(self) -> np.ndarray:
        """The method's next proposal (validated, verified prefix kept first): what the LLM verifies."""
        return self.env.propose(self.method.act(self.obs, self.env))

    def apply(self, verification: Verification, round_ms: float) -> None:
        """Take in the LLM's verdict on the proposal; ``round_ms`` is what the round cost (stop rules)."""
        self.obs, _, terminated, _, _ = self.env.apply_verification(verification)
        for rule in self.rules:
            rule.after_round(self.env, round_ms)
        self.done = bool(terminated)

    def finish(self) -> np.ndarray:
        """End verifying, run the commit step (a free decode of the last verified rows) when the protocol
        has one, and return the final ranking."""
        env = self.env
        if not self.done and env.end_verification():  # True too when already in the commit step
            self.obs, *_ = env.step(self.method.act(env.observation(), env))
        self.done = True
        return env.committed_ranking()
