"""rsd-rerank's output folder: one writer at a time, a resume tied to each query's input, and a folder that a
bad command, a damaged file, a kill or Ctrl-C leaves usable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_rerank import _trec_inputs  # run + collection + queries files of some queries' first hits

import experiments.rerank as cli
from experiments.rerank_output import LOCK_NAME, RerankOutput
from rsd_env.data.trec import QueryHits, load_bundled
from rsd_env.io import FolderLock


@pytest.fixture(scope="module")
def dl19() -> tuple[list[QueryHits], dict]:
    queries, qrels = load_bundled("dl19")
    return queries[:3], qrels


def _argv(out: Path, *args: str) -> list[str]:
    return [*args, "--method", "heuristic", "--verifier", "simulated", "--output", str(out), "--no-progress"]


def _rerank(out: Path, *args: str) -> int:
    return cli.main(_argv(out, *args))


# ---- 1. one writer per output folder ----------------------------------------------------------------------
def test_a_second_writer_is_refused_before_it_touches_the_folder(tmp_path, capsys, monkeypatch):
    """The issue's race: a budget-3 --fresh run started into the folder of a running budget-2 run."""
    first = ["--dataset", "dl19", "--max-queries", "3", "--budget", "2", "--batch", "1"]
    second = ["--dataset", "dl19", "--max-queries", "2", "--budget", "3", "--fresh"]
    assert _rerank(tmp_path / "alone", *first) == 0
    out = tmp_path / "shared"
    add, answers = RerankOutput.add, []

    def add_then_start_a_second_writer(self, result):
        add(self, result)
        if len(self.done) == 1:  # the first writer is mid-run, holding the folder
            answers.append(_rerank(out, *second))
            answers.append(_rerank(out, *first))  # an identical command is refused too
            answers.append(capsys.readouterr().err)

    monkeypatch.setattr(RerankOutput, "add", add_then_start_a_second_writer)
    assert _rerank(out, *first) == 0
    assert answers[:2] == [2, 2]
    assert answers[2].count("another rsd-rerank is writing to") == 2, answers[2]
    assert json.loads((out / "settings.json").read_text())["budget"] == 2
    assert json.loads((out / "summary.json").read_text())["settings"]["budget"] == 2
    assert (out / "run.trec").read_text() == (tmp_path / "alone" / "run.trec").read_text()


def test_a_held_lock_stops_rsd_rerank_before_settings_are_read_or_written(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "settings.json").write_text("not json")  # would be an error if it were read
    with FolderLock(out, LOCK_NAME, what="rsd-rerank"):
        assert _rerank(out, "--dataset", "dl19", "--max-queries", "1") == 2
    assert "another rsd-rerank is writing to" in capsys.readouterr().err
    assert (out / "settings.json").read_text() == "not json" and not (out / "run.trec").exists()


# ---- 2. a resume is tied to the input's content --------------------------------------------------------
def test_a_changed_input_is_reranked_again_and_named(dl19, tmp_path, capsys):
    queries, _ = dl19
    a, b, c = queries
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = _trec_inputs(inputs, queries)
    out = tmp_path / "out"
    assert _rerank(out, *args) == 0
    kept = _records(out)[a.qid]
    # overwrite the input in place: b's hits come in another order, c loses its text for one passage
    shuffled = QueryHits(b.qid, b.query, b.hits[:30][::-1])
    _trec_inputs(inputs, [a, shuffled, c])
    collection = (inputs / "collection.tsv").read_text().replace(c.hits[3].text, "an edited passage")
    (inputs / "collection.tsv").write_text(collection)
    capsys.readouterr()
    assert _rerank(out, *args) == 0
    err = capsys.readouterr().err
    assert f"the input of 2 completed queries changed since they were reranked ({b.qid}, {c.qid})" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries_this_session"] == 2 and summary["queries"] == 3
    assert _records(out)[a.qid] == kept  # the unchanged query is kept as it was saved, not redone
    fresh = tmp_path / "fresh"
    assert _rerank(fresh, *args) == 0  # an uninterrupted run of the new input
    assert (out / "run.trec").read_text() == (fresh / "run.trec").read_text()
    assert _records(out, timing=False) == _records(fresh, timing=False)
    # a query gone from the input is dropped, and said so
    _trec_inputs(inputs, [a, shuffled])
    (inputs / "collection.tsv").write_text(collection)
    assert _rerank(out, *args) == 0
    err = capsys.readouterr().err
    assert f"1 completed queries are no longer in the input ({c.qid}); dropped" in err, err
    assert {line.split()[0] for line in (out / "run.trec").read_text().splitlines()} == {a.qid, b.qid}


def _records(out: Path, timing: bool = True) -> dict[str, dict]:
    """``rerank.jsonl`` by qid; ``timing=False`` drops the wall and CPU times (they differ run to run)."""
    records = [json.loads(line) for line in (out / "rerank.jsonl").read_text().splitlines()]
    if not timing:
        for r in records:
            del r["rsd"]["wall_ms"], r["rsd"]["cpu_ms"]
    return {r["query"]["qid"]: r for r in records}


def test_labels_the_simulated_llm_reads_are_part_of_the_input(dl19, tmp_path, capsys):
    queries, qrels = dl19
    args = _trec_inputs(tmp_path, queries[:2])
    path = tmp_path / "qrels.txt"
    graded = {q.qid: dict(qrels[q.qid]) for q in queries[:2]}

    def write_qrels() -> None:
        path.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in graded.items() for d, g in docs.items()))

    write_qrels()
    assert _rerank(tmp_path / "out", *args, "--qrels", str(path)) == 0
    first, top = queries[0].qid, queries[0].hits[0].docid
    graded[first][top] = 3 - graded[first].get(top, 0)  # BM25's first passage graded otherwise
    write_qrels()
    capsys.readouterr()
    assert _rerank(tmp_path / "out", *args, "--qrels", str(path)) == 0
    assert f"changed since they were reranked ({first})" in capsys.readouterr().err


# ---- confusing states of the folder --------------------------------------------------------------------
def test_a_bad_budget_writes_nothing_and_settings_without_results_bind_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    assert _rerank(out, "--dataset", "dl19", "--max-queries", "1", "--budget", "99") == 2
    err = capsys.readouterr().err
    assert "budget 99" in err and "1..5" in err and "max_budget" not in err, err
    assert not out.exists()
    # a folder an older rsd-rerank left after such a failure: settings.json of other settings, no results
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"budget": 99, "method": "heuristic"}))
    (out / "rerank.jsonl").write_text("")
    assert _rerank(out, "--dataset", "dl19", "--max-queries", "1", "--budget", "3") == 0
    assert json.loads((out / "settings.json").read_text())["budget"] == 3


def test_a_damaged_results_file_names_its_line_and_fresh(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["--dataset", "dl19", "--max-queries", "2"]
    assert _rerank(out, *args) == 0
    good = (out / "rerank.jsonl").read_text().splitlines()
    (out / "rerank.jsonl").write_text(good[0] + "\n" + good[1][:200] + "\n")
    capsys.readouterr()
    assert _rerank(out, *args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'rerank.jsonl'} line 2 is damaged" in err and "--fresh" in err, err
    assert _rerank(out, *args, "--fresh") == 0
    assert len(_records(out)) == 2 and json.loads((out / "summary.json").read_text())["queries_this_session"] == 2


def test_temp_files_of_a_killed_writer_are_removed_on_resume(tmp_path):
    out = tmp_path / "o"
    args = ["--dataset", "dl19", "--max-queries", "2"]
    assert _rerank(out, *args) == 0
    stale = [out / ".run.trec.k1ll3d.tmp", out / ".rerank.jsonl.x9.tmp"]  # what a SIGKILL mid-write leaves
    for path in stale:
        path.write_text("half")
    assert _rerank(out, *args) == 0
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == [
        "rerank.jsonl", "run.trec", "settings.json", "summary.json"]


def test_ctrl_c_is_one_line_that_says_what_is_saved(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    add = RerankOutput.add

    def add_then_ctrl_c(self, result):
        add(self, result)
        if len(self.done) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RerankOutput, "add", add_then_ctrl_c)
    assert _rerank(out, "--dataset", "dl19", "--max-queries", "4", "--batch", "1") == 130
    err = capsys.readouterr().err.strip()
    assert err == f"rsd-rerank: interrupted; the 2 completed queries are saved in {out}: rerun the same command " \
                  "to resume", err
    assert len((out / "rerank.jsonl").read_text().splitlines()) == 2
