"""OpenAIVerifier against our local OpenAI-compatible server (same rows as HFVerifier) and broken servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rsd_env.data import load_tasks
from rsd_env.data.task import RankingTask
from rsd_env.verifiers import make_verifier, server
from rsd_env.verifiers.hf import HFVerifier
from rsd_env.verifiers.serve_local import make_server, serving
from rsd_env.verifiers.server import OpenAIVerifier, ServerError

pytestmark = pytest.mark.llm
N = 5


@pytest.fixture(scope="module")
def tasks() -> list[RankingTask]:
    return load_tasks("trec-dl", "test", n=N, max_tasks=2)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rsd_env.verifiers.model_store import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())


@pytest.fixture(scope="module")
def local() -> Iterator[tuple[HFVerifier, str]]:
    verifier = make_verifier("bundled", adapter=None, passage_tokens=16, target_cache=False)
    with serving(verifier) as url:
        yield verifier, url


def test_server_rows_equal_hf_rows(local: tuple[HFVerifier, str], tasks: list[RankingTask]) -> None:
    verifier, url = local
    client = OpenAIVerifier(url, tokenizer=verifier.tokenizer, passage_tokens=16, top_logprobs=1000,
                            target_cache=False)
    assert client.model == "rsd-local"
    task, ranking = tasks[0], [2, 4, 0, 1, 3]
    got, ref = client.verify(task, ranking), verifier.verify(task, ranking)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-4)
    assert (got.accepted, got.correction) == (ref.accepted, ref.correction)
    np.testing.assert_allclose(client.first_token_scores(task), verifier.first_token_scores(task), atol=1e-4)
    requests = [(tasks[0], [0, 1, 2, 3, 4]), (tasks[1], [4, 3, 2, 1, 0])]
    for a, b in zip(client.verify_batch(requests), verifier.verify_batch(requests)):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert client.missing_logprobs == 0  # exact only while every identifier is in the returned top-k
    np.testing.assert_array_equal(client.target_ranking(task), verifier.target_ranking(task))


def test_identifiers_outside_the_top_k_get_an_upper_bound(
    local: tuple[HFVerifier, str], tasks: list[RankingTask]
) -> None:
    """With top-2 the server cannot return all 5 identifiers: they get the smallest returned log-prob."""
    verifier, url = local
    kwargs = {"model": "rsd-local", "tokenizer": verifier.tokenizer, "passage_tokens": 16, "target_cache": False}
    client = OpenAIVerifier(url, top_logprobs=2, **kwargs)
    exact = OpenAIVerifier(url, top_logprobs=1000, **kwargs)
    ranking = [0, 1, 2, 3, 4]
    rough, ref = client.verify(tasks[0], ranking).logprobs, exact.verify(tasks[0], ranking).logprobs
    assert client.missing_logprobs > 0 and exact.missing_logprobs == 0
    np.testing.assert_allclose(np.exp(rough).sum(axis=1), 1.0)
    # per slot the server returns the top-2 + the actual token; every other identifier gets the floor
    assert all(len(np.unique(np.round(row, 9))) <= 3 for row in rough)
    assert not np.allclose(rough, ref)


def test_local_server_refuses_bad_requests_and_non_loopback(local: tuple[HFVerifier, str]) -> None:
    verifier, url = local
    client = OpenAIVerifier(url, model="rsd-local", tokenizer=verifier.tokenizer, retries=0, target_cache=False)
    with pytest.raises(ServerError, match="HTTP 400.*list of token ids"):
        client._request("POST", "/v1/completions", {"prompt": "text"})
    with pytest.raises(ServerError, match="HTTP 400.*prompt_logprobs"):
        client._request("POST", "/v1/completions", {"prompt": [2, 3], "prompt_logprobs": 10**6})
    with pytest.raises(ValueError, match="loopback"):
        make_server(verifier, host="0.0.0.0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_server_fails_clearly_after_retries(
    tasks: list[RankingTask], tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(server.time, "sleep", sleeps.append)
    url = f"http://127.0.0.1:{_free_port()}"
    client = OpenAIVerifier(url, model="m", tokenizer=tokenizer, retries=2, backoff=0.5, timeout=2, target_cache=False)
    with pytest.raises(ServerError, match="unreachable after 3 attempts.*start it"):
        client.verify(tasks[0], [0, 1, 2, 3, 4])
    assert sleeps == [0.5, 1.0]  # exponential backoff between the attempts


class _Stub(BaseHTTPRequestHandler):
    """Answers every request the same broken way (``mode`` set per test)."""

    mode = "ok"
    hits = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code, body = {
            "not-json": (200, b"<html>proxy error</html>"),
            "no-logprobs": (200, json.dumps({"choices": [{"text": "A"}]}).encode()),
            "short": (200, json.dumps({"choices": [{"prompt_logprobs": [None, {"1": {"logprob": -1}}]}]}).encode()),
            "busy": (503, b"overloaded"),
            "failing": (500, b'{"error": "CUDA out of memory"}'),
            "bad-request": (400, b'{"error": "max_logprobs exceeded"}'),
        }[self.mode]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stub() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Stub.hits = 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    ("mode", "error", "match", "hits"),
    [
        ("not-json", ValueError, "malformed JSON", 1),
        ("no-logprobs", ValueError, "malformed prompt log-probs", 1),
        ("short", ValueError, "malformed prompt log-probs", 1),
        ("busy", ServerError, "answered HTTP 503 to POST /v1/completions on all 3 attempts: overloaded", 3),
        ("failing", ServerError, r"^(?!.*unreachable).*answered HTTP 500 to POST /v1/completions on all 3 "
                                 r"attempts: \{\"error\": \"CUDA out of memory\"\}; see the server's log", 3),
        ("bad-request", ServerError, "HTTP 400.*max_logprobs", 1),
    ],
)
def test_malformed_or_failing_server_gives_clear_errors(
    stub: str, tasks: list[RankingTask], tokenizer, monkeypatch: pytest.MonkeyPatch, mode: str, error: type,
    match: str, hits: int,
) -> None:
    monkeypatch.setattr(server.time, "sleep", lambda s: None)
    monkeypatch.setattr(_Stub, "mode", mode)
    client = OpenAIVerifier(stub, model="m", tokenizer=tokenizer, retries=2, timeout=5, target_cache=False)
    with pytest.raises(error, match=match):
        client.verify(tasks[0], [0, 1, 2, 3, 4])
    assert _Stub.hits == hits  # malformed data is not retried; overload is


def test_bad_client_settings(tokenizer) -> None:
    with pytest.raises(ValueError, match="http://"):
        OpenAIVerifier("localhost:8000", model="m", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="top_logprobs"):
        OpenAIVerifier("http://127.0.0.1:1", model="m", tokenizer=tokenizer, top_logprobs=0)
