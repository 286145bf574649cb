"""Search speed and recall: encode, build, query Flat / HNSW / IVF indexes of 100k and 1M documents.

    python bench/search.py --model runs/zh-general --sizes 100000 1000000

Documents are real Chinese sentences from ``--data-dir`` (every unique sentence of the pair, NLI and news
sets), topped up to the size with pairs of them joined; vectors come from the trained model (document
tower). Queries are LCQMC test questions (query tower). Every index is measured in the same run against
exact search by a chunked ``torch.mm`` + ``topk`` over the same vectors (the reference for recall@10 and for
batched speed); "deepsem Flat" is what :class:`deepsem.Index` runs for Flat (the matmul path at every batch
size, as it measured faster than Faiss Flat).

``--lexical`` also builds an HNSW32 index with its BM25 part and times single-query ``lexical`` and
``hybrid`` searches from the query text (hybrid: dense + BM25 top 100 each, fused; the query's encoding is
timed separately in the "encode query" row). Their recall@10 against dense exact search is not a measure of
anything, so it is left out (nan).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.index import Index
from deepsem.vectorstore.exact import exact_search

TEXT_FILES = ["bq/train.tsv", "bq/dev.tsv", "afqmc/train.tsv", "atec/train_partial.tsv", "chip2019/train.tsv",
              "kuake_qqr/train.tsv", "qbqtc/dev.tsv", "qbqtc/train_preliminary_2021-10.tsv", "oppo_xiaobu/dev.tsv",
              "ocnli/train_10k.tsv", "cmnli/dev.tsv", "cnsd_snli/dev.tsv", "cinlid/all.tsv", "lcqmc/dev.tsv",
              "thucnews/train.txt", "thucnews/dev.txt", "thucnews/test.txt", "stsb_zh/train.tsv"]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def corpus_texts(data_dir: Path, size: int, seed: int = 0) -> list[str]:
    seen: dict[str, None] = {}
    for name in TEXT_FILES:
        path = data_dir / name
        if not path.exists():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.rstrip("\n").split("\t")
                for text in fields[:2] if len(fields) >= 3 else fields[:1]:
                    if text.strip():
                        seen[text.strip()] = None
    texts = list(seen)
    rng = np.random.default_rng(seed)
    base = len(texts)
    while len(texts) < size:
        i, j = rng.integers(0, base, 2)
        texts.append(texts[i] + "，" + texts[j])
    return texts[:size]


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    out = None
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t0) / repeat, out


def latency(fn, queries: np.ndarray, n: int) -> tuple[float, float, float]:
    """Batch-1 latency p50 / p99 (ms) and queries per second over ``n`` single-query searches."""
    times = []
    for i in range(n):
        q = queries[i % len(queries)][None, :]
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), n / arr.sum() * 1000


def lexical_rows(model, texts, vectors, query_texts, q_vecs, directory: Path) -> list[dict]:
    size = len(texts)
    t_build, index = timed(lambda: Index.build(model, texts, directory, "HNSW32", vectors=vectors, lexical=True))
    assert isinstance(index, Index)
    rows = []
    n = min(500, len(query_texts))
    t_q, _ = timed(lambda: [model.encode([t], side="query") for t in query_texts[:n]])
    rows.append({"index": "encode query (1 text)", "size": size, "build_s": 0.0, "recall@10": float("nan"),
                 "qps_batch256": float("nan"), "p50_ms": t_q / n * 1000, "p99_ms": float("nan"),
                 "qps_batch1": n / t_q, "memory_mb": float("nan")})
    for mode in ("lexical", "hybrid"):
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            index.search_encoded(q_vecs[i : i + 1], 10, texts=[query_texts[i]], mode=mode)
            times.append(time.perf_counter() - t0)
        arr = np.array(times) * 1000
        t256, _ = timed(lambda m=mode: index.search_encoded(q_vecs[:256], 10, texts=query_texts[:256], mode=m))
        rows.append({"index": f"deepsem HNSW32 + BM25, {mode} (from vectors)", "size": size,
                     "build_s": t_build, "recall@10": float("nan"), "qps_batch256": 256 / t256,
                     "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
                     "qps_batch1": n / arr.sum() * 1000, "memory_mb": float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "IVF1024,Flat"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lexical", action="store_true", help="also time lexical and hybrid search (HNSW32)")
    args = parser.parse_args()
    model = deepsem.load(args.model)
    lcqmc = [line.split("\t")[0] for line in (args.data_dir / "lcqmc/test.tsv").read_text("utf-8").splitlines()]
    query_texts = list(dict.fromkeys(lcqmc))[: args.queries]
    q_vecs = model.encode(query_texts, side="query")
    rows = []
    print(f"{platform.machine()}, {torch.get_num_threads()} threads; model {model}")
    for size in args.sizes:
        texts = corpus_texts(args.data_dir, size)
        t_enc, vectors = timed(lambda texts=texts: model.encode(texts, side="doc"))
        print(f"\n{size:,} documents: encoded in {t_enc:.1f} s ({size / t_enc:,.0f} texts/s)")
        _, exact_idx = exact_search(q_vecs, vectors, 10)  # also warms the memory the reference reads
        exact_search(q_vecs[:256], vectors, 10)
        # exact reference at batch 256 and batch 1
        t_exact, _ = timed(lambda v=vectors: exact_search(q_vecs[:256], v, 10), repeat=3)
        ref = {"index": "torch.mm + topk (exact)", "size": size, "build_s": 0.0, "recall@10": 1.0,
               "qps_batch256": 256 / t_exact}
        p50, p99, qps1 = latency(lambda q, v=vectors: exact_search(q, v, 10), q_vecs, 200)
        ref.update(p50_ms=p50, p99_ms=p99, qps_batch1=qps1, memory_mb=vectors.nbytes / 2**20)
        rows.append(ref)
        for factory in args.factories:
            before = rss_mb()
            t_build, index = timed(lambda f=factory, t=texts, v=vectors, n=size: Index.build(
                model, t, args.work / f"{n}-{f.replace(',', '_')}", f, vectors=v))
            assert isinstance(index, Index)
            mem = rss_mb() - before
            _, found = index.search_vectors(q_vecs, 10)
            found_rows = found  # document rows are the corpus positions
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found_rows, exact_idx, strict=True)]))
            t256, _ = timed(lambda ix=index: ix.search_vectors(q_vecs[:256], 10), repeat=3)
            p50, p99, qps1 = latency(lambda q, ix=index: ix.search_vectors(q, 10), q_vecs, 500)
            params = index.meta.get("search_params")
            name = f"deepsem {factory}" + (f" ({params})" if params else " (exact: matmul + top-k)")
            rows.append({"index": name, "size": size, "build_s": t_build, "recall@10": recall,
                         "qps_batch256": 256 / t256, "p50_ms": p50, "p99_ms": p99, "qps_batch1": qps1,
                         "memory_mb": mem})
            if factory == "Flat":  # plain Faiss Flat, for the "pick the faster path" claim
                raw = index.faiss_index
                tf, _ = timed(lambda r=raw: r.search(q_vecs[:256], 10), repeat=3)
                p50, p99, qps1 = latency(lambda q, r=raw: r.search(q, 10), q_vecs, 500)
                rows.append({"index": "faiss Flat (not used: slower)", "size": size, "build_s": t_build,
                             "recall@10": 1.0, "qps_batch256": 256 / tf, "p50_ms": p50, "p99_ms": p99,
                             "qps_batch1": qps1, "memory_mb": mem})
            del index
        if args.lexical:
            rows += lexical_rows(model, texts, vectors, query_texts, q_vecs, args.work / f"{size}-HNSW32-lexical")
        print(f"{'index':<44} {'build s':>8} {'recall@10':>9} {'QPS b1':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'QPS b256':>9} {'ratio b256':>10} {'mem MB':>7}")
        for r in [r for r in rows if r["size"] == size]:
            print(f"{r['index']:<44} {r['build_s']:8.1f} {r['recall@10']:9.4f} {r['qps_batch1']:8.0f} "
                  f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['qps_batch256']:9.0f} "
                  f"{r['qps_batch256'] / ref['qps_batch256']:10.2f} {r['memory_mb']:7.0f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the run: {peak:,.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "peak_mb": peak}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
