"""The README's main job, smoke-sized on the simulated verifier: trains, evaluates, prints the table."""

from __future__ import annotations

from experiments.paper.main import load_main_config, main, train_config


def test_quick_simulated_main_job(tmp_path, capsys):
    assert main(["--verifier", "simulated", "--quick", "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for row in ("| 1 | rpo |", "| 2 | heuristic |", "| – | ar |", "| 2 | sd |", "| 1 | random |"):
        assert row in out
    assert (tmp_path / "rpo-simulated-quick" / "model.zip").is_file()
    assert (tmp_path / "eval" / "results.json").is_file()
    assert "total" in out and "train" in out


def test_config_layers():
    bundled = load_main_config()
    assert bundled["verifier"] == "bundled" and bundled["eval"]["budgets"] == [1, 2, 3]
    assert bundled["eval"]["datasets"] == ["dl19"]
    tcfg = train_config(bundled)
    assert tcfg.algo == "rpo" and tcfg.env["split"] == "train" and tcfg.env["verifier"] == "bundled"
    assert tcfg.env["max_tasks"] == 24 and tcfg.run_name == "rpo-bundled"
    sim = load_main_config(verifier="simulated")
    assert sim["train_overrides"]["total_timesteps"] == 3000 and sim["train_overrides"]["eval_tasks"] == 8
    quick = load_main_config(verifier="simulated", quick=True, output="x")
    assert quick["output"] == "x" and quick["eval"]["max_tasks"] == 6
