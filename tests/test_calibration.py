"""The calibrated simulator profile: it is the default, it reproduces its recorded fit, old one by name."""

import numpy as np
import pytest
import yaml

from experiments.paper.calibrate_simulator import DEFAULT_CONFIG, measure
from rsd_env.data import load_tasks
from rsd_env.verifiers import SimulatedVerifier, make_verifier
from rsd_env.verifiers.simulated import load_profiles, profile_params


def test_calibrated_is_the_default_and_legacy_stays_available():
    assert SimulatedVerifier().params == profile_params("calibrated")
    assert make_verifier("simulated").profile == "calibrated"
    legacy = make_verifier({"kind": "simulated", "profile": "legacy"})
    assert legacy.params == {"seed": 0, "dim": 4, "label_weight": 1.0, "noise": 1.0, "cohesion": 1.5,
                             "redundancy": 3.0, "temperature": 0.5}
    assert SimulatedVerifier("legacy", seed=3).params["seed"] == 3
    with pytest.raises(ValueError, match="unknown simulator profile 'nope'"):
        SimulatedVerifier("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['cohesionn'\] for verifier 'simulated'"):
        SimulatedVerifier(cohesionn=1.0)


def test_the_calibrated_profile_reproduces_its_recorded_fit():
    """Re-measures every fitted statistic on the synthetic tasks: a change to the simulator, the
    decoders or the profile that moves any of them shows up here."""
    entry = load_profiles()["calibrated"]
    fit = entry["fit"]
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    sim = config["sim"]
    tasks = load_tasks(sim["dataset"], sim["split"], count=sim["count"])
    stats = [(m, int(t)) for m, t in config["stats"]]
    got = measure(tasks, SimulatedVerifier(), stats, fit["env"])
    for key, value in fit["simulated_kendall_tau"].items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
        assert abs(value - fit["real_kendall_tau"][key]) <= fit["tolerance"] + 1e-9, key
    # the profile poses the same problem as the real target: SD improves with T, and decoding helps
    assert got["std@T=1"] < got["sd@T=1"] < got["sd@T=2"] < got["sd@T=3"]
    assert got["heuristic@T=2"] > got["sd@T=2"]
    assert np.isfinite(list(got.values())).all()
