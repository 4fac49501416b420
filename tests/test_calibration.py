"""The calibrated simulator profile: it is the default, it reproduces its recorded fit, old one by name."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.config_files import load_yaml_config
from experiments.paper.calibrate_simulator import (
    DEFAULT_CONFIG,
    OBJECTIVES,
    fit,
    measure,
    real_verifier_options,
    sim_tasks,
)
from experiments.paper.calibrate_simulator import main as calibrate_main
from rsd_env.verifiers import SimulatedVerifier, make_verifier
from rsd_env.verifiers.simulated import PROFILES_FILE, load_profiles, profile_params

REPO = Path(__file__).resolve().parent.parent


def test_calibrated_is_the_default_and_legacy_stays_available():
    assert SimulatedVerifier().params == profile_params("calibrated")
    assert make_verifier("simulated").profile == "calibrated"
    legacy = make_verifier({"kind": "simulated", "profile": "legacy"})
    assert legacy.params == {"seed": 0, "dim": 4, "label_weight": 1.0, "noise": 1.0, "cohesion": 1.5,
                             "redundancy": 3.0, "temperature": 0.5, "first_slot_noise": 0.0,
                             "prefix_noise": 0.0}
    assert SimulatedVerifier("legacy", seed=3).params["seed"] == 3
    with pytest.raises(ValueError, match="unknown simulator profile 'nope'"):
        SimulatedVerifier("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['cohesionn'\] for verifier 'simulated'"):
        SimulatedVerifier(cohesionn=1.0)


FITTED = [name for name, entry in load_profiles().items() if "fit" in entry]


def _remeasure(name: str, fit: dict) -> tuple[dict, dict[str, float]]:
    """(the fit's config, every statistic re-measured on the profile's own synthetic tasks), after checking
    each equals the simulated value the fit recorded."""
    config = load_yaml_config(REPO / fit["config"] if "config" in fit else DEFAULT_CONFIG)
    stats = [(m, int(t)) for m, t in config["stats"]]
    got = measure(sim_tasks(config), SimulatedVerifier(name), stats, fit["env"])
    for key, value in fit["simulated_kendall_tau"].items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    return config, got


@pytest.mark.parametrize("name", FITTED)
def test_every_fitted_profile_reproduces_its_recorded_fit(name):
    """Re-measures every fitted statistic on the profile's own synthetic tasks (its config's ``sim``, e.g.
    N = 100 for ``calibrated-full-list``): a change to the simulator, the decoders or the profile that
    moves any of them shows up here."""
    fit = load_profiles()[name]["fit"]
    config, got = _remeasure(name, fit)
    assert config.get("profile", "calibrated") == name
    for key, value in fit["simulated_kendall_tau"].items():
        assert abs(value - fit["real_kendall_tau"][key]) <= fit["tolerance"] + 1e-9, key
    # the profile poses the same problem as the real target: SD improves with T, and decoding helps
    assert got["std@T=1"] < got["sd@T=1"] < got["sd@T=2"] < got["sd@T=3"]
    assert got["heuristic@T=2"] > got["sd@T=2"]
    assert np.isfinite(list(got.values())).all()


def test_a_fit_outside_the_tolerance_writes_no_profile(tmp_path):
    """A failed fit must not become a profile that RSDRankSim-v0 users (and the test above) would trust."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["sim"]["count"] = 8
    config["stats"] = [["std", 1], ["heuristic", 1]]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # an unreachable real target: STD far above the heuristic
    real = {"verifier": "bundled", "dataset": "dl20", "tasks": 54, "env": config.get("env"),
            "kendall_tau": {"std@T=1": 0.99, "heuristic@T=1": 0.10}}
    (tmp_path / "real.json").write_text(json.dumps(real))
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES_FILE.read_text())
    before = profiles.read_text()
    code = calibrate_main(["--config", str(tmp_path / "config.yaml"), "--real-stats", str(tmp_path / "real.json"),
                           "--trials", "2", "--profiles", str(profiles), "--output", str(tmp_path / "out")])
    assert code == 1
    assert profiles.read_text() == before
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert fit["max_gap"] > config["tolerance"]


APPROXIMATE = [name for name, entry in load_profiles().items() if "approx_fit" in entry]


@pytest.mark.parametrize("name", APPROXIMATE)
def test_every_approximate_profile_reproduces_its_recorded_fit(name):
    """An approximate profile (``full-list-approx``, ``n40-approx``: the best fit found, outside the tolerance,
    so not a fitted profile) is still a length's stand-in for its real target: its figures must stay what
    its entry says, each within twice the tolerance, with STD far from AR and the up-to-down heuristic close
    and gaining from a second round, as on the real target at that length."""
    approx = load_profiles()[name]["approx_fit"]
    _, got = _remeasure(name, approx)
    gaps = [abs(got[k] - approx["real_kendall_tau"][k]) for k in got]
    assert max(gaps) == pytest.approx(approx["max_gap"], abs=1e-4)
    assert approx["tolerance"] < max(gaps) <= 2 * approx["tolerance"]
    assert got["std@T=1"] + 0.1 < got["heuristic@T=1"] < got["heuristic@T=2"]


def test_the_real_side_gets_the_bundled_adapter_for_its_prompt_length():
    """A long-list calibration config that only sets ``n`` must fit the target the env gives at that ``n``
    (bundled-60 / bundled-full), not the N = 20 adapter, which copies the shown order in long prompts."""
    def options(real: dict, env: dict | None = None) -> dict:
        return real_verifier_options({"real": {"verifier": "bundled", **real}, "env": env})

    assert options({"data": {"n": 40}}) == {"adapter": "bundled-60"}
    assert options({"verifier_kwargs": {"prompt_cache_mb": 64}}, {"n": 100}) == {"prompt_cache_mb": 64,
                                                                                  "adapter": "bundled-full"}
    assert options({"data": {"n": 40}, "verifier_kwargs": {"adapter": "bundled-full"}}) == {"adapter": "bundled-full"}
    assert options({"data": {"n": 40}, "verifier_kwargs": {"adapter": None}}) == {"adapter": None}
    assert options({}) == {}
    assert real_verifier_options({"real": {"verifier": "simulated", "data": {"n": 40}}}) == {}


def test_the_max_gap_objective_prefers_the_fit_the_tolerance_accepts():
    """Sum of squares can prefer one statistic just outside the tolerance to several inside it; ``max_gap``
    ranks fits the way the tolerance check does. An unknown objective is a clear error, not a silent default."""
    outside, inside = [0.011, 0.0, 0.0], [0.008, -0.008, 0.008]
    assert OBJECTIVES["squares"](outside) < OBJECTIVES["squares"](inside)
    assert OBJECTIVES["max_gap"](inside) < OBJECTIVES["max_gap"](outside)
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["search"]["objective"] = "median"
    with pytest.raises(ValueError, match=r"unknown search.objective 'median'.*choose one of \['max_gap', 'squares'\]"):
        fit(config, [("std", 1)], {"std@T=1": 0.9}, trials=1)


def test_search_start_makes_a_profile_the_first_trial():
    """``search.start`` refines an earlier fit: with one trial the fit is that profile's (or mapping's)
    parameters, clipped to the ranges, optional ones at their defaults; an unknown profile or a mapping that
    lacks a searched parameter is a clear error."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["sim"]["count"] = 4
    config["search"]["space"] = {"noise": [0.2, 10.0], "temperature": [0.6, 2.0], "prefix_noise": [0.0, 6.0]}
    config["search"]["start"] = "legacy"
    result = fit(config, [("std", 1)], {"std@T=1": 0.9}, trials=1)
    assert {k: result["params"][k] for k in config["search"]["space"]} == {"noise": 1.0, "temperature": 0.6,
                                                                          "prefix_noise": 0.0}
    config["search"]["start"] = {"noise": 3.0, "temperature": 0.9}  # a fit's params: prefix_noise defaults
    result = fit(config, [("std", 1)], {"std@T=1": 0.9}, trials=1)
    assert {k: result["params"][k] for k in config["search"]["space"]} == {"noise": 3.0, "temperature": 0.9,
                                                                          "prefix_noise": 0.0}
    config["search"]["start"] = {"noise": 3.0}
    with pytest.raises(ValueError, match=r"search.start lacks \['temperature'\]"):
        fit(config, [("std", 1)], {"std@T=1": 0.9}, trials=1)
    config["search"]["start"] = "nope"
    with pytest.raises(ValueError, match="unknown simulator profile 'nope'"):
        fit(config, [("std", 1)], {"std@T=1": 0.9}, trials=1)


def test_a_fit_to_another_target_extends_its_recipe_and_refuses_real_stats_of_another(tmp_path, capsys):
    """calibrate_n40_b60.yaml is calibrate_n40.yaml with bundled-60 as the real target (its mappings merge key
    by key, so the prompt cache setting stays); a real.json measured on another adapter is refused, not fitted."""
    base = load_yaml_config(REPO / "experiments/configs/calibrate_n40.yaml")
    config = load_yaml_config(REPO / "experiments/configs/calibrate_n40_b60.yaml")
    assert real_verifier_options(base) == {"adapter": "bundled-40", "prompt_cache_mb": 10000}
    assert real_verifier_options(config) == {"adapter": "bundled-60", "prompt_cache_mb": 10000}
    assert {k: v for k, v in config.items() if k not in ("real", "profile")} == \
        {k: v for k, v in base.items() if k not in ("real", "profile")}
    assert config["profile"] == "calibrated-n40-b60" and config["real"]["data"] == base["real"]["data"]
    real = {"verifier": "bundled", "verifier_options": real_verifier_options(base), "dataset": "trec-dl",
            "tasks": 162, "env": config["env"], "kendall_tau": {f"{m}@T={t}": 0.5 for m, t in config["stats"]}}
    (tmp_path / "real.json").write_text(json.dumps(real))
    with pytest.raises(SystemExit):
        calibrate_main(["--config", str(REPO / "experiments/configs/calibrate_n40_b60.yaml"), "--real-stats",
                        str(tmp_path / "real.json"), "--dry-run", "--output", str(tmp_path / "out")])
    assert "measured with verifier options {'adapter': 'bundled-40'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("extends: calibrate.yaml\nstats: [[std, 1]\n")
    with pytest.raises(SystemExit):
        calibrate_main(["--config", str(tmp_path / "bad.yaml")])
    assert "bad.yaml line 3 is not valid YAML" in capsys.readouterr().err


def test_max_floor_share_keeps_the_fit_off_the_observation_floor():
    """n40-approx puts ~3 % of its log-probs below the env's clip floor (ties the real target never shows);
    with search.max_floor_share a trial over it loses to any trial within it, and a search that finds none
    is an error, not a profile."""
    from experiments.paper.calibrate_simulator import floor_share

    config = load_yaml_config(REPO / "experiments/configs/calibrate_n40.yaml")
    config["sim"]["count"] = 8
    tasks = sim_tasks(config)
    assert floor_share(tasks, SimulatedVerifier("n40-approx")) > 0.01
    assert floor_share(tasks, SimulatedVerifier("calibrated-full-list")) == 0.0
    stats = [("std", 1), ("heuristic", 1)]
    target = {"std@T=1": 0.74, "heuristic@T=1": 0.93}
    config["search"] = {"trials": 6, "objective": "max_gap", "seed": 0, "max_floor_share": 0.0,
                        "start": {"temperature": 0.05, "noise": 10.0},  # the first trial: far over the floor
                        "space": {"temperature": [0.02, 2.0], "noise": [5.0, 10.0]}}
    assert floor_share(tasks, SimulatedVerifier("legacy", temperature=0.05, noise=10.0)) > 0.1
    result = fit(config, stats, target, trials=6)
    assert result["floor_share"] == 0.0 and result["trials_over_floor_cap"] >= 1
    config["search"]["space"] = {"temperature": [0.02, 0.05], "noise": [15.0, 20.0]}  # every trial far below
    config["search"].pop("start")
    with pytest.raises(ValueError, match="no trial kept the simulator's log-probs above the floor"):
        fit(config, stats, target, trials=2)
