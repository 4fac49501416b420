"""``extends`` in experiment YAML files: what a file inherits, what it replaces, and the errors."""

import pytest

from experiments.config_files import load_yaml_config, merged


def test_mappings_merge_key_by_key_and_other_values_replace_the_base():
    base = {"real": {"verifier": "bundled", "verifier_kwargs": {"adapter": "bundled-40", "prompt_cache_mb": 64}},
            "stats": [["std", 1], ["sd", 1]], "tolerance": 0.01}
    over = {"real": {"verifier_kwargs": {"adapter": "bundled-60"}}, "stats": [["std", 1]], "tolerance": None}
    assert merged(base, over) == {
        "real": {"verifier": "bundled", "verifier_kwargs": {"adapter": "bundled-60", "prompt_cache_mb": 64}},
        "stats": [["std", 1]], "tolerance": None}
    assert base["real"]["verifier_kwargs"]["adapter"] == "bundled-40"  # the base is not changed
    assert merged({"a": {"b": 1}}, {"a": 2}) == {"a": 2} and merged({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_a_chain_of_extends_applies_nearest_last_and_bad_files_name_themselves(tmp_path):
    (tmp_path / "recipe.yaml").write_text("search: {trials: 200, seed: 0}\nenv: {n: 40}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../recipe.yaml\nsearch: {seed: 1}\n")
    (tmp_path / "sub" / "top.yaml").write_text("extends: mid.yaml\nenv: {n: 60}\n")
    assert load_yaml_config(tmp_path / "sub" / "top.yaml") == {"search": {"trials": 200, "seed": 1}, "env": {"n": 60}}
    (tmp_path / "broken.yaml").write_text("search:\n  trials: 200\n seed: 0\n")
    with pytest.raises(ValueError, match=r"sweep config .*broken.yaml line \d+ is not valid YAML"):
        load_yaml_config(tmp_path / "broken.yaml", "sweep config")
    (tmp_path / "dangling.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ValueError, match=r"config .*gone.yaml not found; pass an existing YAML file \(e.g. x.yaml\)"):
        load_yaml_config(tmp_path / "dangling.yaml", example="x.yaml")
    (tmp_path / "scalar.yaml").write_text("3\n")
    with pytest.raises(ValueError, match="a config is a YAML mapping of option: value, not int"):
        load_yaml_config(tmp_path / "scalar.yaml")
