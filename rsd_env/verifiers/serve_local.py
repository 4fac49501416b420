"""A small OpenAI-compatible completions server for our HFVerifier's model, on 127.0.0.1 only.

It speaks the subset of vLLM's protocol that ``OpenAIVerifier`` uses (token-id prompts,
``prompt_logprobs``), so the server backend can be tested and tried without vLLM:

    python -m rsd_env.verifiers.serve_local --port 8000 [--adapter none]

Bounded: loopback only, request bodies up to 4 MB, prompts up to the model's context length, at most
``MAX_TOP_LOGPROBS`` log-probs at up to ``MAX_LOGPROB_POSITIONS`` positions, one forward pass at a time.
Positions before the optional ``prompt_logprobs_start`` field (our extension) come back as null; vLLM
computes all of them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from rsd_env.verifiers.hf import HFVerifier

MAX_BODY_BYTES = 4 << 20
MAX_TOP_LOGPROBS = 1000
MAX_LOGPROB_POSITIONS = 256  # full-vocabulary rows computed per request (each is vocab x 4 bytes)


class BadRequest(ValueError):
    """A request the server refuses with HTTP 400."""


def _int_field(payload: dict, name: str, default: int, low: int, high: int) -> int:
    value = payload.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be an integer in {low}..{high}, got {value!r}")
    return value


def complete(verifier: HFVerifier, model_name: str, payload: Any) -> dict:
    """One /v1/completions request -> the response dict (vLLM layout)."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    ids = payload.get("prompt")
    if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise BadRequest("'prompt' must be a non-empty list of token ids (text prompts are not supported)")
    vocab = verifier.model.config.get_text_config().vocab_size
    if min(ids) < 0 or max(ids) >= vocab:
        raise BadRequest(f"token ids must be in 0..{vocab - 1}")
    max_tokens = _int_field(payload, "max_tokens", 1, 0, 1)
    top = _int_field(payload, "prompt_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    start = _int_field(payload, "prompt_logprobs_start", 1, 1, len(ids)) if top else len(ids)
    if len(ids) - start + 1 > MAX_LOGPROB_POSITIONS:
        raise BadRequest(
            f"prompt_logprobs for {len(ids) - start} positions exceeds this server's limit of "
            f"{MAX_LOGPROB_POSITIONS - 1}; send 'prompt_logprobs_start' to skip the positions you do not need"
        )
    try:
        logprobs = verifier.next_token_logprobs(ids, start)  # rows predict ids[start:], then the next token
    except ValueError as err:
        raise BadRequest(str(err)) from err
    entries: list[dict | None] = [None] * len(ids)
    if top:
        for r, pos in enumerate(range(start, len(ids))):
            row = logprobs[r]
            best = torch.topk(row, top)
            ranks = {int(t): k + 1 for k, t in enumerate(best.indices)}
            chosen = {int(t): float(x) for t, x in zip(best.indices, best.values)}
            chosen.setdefault(ids[pos], float(row[ids[pos]]))  # vLLM always adds the actual token
            entries[pos] = {
                str(t): {
                    "logprob": x,
                    "rank": ranks.get(t, int((row > row[t]).sum()) + 1),
                    "decoded_token": verifier.tokenizer.decode([t]),
                }
                for t, x in chosen.items()
            }
    text, generated = "", []
    if max_tokens:
        generated = [int(torch.argmax(logprobs[-1]))]
        text = verifier.tokenizer.decode(generated)
    return {
        "id": f"cmpl-{time.time_ns()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "prompt_logprobs": entries}
        ],
        "usage": {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                  "total_tokens": len(ids) + len(generated)},
    }


def make_server(verifier: HFVerifier, host: str = "127.0.0.1", port: int = 0, model_name: str = "rsd-local"):
    """A ThreadingHTTPServer (not started); ``port=0`` picks a free port (``server.server_address``)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"serve_local only listens on loopback addresses (e.g. 127.0.0.1), got {host!r}")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: tests and benchmarks read stdout
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/completions":
                self._error(404, f"no route {self.path}")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._error(413 if length else 411, f"request body must be 1..{MAX_BODY_BYTES} bytes")
                return
            try:
                payload = json.loads(self.rfile.read(length))
                with lock:
                    body = complete(verifier, model_name, payload)
            except json.JSONDecodeError as err:
                self._error(400, f"malformed JSON: {err.msg}")
                return
            except BadRequest as err:
                self._error(400, str(err))
                return
            self._send(200, body)

    return ThreadingHTTPServer((host, port), Handler)


@contextmanager
def serving(verifier: HFVerifier, model_name: str = "rsd-local") -> Iterator[str]:
    """Run a local server in a background thread for the duration of a ``with`` block; yields its URL."""
    server = make_server(verifier, model_name=model_name)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default=None, help="model for HFVerifier (default: the bundled model)")
    ap.add_argument("--adapter", default="bundled", help="'bundled', 'none' or a peft folder")
    args = ap.parse_args(argv)
    kwargs: dict[str, Any] = {"adapter": None if args.adapter.lower() == "none" else args.adapter}
    if args.model:
        kwargs["model"] = args.model
    server = make_server(HFVerifier(**kwargs), args.host, args.port)
    print(f"serving on http://{args.host}:{server.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
