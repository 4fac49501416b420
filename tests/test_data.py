import json

import pytest

from rsd_env.data import load_tasks
from rsd_env.data.task import Candidate, RankingTask


def test_bundled_trec_dl_split():
    test, train = load_tasks("trec-dl", "test"), load_tasks("trec-dl", "train")
    assert len(test) == 43 and len(train) == 54  # DL19 test, DL20 train
    assert {t.task_id for t in test}.isdisjoint({t.task_id for t in train})
    t = test[0]
    assert t.n == 20 and t.domain == "ir" and t.query and t.qrels
    assert [c.score for c in t.candidates] == sorted((c.score for c in t.candidates), reverse=True)


def test_windows_and_random_subsets_are_seeded():
    windows = load_tasks("dl19", "all", sampling="windows")
    assert len(windows) == 43 * 5 and windows[1].task_id.endswith("@w20")
    a = load_tasks("dl20", "all", sampling="random", samples_per_query=3, shuffle=True, seed=7)
    b = load_tasks("dl20", "all", sampling="random", samples_per_query=3, shuffle=True, seed=7)
    c = load_tasks("dl20", "all", sampling="random", samples_per_query=3, shuffle=True, seed=8)
    assert [t.docids for t in a] == [t.docids for t in b]
    assert [t.docids for t in a] != [t.docids for t in c]
    assert len(a) == 54 * 3 and all(t.n == 20 for t in a)


def test_movielens_llmrank_tasks():
    test = load_tasks("ml-100k", "test", n=20, history=10)
    train = load_tasks("ml-100k", "train", n=20, history=10)
    assert {t.task_id for t in test}.isdisjoint({t.task_id for t in train})
    assert len(test) + len(train) == 943
    for t in test[:20]:
        assert t.domain == "rec" and t.n == 20 and len(t.history) == 10
        assert t.held_out in t.docids and t.relevance()[t.held_out] == 1


def test_rank_llm_jsonl_and_qrels(tmp_path):
    rows = [{"qid": "q1", "query": "cats", "hits": [{"docid": f"d{i}", "score": 5 - i, "content": f"text {i}"}
                                                  for i in range(5)]}]
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d3 2\n")
    tasks = load_tasks("rank_llm", "all", n=4, path=path, qrels=qrels)
    assert tasks[0].docids == ("d0", "d1", "d2", "d3") and tasks[0].relevance()["d3"] == 2


def test_trec_run_with_tsv_collection(tmp_path):
    (tmp_path / "run.trec").write_text("q1 Q0 b 1 2.0 x\nq1 Q0 a 2 1.0 x\nq1 Q0 c 3 0.5 x\n")
    (tmp_path / "c.tsv").write_text("a\talpha\nb\tbeta\nc\tgamma\n")
    (tmp_path / "q.tsv").write_text("q1\tgreek letters\n")
    t = load_tasks("trec-run", "all", n=3, path=tmp_path / "run.trec", collection=tmp_path / "c.tsv",
                   queries=tmp_path / "q.tsv")[0]
    assert t.docids == ("b", "a", "c") and t.candidates[0].text == "beta" and t.query == "greek letters"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "msmarco-full"}, "unknown dataset"),
        ({"dataset": "trec-dl", "split": "validation"}, "unknown split"),
        ({"dataset": "dl19", "split": "train"}, "single split"),
        ({"dataset": "dl19", "split": "all", "n": 101}, "larger than the candidates"),
        ({"dataset": "dl19", "split": "all", "sampling": "best"}, "unknown sampling"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_tasks(**kwargs)


def test_malformed_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "q1", "query": "x", "hits": []}\n{not json\n')
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        load_tasks("rank_llm", "all", n=2, path=bad)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"qid": "q1", "query": "x", "hits": [{"docid": "a", "content": "t"},
                                                                     {"docid": "b", "content": "u"}]}))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 1\nq9 0 z 1\n")
    with pytest.raises(ValueError, match="not in the run"):
        load_tasks("rank_llm", "all", n=2, path=good, qrels=qrels)
    with pytest.raises(FileNotFoundError):
        load_tasks("rank_llm", "all", n=2, path=tmp_path / "missing.jsonl")


def test_task_validation():
    with pytest.raises(ValueError, match="duplicate"):
        RankingTask("t", "ir", (Candidate("a", "x"), Candidate("a", "y")))
    with pytest.raises(ValueError, match="no candidates"):
        RankingTask("t", "ir", ())
