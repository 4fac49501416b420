"""Which shipped target a verifier gets for ``n`` candidates per prompt, unless its options name one.

The bundled model ships one LoRA adapter per length range (``model_store.long_list_adapter``), because the
N = 20 adapter copies the order it is shown in long prompts. The simulated verifier stands in for that
target, so it follows the same ranges with the profile fitted to each adapter's target: without this,
``n=100`` in simulation would run the N = 20 fit, whose single-token ranking agrees with its own AR order
at Kendall tau 0.97 where the real full-list target's agrees at 0.60 (docs/simulator.md).
"""

from __future__ import annotations

from typing import Any

from rsd_env.verifiers.model_store import (
    FULL_LIST_ADAPTER,
    LIST_40_ADAPTER,
    LIST_60_ADAPTER,
    long_list_adapter,
    with_length_adapter,
)
from rsd_env.verifiers.simulated import DEFAULT_PROFILE

# the simulated profile fitted to the target of each bundled adapter (None: the N = 20 adapter). bundled-60's
# (the default for 21-60) and bundled-40's (named only) are the best fits found at windows of 40, outside the
# +-0.01 tolerance (max gaps 0.0138 and 0.0121), where the N = 20 and full-list profiles miss those targets by
# ~0.2 and ~0.14
SIMULATED_PROFILES: dict[str | None, str] = {
    None: DEFAULT_PROFILE,
    LIST_40_ADAPTER: "n40-approx",
    LIST_60_ADAPTER: "n40-b60-approx",
    FULL_LIST_ADAPTER: "calibrated-full-list",
}


def simulated_profile(n: int) -> str:
    """The simulated profile that stands in for the bundled target ``n`` candidates per prompt run against."""
    return SIMULATED_PROFILES[long_list_adapter(n)]


def with_length_defaults(spec: Any, options: dict[str, Any], n: int) -> dict[str, Any]:
    """``options`` for the verifier ``spec`` at ``n`` candidates, with the shipped adapter (``"bundled"``)
    or fitted profile (``"simulated"``) for that length added, unless ``options`` or a dict ``spec`` name
    one themselves. Other verifiers' options come back unchanged."""
    kind, named = spec, set(options)
    if isinstance(spec, dict):
        kind, named = spec.get("kind"), named | set(spec)
    if kind == "bundled" and "adapter" not in named:
        return with_length_adapter(options, n)
    if kind == "simulated" and "profile" not in named:
        profile = simulated_profile(n)
        return options if profile == DEFAULT_PROFILE else {**options, "profile": profile}
    return options
