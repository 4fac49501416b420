"""rsd-rerank --ray [ADDRESS]: the queries spread over Ray actors, each holding one method and one verifier.

Each actor builds its own ``SlidingWindowReranker`` (method + verifier, loaded once per actor) and reranks
chunks of ``--batch`` queries with the same cross-query batching as one process. The driver hands the next
chunk to whichever actor finishes first and passes every finished query to the same ``on_result`` as the
one-process run, so the output files, their atomic rewrites and resume are ``experiments.rerank``'s own.
A query's ranking depends only on its own windows, so the rankings equal the one-process run's; the cost
fields (LLM passes, tokens, times) share batched calls among the queries batched together, as there.

``--ray`` alone starts a local Ray on this machine; ``--ray HOST:6379`` joins a cluster (``ray start
--head`` on the head node, ``ray start --address=HOST:6379`` on the others; see docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agents.rerank import RerankResult, SlidingWindowReranker, WindowSpec
from rsd_env.data.trec import QueryHits

LOCAL = "local"  # ``--ray`` without an address


class _Shard:
    """One actor's reranker: its method and verifier live as long as the actor."""

    def __init__(self, method: str, verifier: str, verifier_kwargs: dict[str, Any], spec: WindowSpec,
                 budget: int, batch: int) -> None:
        from agents.methods import make_method
        from rsd_env.verifiers import make_verifier

        self.reranker = SlidingWindowReranker(make_method(method), make_verifier(verifier, **verifier_kwargs),
                                              spec, budget, batch)

    def rerank(self, requests: list[QueryHits], qrels: dict[str, dict[str, int]] | None) -> list[RerankResult]:
        return self.reranker.rerank(requests, qrels=qrels)


def portable_method(spec: str) -> str:
    """``agent:<relative path>`` made absolute: actors may run in another working directory."""
    if spec.startswith("agent:"):
        return f"agent:{Path(spec[len('agent:'):]).resolve()}"
    return spec


class RayReranker:
    """``SlidingWindowReranker.rerank``'s interface over ``actors`` Ray actors (default: one per CPU of
    the cluster, at most one per chunk). ``gpus_per_actor`` places GPU verifiers."""

    def __init__(self, method: str, verifier: str, verifier_kwargs: Mapping[str, Any], spec: WindowSpec,
                 budget: int, batch: int, address: str = LOCAL, actors: int | None = None,
                 gpus_per_actor: float = 0.0) -> None:
        if actors is not None and actors < 1:
            raise ValueError(f"--ray-actors must be >= 1, got {actors}")
        if gpus_per_actor < 0:
            raise ValueError(f"--ray-gpus-per-actor must be >= 0, got {gpus_per_actor}")
        from agents.ray_cluster import connect

        self.ray = connect(None if address == LOCAL else address)
        self.args = (portable_method(method), verifier, dict(verifier_kwargs), spec, budget, batch)
        self.batch, self.gpus = batch, gpus_per_actor
        self.actors = actors or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.method_name = method

    def rerank(self, requests: Sequence[QueryHits], qrels: Mapping[str, Mapping[str, int]] | None = None,
               on_result: Callable[[RerankResult], None] | None = None, progress: bool = False
               ) -> list[RerankResult]:
        """Rerank every request over the actors; results in the requests' order, ``on_result`` called as
        each chunk's queries come back."""
        ids = [r.qid for r in requests]
        if len(set(ids)) != len(ids):
            dup = next(q for q in ids if ids.count(q) > 1)
            raise ValueError(f"query {dup!r} appears more than once in the input; give each query once")
        chunks = [list(requests[i: i + self.batch]) for i in range(0, len(requests), self.batch)]
        if not chunks:
            return []
        shard = self.ray.remote(num_cpus=1, num_gpus=self.gpus)(_Shard)
        workers = [shard.remote(*self.args) for _ in range(min(self.actors, len(chunks)))]
        pending: dict[Any, Any] = {}
        results: dict[str, RerankResult] = {}
        bar = tqdm(total=len(requests), desc=f"rerank {self.method_name} (ray)", unit="query", disable=not progress)
        queue = list(reversed(chunks))

        def submit(worker: Any) -> None:
            chunk = queue.pop()
            labels = {q.qid: dict(qrels[q.qid]) for q in chunk if q.qid in qrels} if qrels else None
            pending[worker.rerank.remote(chunk, labels)] = worker

        try:
            for worker in workers:
                if queue:
                    submit(worker)
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                worker = pending.pop(done[0])
                for result in self.ray.get(done[0]):
                    results[result.qid] = result
                    if on_result is not None:
                        on_result(result)
                    bar.update(1)
                if queue:
                    submit(worker)
        finally:
            bar.close()
            for worker in workers:
                self.ray.kill(worker)
        return [results[q] for q in ids]
