"""The paper's datasets from a user's own copies: BEIR folders (Quora), RecBole atomic folders (Amazon-Games,
ML-1M) and MovieLens folders; every fixture is written here, in each layout's own format."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import experiments.rerank as rerank_cli
from experiments.paper.evaluate import EvalConfig, make_grid_env, run_evaluation
from rsd_env.data import load_tasks
from rsd_env.data.recbole import read_atomic


# ---- BEIR ---------------------------------------------------------------------------------------------
def write_beir(folder: Path, docs: int = 40) -> dict[str, dict[str, int]]:
    """A Quora-like BEIR folder: no titles except on every fifth document, a test and a dev split, and a
    BM25-like run over the test queries (``run.trec``). Returns the test qrels."""
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{k}", "title": f"Title {k}" if k % 5 == 0 else "", "text": f"question number {k}?"}
              for k in range(docs)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    queries = [{"_id": f"q{k}", "text": f"query {k}", "metadata": {}} for k in range(1, 6)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    test = {"q1": {"d1": 1, "d2": 1}, "q2": {"d5": 1}, "q3": {"d7": 2, "d8": 1, "d9": 1, "d10": 0}}
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, docs in test.items() for d, g in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq4\td3\t1\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    run = [f"{q} Q0 d{d} {r} {30 - r}.5 bm25" for q in ("q1", "q2", "q3")
           for r, d in enumerate(rng.permutation(docs)[:25], 1)]
    (folder / "run.trec").write_text("\n".join(run) + "\n", encoding="utf-8")
    return test


def ranked_lists(run: Path) -> dict[str, list[str]]:
    """Each query's docids in a TREC run file's line order (the fixtures write them best first)."""
    out: dict[str, list[str]] = {}
    for line in run.read_text().splitlines():
        qid, _, docid, *_ = line.split()
        out.setdefault(qid, []).append(docid)
    return out


@pytest.fixture()
def beir(tmp_path):
    folder = tmp_path / "quora"
    return folder, write_beir(folder)


def test_beir_with_a_run_gives_the_runs_top_n_with_the_folders_texts(beir):
    folder, qrels = beir
    tasks = load_tasks("beir", "test", n=10, path=folder, run=folder / "run.trec")
    run = ranked_lists(folder / "run.trec")
    assert [t.task_id for t in tasks] == ["q1", "q2", "q3"]  # the run's query ids, as for trec-run
    for t in tasks:
        assert list(t.docids) == run[t.task_id][:10] and t.query == f"query {t.task_id[1:]}"
        assert dict(t.qrels) == qrels[t.task_id]
        for c in t.candidates:  # titles are optional: "title: text" where there is one
            k = int(c.docid[1:])
            assert c.text == (f"Title {k}: question number {k}?" if k % 5 == 0 else f"question number {k}?")
    windows = load_tasks("beir", "test", n=10, path=folder, run=folder / "run.trec", sampling="windows", stride=5)
    assert [t.task_id for t in windows[:4]] == ["q1@w0", "q1@w5", "q1@w10", "q1@w15"]


def test_beir_without_a_run_pads_the_judged_documents_with_seeded_random_ones(beir):
    folder, qrels = beir
    tasks = load_tasks("beir", "test", n=6, path=folder, seed=3)
    assert [t.task_id for t in tasks] == ["q1@judged+random3", "q2@judged+random3", "q3@judged+random3"]
    for t in tasks:
        judged = qrels[t.task_id.split("@")[0]]
        inside = [d for d in t.docids if d in judged]
        assert t.n == 6 and len(inside) == min(len(judged), 3)  # at most n // 2 judged documents
        assert dict(t.qrels) == judged
    q3 = tasks[2]
    assert {"d7"} <= set(q3.docids) and "d10" not in q3.docids  # the highest grades are kept first
    again = load_tasks("beir", "test", n=6, path=folder, seed=3)
    assert [t.candidates for t in again] == [t.candidates for t in tasks]
    other = load_tasks("beir", "test", n=6, path=folder, seed=4)
    assert [set(t.docids) for t in other] != [set(t.docids) for t in tasks]
    # judged documents are not always first: the presentation order is a seeded shuffle
    positions = {t.docids.index(d) for s in range(6) for t in load_tasks("beir", "test", n=6, path=folder, seed=s)
                 for d in t.docids if d in qrels[t.task_id.split("@")[0]]}
    assert len(positions) > 3
    # a query's task depends on its own id and the seed, not on which other queries the split holds
    lines = (folder / "qrels" / "test.tsv").read_text().splitlines()
    (folder / "qrels" / "test.tsv").write_text("\n".join(ln for ln in lines if not ln.startswith("q1\t")) + "\n")
    assert load_tasks("beir", "test", n=6, path=folder, seed=3)[1].candidates == q3.candidates


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize("damage, kwargs, message", [
    (lambda f: (f / "corpus.jsonl").unlink(), {}, r"corpus.jsonl'\] not found: a BEIR folder holds corpus.jsonl"),
    (lambda f: None, {"split": "train"}, r"no qrels for split 'train'.*choose one of the splits \['dev', 'test'\]"),
    (lambda f: _rewrite(f / "corpus.jsonl", '"_id": "d3"', '"_id": "d2"'), {},
     "corpus.jsonl lines 3 and 4: document id 'd2' appears twice; keep one"),
    (lambda f: _rewrite(f / "corpus.jsonl", '{"_id": "d3"', '{"id": "d3"'), {},
     r"corpus.jsonl line 4: not a BEIR document .*'_id' and 'text'"),
    (lambda f: _rewrite(f / "corpus.jsonl", "question number 3?", ""), {},
     "corpus.jsonl line 4: document 'd3' has an empty text"),
    (lambda f: _rewrite(f / "queries.jsonl", "query 2", " "), {}, "queries.jsonl line 2: query 'q2' has an empty"),
    (lambda f: (f / "corpus.jsonl").write_bytes((f / "corpus.jsonl").read_bytes().replace(b"number 7", b"n\xe9 7")),
     {}, r"corpus.jsonl line 8 \(byte \d+\) is not valid UTF-8.*save the file as UTF-8"),
    (lambda f: _rewrite(f / "qrels" / "test.tsv", "q2\td5", "q2\td99"), {},
     "test.tsv line 4: document 'd99' is not in corpus.jsonl"),
    (lambda f: _rewrite(f / "qrels" / "test.tsv", "q2\td5", "q9\td5"), {},
     "test.tsv line 4: query 'q9' is not in queries.jsonl"),
    (lambda f: _rewrite(f / "qrels" / "test.tsv", "q2\td5\t1", "q2 d5 1"), {},
     r"test.tsv line 4: 1 field\(s\) separated by '\\t', expected 3 \(query-id<TAB>corpus-id<TAB>score\)"),
    (lambda f: _rewrite(f / "qrels" / "test.tsv", "q2\td5\t1", "q2\td5\tyes"), {}, "test.tsv line 4: score 'yes'"),
    (lambda f: None, {"sampling": "windows"}, "sampling='windows' needs a first-stage run"),
])
def test_bad_beir_folders_name_the_file_line_and_fix(beir, damage, kwargs, message):
    folder, _ = beir
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_tasks("beir", kwargs.pop("split", "test"), n=6, path=folder, **kwargs)


def test_a_beir_run_must_match_the_folder_and_split(beir):
    folder, _ = beir
    with pytest.raises(ValueError, match=r"have no judgements in qrels/dev.tsv; pass the split the run was made for"):
        load_tasks("beir", "dev", n=6, path=folder, run=folder / "run.trec")
    _rewrite(folder / "run.trec", " d", " x")
    with pytest.raises(ValueError, match=r"docids of query q1 are missing from .*corpus.jsonl"):
        load_tasks("beir", "test", n=6, path=folder, run=folder / "run.trec")
    with pytest.raises(ValueError, match="dataset 'beir' needs path="):
        load_tasks("beir", "test")
    with pytest.raises(ValueError, match="run= is an option of dataset 'beir', not of 'dl19'"):
        load_tasks("dl19", "all", run=folder / "run.trec")


def test_a_run_that_ranks_the_query_itself_is_refused(beir):
    """Quora's queries are corpus questions too: a BM25 run's top hit is the query itself, which BEIR's
    evaluation ignores; left in, it would be an unjudged copy of the query at rank 1."""
    folder, _ = beir
    with (folder / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "q2", "text": "query 2"}) + "\n" + json.dumps({"_id": "q3", "text": "other"}) + "\n")
    with (folder / "run.trec").open("a") as f:
        f.write("q3 Q0 q3 26 0.1 bm25\n")  # the same id but another text: a coincidence, not the query
    assert len(load_tasks("beir", "test", n=6, path=folder, run=folder / "run.trec")) == 3
    with (folder / "run.trec").open("a") as f:
        f.write("q2 Q0 q2 0 99 bm25\n")
    with pytest.raises(ValueError, match=r"1 queries \(e.g. \['q2'\]\) rank themselves.*awk '\$1 != \$3'"):
        load_tasks("beir", "test", n=6, path=folder, run=folder / "run.trec")
    drawn = [t for seed in range(30) for t in load_tasks("beir", "test", n=20, path=folder, seed=seed)]
    assert sum("q2" in t.docids for t in drawn) > 5  # a random document for the other queries ...
    assert all(t.task_id.split("@")[0] not in t.docids for t in drawn)  # ... never for the query itself


def test_rsd_rerank_reads_a_beir_folder_and_its_qrels(beir, tmp_path, capsys):
    folder, _ = beir
    out = tmp_path / "out"
    argv = ["--beir", str(folder), "--run", str(folder / "run.trec"), "--verifier", "simulated", "--method",
            "heuristic", "--top", "20", "--no-progress", "--output", str(out)]
    assert rerank_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "first_stage NDCG@10" in printed and "(3 judged queries, full qrels)" in printed
    reranked, first = ranked_lists(out / "run.trec"), ranked_lists(folder / "run.trec")
    assert sorted(reranked) == ["q1", "q2", "q3"]
    assert all(sorted(reranked[q]) == sorted(first[q]) and reranked[q][20:] == first[q][20:] for q in first)
    assert rerank_cli.main([*argv[:2], "--verifier", "simulated", "--output", str(tmp_path / "o2")]) == 2
    assert "exactly one input" in capsys.readouterr().err
    assert rerank_cli.main([*argv, "--collection", str(folder / "corpus.jsonl")]) == 2
    assert "without --collection / --queries" in capsys.readouterr().err


# ---- RecBole atomic files -------------------------------------------------------------------------------
AMAZON_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
AMAZON_ITEM = "item_id:token\ttitle:token_seq\tbrand:token"


def write_recbole(folder: Path, name: str = "Amazon_Games", users: int = 12, items: int = 40
                  ) -> dict[str, list[str]]:
    """An Amazon-style RecBole folder (ASIN item ids, one all-digit like an ISBN; reviewer user ids), its
    lines in shuffled order so the reader must sort by timestamp. Returns each user's items, oldest first."""
    rng = np.random.default_rng(7)
    asins = [f"B00{k:05d}X" for k in range(items - 1)] + ["0700099867"]
    histories = {f"A{u:03d}REVIEWER": [asins[k] for k in rng.permutation(items)[: 12 + u % 5]]
                 for u in range(users)}
    histories["ASHORT"] = asins[:5]  # too short for history = 10: no task
    rows = [(u, i, t) for u, seq in histories.items() for t, i in enumerate(seq)]
    rows = [rows[k] for k in rng.permutation(len(rows))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join(
        [AMAZON_INTER] + [f"{u}\t{i}\t{1 + t % 5}.0\t{1.6e9 + 1000 * t}" for u, i, t in rows]) + "\n", encoding="utf-8")
    (folder / f"{name}.item").write_text("\n".join(
        [AMAZON_ITEM] + [f"{a}\tGame number {k} Deluxe\tNintendo" for k, a in enumerate(asins)]) + "\n",
        encoding="utf-8")
    return histories


@pytest.fixture()
def amazon(tmp_path):
    folder = tmp_path / "Amazon_Games"
    return folder, write_recbole(folder)


def test_recbole_tasks_are_llmrank_style(amazon):
    folder, histories = amazon
    title = {f"B00{k:05d}X": f"Game number {k} Deluxe" for k in range(39)} | {"0700099867": "Game number 39 Deluxe"}
    tasks = load_tasks("recbole", "all", n=8, history=10, path=folder, name="Amazon_Games")
    assert sorted(t.task_id for t in tasks) == sorted(f"Amazon_Games:u{u}" for u in histories if u != "ASHORT")
    for t in tasks:
        seq = histories[t.task_id.split(":u")[1]]
        assert t.domain == "rec" and t.held_out == seq[-1] and t.n == 8
        assert t.history == tuple(title[i] for i in seq[-11:-1])  # the 10 items before it, oldest first
        assert t.held_out in t.docids and not set(t.docids) - {t.held_out} & set(seq)  # negatives: unseen items
        assert [c.text for c in t.candidates] == [title[d] for d in t.docids]
    test = load_tasks("recbole", "test", n=8, path=folder, name="Amazon_Games")
    train = load_tasks("recbole", "train", n=8, path=folder, name="Amazon_Games")
    assert test and {t.task_id for t in test}.isdisjoint(t.task_id for t in train)
    assert len(test) + len(train) == len(tasks)
    by_id = {t.task_id: t for t in tasks}
    # a user's task depends on the user and the seed, not on the split it falls in
    assert all(t.candidates == by_id[t.task_id].candidates for t in test + train)
    assert load_tasks("recbole", "all", n=8, path=folder)[0].candidates == tasks[0].candidates  # name = folder's
    reseeded = load_tasks("recbole", "all", n=8, path=folder, name="Amazon_Games", seed=1)
    assert [t.docids for t in reseeded] != [t.docids for t in tasks]


def test_recbole_reads_from_inside_a_wheel(amazon, tmp_path):
    """ML-100K can be read from inside the recbole wheel (a zip) without unpacking it."""
    folder, _ = amazon
    wheel = tmp_path / "data.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"pkg/Amazon_Games/{f.name}")
    inside = read_atomic(zipfile.Path(wheel, "pkg/Amazon_Games/"), "Amazon_Games")
    assert inside == read_atomic(folder, "Amazon_Games")


def test_movielens_style_items_get_their_release_year(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ml-1m.inter").write_text(AMAZON_INTER + "\n" + "".join(f"1\t{i}\t4\t{i}\n" for i in (2, 1, 3)))
    (folder / "ml-1m.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
                                       "1\tToy Story\t1995\tAnimation\n2\tHeat\t1995\tAction\n3\tUntitled\t\tDrama\n"
                                       "4\tJumanji\t1995\tAdventure\n5\tCasino\t1995\tDrama\n")
    tasks = load_tasks("ml-1m", "all", n=3, history=2, path=folder)  # RecBole's ml-1m, as dataset ml-1m
    assert tasks[0].task_id == "ml-1m:u1" and tasks[0].held_out == "3"
    assert tasks[0].history == ("Toy Story (1995)", "Heat (1995)")
    assert dict((c.docid, c.text) for c in tasks[0].candidates)["3"] == "Untitled"


@pytest.mark.parametrize("file, old, new, message", [
    ("item", "title:token_seq", "label:token_seq",
     r"Amazon_Games.item line 1: no title-like field among \['item_id', 'label', 'brand'\].*one of \('title'"),
    ("inter", "timestamp:float", "time:float",
     r"Amazon_Games.inter line 1: the header has no \['timestamp'\] field\(s\) \(found \['user_id', 'item_id', "
     r"'rating', 'time'\]\)"),
    ("inter", "user_id:token\t", "user_id\t", r"line 1: header field 1 is 'user_id', not 'name:type'"),
    ("item", "B0000001X\t", "B0000000X\t", "Amazon_Games.item lines 2 and 3: item id 'B0000000X' appears twice"),
    ("item", "Game number 2 Deluxe", "", "Amazon_Games.item line 4: empty title"),
    ("inter", "\nA", "\n\tA", r"Amazon_Games.inter line 2: 5 field\(s\) separated by '\\t', expected 4"),
    ("item", "\nB0000000X\t", "\nB0000000Z\t", r"1 rated items have no title \(e.g. \['B0000000X'\]\)"),
])
def test_bad_recbole_files_name_the_file_line_and_fix(amazon, file, old, new, message):
    folder, _ = amazon
    _rewrite(folder / f"Amazon_Games.{file}", old, new)
    with pytest.raises(ValueError, match=message):
        load_tasks("recbole", "test", n=8, path=folder, name="Amazon_Games")


def test_recbole_missing_files_and_encoding(amazon):
    folder, _ = amazon
    with pytest.raises(FileNotFoundError, match=r"Amazon_Video_Games.item'\] not found.*\(its .inter files: "
                                                r"\['Amazon_Games.inter'\]; pass name="):
        load_tasks("recbole", "test", path=folder, name="Amazon_Video_Games")
    inter = folder / "Amazon_Games.inter"
    lines = inter.read_bytes().split(b"\n")
    inter.write_bytes(b"\n".join([*lines[:3], lines[3] + b"\xff", *lines[4:]]))
    with pytest.raises(ValueError, match=r"Amazon_Games.inter line 4 \(byte \d+\) is not valid UTF-8"):
        load_tasks("recbole", "test", path=folder, name="Amazon_Games")
    with pytest.raises(ValueError, match="dataset 'recbole' needs path="):
        load_tasks("recbole", "test", name="Amazon_Games")
    first, data, *rest = inter.read_text(encoding="latin-1").split("\n")
    inter.write_text("\n".join([first, "\t" + data.split("\t", 1)[1], *rest]), encoding="utf-8")
    with pytest.raises(ValueError, match="Amazon_Games.inter line 2: empty user_id; every interaction needs a user"):
        load_tasks("recbole", "test", path=folder, name="Amazon_Games")


# ---- MovieLens --------------------------------------------------------------------------------------------
def tasks_digest(tasks) -> str:
    rows = [[t.task_id, t.domain, [[c.docid, c.text, c.score] for c in t.candidates], t.query, list(t.history),
             t.held_out] for t in tasks]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


@pytest.mark.parametrize("split, n, history, seed, count, digest", [
    ("test", 20, 10, 0, 189, "9ca1f69cbe8396e142116d67b0980f830faab47352e6bd33f9f8a84de1f42e25"),
    ("train", 20, 10, 0, 754, "de19c0cdf8204808ae0041a3a46c4b3103e93817434c5c57c3a0ada9233bacf6"),
    ("all", 8, 3, 7, 943, "aeb1a328285ad88acc575a294b61405e1610cb95fddeb566faed6e3c6b71760f"),
])
def test_ml100k_tasks_are_those_of_the_reader_it_replaced(split, n, history, seed, count, digest):
    """ML-100K is now read by the generic RecBole reader; its tasks must be byte-for-byte those of the
    ML-100K-only reader it replaced. The digests were computed with that reader, at commit 27f96b1
    (``git checkout 27f96b1``, then ``tasks_digest(load_tasks("ml-100k", split, n=n, history=history,
    seed=seed))`` from this file) on recbole 1.2.1's ml-100k files. Keeping the old reader beside the new one
    to compare against would have been a copy of it; a digest of everything a task holds (ids, candidates'
    ids and texts, history, held-out item, in order) changes if any of it does."""
    tasks = load_tasks("ml-100k", split, n=n, history=history, seed=seed)
    assert len(tasks) == count and tasks_digest(tasks) == digest


def write_ml100k(folder: Path) -> None:
    """ML-100K's official layout: u.data (tab-separated) and u.item ('|'-separated, Latin-1)."""
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t3\t{880000000 + 10 * i + u}\n" for u in (1, 2)
                                           for i in range(1, 14)), encoding="latin-1")
    (folder / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x|0|1\n" for i in range(1, 20))
                                   .replace("Film 3 ", "Film\xe9 3 "), encoding="latin-1")


def test_ml100k_official_layout_and_its_errors(tmp_path):
    folder = tmp_path / "ml-100k"
    write_ml100k(folder)
    tasks = load_tasks("ml-100k", "all", n=5, history=10, path=folder)
    assert [t.task_id for t in tasks] == ["ml-100k:u1", "ml-100k:u2"] and tasks[0].held_out == "13"
    assert tasks[0].history[0] == "Film\xe9 3 (1995)"  # items 3..12 before the held-out 13; Latin-1 read
    with pytest.raises(ValueError, match=r"holds ml-100k \(u.data\), not ml-1m: load it as dataset='ml-100k', or "
                                         r"point path at a ml-1m folder \(ratings.dat or ml-1m.inter\)"):
        load_tasks("ml-1m", "test", path=folder)
    lines = (folder / "u.data").read_text(encoding="latin-1").splitlines()
    (folder / "u.data").write_text("\n".join([lines[0], "1\t2", *lines[2:]]) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"u.data line 2: 2 field\(s\) separated by '\\t', expected 4 "
                                         r"\(user\titem\trating\ttimestamp\); got '1\\t2'. Fix that line"):
        load_tasks("ml-100k", "test", path=folder)


def test_ml1m_official_layout_is_not_taken_for_ml100k(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"1::{i}::5::{978300000 + i}\n" for i in range(1, 5)))
    (folder / "movies.dat").write_text("".join(f"{i}::Movie {i} (2000)::Drama\n" for i in range(1, 7)))
    task, = load_tasks("ml-1m", "all", n=3, history=3, path=folder)
    assert task.task_id == "ml-1m:u1" and task.history == ("Movie 1 (2000)", "Movie 2 (2000)", "Movie 3 (2000)")
    with pytest.raises(ValueError, match=r"holds ml-1m \(ratings.dat\), not ml-100k: load it as dataset='ml-1m'"):
        load_tasks("ml-100k", "test", path=folder)
    with pytest.raises(FileNotFoundError, match=r"is not a ml-1m folder: expected ml-1m.inter"):
        load_tasks("ml-1m", "test", path=tmp_path)
    with pytest.raises(ValueError, match="ml-1m is not bundled anywhere: pass path="):
        load_tasks("ml-1m", "test")
    (folder / "ratings.dat").write_text("1::1::5::978300000\n1::2::5::soon\n")
    with pytest.raises(ValueError, match="ratings.dat line 2: timestamp 'soon' is not a number"):
        load_tasks("ml-1m", "all", path=folder)


# ---- rsd-eval dataset specs ------------------------------------------------------------------------------
def test_rsd_eval_runs_on_beir_and_recbole_dataset_specs(tmp_path):
    write_beir(tmp_path / "quora")
    write_recbole(tmp_path / "Amazon_Games")
    specs = {"quora": {"dataset": "beir", "split": "test", "path": str(tmp_path / "quora"),
                       "run": str(tmp_path / "quora" / "run.trec")},
             "games": {"dataset": "recbole", "split": "all", "path": str(tmp_path / "Amazon_Games"),
                       "name": "Amazon_Games"}}
    cfg = EvalConfig.load(methods=["ar", "heuristic"], datasets=["quora", "games"], budgets=[1], n=8,
                          verifier="simulated", dataset_specs=specs, output=str(tmp_path / "out"), plots=False)
    results = run_evaluation(cfg, progress=False)
    ids = {(r["dataset"], r["task_id"]) for r in results["tasks"] if r["method"] == "ar"}
    assert {i for d, i in ids if d == "quora"} == {"q1", "q2", "q3"}
    assert len({i for d, i in ids if d == "games"}) == 12
    assert (tmp_path / "out" / "runs" / "quora" / "ar.trec").is_file()


def test_the_shipped_specs_for_the_papers_datasets_say_where_the_data_goes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig.load(verifier="simulated")
    for name, missing in (("quora", "corpus.jsonl"), ("amazon-games", "Amazon_Video_Games.inter"),
                          ("ml-1m", "ratings.dat")):
        with pytest.raises(FileNotFoundError, match=missing):
            make_grid_env(cfg, name, 1)
    write_beir(tmp_path / "data" / "quora")
    (tmp_path / "data" / "quora" / "run.trec").rename(tmp_path / "data" / "quora" / "bm25.trec")
    assert {t.task_id for t in make_grid_env(cfg, "quora", 1).tasks} == {"q1", "q2", "q3"}
