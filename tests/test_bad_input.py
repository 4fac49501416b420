"""Bad input gets a clear error that names the problem, the file and line where there is one, and the fix;
nothing is written before the input is known to be good."""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rsd_env  # noqa: F401
from agents.train import main as train_main
from experiments.paper.evaluate import main as eval_main
from rsd_env.data import load_tasks
from rsd_env.data.task import Candidate, RankingTask
from rsd_env.data.trec import load_bundled, read_rank_llm, read_trec_run
from rsd_env.verifiers.server import OpenAIVerifier, ServerError

SIM = {"dataset": "synthetic", "verifier": "simulated", "n": 8, "data": {"count": 4}}


def _rank_llm(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def _hits(qid: str, *docids: str, content: object = "text") -> dict:
    return {"query": f"query {qid}", "hits": [{"qid": qid, "docid": d, "content": content, "score": 1.0}
                                               for d in docids]}


# ---- data ----------------------------------------------------------------------------------------
def test_a_repeated_query_id_is_refused_with_both_lines(tmp_path):
    path = _rank_llm(tmp_path / "run.jsonl", [_hits("q1", "a", "b"), _hits("q2", "a", "b"), _hits("q1", "c", "d")])
    with pytest.raises(ValueError, match=r"run.jsonl line 1 and line 3: query id 'q1' appears twice.*merge"):
        load_tasks("rank_llm", "all", n=2, path=path)


def test_repeated_task_ids_in_explicit_tasks_are_refused():
    task = RankingTask("t", "ir", (Candidate("a", "x"), Candidate("b", "y")))
    with pytest.raises(ValueError, match=r"task ids appear more than once \(e.g. \['t'\]\)"):
        gym.make("RSDRankSim-v0", config={"tasks": [task, task], "n": 2})


def test_null_passage_text_is_refused_with_its_line(tmp_path):
    path = _rank_llm(tmp_path / "run.jsonl", [_hits("q1", "a", "b"), _hits("q2", "a", "b", content=None)])
    with pytest.raises(ValueError, match=r"run.jsonl line 2: hit 0 \(docid 'a'\): passage text 'content' is null"):
        load_tasks("rank_llm", "all", n=2, path=path)


def test_rank_llm_errors_print_single_braces(tmp_path):
    path = _rank_llm(tmp_path / "run.jsonl", [{"query": "q", "no_hits": []}])
    with pytest.raises(ValueError, match="not a rank_llm record") as err:
        load_tasks("rank_llm", "all", n=2, path=path)
    assert "{'query': str, 'hits'" in str(err.value) and "{{" not in str(err.value)


def _trec_files(tmp_path: Path, run: bytes, collection: bytes = b"a\tpassage a\nb\tpassage b\n",
                queries: bytes = b"q1\tquery one\n") -> dict:
    files = {"path": run, "collection": collection, "queries": queries}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


RUN = b"q1 Q0 a 1 2.0 bm25\nq1 Q0 b 2 1.0 bm25\n"


@pytest.mark.parametrize("broken,line", [("path", 3), ("collection", 3), ("queries", 2)])
def test_non_utf8_input_names_the_file_and_line(tmp_path, broken, line):
    files = _trec_files(tmp_path, RUN)
    files[broken].write_bytes(files[broken].read_bytes() + b"q9\tcaf\xe9\n")
    with pytest.raises(ValueError, match=rf"{broken} line {line} .*not valid UTF-8.*save the file as UTF-8"):
        load_tasks("trec-run", "all", n=2, **files)


@pytest.mark.parametrize("run,match", [
    (b"q1 Q0 a 1 2.0 bm25\nq1 Q0 b 2 high bm25\n", r"path line 2: score 'high' is not a number"),
    (b"q1 Q0 a four 2.0 bm25\n", r"path line 1: rank 'four' is not a number"),
    (b"\n\n", r"path: the TREC run is empty"),
    (b"q1 Q0 a 1 2.0 bm25\nq1 Q0 a 2 1.0 bm25\n", r"path line 2: docid 'a' of query 'q1' was already ranked on line 1"),
])
def test_broken_trec_runs_name_file_and_line(tmp_path, run, match):
    with pytest.raises(ValueError, match=match):
        load_tasks("trec-run", "all", n=2, **_trec_files(tmp_path, run))


def _order(tmp_path: Path, run: bytes) -> list[str]:
    files = _trec_files(tmp_path, run, b"".join(b"%s\tpassage %s\n" % (d, d) for d in (b"a", b"b", b"c", b"d")))
    return [h.docid for h in read_trec_run(files["path"], files["collection"], files["queries"])[0].hits]


@pytest.mark.parametrize("run,order", [
    (b"q1 Q0 a 0 1.5 t\nq1 Q0 d 0 9.0 t\nq1 Q0 b 0 3.0 t\nq1 Q0 c 0 2.0 t\n", "dbca"),  # rank 0 everywhere
    (b"q1 Q0 a 2 7 t\nq1 Q0 d 1 7 t\nq1 Q0 b 3 7 t\nq1 Q0 c 4 1 t\n", "dabc"),  # tied scores: rank column
    (b"q1 Q0 a 0 7 t\nq1 Q0 d 0 7 t\nq1 Q0 b 0 7 t\nq1 Q0 c 0 9 t\n", "cdba"),  # both tied: trec_eval's docid order
])
def test_a_run_is_ordered_as_trec_eval_orders_it(tmp_path, run, order):
    assert "".join(_order(tmp_path, run)) == order


def test_bm25s_first_passage_stays_first_with_a_constant_rank_column(tmp_path):
    query = load_bundled("dl19")[0][0]
    lines = [f"{query.qid} Q0 {h.docid} 0 {100 - i} bm25" for i, h in enumerate(query.hits)]
    files = _trec_files(tmp_path, ("\n".join(sorted(lines)) + "\n").encode(),  # lines in docid order
                        "".join(f"{h.docid}\t{h.text}\n" for h in query.hits).encode(),
                        f"{query.qid}\t{query.query}\n".encode())
    hits = read_trec_run(files["path"], files["collection"], files["queries"])[0].hits
    assert [h.docid for h in hits] == [h.docid for h in query.hits]


def test_ranks_that_contradict_scores_are_refused_naming_both_lines(tmp_path):
    with pytest.raises(ValueError, match=r"query 'q1': line 2 \(rank 3, score 4\) and line 1 \(rank 1, score 3\) "
                                         r"rank the two hits against their scores.*fix the rank or the score"):
        _order(tmp_path, b"q1 Q0 a 1 3 t\nq1 Q0 b 3 4 t\nq1 Q0 c 2 5 t\n")


def test_a_docid_with_two_texts_is_refused_with_both_lines(tmp_path):
    files = _trec_files(tmp_path, RUN, b"a\tpassage a\nb\tpassage b\na\tpassage a\nb\tanother b\n")
    with pytest.raises(ValueError, match=r"collection lines 2 and 4: id 'b' has two different texts; keep one"):
        load_tasks("trec-run", "all", n=2, **files)
    files["collection"].write_bytes(b"a\tpassage a\nb\tpassage b\na\tpassage a\n")  # identical repeats pass
    assert len(load_tasks("trec-run", "all", n=2, **files)) == 1


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    bom = b"\xef\xbb\xbf"
    files = _trec_files(tmp_path, bom + RUN, bom + b"a\tpassage a\nb\tpassage b\n", bom + b"q1\tquery one\n")
    (task,) = load_tasks("trec-run", "all", n=2, **files)
    assert task.query == "query one" and [c.docid for c in task.candidates] == ["a", "b"]
    path = tmp_path / "run.jsonl"
    path.write_bytes(bom + json.dumps(_hits("q1", "a", "b")).encode() + b"\n")
    assert [h.docid for h in read_rank_llm(path)[0].hits] == ["a", "b"]


def test_an_empty_query_is_refused_with_its_id_and_line(tmp_path):
    files = _trec_files(tmp_path, RUN, queries=b"q0\tquery zero\nq1\t  \n")
    with pytest.raises(ValueError, match=r"queries line 2: query 'q1' has an empty text"):
        load_tasks("trec-run", "all", n=2, **files)
    path = _rank_llm(tmp_path / "run.jsonl", [_hits("q1", "a", "b"), {**_hits("q2", "a", "b"), "query": ""}])
    with pytest.raises(ValueError, match=r"run.jsonl line 2: query 'q2' has an empty text"):
        read_rank_llm(path)


def test_an_oversized_prompt_with_whole_passages_is_warned_about():
    from transformers import AutoTokenizer

    from rsd_env.verifiers import prompts
    from rsd_env.verifiers.model_store import bundled_model_dir

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    huge = Candidate("big", "lorem ipsum dolor " * 4000)  # ~12k tokens
    task = RankingTask("t", "ir", (Candidate("a", "short passage"), huge), query="q")
    with pytest.warns(RuntimeWarning, match=r"task 't': a prompt of \d+ tokens.*docid 'big'.*set passage_tokens"):
        prompts.encode(task, tokenizer, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompts.encode(task, tokenizer, 20)  # cut passages: no warning


# ---- env -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_tasks", [0, -1, 2.5])
def test_max_tasks_must_be_a_positive_integer(max_tasks):
    with pytest.raises(ValueError, match="max_tasks must be an integer >= 1"):
        gym.make("RSDRankSim-v0", config={**SIM, "max_tasks": max_tasks})
    with pytest.raises(ValueError, match="max_tasks must be an integer >= 1"):
        load_tasks("synthetic", "test", n=4, count=4, max_tasks=max_tasks)


def test_numpy_integers_are_accepted_as_settings():
    env = gym.make("RSDRankSim-v0", config={**SIM, "budget": np.int64(2), "n": np.int32(8), "max_tasks": np.int64(3)})
    raw = env.unwrapped
    assert (raw.budget, raw.n, len(raw.tasks)) == (2, 8, 3) and type(raw.config["budget"]) is int


@pytest.mark.parametrize("action", [np.array(["a"] * 8, dtype=object), ["1"] * 8, [True] * 8])
def test_non_numeric_actions_are_refused(action):
    env = gym.make("RSDRankSim-v0", config=SIM)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be numeric item scores .*got dtype"):
        env.step(action)
    env.step(np.linspace(1, -1, 8))  # a refused action did not use up the round


# ---- rsd-train -----------------------------------------------------------------------------------
TRAIN = ["--wandb-mode", "disabled", "--run-name", "r", "--set", "env_id=RSDRankSim-v0",
         "--set", "env={dataset: synthetic, split: train, n: 8, data: {count: 4}}"]


@pytest.mark.parametrize("override,message", [
    ("env.budgte=3", r"env: unknown config keys \['budgte'\]"),
    ("eval_env.budget=0", r"eval_env: budget must be an integer >= 1"),
    ("algo_kwargs.nosuch=1", r"unknown algo_kwargs \['nosuch'\] for RPO; valid: \["),
    ("algo_kwargs.seed=1", r"algo_kwargs \['seed'\] are set by rsd-train itself"),
    ("env.budget=[1, 2", r"--set env.budget: '\[1, 2' is not a valid YAML value"),
    ("total_timesteps=abc", r"total_timesteps must be an integer, got 'abc'"),
    ("eval_tasks=0", r"eval_tasks must be >= 1"),
    ("env.max_tasks=0", r"env: max_tasks must be an integer >= 1"),
    ("env_id=Nope-v0", r"unknown env_id 'Nope-v0'"),
])
def test_train_config_errors_are_one_line_and_write_nothing(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_:
        train_main([*TRAIN, "--set", f"run_dir={tmp_path}", "--set", override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "rsd-train: error:" in err and "Traceback" not in err
    assert len(re.findall(message, err)) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_train_data_errors_write_nothing(tmp_path, capsys):
    code = train_main([*TRAIN, "--set", f"run_dir={tmp_path}", "--set",
                       f"env={{dataset: rank_llm, split: all, n: 8, data: {{path: {tmp_path / 'none.jsonl'}}}}}"])
    assert code == 2 and "none.jsonl does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---- rsd-eval ------------------------------------------------------------------------------------
EVAL = ["--verifier", "simulated", "--datasets", "synthetic", "--budgets", "1", "--no-plots", "--no-progress"]


@pytest.mark.parametrize("extra,message", [
    (["--max-tasks", "0", "--methods", "std"], "max_tasks must be an integer >= 1"),
    (["--max-tasks", "-1", "--methods", "std"], "max_tasks must be an integer >= 1"),
    (["--methods", "std", "nope"], "unknown method 'nope'"),
    (["--methods", "std", "--verifier-arg", "nosuch=1"], r"unknown option\(s\) \['nosuch'\] for verifier 'simulated'"),
])
def test_eval_errors_are_one_line_and_leave_no_folder(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert eval_main([*EVAL, *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsd-eval: error:") and "Traceback" not in err
    assert len(re.findall(message, err)) == 1, err
    assert not out.exists()


def test_eval_with_an_unreachable_server_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    code = eval_main(["--verifier", f"openai:http://127.0.0.1:{port}", "--verifier-arg", "retries=0",
                      "--datasets", "synthetic", "--methods", "std", "--budgets", "1", "--output", str(out),
                      "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rsd-eval: error: verifier server http://127.0.0.1:{port} unreachable after 1 attempts")
    assert not out.exists()


def test_a_silent_server_fails_within_the_configured_time_and_logs_retries(caplog):
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="rsd_env.verifiers.server"), \
                pytest.raises(ServerError, match=r"after 3 attempts of 0.2 s \(no answer: timed out\).*timeout="):
            OpenAIVerifier(url, tokenizer=object(), timeout=0.2, retries=2, backoff=0.01)
        elapsed = time.perf_counter() - start
    assert 0.6 <= elapsed < 3.0
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2 and "attempt 1/3 failed (no answer: timed out); retrying in 0.0 s" in retries[0]
    defaults = {k: p.default for k, p in inspect.signature(OpenAIVerifier.__init__).parameters.items()}
    client = object.__new__(OpenAIVerifier)
    client.timeout, client.retries, client.backoff = defaults["timeout"], defaults["retries"], defaults["backoff"]
    assert client.worst_case_seconds < 60  # the first request of a default client gives up within a minute


def test_adapter_eval_refuses_zero_threads_before_loading_the_model(tmp_path, capsys):
    """The adapter evaluation takes --threads as rsd-eval and rsd-rerank do (one thread per process when two
    evaluations share a machine) and refuses 0 with argparse's one-line error, writing nothing."""
    from experiments.adapter.eval import main as adapter_eval_main

    out = tmp_path / "m.json"
    with pytest.raises(SystemExit):
        adapter_eval_main(["--threads", "0", "--out", str(out)])
    assert "argument --threads: must be >= 1, got 0" in capsys.readouterr().err and not out.exists()
