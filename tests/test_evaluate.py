"""The evaluation runner on the simulated verifier: outputs, cells, errors, atomicity, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from agents.methods import make_method
from experiments.paper.evaluate import EvalConfig, main, run_evaluation

METHODS = ["ar", "std", "sd", "heuristic", "random", "heuristic@deadline=0.5", "heuristic@adaptive=0.1"]


def config(tmp_path: Path, **overrides) -> EvalConfig:
    base = dict(methods=list(METHODS), datasets=["dl19", "synthetic"], budgets=[1, 2], verifier="simulated",
                max_tasks=6, output=str(tmp_path / "out"), plots=False)
    return EvalConfig.load(**{**base, **overrides})


def _metrics(results) -> list[tuple]:
    keys = ("kendall_tau", "spearman_rho", "footrule", "kemeny", "llm_passes", "tokens")
    return [(r["dataset"], r["method"], r["budget"], r["task_id"], *(r[k] for k in keys), r.get("ndcg@10"))
            for r in results["tasks"] if "@deadline" not in r["method"]]  # deadlines depend on the clock


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cfg = config(tmp, plots=True, datasets=["dl19", "ml-100k"])
    return cfg, run_evaluation(cfg, progress=False)


def test_outputs_and_cells(run):
    cfg, results = run
    out = Path(cfg.output)
    for name in ("results.json", "results.csv", "table.md", "dl19_budget.png", "dl19_pareto.png",
                 "dl19_improvement.png", "ml-100k_budget.png", "ml-100k_pareto.png", "runs/dl19/ar.trec",
                 "runs/dl19/sd.T2.trec"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    cells = {(c["dataset"], c["method"], c["budget"]): c for c in results["cells"]}
    # budget-free methods once per dataset, the others once per T
    assert len(cells) == 2 * (2 + 5 * 2)
    assert cells[("dl19", "ar", None)]["kendall_tau"]["mean"] == 1.0
    assert cells[("dl19", "std", None)]["llm_passes"] == 1.0
    sd2 = cells[("dl19", "sd", 2)]
    assert sd2["tasks"] == 6 and sd2["llm_passes"] == 3.0 and "ndcg@10" in sd2
    assert sd2["kendall_tau"]["ci_low"] <= sd2["kendall_tau"]["mean"] <= sd2["kendall_tau"]["ci_high"]
    rec = cells[("ml-100k", "heuristic", 1)]
    assert "hr@1" in rec and "ndcg@5" in rec and "ndcg@10" not in rec
    adaptive = cells[("dl19", "heuristic@adaptive=0.1", 2)]
    # the decoder to beat: the only hand-written decoder in this grid; everything else is tested against it
    heur2 = cells[("dl19", "heuristic", 2)]
    assert heur2.get("decoder_to_beat") and "p_value" not in heur2
    for cell in (adaptive, sd2):  # a paired Wilcoxon over the same tasks' tau, recomputed from the task records
        assert cell["vs_baseline"] == "heuristic"
        tau = {(r["method"], r["task_id"]): r["kendall_tau"] for r in results["tasks"]
               if r["dataset"] == "dl19" and r["budget"] == 2}
        ids = sorted({t for _, t in tau})
        ours, theirs = [tau[(cell["method"], t)] for t in ids], [tau[("heuristic", t)] for t in ids]
        expected = 1.0 if np.allclose(ours, theirs) else wilcoxon(ours, theirs, zero_method="zsplit").pvalue
        assert cell["p_value"] == pytest.approx(expected)
    assert sd2["p_value"] < 1.0  # SD and the heuristic differ on these tasks: a real test was made
    # wall-time speedups are computed against AR: AR's mean latency over the method's, from the task records
    sd1, ar = cells[("dl19", "sd", 1)], cells[("dl19", "ar", None)]
    latency = {m: np.mean([r["latency_ms"] for r in results["tasks"] if r["dataset"] == "dl19" and r["method"] == m
                           and r["budget"] == b]) for m, b in (("sd", 1), ("ar", None))}
    assert sd1["speedup_vs_ar"] == pytest.approx(latency["ar"] / latency["sd"])
    assert sd1["llm_passes"] == 2.0 < ar["llm_passes"] == 20.0
    assert "rel_improvement_pct" not in sd2 and "rel_improvement_pct" in heur2
    table = (out / "table.md").read_text()
    assert "| 2 | ★ heuristic |" in table and "dl19 τ ↑" in table and "ml-100k" in table
    assert "Mean relative improvement over the best of STD and SD" in table
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["tasks"]) == len(results["tasks"]) == 2 * 6 * (2 + 5 * 2)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("dataset,method,budget,tasks,kendall_tau,kendall_tau_lo")
    run_line = (out / "runs/dl19/sd.T2.trec").read_text().splitlines()[0].split()
    assert run_line[1] == "Q0" and run_line[3] == "1" and run_line[5] == "sd.T2"


def test_deadline_stops_rounds(tmp_path):
    cfg = config(tmp_path, methods=["sd", "sd@deadline=0.001"], datasets=["synthetic"], budgets=[3])
    cells = {c["method"]: c for c in run_evaluation(cfg, progress=False, write=False)["cells"]}
    tight = cells["sd@deadline=0.001"]
    assert tight["rounds"] == 0.0 and tight["llm_passes"] == 1.0  # no round fits: the STD ranking
    assert cells["sd"]["llm_passes"] == 4.0


def test_same_seed_same_numbers(tmp_path, run):
    cfg, first = run
    again = run_evaluation(EvalConfig.load(**{**cfg.__dict__, "output": str(tmp_path), "plots": False}),
                     progress=False, write=False)
    assert _metrics(again) == _metrics(first)


@pytest.mark.parametrize("field,value,match", [
    ("methods", ["std", "bogus"], "unknown method 'bogus'"),
    ("datasets", ["dl19", "msmarco"], r"unknown dataset\(s\) \['msmarco'\]"),
    ("budgets", [0], "budgets must be integers >= 1"),
])
def test_bad_names_fail_fast(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        run_evaluation(config(tmp_path, **{field: value}), progress=False)
    assert not (tmp_path / "out" / "results.json").exists()


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="is not writable.*--output"):
        run_evaluation(config(tmp_path, output=str(blocker / "out")), progress=False)


def _tiny_rpo(n: int):
    import gymnasium as gym

    from agents.methods import AgentMethod
    from agents.rpo import RPO

    env = gym.make("RSDRankSim-v0", config={"dataset": "synthetic", "verifier": "simulated", "n": n,
                                            "max_tasks": 4})
    return AgentMethod(RPO("RankingPolicy", env, group_size=1, tasks_per_batch=1, device="cpu", seed=0,
                           policy_kwargs={"d_model": 16, "n_layers": 1}), name=f"rpo{n}")


def test_agents_wrong_n_and_adaptive(tmp_path):
    wrong, right = _tiny_rpo(10), _tiny_rpo(20)
    with pytest.raises(ValueError, match="trained for N=10 candidates but the evaluation uses N=20"):
        run_evaluation(config(tmp_path, methods=["std", "rpo=agent:ckpt"]), progress=False,
                 factory=lambda spec: wrong if spec == "agent:ckpt" else make_method(spec))
    # @adaptive on an RPO agent: its own value head decides (AgentMethod.min_gain); 1e9 = never worth it
    cfg = config(tmp_path, methods=["rpo=agent:ok@adaptive=1e9"], datasets=["synthetic"], budgets=[2])
    results = run_evaluation(cfg, progress=False, write=False, factory=lambda spec: right)
    assert right.min_gain == 1e9
    assert results["cells"][0]["method"] == "rpo@adaptive=1e9" and results["cells"][0]["rounds"] == 0.0


def test_interrupted_run_leaves_no_half_written_results(tmp_path):
    cfg = config(tmp_path, methods=["std", "sd"], datasets=["synthetic"], budgets=[1])
    run_evaluation(cfg, progress=False)
    out = Path(cfg.output)
    before = _files(out)
    calls = {"n": 0}

    class Crashes:
        name = "crashes"

        def rank(self, env, task_id):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return make_method("sd").rank(env, task_id)

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config(tmp_path, methods=["std", "crashes"], datasets=["synthetic"], budgets=[1]),
                 progress=False, factory=lambda s: Crashes() if s == "crashes" else make_method(s))
    assert _files(out) == before
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".staging-*"))


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file (not the hidden lock) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_cli_quick_simulated(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        assert 0 == main(["--quick", "--verifier", "simulated", "--methods", "std", "sd", "--max-tasks", "3",
                          "--no-plots", "--output", str(tmp_path), "--no-progress", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "| 1 | sd |" in capsys.readouterr().out
    assert (tmp_path / "results.json").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--verifier", "simulated", "--output", str(tmp_path / "x"), "--threads", "0"])
    assert exit_info.value.code == 2
    assert "argument --threads: must be >= 1, got 0" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    from experiments.report import atomic_path, write_text

    target = write_text(tmp_path / "results.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert target.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["--verifier", "simulated", "--methods", "std", "nope", "--output", str(tmp_path)]) == 2
    assert "rsd-eval: error: unknown method 'nope'" in capsys.readouterr().err


def test_decoder_to_beat_and_relative_improvement_by_hand():
    """Two tasks, one T: the stronger decoder is the one to beat; improvement over the best of STD/SD."""
    from experiments.paper.evaluate import summarise

    def rec(method, budget, task, tau, rho, foot, kem):
        return {"dataset": "d", "method": method, "budget": budget, "task_id": task, "kendall_tau": tau,
                "spearman_rho": rho, "footrule": foot, "kemeny": kem, "llm_passes": 1, "tokens": 1,
                "wall_ms": 1.0, "latency_ms": 1.0, "decode_ms": 1.0, "rounds": 1}

    records = [rec("std", None, t, 0.5, 0.6, 40, 20) for t in "ab"]
    records += [rec("sd", 2, t, 0.6, 0.5, 50, 10) for t in "ab"]
    records += [rec("heuristic", 2, "a", 0.7, 0.7, 30, 8), rec("heuristic", 2, "b", 0.7, 0.7, 30, 8)]
    records += [rec("stale-aware", 2, "a", 0.8, 0.9, 20, 5), rec("stale-aware", 2, "b", 0.8, 0.9, 20, 5)]
    cfg = EvalConfig.load(methods=["std", "sd", "heuristic", "stale-aware"], datasets=["dl19"], budgets=[2])
    cells = {c["method"]: c for c in summarise(records, cfg, cfg.methods)}
    assert cells["stale-aware"]["decoder_to_beat"] and cells["heuristic"]["vs_baseline"] == "stale-aware"
    # best of STD and SD per metric: tau 0.6, rho 0.6, footrule 40, kemeny 10
    expected = 100 * np.mean([(0.7 - 0.6) / 0.6, (0.7 - 0.6) / 0.6, (40 - 30) / 40, (10 - 8) / 10])
    assert cells["heuristic"]["rel_improvement_pct"] == pytest.approx(expected)


def test_windows_of_one_query_are_also_tested_as_one_query(tmp_path):
    """Tasks cut from one query (windows) are not independent: the cells add a paired test over queries,
    each query's windows averaged first, and the table shows it; one task per query needs none."""
    from experiments.paper.stats import grouped_paired_test, paired_test

    specs = {"dl19-w": {"dataset": "dl19", "split": "all", "sampling": "windows", "stride": 40},
             "dl19": {"dataset": "dl19", "split": "all"}}
    cfg = config(tmp_path, methods=["std", "sd", "heuristic"], datasets=["dl19-w", "dl19"], budgets=[1],
                 dataset_specs=specs, max_tasks=12)
    results = run_evaluation(cfg, progress=False)
    windows = [r for r in results["tasks"] if r["dataset"] == "dl19-w"]
    assert {r["task_id"].split("@")[0] for r in windows} == {r["group"] for r in windows}
    by = {(c["dataset"], c["method"]): c for c in results["cells"]}
    sd, heuristic = (sorted((r for r in windows if r["method"] == m), key=lambda r: r["task_id"])
                     for m in ("sd", "heuristic"))
    assert by["dl19-w", "sd"]["queries"] == len({r["group"] for r in sd}) == 4 < len(sd) == 12
    assert by["dl19-w", "sd"]["p_value_by_query"] == grouped_paired_test(
        [r["kendall_tau"] for r in sd], [r["kendall_tau"] for r in heuristic], [r["group"] for r in sd])[0]
    assert "p_value_by_query" not in by["dl19", "sd"]
    table = (Path(cfg.output) / "table.md").read_text()
    assert "p, 4 queries" in table and table.count("p, 4 queries") == 1

    # by hand: three copies of each of five pairs are five pieces of evidence, not fifteen
    a, b = [0.9, 0.8, 0.7, 0.95, 0.85], [0.8, 0.75, 0.6, 0.9, 0.7]
    p_five = paired_test(a, b)
    assert grouped_paired_test(a * 3, b * 3, list("vwxyz") * 3) == (pytest.approx(p_five), 5)
    assert paired_test(a * 3, b * 3) < p_five
    with pytest.raises(ValueError, match="one group per task pair"):
        grouped_paired_test(a, b, ["q"])


def test_the_shuffled_dl19_spec_shows_bm25s_candidates_in_another_seeded_order():
    """``--datasets dl19-shuffled`` checks a method on an order it was not tuned on: the same candidates and
    labels as ``dl19``, in an order that differs from BM25's and is the same on every run."""
    from experiments.paper.evaluate import make_grid_env

    cfg = EvalConfig.load(verifier="simulated", n=100)
    plain, shuffled, again = (make_grid_env(cfg, name, 1).tasks for name in ("dl19", "dl19-shuffled", "dl19-shuffled"))
    assert len(plain) == len(shuffled) == 43
    for a, b, c in zip(plain, shuffled, again):
        assert sorted(a.docids) == sorted(b.docids) and a.relevance() == b.relevance()
        assert b.docids == c.docids
    assert sum(a.docids != b.docids for a, b in zip(plain, shuffled)) == 43
