"""Two-stage search on BQ: per-stage latency (p50 / p99 per query) and ranking quality (MRR@10) of the first stage
alone and re-ranked by a cross-encoder over its top 20 / 50, in one run; with ``--weights`` also score fusion of the
two (``rerank_weight``, 1 = the re-ranker alone), measured for each weight and each rerank top.

    python bench/two_stage.py --model /work/scratch/bq --reranker /work/scratch/rerank-bq      # full scale
    python bench/two_stage.py --model ... --reranker ... --queries 100 --modes hybrid           # a quick check
    python bench/two_stage.py --model ... --reranker ... --weights 0 0.3 0.5 0.7 1               # choose the weight

The task is built like bench/retrieval.py's LCQMC one, from BQ dev (``--data``): the corpus is every distinct
sentence of the file; each pair labelled 1 (two different texts) gives a query (text_a) and its relevant document
(text_b); a query's own sentence is not a result (it is dropped from the hits before scoring, so each search asks
for k + 1). The index: a Flat (exact) Faiss index of the two-tower model ``--model`` with its BM25 part
(``lexical=True``), so dense, lexical and hybrid first stages are all measured. Each query is searched alone (as
one service request would be) with :meth:`deepsem.index.Index.search_timed`, which reports the encode, first-stage
and rerank milliseconds; ``--warmup`` searches come first and are not counted. ``--queries`` takes the first N
queries (default all). The issue's target: re-ranking 50 candidates adds <= 5 ms p50 per query on 2 cores. Run it
with the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from retrieval import duplicate_task  # bench/retrieval.py: the LCQMC duplicate task, for any pair file

from deepsem.index import Document, Index
from deepsem.index.vector_index import cross_encoder
from deepsem.metrics import retrieval_metrics

STAGES = ("encode", "first_stage", "rerank", "total")


def measure(index: Index, queries: list[tuple[str, str]], own: dict[str, str], qrels: dict[str, dict[str, int]],
            mode: str, top: int | None, k: int, reranker: Any, warmup: int, weight: float | None = None
            ) -> dict[str, Any]:
    """Each query searched alone; MRR@10 etc. of the hits without the query's own sentence; stage percentiles.
    ``weight``: the re-ranked search's ``rerank_weight`` (None without a re-ranker)."""
    rerank = None if top is None else reranker
    fused = None if top is None or weight is None or weight == 1 else weight  # 1: the plain re-ranked search
    for _, text in queries[:warmup]:
        index.search_timed(text, k + 1, mode=mode, rerank=rerank, rerank_top=top, rerank_weight=fused)
    run: dict[str, dict[str, float]] = {}
    ms: dict[str, list[float]] = {s: [] for s in STAGES}
    for qid, text in queries:
        found, took = index.search_timed(text, k + 1, mode=mode, rerank=rerank, rerank_top=top, rerank_weight=fused)
        hits = [h.id for h in found[0] if h.id != own[text]][:k]
        run[qid] = {doc: float(len(hits) - r) for r, doc in enumerate(hits)}  # the order itself, ties impossible
        for stage, value in took.to_dict().items():
            ms[stage].append(value)
    metrics = retrieval_metrics(run, {q: qrels[q] for q, _ in queries}, ks=(1, 10))
    out: dict[str, Any] = {"mode": mode, "rerank_top": top, "rerank_weight": None if top is None else weight,
                           "queries": len(queries), **{m: round(v, 4) for m, v in metrics.items()}}
    for stage, values in ms.items():
        out[f"{stage}_p50_ms"] = round(float(np.percentile(values, 50)), 2)
        out[f"{stage}_p99_ms"] = round(float(np.percentile(values, 99)), 2)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    queries, corpus, qrels = duplicate_task(args.data)
    chosen = list(queries.items())[: args.queries] if args.queries else list(queries.items())
    own = {text: doc for doc, text in corpus.items()}
    reranker = cross_encoder(args.reranker)
    tops = [None, *args.tops]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = Index.build(args.model, [Document(i, t) for i, t in corpus.items()], Path(tmp) / "idx", "Flat",
                            lexical=True)
        built = round(time.perf_counter() - t0, 1)
        for mode in args.modes:
            for top in tops:
                for weight in [None] if top is None else args.weights:
                    results.append(measure(index, chosen, own, qrels, mode, top, args.k, reranker, args.warmup,
                                           weight))
                    r = results[-1]
                    print(f"{mode:<8} {'-' if top is None else top:>5} {'-' if weight is None else f'{weight:g}':>6} "
                          f"{r['mrr@10']:7.4f} {r['recall@1']:6.4f} {r['recall@10']:6.4f}  "
                          + "  ".join(f"{r[f'{s}_p50_ms']:7.2f} {r[f'{s}_p99_ms']:7.2f}" for s in STAGES), flush=True)
        index.close()
    return {"data": str(args.data), "model": str(args.model), "reranker": str(args.reranker),
            "documents": len(corpus), "queries": len(chosen), "k": args.k, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "index_build_s": built, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/bq/dev.tsv"))
    parser.add_argument("--model", type=Path, required=True, help="the two-tower model directory (first stage)")
    parser.add_argument("--reranker", type=Path, required=True, help="the cross-encoder model directory")
    parser.add_argument("--modes", nargs="+", default=["dense", "lexical", "hybrid"],
                        choices=["dense", "lexical", "hybrid"])
    parser.add_argument("--tops", nargs="+", type=int, default=[20, 50], help="rerank_top values measured")
    parser.add_argument("--weights", nargs="+", type=float, default=[1.0],
                        help="rerank_weight values measured for each rerank top (1: the re-ranker alone; 0: the "
                        "first stage's order)")
    parser.add_argument("--queries", type=int, default=0, help="the first N queries only (0: all)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if any(not 0 <= w <= 1 for w in args.weights):
        parser.error("--weights: each rerank_weight is from 0 to 1")
    print(f"{'mode':<8} {'top':>5} {'weight':>6} {'MRR@10':>7} {'R@1':>6} {'R@10':>6}  "
          + "  ".join(f"{s + ' p50':>7} {'p99':>7}" for s in STAGES))
    result = run(args)
    print(f"{result['documents']:,} documents, {result['queries']:,} queries, index built in "
          f"{result['index_build_s']} s, {result['threads']} threads")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
