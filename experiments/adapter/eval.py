"""Does the bundled target really rank? Evaluate base / base+adapter on data never trained on.

    python -m experiments.adapter.eval [--adapter PATH | --adapter none] [--device cuda] [--out m.json]

DL19 (BM25 top-20; presented in BM25 order and in two seeded random orders) and ML-100K hold-out users:
tau(AR ranking, presentation order), tau between the AR rankings of two presentation orders (docid
space), NDCG@10 (pytrec_eval, trec_eval's linear gain) beside BM25 and the MiniLM teacher, ML-100K HR@1,
and tau(single-token ranking, AR ranking) overall, on the AR top-5 and on the AR bottom-10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from experiments.adapter.data import MiniLMTeacher, reorder
from experiments.cli_args import add_threads_argument, apply_threads
from rsd_env.data import load_tasks
from rsd_env.data.task import RankingTask
from rsd_env.io import write_text
from rsd_env.verifiers.hf import BUNDLED_ADAPTERS, DEFAULT_PASSAGE_TOKENS, bundled_adapter_dir

SHIPPED_ADAPTER = bundled_adapter_dir()


class Ranker:
    """What users get: ``HFVerifier`` (base + adapter merged at load) -> (first-slot scores, AR ranking)."""

    def __init__(self, model_path: str | None = None, adapter: str | Path | None = SHIPPED_ADAPTER,
                 device: str = "cpu", passage_tokens: int = DEFAULT_PASSAGE_TOKENS) -> None:
        from rsd_env.verifiers.hf import HFVerifier
        from rsd_env.verifiers.model_store import BUNDLED_MODEL

        self.verifier = HFVerifier(model_path or BUNDLED_MODEL, adapter=adapter, device=device,
                                   passage_tokens=passage_tokens, target_cache=False)

    def rank(self, task: RankingTask) -> tuple[np.ndarray, list[int]]:
        """(first-slot identifier scores [N], constrained greedy AR ranking as candidate indices)."""
        return self.verifier.first_token_scores(task), [int(i) for i in self.verifier.target_ranking(task)]


def tau_with_order(ranking: list[int], order: list[int]) -> float:
    """Kendall tau between two rankings of the same items (lists, best first)."""
    pos = {item: k for k, item in enumerate(order)}
    return float(kendalltau(range(len(ranking)), [pos[i] for i in ranking]).statistic)


def std_vs_ar(first: np.ndarray, ranking: list[int]) -> dict[str, float]:
    """tau(single-token scores, AR order) overall, on the AR top-5 and on the AR bottom-10."""
    def tau(items: list[int]) -> float:
        return float(kendalltau(-np.arange(len(items)), first[items]).statistic)

    return {"all": tau(ranking), "head5": tau(ranking[:5]), "tail10": tau(ranking[-10:])}


def ndcg10(tasks: list[RankingTask], orders: list[list[int]]) -> float:
    """Mean NDCG@10 (pytrec_eval) of each task's candidates in the given order (indices, best first)."""
    import pytrec_eval

    qrels = {t.task_id: {d: int(g) for d, g in (t.qrels or {}).items()} for t in tasks}
    run = {t.task_id: {t.candidates[j].docid: float(t.n - r) for r, j in enumerate(o)}
           for t, o in zip(tasks, orders)}
    res = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in res.values()]))


def evaluate_adapter(ranker: Any, dl19: list[RankingTask], ml: list[RankingTask], seeds: tuple[int, ...] = (1, 2),
             teacher: MiniLMTeacher | None = None) -> dict[str, Any]:
    """All the adapter's acceptance metrics for one ranker (see the module docstring).

    ``seeds``: the shuffled presentation orders shown beside BM25's; with one seed the cross-order tau is
    BM25 order vs that shuffle. An empty ``ml`` skips the recommendation metrics.
    """
    t0 = time.time()
    views = {"bm25": dl19, **{f"shuf{s}": [reorder(t, 7919 * s + k, f"#s{s}") for k, t in enumerate(dl19)]
                               for s in seeds}}
    res: dict[str, Any] = {"dl19": {}, "ml100k": {}}
    runs = {name: [ranker.rank(t) for t in tasks] for name, tasks in views.items()}
    ident = list(range(dl19[0].n))
    for name, tasks in views.items():
        res["dl19"][f"ndcg10_ar_{name}"] = ndcg10(tasks, [r for _, r in runs[name]])
        res["dl19"][f"ndcg10_std_{name}"] = ndcg10(tasks, [list(np.argsort(-f, kind="stable"))
                                                           for f, _ in runs[name]])
        res["dl19"][f"tau_ar_presentation_{name}"] = float(np.mean([tau_with_order(r, ident)
                                                                    for _, r in runs[name]]))
    docs = {name: [[t.candidates[j].docid for j in r] for t, (_, r) in zip(views[name], runs[name])]
            for name in views}
    a = f"shuf{seeds[0]}"
    if len(seeds) > 1:
        b = f"shuf{seeds[1]}"
        res["dl19"]["tau_ar_two_orders_docid"] = float(np.mean([tau_with_order(x, y)
                                                                 for x, y in zip(docs[a], docs[b])]))
    res["dl19"]["tau_ar_bm25_vs_shuffled_docid"] = float(np.mean([tau_with_order(x, y)
                                                                   for x, y in zip(docs["bm25"], docs[a])]))
    res["dl19"]["ndcg10_bm25"] = ndcg10(dl19, [ident] * len(dl19))
    if teacher is not None:
        res["dl19"]["ndcg10_teacher"] = ndcg10(dl19, [teacher.order(t) for t in dl19])
    res["dl19"]["tau_std_ar"] = _mean_dicts([std_vs_ar(f, r) for name in views for f, r in runs[name]])
    if not ml:
        res["seconds"] = round(time.time() - t0, 1)
        return res
    ml_runs = [ranker.rank(t) for t in ml]
    hits = [[t.candidates[j].docid for j in r].index(t.held_out) for t, (_, r) in zip(ml, ml_runs)]
    std_hits = [int(t.candidates[int(np.argmax(f))].docid == t.held_out) for t, (f, _) in zip(ml, ml_runs)]
    res["ml100k"] = {
        "users": len(ml), "hr1_ar": float(np.mean([h == 0 for h in hits])), "hr1_std": float(np.mean(std_hits)),
        "hr5_ar": float(np.mean([h < 5 for h in hits])), "random_hr1": 1.0 / ml[0].n,
        "tau_ar_presentation": float(np.mean([tau_with_order(r, list(range(t.n))) for t, (_, r) in
                                              zip(ml, ml_runs)])),
        "tau_std_ar": _mean_dicts([std_vs_ar(f, r) for f, r in ml_runs]),
    }
    if teacher is not None:  # the teacher's similarity order alone (without the held-out label) as a baseline
        sim = [teacher.order(dataclasses.replace(t, held_out=None))[0] for t in ml]
        res["ml100k"]["hr1_minilm_similarity"] = float(np.mean([t.candidates[j].docid == t.held_out
                                                                for t, j in zip(ml, sim)]))
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def adapter_label(adapter: str | Path | None) -> str | None:
    """How the metrics name the adapter: a shipped one's name ("bundled", "bundled-full"), its folder name, or
    None; never a path of this machine."""
    if adapter is None:
        return None
    if str(adapter) in BUNDLED_ADAPTERS:
        return str(adapter)
    path = Path(adapter).expanduser().resolve()
    shipped = {bundled_adapter_dir(name).resolve(): name for name in BUNDLED_ADAPTERS}
    return shipped.get(path, path.name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="base model folder (default: the bundled Gemma 3 270M)")
    p.add_argument("--adapter", default=str(SHIPPED_ADAPTER), help="adapter folder, a shipped adapter's name "
                   f"({', '.join(BUNDLED_ADAPTERS)}), or 'none' for the base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--passage-tokens", type=int, default=DEFAULT_PASSAGE_TOKENS)
    p.add_argument("--n", type=int, default=20, help="DL19 candidates per prompt: BM25's top n (default 20; "
                   "100 = the full-list ranker)")
    p.add_argument("--seeds", default="1,2", help="seeds of the shuffled presentation orders (default 1,2)")
    p.add_argument("--dl19-queries", type=int, default=None, help="first K DL19 queries (default: all 43)")
    p.add_argument("--ml-users", type=int, default=None, help="first K ML-100K hold-out users (default: all; "
                   "0 skips ML-100K)")
    p.add_argument("--no-teacher", action="store_true", help="skip the MiniLM teacher baseline")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    adapter = None if args.adapter.lower() == "none" else args.adapter
    ranker = Ranker(args.model, adapter, args.device, args.passage_tokens)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    dl19 = load_tasks("dl19", "all", n=args.n, max_tasks=args.dl19_queries)
    ml = [] if args.ml_users == 0 else load_tasks("ml-100k", split="test", n=20, history=10, seed=0,
                                                  max_tasks=args.ml_users)
    res = evaluate_adapter(ranker, dl19, ml, seeds, teacher=None if args.no_teacher else MiniLMTeacher())
    res["config"] = {"adapter": adapter_label(adapter), "passage_tokens": args.passage_tokens, "device": args.device,
                     "n": args.n, "seeds": list(seeds), "dl19_queries": len(dl19), "ml_users": len(ml)}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out is not None:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
