"""Fit the simulated verifier so that cheap methods agree with it as much as they do with the real LLM.

    python -m experiments.paper.calibrate_simulator                    # measure the bundled target on DL20, fit, write
    python -m experiments.paper.calibrate_simulator --real-stats results/calibration/real.json --trials 50

What is tuned on a simulator only transfers if the simulator poses the same problem: how far the
single-token ranking is from AR, how fast left-to-right SD closes the gap, and how much an up-to-down
decode of the verified rows recovers. So the fit matches the mean Kendall tau (vs each side's own target)
of STD, SD and the heuristic decoder at the configured budgets, measured on the bundled real target on
DL20 (never DL19, the test set), with the simulator on RSDRankSim-v0's own synthetic tasks. The search is
Optuna's seeded TPE over the ranges in ``configs/calibrate.yaml`` (deterministic for a given config). The
fitted parameters and both sides' statistics become the config's ``profile`` (default ``calibrated``) in
``rsd_env/verifiers/profiles/simulated.yaml`` (written atomically; other profiles are kept).
``configs/calibrate_full_list.yaml`` fits ``calibrated-full-list`` to the full-list target at N = 100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents.methods import make_method, rank_tasks, summarize
from experiments import CONFIGS
from experiments.config_files import load_yaml_config
from rsd_env.config import DEFAULT_CONFIG as ENV_DEFAULTS
from rsd_env.data import load_tasks
from rsd_env.env import LOGP_FLOOR, RSDRankEnv
from rsd_env.io import write_text
from rsd_env.verifiers import SimulatedVerifier, make_verifier
from rsd_env.verifiers.model_store import with_length_adapter
from rsd_env.verifiers.simulated import OPTIONAL_PARAMETERS, PROFILES_FILE, load_profiles, profile_params

DEFAULT_CONFIG = CONFIGS / "calibrate.yaml"
Stat = tuple[str, int]


def stat_key(stat: Stat) -> str:
    return f"{stat[0]}@T={stat[1]}"


def measure(tasks: list, verifier: Any, stats: list[Stat], env_config: dict[str, Any] | None = None,
            progress: bool = False) -> dict[str, float]:
    """Mean Kendall tau vs the verifier's own target for every (method, T) in ``stats``.

    ``env_config``: env options both sides share (e.g. ``commit_step``), so the protocol is the same.
    Only agreement is measured, so the methods run warm: a real target prefills each prompt once for all
    of them (at N = 100 a cold run re-prefilled ~8 s per task and method).
    """
    out: dict[str, float] = {}
    for budget in sorted({t for _, t in stats}):
        env = RSDRankEnv({**(env_config or {}), "tasks": tasks, "verifier": verifier, "budget": budget})
        for method, t in stats:
            if t == budget:
                ranker = make_method(method, cold=False)
                start = time.perf_counter()
                key = stat_key((method, t))
                out[key] = summarize(rank_tasks(ranker, env))["kendall_tau"]
                if progress:
                    print(f"  {method} at T={t} on {len(tasks)} tasks: Kendall tau {out[key]:.4f} "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return out


def real_tasks(config: dict[str, Any]) -> list:
    """The real side's tasks: ``real.dataset``/``real.split`` with ``real.data`` options (e.g. ``n``)."""
    real = config["real"]
    return load_tasks(real["dataset"], real.get("split", "all"), **real.get("data", {}))


def sim_tasks(config: dict[str, Any]) -> list:
    """The simulated side's tasks: ``sim.count`` tasks of ``sim.dataset`` with ``sim.data`` options."""
    sim = config["sim"]
    return load_tasks(sim["dataset"], sim.get("split", "train"), count=sim.get("count", 256), **sim.get("data", {}))


def real_verifier_options(config: dict[str, Any]) -> dict[str, Any]:
    """``real.verifier_kwargs``, with the bundled model's shipped adapter for the prompt's length unless they
    name one: the env does the same, so a config that only sets ``n`` fits the target users get at that ``n``
    (not the N = 20 adapter, which copies the shown order in long prompts)."""
    real = config["real"]
    options = dict(real.get("verifier_kwargs") or {})
    if real["verifier"] != "bundled":
        return options
    n = (real.get("data") or {}).get("n") or (config.get("env") or {}).get("n") or ENV_DEFAULTS["n"]
    return with_length_adapter(options, int(n))


def real_stats(config: dict[str, Any], stats: list[Stat]) -> dict[str, Any]:
    real = config["real"]
    tasks = real_tasks(config)
    options = real_verifier_options(config)
    verifier = make_verifier(real["verifier"], **options)
    start = time.perf_counter()
    values = measure(tasks, verifier, stats, config.get("env"), progress=True)
    return {"verifier": real["verifier"], "verifier_options": options, "fingerprint": verifier.fingerprint(),
            "dataset": real["dataset"], "tasks": len(tasks), "env": config.get("env"),
            "seconds": round(time.perf_counter() - start, 1), "kendall_tau": values}


def target_name(real: dict[str, Any]) -> str:
    """``bundled`` or ``bundled (adapter=bundled-60)``: the verifier a real.json was measured on."""
    options = ", ".join(f"{k}={v}" for k, v in sorted((real.get("verifier_options") or {}).items())
                        if k != "prompt_cache_mb")  # a cache size does not change the target
    return f"{real['verifier']} ({options})" if options else real["verifier"]


OBJECTIVES = {"squares": lambda gaps: float(sum(g * g for g in gaps)),
              "max_gap": lambda gaps: float(max(abs(g) for g in gaps))}


def start_params(start: str | dict[str, float], space: dict[str, list[float]]) -> dict[str, float]:
    """``search.start``'s values of the searched parameters, clipped to the search ranges: a profile's name
    (optional parameters at their defaults) or a mapping of parameters (an earlier fit.json's ``params``),
    which the search enqueues as its first trial."""
    params = {**OPTIONAL_PARAMETERS, **start} if isinstance(start, dict) else profile_params(start)
    missing = sorted(set(space) - set(params))
    if missing:
        raise ValueError(f"search.start lacks {missing}: give every searched parameter, or a profile's name")
    return {k: float(min(max(params[k], lo), hi)) for k, (lo, hi) in space.items()}


def floor_share(tasks: list, verifier: Any) -> float:
    """Share of the first-token scores and first-round rows (the single-token order verified) below the env's
    ``LOGP_FLOOR``. The observation clips them there, so such items tie and the decoders order them by index:
    a simulator that fits the real statistics through those ties (the real bundled targets' first-token
    log-probs span ~9 nats, none near the floor) shows its agents observations the real target never gives."""
    below = total = 0
    for task in tasks:
        first = verifier.first_token_scores(task)
        rows = verifier.verify(task, np.argsort(-first, kind="stable")).logprobs
        below += int((first < LOGP_FLOOR).sum() + (rows < LOGP_FLOOR).sum())
        total += first.size + rows.size
    return below / max(total, 1)


def fit(config: dict[str, Any], stats: list[Stat], target: dict[str, float], trials: int) -> dict[str, Any]:
    """Seeded TPE over the configured ranges, minimising the gaps to ``target``: their sum of squares (the
    default), or with ``search.objective: max_gap`` the largest one, which is what the tolerance tests (the
    squares can settle for one statistic just outside it to pull the others in). ``search.max_floor_share``
    (off by default) ranks every trial whose ``floor_share`` exceeds it behind every trial within it."""
    import optuna

    tasks = sim_tasks(config)
    base = profile_params("legacy")
    space = config["search"]["space"]
    keys = [stat_key(s) for s in stats]
    kind = config["search"].get("objective", "squares")
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown search.objective {kind!r} in the config; choose one of {sorted(OBJECTIVES)}")
    loss = OBJECTIVES[kind]

    cap = config["search"].get("max_floor_share")

    def simulate(verifier: SimulatedVerifier) -> dict[str, float]:
        return measure(tasks, verifier, stats, config.get("env"))

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in space.items()}
        verifier = SimulatedVerifier("legacy", **params)  # one per trial: its per-task latents are built once
        got = simulate(verifier)
        trial.set_user_attr("stats", got)
        value = loss([got[k] - target[k] for k in keys])
        if cap is None:
            return value
        share = floor_share(tasks, verifier)
        trial.set_user_attr("floor_share", share)
        return value if share <= cap else value + 1e3 * (1.0 + share)  # behind every trial within the cap

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=config["search"].get("seed", 0)))
    start = config["search"].get("start")
    if start:  # a profile's parameters as the first trial: refine an earlier fit rather than start blind
        study.enqueue_trial(start_params(start, space))
    study.optimize(objective, n_trials=trials, show_progress_bar=sys.stderr.isatty())
    best = study.best_trial
    params = {**base, **{k: round(v, 4) for k, v in best.params.items()}}
    verifier = SimulatedVerifier("legacy", **params)  # the rounded parameters are what ships
    got = simulate(verifier)
    gaps = {k: got[k] - target[k] for k in keys}
    share = floor_share(tasks, verifier)
    if cap is not None and share > cap:
        raise ValueError(f"no trial kept the simulator's log-probs above the floor (best: {share:.3f} of them "
                         f"below {LOGP_FLOOR}, search.max_floor_share {cap}); widen the search space or add trials")
    over = sum(t.user_attrs.get("floor_share", 0.0) > cap for t in study.trials) if cap is not None else None
    return {"params": params, "simulated": got, "gaps": gaps, "max_gap": max(abs(g) for g in gaps.values()),
            "floor_share": share, "trials_over_floor_cap": over, "trials": trials, "sim_tasks": len(tasks)}


def repo_relative(path: str) -> str:
    """``path`` relative to the repository (how a profile names its config), else as given."""
    resolved, root = Path(path).resolve(), CONFIGS.parent.parent
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="calibrate_simulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--real-stats", help="JSON written by an earlier run (skips measuring the real target)")
    p.add_argument("--output", default="results/calibration", help="folder for real.json and fit.json")
    p.add_argument("--trials", type=int, help="search trials (default: the config's)")
    p.add_argument("--profiles", default=str(PROFILES_FILE), help="profiles YAML to update")
    p.add_argument("--dry-run", action="store_true", help="fit and report, but do not write the profile")
    args = p.parse_args(argv)
    try:  # follows `extends`: a fit to another target lists only what differs from its recipe
        config = load_yaml_config(args.config, "calibration config", "experiments/configs/calibrate.yaml")
    except ValueError as err:
        p.error(str(err))
    stats: list[Stat] = [(str(m), int(t)) for m, t in config["stats"]]
    out = Path(args.output)

    if args.real_stats:
        real = json.loads(Path(args.real_stats).read_text(encoding="utf-8"))
        missing = [stat_key(s) for s in stats if stat_key(s) not in real["kendall_tau"]]
        if missing:
            p.error(f"{args.real_stats} lacks {missing}; rerun without --real-stats to measure them")
        options = real_verifier_options(config)  # e.g. the adapter: real.json of another target fits the wrong one
        if "verifier_options" in real and real["verifier_options"] != options:
            p.error(f"{args.real_stats} was measured with verifier options {real['verifier_options']}, the config "
                    f"asks for {options}; rerun without --real-stats to measure that target")
        if (real.get("env") or {}) != (config.get("env") or {}):
            p.error(f"{args.real_stats} was measured with env {real.get('env')}, the config asks for "
                    f"{config.get('env')}; rerun without --real-stats to measure the real target again")
    else:
        print(f"measuring the real target ({config['real']['verifier']}, {config['real']['dataset']}) ...")
        real = real_stats(config, stats)
        write_text(out / "real.json", json.dumps(real, indent=2))
    target = real["kendall_tau"]

    trials = args.trials or int(config["search"]["trials"])
    start = time.perf_counter()
    result = fit(config, stats, target, trials)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_text(out / "fit.json", json.dumps({"real": real, **result}, indent=2))

    tol = float(config["tolerance"])
    print(f"\n{'statistic':<16}{'real':>8}{'simulated':>11}{'gap':>8}")
    for key, gap in result["gaps"].items():
        flag = "" if abs(gap) <= tol else "  > tolerance"
        print(f"{key:<16}{target[key]:>8.3f}{result['simulated'][key]:>11.3f}{gap:>+8.3f}{flag}")
    print(f"max gap {result['max_gap']:.4f} (tolerance {tol}); {result['floor_share']:.4f} of the log-probs "
          f"below the observation floor {LOGP_FLOOR}; parameters {result['params']}")

    if result["max_gap"] > tol and not args.dry_run:
        print(f"not writing the profile: the fit misses the tolerance (results in {out / 'fit.json'}); widen "
              "the config's search space or add trials (--trials), or pass --dry-run to only report")
    elif not args.dry_run:
        profiles = load_profiles(args.profiles)
        name = str(config.get("profile", "calibrated"))
        profiles[name] = {
            "description": (f"fitted by experiments/paper/calibrate_simulator.py to the {target_name(real)} target on "
                            f"{real['dataset']} ({real['tasks']} tasks), {trials} TPE trials"),
            "params": result["params"],
            "fit": {"real_kendall_tau": {k: round(target[k], 4) for k in result["simulated"]},
                    "simulated_kendall_tau": {k: round(v, 4) for k, v in result["simulated"].items()},
                    "max_gap": round(result["max_gap"], 4), "tolerance": tol, "env": config.get("env") or {},
                    "floor_share": round(result["floor_share"], 4),
                    "sim_data": f"{config['sim']['dataset']} {config['sim'].get('split', 'train')} "
                                f"x{result['sim_tasks']}",
                    "config": repo_relative(args.config)},
        }
        header = "# Named parameter sets of the simulated verifier (rsd_env/verifiers/simulated.py).\n"
        write_text(args.profiles, header + yaml.safe_dump(profiles, sort_keys=False, width=110))
        print(f"wrote the {name!r} profile to {args.profiles}")
    return 0 if result["max_gap"] <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
