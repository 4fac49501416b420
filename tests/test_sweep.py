"""The offline Optuna sweep: trials run, the study resumes after a kill, killed trials are re-run."""

from __future__ import annotations

import pytest

from experiments.paper import sweep

TINY = {"timesteps": 20, "train_tasks": 8, "eval_tasks": 4, "tasks_per_batch": 1, "group_size": 2, "d_model": 32,
        "n_layers": 1}


def fake_trial(params):
    return {"objective": -abs(params["learning_rate"] - 1e-3) + 0.01 * params["budget"]}


def test_real_trial_runs_and_best_config_is_reported(tmp_path):
    best = sweep.optuna_sweep(1, tmp_path, seed=0, wandb_mode="disabled", overrides=TINY)
    assert best["complete_trials"] == 1 and best["params"]["timesteps"] == 20
    assert {"learning_rate", "group_size", "d_model", "n_layers", "budget", "warm_start"} <= set(best["params"])
    scores = best["scores"]
    decoders = {k: v for k, v in scores.items() if k.endswith("_kendall_tau")}
    assert {"heuristic_kendall_tau", "stale-aware_kendall_tau", "sd-decode_kendall_tau"} <= set(decoders)
    assert scores[f"{scores['decoder_to_beat']}_kendall_tau"] == max(decoders.values())
    assert best["objective"] == pytest.approx(scores["kendall_tau"] - max(decoders.values()))


def test_resume_after_kill(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_trial", fake_trial)
    first = sweep.optuna_sweep(2, tmp_path, wandb_mode="disabled")
    assert first["complete_trials"] == 2 and first["resumed_from"] == 0
    study = sweep.open_study(tmp_path, "rpo", 0)
    killed = study.ask()  # a trial whose process died: left RUNNING in the journal
    killed_params = sweep.suggest(killed, sweep.load_space()["parameters"])
    done_before = [(t.number, t.value) for t in study.trials if t.value is not None]

    again = sweep.optuna_sweep(4, tmp_path, wandb_mode="disabled")
    assert again["resumed_from"] == 2 and again["complete_trials"] == 4
    study = sweep.open_study(tmp_path, "rpo", 0)
    assert [(t.number, t.value) for t in study.trials if t.number in (0, 1)] == done_before
    assert study.trials[killed.number].state.name == "FAIL"
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params["learning_rate"] == killed_params["learning_rate"]
    fresh = [tuple(sorted(t.params.items())) for t in study.trials if "retry_of" not in t.user_attrs]
    assert len(fresh) == len(set(fresh))  # the resumed process does not replay the first one's samples
    # a third start with nothing left to do runs no trial
    assert sweep.optuna_sweep(4, tmp_path, wandb_mode="disabled")["resumed_from"] == 4


def test_bad_space_is_a_clear_error(tmp_path):
    study = sweep.open_study(tmp_path, "bad", 0)
    with pytest.raises(ValueError, match="unsupported spec"):
        sweep.suggest(study.ask(), {"lr": {"distribution": "beta"}})
