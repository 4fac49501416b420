"""Verifiers: the target LLM behind the environment (real transformers model, server, or simulated)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from rsd_env.verifiers.base import Verification, Verifier, VerifierStats
from rsd_env.verifiers.simulated import SimulatedVerifier

__all__ = ["Verification", "Verifier", "VerifierStats", "SimulatedVerifier", "make_verifier"]

_SHARED: dict[str, Verifier] = {}


def make_verifier(spec: Any = "bundled", **kwargs: Any) -> Verifier:
    """A verifier from a spec; real models are loaded once per process and shared by all envs.

    ``"bundled"``: Gemma 3 270M + our listwise LoRA (offline). ``"simulated"``: the stand-in LLM.
    ``"hf:<name or folder>"``: any causal LM. ``"openai:<base url>"``: an OpenAI-compatible server.
    A dict ``{"kind": <one of those>, **kwargs}`` or a ``Verifier`` instance also work.
    """
    if isinstance(spec, Verifier):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind is None:
            raise ValueError("a verifier dict needs a 'kind' key, e.g. {'kind': 'simulated', 'seed': 1}")
        return make_verifier(kind, **{**spec, **kwargs})
    if not isinstance(spec, str):
        raise TypeError(f"verifier spec must be a string, dict or Verifier, got {type(spec).__name__}")
    if spec == "simulated":
        check_options(SimulatedVerifier, kwargs, spec)
        return SimulatedVerifier(**kwargs)
    key = f"{spec}|{sorted(kwargs.items())!r}"
    if key not in _SHARED:
        _SHARED[key] = _load(spec, kwargs)
    return _SHARED[key]


def check_options(cls: type, kwargs: dict[str, Any], spec: str) -> None:
    """Unknown verifier options are a ValueError listing the valid ones, not a TypeError from deep inside."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(set(params) - {"self"})
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for verifier {spec!r}; valid options: {valid}")


def _load(spec: str, kwargs: dict[str, Any]) -> Verifier:
    if spec == "bundled":
        from rsd_env.verifiers.hf import HFVerifier, bundled_adapter_dir

        if "adapter" not in kwargs and not (bundled_adapter_dir() / "adapter_config.json").exists():
            warnings.warn(
                f"the listwise LoRA adapter for the bundled model is missing from this install "
                f"({bundled_adapter_dir()}), so 'bundled' runs the raw base Gemma 3 270M, which mostly copies "
                "the presentation order; reinstall rsd (pip install -e .) or pass "
                "verifier_kwargs={'adapter': '<peft folder>'} to use your own adapter",
                UserWarning,
                stacklevel=3,
            )
            kwargs = {**kwargs, "adapter": None}
        check_options(HFVerifier, kwargs, spec)
        return HFVerifier(**kwargs)
    if spec.startswith("hf:"):
        from rsd_env.verifiers.hf import HFVerifier

        kwargs.setdefault("adapter", None)
        check_options(HFVerifier, {"model": spec[3:], **kwargs}, spec)
        return HFVerifier(model=spec[3:], **kwargs)
    if spec.startswith("openai:"):
        from rsd_env.verifiers.server import OpenAIVerifier

        check_options(OpenAIVerifier, {"base_url": spec[len("openai:"):], **kwargs}, spec)
        return OpenAIVerifier(base_url=spec[len("openai:"):], **kwargs)
    raise ValueError(
        f"unknown verifier {spec!r}; use 'bundled', 'simulated', 'hf:<model name or folder>', "
        "'openai:<base url>', a dict with 'kind', or a Verifier instance"
    )
