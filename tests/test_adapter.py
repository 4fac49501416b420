"""The shipped ranking adapter must rank by content, not by position, so a broken one cannot land.

The bundled base model copies the presentation order (tau ~ 0.98 with the order shown, ~ -1 between a
ranking and the ranking of the reversed list); the adapter must not. Three DL19 tasks, two seeded
presentation orders each, the verifier's default passage budget: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.adapter.data import reorder
from experiments.adapter.eval import SHIPPED_ADAPTER, Ranker, tau_with_order
from rsd_env.data import load_tasks
from rsd_env.verifiers.model_store import BUNDLED_ADAPTERS, BUNDLED_MODEL, bundled_adapter_dir
from rsd_env.verifiers.prompts import DEFAULT_PASSAGE_TOKENS

pytestmark = pytest.mark.llm  # no skip: missing adapter weights must fail here, not pass silently


@pytest.mark.parametrize("name", sorted(BUNDLED_ADAPTERS))
def test_shipped_adapter_files_point_at_the_bundled_base(name: str) -> None:
    """Every adapter a verifier can name ships its weights, a config on the bundled base and a model card."""
    folder = bundled_adapter_dir(name)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == BUNDLED_MODEL
    weights = folder / "adapter_model.safetensors"
    assert 0.5e6 < weights.stat().st_size < 20e6
    assert (folder / "README.md").exists()


def test_adapter_ranks_by_content_not_position():
    ranker = Ranker(adapter=SHIPPED_ADAPTER, passage_tokens=DEFAULT_PASSAGE_TOKENS)
    to_presentation, across_orders = [], []
    for k, task in enumerate(load_tasks("dl19", "all", n=20, max_tasks=3)):
        rankings = []
        for seed in (1, 2):
            shown = reorder(task, 7919 * seed + k, f"#s{seed}")
            _, ranking = ranker.rank(shown)
            assert sorted(ranking) == list(range(task.n))
            to_presentation.append(tau_with_order(ranking, list(range(task.n))))
            rankings.append([shown.candidates[j].docid for j in ranking])
        across_orders.append(tau_with_order(*rankings))
    assert np.mean(to_presentation) <= 0.3, to_presentation
    assert np.mean(across_orders) >= 0.5, across_orders
