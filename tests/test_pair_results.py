import json

import pytest

from experiments.paper.pair_results import load_rows, main, pair
from experiments.paper.stats import grouped_paired_test


def _write(path, rows):
    path.write_text(json.dumps({"tasks": rows}))
    return path


def _row(method, task, tau, budget=1, group=None):
    return {"dataset": "d", "method": method, "budget": budget, "task_id": task, "group": group or task,
            "kendall_tau": tau}


def test_methods_from_separate_runs_are_paired_by_task(tmp_path, capsys):
    taus = {"base": [0.5, 0.6, 0.7, 0.8, 0.9, 0.4], "new": [0.6, 0.65, 0.75, 0.79, 0.95, 0.5]}
    groups = ["q1", "q1", "q2", "q3", "q4", "q5"]  # q1 has two windows: averaged before the test
    a = _write(tmp_path / "a.json", [_row("base", f"t{i}", x, group=g) for i, (x, g) in
                                     enumerate(zip(taus["base"], groups))])
    b = _write(tmp_path / "b.json", [_row("new", f"t{i}", x, group=g) for i, (x, g) in
                                     enumerate(zip(taus["new"], groups))] + [_row("base", "t0", 0.5, group="q1")])
    values, group_of = load_rows([a, b])
    [base_row, new_row] = pair(values, group_of, "base")
    assert base_row["method"] == "base" and "p" not in base_row
    assert new_row["delta"] == pytest.approx(sum(n - o for n, o in zip(taus["new"], taus["base"])) / 6)
    assert (new_row["better"], new_row["worse"], new_row["queries"]) == (4, 1, 5)
    assert new_row["p"] == grouped_paired_test(taus["new"], taus["base"], groups)[0]
    assert main([str(a), str(b), "--baseline", "base"]) == 0
    assert "| d | 1 | new | 0.7067 | +0.0567 | 4 / 1 of 5 |" in capsys.readouterr().out


def test_a_rerun_that_does_not_reproduce_or_a_missing_baseline_is_an_error(tmp_path, capsys):
    a = _write(tmp_path / "a.json", [_row("base", "t0", 0.5)])
    b = _write(tmp_path / "b.json", [_row("base", "t0", 0.51)])
    with pytest.raises(SystemExit):
        main([str(a), str(b), "--baseline", "base"])
    assert "do not reproduce" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(a), "--baseline", "heuristic"])
    err = capsys.readouterr().err
    assert "no method 'heuristic'" in err and "they hold ['base']" in err
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.json"), "--baseline", "base"])
    assert "not an rsd-eval results.json" in capsys.readouterr().err


def test_a_budget_free_method_is_paired_with_the_baseline_at_each_budget(tmp_path, capsys):
    """rsd-eval writes budget None for ar and std (the same ranking at every T): they are paired with the
    baseline at each T it has, and a budget-free baseline with every method at its own T."""
    rows = ([_row("std", f"t{i}", 0.5 + 0.01 * i, budget=None) for i in range(4)]
            + [_row("heuristic", f"t{i}", 0.8 + 0.01 * i, budget=t) for i in range(4) for t in (1, 2)])
    path = _write(tmp_path / "r.json", rows)
    values, groups = load_rows([path])
    std = [r for r in pair(values, groups, "heuristic") if r["method"] == "std"]
    assert [r["budget"] for r in std] == [1, 2] and all(r["delta"] == pytest.approx(-0.3) for r in std)
    by_std = [r for r in pair(values, groups, "std") if r["method"] == "heuristic"]
    assert [r["budget"] for r in by_std] == [1, 2] and all(r["delta"] == pytest.approx(0.3) for r in by_std)
    assert main([str(path), "--baseline", "std"]) == 0
    out = capsys.readouterr().out
    assert "| d | – | std | 0.5150 |" in out
    assert "| d | 2 | heuristic | 0.8150 | +0.3000 | 4 / 0 of 4 |" in out
