"""rsd-rerank on the simulated verifier: window arithmetic, batching, file round trips, resume, bad inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import experiments.rerank as cli
from agents.pretrained import default_method
from agents.rerank import SlidingWindowReranker, WindowSpec, rerank
from experiments.rerank_output import RerankOutput
from rsd_env.data.task import RankingTask
from rsd_env.data.trec import QueryHits, load_bundled, read_rank_llm, read_trec_run
from rsd_env.metrics import ndcg_at_k
from rsd_env.verifiers import SimulatedVerifier


@pytest.fixture(scope="module")
def dl19():
    queries, qrels = load_bundled("dl19")
    return queries[:6], qrels


def _docids(results):
    return {r.qid: r.docids for r in results}


# ---- window arithmetic -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, depth, expected, alone", [
    (WindowSpec(), 100, [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40), (10, 30), (0, 20)],
     set()),
    (WindowSpec(top=25), 100, [(5, 25), (0, 15)], set()),  # top not a multiple of the stride
    (WindowSpec(), 12, [(0, 12)], set()),  # fewer candidates than the window
    (WindowSpec(top=100), 35, [(15, 35), (5, 25), (0, 15)], set()),  # top deeper than the run
    (WindowSpec(top=11, window=10, stride=10), 100, [(1, 11)], {0}),  # rank_llm's (0, 1): nothing to rank
    (WindowSpec(window=4, stride=4, top=8), 8, [(4, 8), (0, 4)], set()),
    (WindowSpec(passes=2, top=30), 100, [(10, 30), (0, 20)] * 2, set()),
    (WindowSpec(), 1, [], {0}),
])
def test_window_spans(spec, depth, expected, alone):
    spans = [(s, e) for _ in range(spec.passes) for s, e in spec.spans(depth)]
    assert spans == expected
    covered = {i for s, e in spans for i in range(s, e)}
    assert covered | alone == set(range(min(spec.top, depth)))  # every reranked position is in a window
    assert all(2 <= e - s <= spec.window for s, e in spans)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 703}, "larger than the 702 identifiers"),
    ({"stride": 25}, "stride 25 > window 20"),
    ({"window": 1}, "at least 2"),
    ({"top": 0}, "top must be an integer >= 1"),
    ({"passes": 1.5}, "passes must be an integer"),
])
def test_bad_window_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowSpec(**kwargs)


# ---- the reranker ------------------------------------------------------------------------------------
def test_reranks_top_only_keeps_every_hit_and_lifts_ndcg(dl19):
    queries, qrels = dl19
    # the legacy simulator profile follows the labels closely (the calibrated one, like the real 270M
    # target, much less): with it, reranking must surface the relevant passages
    start, cpu_start = time.perf_counter(), time.process_time()
    results = rerank(queries, "heuristic", 2, SimulatedVerifier("legacy"), top=30, qrels=qrels, batch=4)
    elapsed_ms, cpu_ms = 1000.0 * (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu_start)
    for q, r in zip(queries, results):
        assert r.qid == q.qid and sorted(r.docids) == sorted(h.docid for h in q.hits)
        assert r.docids[30:] == [h.docid for h in q.hits[30:]]  # below --top: the first-stage order
        assert r.docids[:30] != [h.docid for h in q.hits[:30]]
        assert r.windows == 2 and r.rounds == 4 and r.llm_passes == 6
        # the simulated LLM counts a call's tokens as its window's size (20): 2 prefills + 4 verifications, each
        # query's share of the batched calls
        assert r.tokens == 6 * 20
        assert 0 < r.wall_ms <= elapsed_ms and 0 <= r.cpu_ms <= cpu_ms  # its span inside the run
    # batches of 4 run one after the other: their spans add up to most of the run (measured ~0.9), never more
    spans = max(r.wall_ms for r in results[:4]) + max(r.wall_ms for r in results[4:])
    assert 0.4 * elapsed_ms < spans <= elapsed_ms
    bm25 = np.mean(list(ndcg_at_k({q.qid: [h.docid for h in q.hits] for q in queries}, qrels, 10).values()))
    ours = np.mean(list(ndcg_at_k(_docids(results), qrels, 10).values()))
    assert ours > bm25 + 0.1  # the simulated LLM reads the labels: reranking must surface them


def test_each_window_is_the_methods_ranking(dl19):
    """One window = one episode: AR over a 20-hit list is exactly the target of that window's task."""
    queries, _ = dl19
    verifier = SimulatedVerifier()
    q = queries[0]
    [ar] = rerank([q], "ar", 1, verifier, top=20)
    [std] = rerank([q], "std", 1, verifier, top=20)
    task = RankingTask(f"{q.qid}#p0:0-20", "ir", q.hits[:20], query=q.query)
    assert ar.docids[:20] == [q.hits[j].docid for j in verifier.target_ranking(task)]
    assert std.docids[:20] == [q.hits[j].docid for j in verifier.single_token_ranking(task)]
    assert (ar.llm_passes, std.llm_passes, std.rounds) == (20, 1, 0)


@pytest.mark.parametrize("method", ["heuristic", "stale-aware", "sd-decode", "sd"])
def test_a_window_ends_with_the_methods_commit_step(dl19, method):
    """A decoder's window output is its episode's final ranking, the commit step (a decode of the last
    verified rows) included, not the last proposal."""
    from agents.methods import make_method
    from rsd_env.env import RSDRankEnv

    queries, _ = dl19
    verifier = SimulatedVerifier()
    q = queries[0]
    task = RankingTask(f"{q.qid}#p0:0-20", "ir", q.hits[:20], query=q.query)
    env = RSDRankEnv({"tasks": [task], "verifier": verifier, "budget": 1})
    expected = make_method(method).rank(env, task.task_id)
    [got] = rerank([q], method, 1, verifier, top=20)
    assert got.docids[:20] == expected.docids
    assert got.llm_passes == expected.llm_passes == 2


def _count_batches(verifier, call: str = "verify_batch") -> list[int]:
    """Record the size of every ``verify_batch`` (or ``prefill_batch``) call on ``verifier``."""
    sizes: list[int] = []
    inner = getattr(verifier, call)

    def counted(requests):
        sizes.append(len(requests))
        return inner(requests)

    setattr(verifier, call, counted)
    return sizes


@pytest.mark.parametrize("method", ["heuristic", "sd", "ar", "random"])
def test_batching_across_queries_changes_cost_not_output(dl19, method):
    queries, qrels = dl19
    outputs, calls = {}, {}
    for batch in (1, 6):
        verifier = SimulatedVerifier()
        sizes = _count_batches(verifier)
        prefills = _count_batches(verifier, "prefill_batch")
        reranker = SlidingWindowReranker(method, verifier, WindowSpec(top=40), budget=2, batch=batch)
        results = reranker.rerank(queries, qrels=qrels)
        outputs[batch] = _docids(results)
        calls[batch] = len(sizes)
        assert max(sizes, default=0) <= batch
        # every window's prompt is handed to prefill_batch once, with the other queries' new windows
        assert sum(prefills) == sum(r.windows for r in results) and max(prefills) == min(batch, len(queries))
    assert outputs[1] == outputs[6]
    if method != "ar":  # one verify_batch per round across queries instead of one call per window
        assert calls[6] * 3 <= calls[1]


def test_a_learned_agent_plugs_in_and_must_match_the_window(tmp_path, capsys):
    import gymnasium as gym

    import agents

    env = gym.make("RSDRankSim-v0", config={"budget": 2, "n": 10, "data": {"count": 4}})
    model = agents.make("ppo", env, n_steps=8, batch_size=8, seed=0,
                        policy_kwargs={"d_model": 8, "n_layers": 1, "n_heads": 2})
    path = agents.save_agent(model, tmp_path / "ppo")
    args = ["--dataset", "dl19", "--max-queries", "2", "--method", f"agent:{path}", "--top", "30"]
    out = _run([*args, "--window", "10", "--stride", "5"], tmp_path)
    assert len(read_rank_llm(out / "rerank.jsonl")) == 2
    _expect_error(capsys, [*args, "--output", str(tmp_path / "o")],
                  "trained for 10 candidates, the windows have 20", "weights depend on N", "use --window 10")


def test_duplicate_queries_are_an_error(dl19):
    queries, _ = dl19
    with pytest.raises(ValueError, match="more than once"):
        rerank([queries[0], queries[0]], "std", 1, "simulated")


# ---- command line: files in and out ----------------------------------------------------------------------
def _trec_inputs(tmp: Path, queries: list[QueryHits], depth: int = 30) -> list[str]:
    run = [f"{q.qid} Q0 {h.docid} {i} {100 - i} bm25" for q in queries for i, h in enumerate(q.hits[:depth], 1)]
    docs = {h.docid: h.text for q in queries for h in q.hits[:depth]}
    (tmp / "run.trec").write_text("\n".join(run) + "\n")
    (tmp / "collection.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in docs.items()))
    (tmp / "queries.tsv").write_text("".join(f"{q.qid}\t{q.query}\n" for q in queries))
    return ["--run", str(tmp / "run.trec"), "--collection", str(tmp / "collection.tsv"),
            "--queries", str(tmp / "queries.tsv")]


def _run(args, tmp: Path, name: str = "out", *extra) -> Path:
    out = tmp / name
    assert cli.main([*args, "--verifier", "simulated", "--output", str(out), "--no-progress", *extra]) == 0
    return out


def test_threads_sets_torch_threads_and_refuses_zero(dl19, tmp_path, capsys):
    """rsd-rerank --threads as rsd-eval's: one torch thread per process when reranks share a machine; 0 is
    refused before the output folder is touched."""
    import torch

    queries, _ = dl19
    args = _trec_inputs(tmp_path, queries[:1])
    threads = torch.get_num_threads()
    try:
        _run(args, tmp_path, "one", "--top", "20", "--method", "std", "--threads", "1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--verifier", "simulated", "--output", str(tmp_path / "zero"), "--threads", "0"])
    assert exit_info.value.code == 2
    assert "argument --threads: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


def test_trec_round_trip(dl19, tmp_path):
    queries, _ = dl19
    args = _trec_inputs(tmp_path, queries[:3])
    out = _run(args, tmp_path, "out", "--top", "25", "--method", "sd")
    again = read_trec_run(out / "run.trec", tmp_path / "collection.tsv", tmp_path / "queries.tsv")
    results = read_rank_llm(out / "rerank.jsonl")
    assert [q.qid for q in again] == [q.qid for q in queries[:3]] == [r.qid for r in results]
    for a, r, q in zip(again, results, queries):
        assert [h.docid for h in a.hits] == [h.docid for h in r.hits]
        assert sorted(h.docid for h in a.hits) == sorted(h.docid for h in q.hits[:30])
        assert [h.text for h in r.hits] == [dict((c.docid, c.text) for c in q.hits)[h.docid] for h in r.hits]
    # the reranked run is itself a valid input (e.g. a second pass)
    assert _run(["--run", str(out / "run.trec"), *args[2:]], tmp_path, "second").is_dir()


def test_rank_llm_round_trip_and_qrels(dl19, tmp_path, capsys):
    queries, qrels = dl19
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"query": q.query, "hits": [
        {"qid": q.qid, "docid": h.docid, "rank": i, "score": h.score, "content": h.text}
        for i, h in enumerate(q.hits, 1)]}) + "\n" for q in queries[:3]))
    qrels_path = tmp_path / "qrels.txt"
    qrels_path.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in qrels.items() for d, g in docs.items()))
    out = _run(["--input", str(path), "--qrels", str(qrels_path), "--method", "heuristic"], tmp_path)
    printed = capsys.readouterr().out
    assert "first_stage NDCG@10" in printed and "reranked    NDCG@10" in printed and "full qrels" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reranked"]["queries"] == 3 and summary["reranked"]["NDCG@10"] > summary["first_stage"]["NDCG@10"]
    assert summary["llm_passes_per_query"] == 27 and summary["windows_per_query"] == 9
    back = read_rank_llm(out / "rerank.jsonl")  # rank_llm Result records read back as requests
    expected = rerank(queries[:3], "heuristic", 2, "simulated", qrels=qrels)
    assert [[h.docid for h in b.hits] for b in back] == [r.docids for r in expected]
    assert [h.text for h in back[0].hits] == [h.text for h in expected[0].hits]
    assert back[0].query == queries[0].query


def test_bm25_ndcg_matches_trec_eval_on_full_qrels():
    queries, qrels = load_bundled("dl19")
    metrics = cli.trec_metrics({q.qid: [h.docid for h in q.hits] for q in queries}, qrels)
    assert metrics["queries"] == 43 and round(metrics["NDCG@10"], 4) == 0.5058


def test_resume_after_interruption_gives_the_same_output(dl19, tmp_path, monkeypatch):
    queries, _ = dl19
    args = _trec_inputs(tmp_path, queries)
    full = _run(args, tmp_path, "full", "--batch", "2")
    add = RerankOutput.add

    def add_then_stop(self, result):
        add(self, result)
        if len(self.done) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RerankOutput, "add", add_then_stop)
    assert cli.main([*args, "--verifier", "simulated", "--output", str(tmp_path / "part"), "--no-progress",
                     "--batch", "2"]) == 130  # Ctrl-C
    part = tmp_path / "part"
    assert len(read_rank_llm(part / "rerank.jsonl")) == 3  # complete queries only
    assert len({line.split()[0] for line in (part / "run.trec").read_text().splitlines()}) == 3
    monkeypatch.setattr(RerankOutput, "add", add)
    _run(args, tmp_path, "part", "--batch", "2")
    assert (part / "run.trec").read_text() == (full / "run.trec").read_text()
    assert json.loads((part / "summary.json").read_text())["queries_this_session"] == 3
    _run(args, tmp_path, "part", "--max-queries", "2")  # asking for fewer queries drops no completed one
    assert (part / "run.trec").read_text() == (full / "run.trec").read_text()
    assert json.loads((part / "summary.json").read_text())["queries_this_session"] == 0
    # other settings on the same output folder: an error, not a silently mixed run
    assert cli.main([*args, "--verifier", "simulated", "--output", str(part), "--budget", "1"]) == 2


# ---- bad inputs -----------------------------------------------------------------------------------------
def _expect_error(capsys, argv, *needles):
    assert cli.main([*argv, "--verifier", "simulated", "--no-progress"]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_name_the_problem(dl19, tmp_path, capsys):
    queries, _ = dl19
    args = _trec_inputs(tmp_path, queries[:2])
    out = ["--output", str(tmp_path / "o")]
    coll, qs, run = tmp_path / "collection.tsv", tmp_path / "queries.tsv", tmp_path / "run.trec"
    lines = coll.read_text().splitlines()
    (tmp_path / "short.tsv").write_text("\n".join(lines[1:]) + "\n")
    _expect_error(capsys, [*args[:2], "--collection", str(tmp_path / "short.tsv"), *args[4:], *out],
                  "missing from", lines[0].split("\t")[0])
    (tmp_path / "q1.tsv").write_text(qs.read_text().splitlines()[0] + "\n")
    _expect_error(capsys, [*args[:4], "--queries", str(tmp_path / "q1.tsv"), *out],
                  f"query {queries[1].qid!r} is missing from")
    (tmp_path / "empty.trec").write_text("")
    _expect_error(capsys, ["--run", str(tmp_path / "empty.trec"), *args[2:], *out], "empty.trec", "is empty")
    first, *rest = run.read_text().splitlines()
    fields = first.split()
    fields[3] = "first"
    (tmp_path / "bad.trec").write_text("\n".join([" ".join(fields), *rest]) + "\n")
    _expect_error(capsys, ["--run", str(tmp_path / "bad.trec"), *args[2:], *out], "bad.trec")
    (tmp_path / "empty.jsonl").write_text("\n")
    _expect_error(capsys, ["--input", str(tmp_path / "empty.jsonl"), *out], "no queries found")
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "hits": [\n')
    _expect_error(capsys, ["--input", str(tmp_path / "bad.jsonl"), *out], "line 1: malformed JSON")
    _expect_error(capsys, ["--input", str(tmp_path / "nothere.jsonl"), *out], "nothere.jsonl", "does not exist")
    _expect_error(capsys, [*args, "--window", "703", *out], "larger than the 702 identifiers")
    _expect_error(capsys, [*args, "--method", "nosuch", *out], "unknown method 'nosuch'")
    _expect_error(capsys, [*args, "--dataset", "dl19", *out], "exactly one input")
    _expect_error(capsys, ["--run", str(run), *out], "--collection")
    _expect_error(capsys, [*args, "--budget", "0", *out], "budget must be an integer >= 1")
    assert not (tmp_path / "o" / "rerank.jsonl").exists()  # nothing half-written by a failed start


def test_windows_honour_the_methods_stop_rules(dl19):
    """A method's stop rules (agents.stopping) apply to every window, batched or not."""
    from agents.methods import make_method
    from agents.stopping import LLMVerdict

    queries, _ = dl19
    verifier = SimulatedVerifier("legacy")
    now = make_method("heuristic", deadline_ms=0.0)  # every round would end past the deadline
    results = rerank(queries[:2], now, 2, verifier, top=30, batch=4)
    assert all(r.rounds == 0 and r.windows == 2 for r in results)
    eager = make_method("heuristic")
    eager.stop_rules = (LLMVerdict(1e9),)  # stops after the first verdict: one round per window
    results = rerank(queries[:2], eager, 3, verifier, top=30, batch=4)
    assert all(r.rounds == 2 for r in results)
    assert [r.docids for r in results] != [[h.docid for h in q.hits] for q in queries[:2]]


def test_comparison_table_against_the_reference_run(tmp_path, capsys):
    from experiments.paper import rerank_table

    common = ["--dataset", "dl19", "--max-queries", "3", "--top", "30"]
    ar = _run([*common, "--method", "ar"], tmp_path, "ar")
    std = _run([*common, "--method", "std"], tmp_path, "std")
    heuristic = _run([*common, "--method", "heuristic", "--budget", "1"], tmp_path, "heuristic")
    assert rerank_table.main([str(std), str(heuristic), str(ar), "--reference", str(ar), "--top", "30",
                              "--json", str(tmp_path / "table.json")]) == 0
    printed = capsys.readouterr().out
    assert "| BM25 (first stage) |" in printed and "| up-to-down heuristic, T = 1 |" in printed
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {r["label"]: r for r in table["rows"]}
    assert table["queries"] == 3 and list(rows)[0] == "BM25 (first stage)" and list(rows)[-1] == "AR windows"
    assert rows["AR windows"]["tau_vs_reference"] == 1.0 and rows["AR windows"]["cpu_speedup"] == 1.0
    assert rows["STD (FIRST) windows"]["llm_passes"] == 2 and rows["AR windows"]["llm_passes"] == 2 * 20
    # τ over the top 30 the runs reranked, checked against scipy's Kendall τ on the written runs
    from scipy.stats import kendalltau

    ar_run, std_run = rerank_table.load_run(ar)[1], rerank_table.load_run(std)[1]
    expected = np.mean([kendalltau(range(30), [ar_run[q].docids[:30].index(d) for d in std_run[q].docids[:30]])[0]
                        for q in ar_run])
    assert expected < 1.0 and rows["STD (FIRST) windows"]["tau_vs_reference"] == pytest.approx(expected)
    # full-list tables: p against AR windows, τ against full-list AR (a second reference, second time ratio)
    full = _run([*common, "--method", "ar", "--full-list"], tmp_path, "ar-full")
    assert rerank_table.main([str(std), str(full), "--reference", str(ar), "--tau-reference", str(full),
                              "--top", "30", "--json", str(tmp_path / "full.json")]) == 0
    assert "| τ vs AR, full list (top 30) |" in capsys.readouterr().out
    table = json.loads((tmp_path / "full.json").read_text())
    rows = {r["label"]: r for r in table["rows"]}
    assert list(rows) == ["BM25 (first stage)", "STD (FIRST) windows", "AR, full list", "AR windows"]
    assert table["reference"] == "AR windows" and table["tau_reference"] == "AR, full list"
    full_run = rerank_table.load_run(full)[1]
    expected = np.mean([kendalltau(range(30), [full_run[q].docids[:30].index(d) for d in std_run[q].docids[:30]])[0]
                        for q in full_run])
    assert rows["STD (FIRST) windows"]["tau_vs_reference"] == pytest.approx(expected)
    assert rows["AR, full list"]["tau_vs_reference"] == 1.0 and rows["AR windows"]["tau_vs_reference"] < 1.0
    assert rows["AR windows"]["cpu_speedup"] == 1.0 and rows["AR, full list"]["cpu_speedup_vs_tau_reference"] == 1.0
    assert rows["AR, full list"]["llm_passes"] == 30  # one window, 30 decode steps
    other = _run(["--dataset", "dl20", "--max-queries", "2", "--top", "30", "--method", "std"], tmp_path, "dl20")
    assert rerank_table.main([str(other), "--reference", str(ar)]) == 2
    assert "different inputs" in capsys.readouterr().err


def test_comparison_table_pairs_each_run_with_a_baseline(tmp_path, capsys):
    """--baseline heuristic pairs each run with the heuristic at its own budget: mean τ difference, queries
    closer / further and the Wilcoxon p over queries, recomputed here with scipy from the written runs; a
    budget-free run (AR) is not paired with a budgeted baseline; a folder pairs every run with that run."""
    from scipy.stats import kendalltau, wilcoxon

    from experiments.paper import rerank_table

    common = ["--dataset", "dl19", "--max-queries", "6", "--top", "30"]
    ar = _run([*common, "--method", "ar"], tmp_path, "ar")
    assert "ar: 6 queries" in capsys.readouterr().out  # no "T=2": AR ranks the same at every budget
    runs = {(m, t): _run([*common, "--method", m, "--budget", str(t)], tmp_path, f"{m}.T{t}")
            for m in ("sd", "heuristic") for t in (1, 2)}
    assert "sd T=2: 6 queries" in capsys.readouterr().out
    args = [*map(str, runs.values()), str(ar), "--reference", str(ar), "--top", "30"]
    assert rerank_table.main([*args, "--baseline", "heuristic", "--json", str(tmp_path / "t.json")]) == 0
    assert "| τ − heuristic's (queries closer / further, p) |" in capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    reference = rerank_table.load_run(ar)[1]

    def taus(folder):
        run = rerank_table.load_run(folder)[1]
        return np.array([kendalltau(range(30), [reference[q].docids.index(d) for d in run[q].docids[:30]])[0]
                         for q in reference])

    for t in (1, 2):
        diff = taus(runs["sd", t]) - taus(runs["heuristic", t])
        assert np.count_nonzero(diff) >= 3  # the pairing has something to test
        paired = rows[f"SD, T = {t}"]["tau_vs_baseline"]
        assert paired["baseline"] == f"up-to-down heuristic, T = {t}"
        assert paired["delta"] == pytest.approx(diff.mean())
        assert (paired["better"], paired["worse"], paired["queries"]) == ((diff > 0).sum(), (diff < 0).sum(), 6)
        assert paired["p"] == pytest.approx(wilcoxon(diff, zero_method="zsplit").pvalue)
        assert "tau_vs_baseline" not in rows[f"up-to-down heuristic, T = {t}"]
    assert "tau_vs_baseline" not in rows["AR windows"]
    # a folder: every other run against that one run, whatever its budget
    assert rerank_table.main([*args, "--baseline", str(runs["heuristic", 2]), "--json", str(tmp_path / "f.json")]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "f.json").read_text())["rows"]}
    assert rows["SD, T = 1"]["tau_vs_baseline"]["delta"] == pytest.approx(
        (taus(runs["sd", 1]) - taus(runs["heuristic", 2])).mean())
    assert rows["AR windows"]["tau_vs_baseline"]["better"] >= 1  # AR itself: τ 1 against the reference
    assert "tau_vs_baseline" not in rows["up-to-down heuristic, T = 2"]
    capsys.readouterr()
    assert rerank_table.main([*args, "--baseline", "stale-aware"]) == 2
    assert "neither an rsd-rerank output folder nor the method of one of the runs" in capsys.readouterr().err


def test_full_list_mode_ranks_the_top_100_in_one_window_and_keeps_every_docid(dl19, tmp_path):
    """Its default method is the fine-tuned full-list agent (the largest gain over the heuristic at N = 100);
    the other agents shipped for N = 100 run there too."""
    queries, _ = dl19
    runs = {m: _run(["--dataset", "dl19", "--max-queries", "3", "--full-list", *m, "--budget", "2"],
                    tmp_path, "-".join(["full", *m]))
            for m in ((), ("--method", "shipped:residual-full-list"), ("--method", "shipped:residual-40"))}
    for out in runs.values():
        results = {r.qid: r for r in read_rank_llm(out / "rerank.jsonl")}
        settings = json.loads((out / "settings.json").read_text())
        assert settings["window"] == settings["top"] == 100
        for q in queries[:3]:
            docids = [c.docid for c in results[q.qid].hits]
            assert sorted(docids) == sorted(h.docid for h in q.hits) and len(docids) == 100
            assert docids != [h.docid for h in q.hits]  # reranked, not the first-stage order
        summary = json.loads((out / "summary.json").read_text())
        assert summary["windows_per_query"] == 1.0 and summary["llm_passes_per_query"] == 3.0  # prefill + T = 2
    from experiments.paper.rerank_table import label

    settings = json.loads((runs[()] / "settings.json").read_text())
    assert settings["method"] == "shipped:residual-full-list-ft"
    assert label(settings) == "shipped agent (N = 40 fine-tuned at N = 100), full list, T = 2"
    assert label({**settings, "method": "shipped:residual-40"}) == "shipped agent (N = 40), full list, T = 2"
    assert label({**settings, "method": "heuristic"}) == "up-to-down heuristic, full list, T = 2"
    assert label({**settings, "method": "shipped:residual-full-list"}) == "shipped agent (N = 100), full list, T = 2"
    assert label({**settings, "method": "ar"}) == "AR, full list"
    assert label({**settings, "method": "ar", "window": 20}) == "AR windows"
    assert label({**settings, "method": "ar", "window": 40}) == "AR, windows of 40"
    assert label({**settings, "method": "heuristic", "window": 40}) == "up-to-down heuristic, windows of 40, T = 2"
    agent_40 = {**settings, "window": 40, "method": "shipped:residual-40"}
    assert label(agent_40) == "shipped agent (N = 40), windows of 40, T = 2"


def test_long_windows_pick_the_long_list_adapters_of_the_bundled_model():
    """A window over 20 on the bundled model uses the adapter trained for such lengths (the N = 20 one copies
    the shown order at N = 100): bundled-60 up to 60, bundled-full beyond; the simulated
    verifier gets the profile fitted to that target; an explicit adapter or profile and 20-windows are left
    alone."""
    def options(*argv: str) -> dict:
        return cli.verifier_options(cli.parse_args(["--dataset", "dl19", *argv]))

    assert options("--full-list") == {"adapter": "bundled-full"}
    assert options("--full-list", "--top", "40") == {"adapter": "bundled-60"}
    assert options("--window", "40", "--stride", "30") == {"adapter": "bundled-60"}
    assert options("--window", "21") == options("--window", "60") == {"adapter": "bundled-60"}
    assert options("--window", "40", "--verifier-arg", "adapter=bundled-40") == {"adapter": "bundled-40"}
    assert options("--window", "61") == {"adapter": "bundled-full"}
    assert options("--window", "40", "--verifier", "simulated") == {"profile": "n40-b60-approx"}
    assert options("--full-list", "--verifier-arg", "adapter=bundled") == {"adapter": "bundled"}
    assert options("--full-list", "--verifier-arg", "passage_tokens=16") == {"adapter": "bundled-full",
                                                                            "passage_tokens": 16}
    assert options() == {}
    assert options("--full-list", "--verifier", "simulated") == {"profile": "calibrated-full-list"}
    named = options("--full-list", "--verifier", "simulated", "--verifier-arg", "profile=legacy")
    assert named == {"profile": "legacy"}


def test_the_default_method_follows_the_window_length(dl19):
    """Without --method: a shipped agent that beats the heuristic at the window's length (20 and 30: the N = 20
    agent; 40 and 60: the N = 40 one; full lists of 100: the N = 40 agent fine-tuned there), between two
    measured lengths the first agent that beats it at both (21-39: the N = 20 agent, measured at 30 and 40;
    41-99: the N = 40 one, measured at 60 and 100), else the heuristic; rerank() agrees."""
    method = lambda *argv: cli.parse_args(["--dataset", "dl19", *argv]).method  # noqa: E731
    assert method() == "shipped"
    assert method("--window", "40", "--stride", "30") == method("--full-list", "--top", "40") == "shipped:residual-40"
    assert method("--full-list") == "shipped:residual-full-list-ft"
    assert method("--window", "30") == method("--full-list", "--top", "25") == "shipped"
    assert method("--window", "35") == "shipped"
    assert method("--window", "150") == method("--full-list", "--top", "12") == "heuristic"
    assert method("--full-list", "--top", "60") == method("--window", "75") == "shipped:residual-40"
    assert [default_method(n) for n in (19, 20, 21, 29, 30, 31, 39, 40, 41, 99, 100, 101)] == [
        "heuristic", *["shipped"] * 6, *["shipped:residual-40"] * 3, "shipped:residual-full-list-ft", "heuristic"]
    assert method("--window", "40", "--top", "20", "--stride", "10") == "shipped:residual-40"  # padded to 40
    assert method("--full-list", "--method", "std") == "std"
    queries, _ = dl19
    windows = {"verifier": "simulated", "top": 40, "window": 40, "stride": 40}
    [default] = rerank(queries[:1], **windows)
    [named] = rerank(queries[:1], "shipped:residual-40", **windows)
    [heuristic] = rerank(queries[:1], "heuristic", **windows)
    assert default.docids == named.docids != heuristic.docids


def test_the_python_reranker_also_loads_the_adapter_for_its_window_length(monkeypatch):
    """SlidingWindowReranker(verifier="bundled") with windows of 40 gets bundled-60, as rsd-rerank does, and
    "simulated" the profile that stands in for it."""
    import agents.rerank as module

    asked = []
    monkeypatch.setattr(module, "make_verifier", lambda spec, **kw: asked.append((spec, kw)) or SimulatedVerifier())
    for window in (20, 40, 100):
        SlidingWindowReranker("heuristic", "bundled", WindowSpec(top=100, window=window, stride=min(window, 30)))
    SlidingWindowReranker("heuristic", "simulated", WindowSpec(top=100, window=40, stride=30))
    assert asked == [("bundled", {}), ("bundled", {"adapter": "bundled-60"}),
                     ("bundled", {"adapter": "bundled-full"}), ("simulated", {"profile": "n40-b60-approx"})]
