"""One trained agent for longer lists: rebuild a size-agnostic policy for a larger N or another budget.

An observation's arrays are sized by the env's N and ``max_budget`` (``verified`` is max_budget x N x N),
so an SB3 policy is tied to the spaces it was trained on. The residual policy's weights are not: every
layer works per item or per round, its features are normalised by N, and rounds are pooled. Rebuilding
it for the new spaces and loading the same weights lets, e.g., the agent trained on windows of 40 rank
full lists of 100. Policies whose layers are sized by N (``ItemTransformerPolicy``'s round encoder) are
refused with the N they need.

The same rebuild starts a new training run from a trained agent's weights at another N (``transfer_weights``,
``rsd-train``'s ``init_agent``): fine-tuning, e.g., the N = 40 agent against the full-list target.

For ranking, only longer lists than the training ones are allowed. The residual is in units of positions while its
features are fractions of N, so a learned term like ``a * rank / N`` is a small share of the decoder's
``-scale * rank`` at a larger N and can outweigh it at a smaller one: the agent trained at N = 100 ranks
DL19's windows of 40 at tau -0.06 (the heuristic: 0.935), while the N = 20 and N = 40 agents beat the
heuristic at N = 40 and 100 (docs/long-lists.md#one-agent-for-every-n).
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

__all__ = ["space_n", "policy_n", "size_agnostic", "resize_problem", "resized_policy", "transfer_weights"]


def space_n(observation_space: spaces.Dict) -> int:
    """The number of candidates an env observation space is sized for."""
    return int(observation_space["first_token"].shape[0])


def policy_n(policy: BasePolicy) -> int:
    """The number of candidates ``policy``'s observation space is sized for."""
    return space_n(policy.observation_space)


def size_agnostic(policy: BasePolicy) -> bool:
    """Whether ``policy``'s weights work at any N and budget (its features extractor says so)."""
    extractor = getattr(policy, "features_extractor", None)
    return bool(getattr(extractor, "size_agnostic", False))


def resize_problem(policy: BasePolicy, n: int, allow_shorter: bool = False) -> str | None:
    """Why ``policy`` cannot rank ``n`` candidates (None: it can), phrased for an error message.
    ``allow_shorter``: let a size-agnostic policy rank fewer candidates than it was trained on (experiments)."""
    trained = policy_n(policy)
    if n == trained:
        return None
    if not size_agnostic(policy):
        return (f"{type(policy).__name__} was trained for N={trained} candidates and its weights depend on N, so "
                f"it cannot rank N={n}: use N={trained} or an agent with a size-agnostic policy "
                "(ResidualRankingPolicy, ResidualItemPolicy)")
    if n < trained and not allow_shorter:
        from agents.pretrained import shipped_for

        fits = shipped_for(n)
        shipped = f"shipped ones that fit: {', '.join(fits)}" if fits else "none of the shipped ones fits"
        return (f"this agent was trained for N={trained} candidates and ranks only N >= {trained}: at fewer "
                f"candidates its learned correction can outweigh the decoder's order (the agent trained at N = 100 "
                f"ranks windows of 40 at tau -0.06); use an agent trained at N <= {n} ({shipped}) or train one "
                f"(rsd-train --set env.n={n})")
    return None


def _policy_kwargs(agent: Any) -> dict[str, Any]:
    """The constructor kwargs ``agent``'s policy was built with (SB3 model, or a ``PolicyAgent``'s metadata)."""
    meta = getattr(agent, "meta", None)
    if isinstance(meta, dict) and "policy_kwargs" in meta:  # a policy folder (agents.policy_agent)
        return dict(meta["policy_kwargs"] or {})
    return dict(getattr(agent, "policy_kwargs", None) or {})


def _require_resizable(policy: BasePolicy, n: int, allow_shorter: bool) -> None:
    """Raise ``ValueError`` with ``resize_problem``'s reason when ``policy`` cannot rank lists of ``n``."""
    problem = resize_problem(policy, n, allow_shorter)
    if problem is not None:
        raise ValueError(problem)


def _weights_for(policy: BasePolicy, target: BasePolicy) -> dict[str, Any]:
    """``policy``'s state dict shaped for ``target`` (same class and kwargs, another N or budget): only a
    Gaussian's per-item ``log_std`` has N entries; it is filled with its mean."""
    state = policy.state_dict()
    if "log_std" in state and state["log_std"].shape != target.log_std.shape:
        state["log_std"] = state["log_std"].mean().expand(target.log_std.shape).clone()
    return state


def resized_policy(agent: Any, observation_space: spaces.Dict, action_space: spaces.Space,
                   allow_shorter: bool = False) -> BasePolicy:
    """``agent``'s policy rebuilt for these spaces (another N or ``max_budget``) with the same weights.

    Raises ``ValueError`` saying why (``resize_problem``) when it cannot rank that N.
    """
    policy = agent.policy
    if observation_space == policy.observation_space and action_space == policy.action_space:
        return policy
    _require_resizable(policy, space_n(observation_space), allow_shorter)
    resized = type(policy)(observation_space, action_space, lambda _: 0.0, **_policy_kwargs(agent))
    resized.load_state_dict(_weights_for(policy, resized), strict=True)
    resized.to(policy.device)
    resized.set_training_mode(False)
    return resized


def transfer_weights(source: Any, target: BasePolicy, target_kwargs: dict[str, Any]) -> None:
    """Load ``source`` agent's policy weights into ``target``, a new run's policy built with ``target_kwargs``
    (for fine-tuning; any N or budget when the policy is size-agnostic, shorter lists included, since the
    run then trains at that N). Raises ``ValueError`` naming what differs: the policy class or its kwargs."""
    policy = source.policy
    if type(policy) is not type(target):
        raise ValueError(f"the agent to start from has a {type(policy).__name__}, the run builds a "
                         f"{type(target).__name__}: set policy: {type(policy).__name__}")
    kwargs = _policy_kwargs(source)
    if kwargs != dict(target_kwargs):
        differ = sorted(k for k in set(kwargs) | set(target_kwargs) if kwargs.get(k) != target_kwargs.get(k))
        raise ValueError(f"the agent to start from was built with policy_kwargs {kwargs}, the run with "
                         f"{dict(target_kwargs)} (they differ in {differ}): use the agent's policy_kwargs")
    _require_resizable(policy, policy_n(target), allow_shorter=True)
    target.load_state_dict(_weights_for(policy, target), strict=True)
