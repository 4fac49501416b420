"""RSDRank-v0's default: the bundled real LLM on DL19, offline, check_env clean."""

import gymnasium as gym
import numpy as np
import pytest

import rsd_env  # noqa: F401
from rsd_env.verifiers.hf import HFVerifier, bundled_adapter_dir

pytestmark = pytest.mark.llm


def test_default_env_runs_the_bundled_llm_on_dl19_and_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    config = {"max_tasks": 2, "verifier_kwargs": {"passage_tokens": 16, "target_cache": False}}
    env = gym.make("RSDRank-v0", config=config)
    base = env.unwrapped
    assert isinstance(base.verifier, HFVerifier) and base.verifier.model_name == "bundled:gemma-3-270m"
    assert base.verifier.adapter == str(bundled_adapter_dir())  # base + the shipped ranking LoRA
    assert base.config["dataset"] == "trec-dl" and base.config["split"] == "test"
    assert base.tasks[0].task_id == "264014"  # the first DL19 query
    check_env(base)
    obs, info = env.reset(seed=0)
    target = base.target(base.task)
    _, _, done, _, info = env.step(np.zeros(20, dtype=np.float32))
    np.testing.assert_array_equal(base.committed_ranking()[: info["verified_prefix"]],
                                  target[: info["verified_prefix"]])
    assert info["verified_prefix"] >= 1


def test_bundled_without_its_adapter_warns_and_runs_the_base_model(monkeypatch, tmp_path):
    """A broken install (adapter files missing) must not silently change the target model: it warns, and what
    runs is the raw base model (its scores equal an explicit adapter=None verifier's, not the adapted one's)."""
    from rsd_env import verifiers
    from rsd_env.data import load_tasks
    from rsd_env.verifiers import hf

    task = load_tasks("trec-dl", "test", n=5, max_tasks=1)[0]
    options = {"passage_tokens": 16, "target_cache": False}
    adapted = verifiers.make_verifier("bundled", **options).first_token_scores(task)
    base = verifiers.make_verifier("bundled", adapter=None, **options).first_token_scores(task)
    monkeypatch.setattr(hf, "bundled_adapter_dir", lambda name="bundled": tmp_path)
    with pytest.warns(UserWarning, match="adapter for the bundled model is missing from this install"):
        broken = verifiers._load("bundled", dict(options))
    assert isinstance(broken, HFVerifier) and broken.adapter is None
    scores = broken.first_token_scores(task)
    np.testing.assert_allclose(scores, base, atol=1e-4)
    assert np.abs(scores - adapted).max() > 1e-2
