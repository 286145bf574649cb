"""Qdrant against Faiss Flat: the same top-10 on 10k vectors, and search latency of both on 100k in one run.

    python bench/qdrant.py --index runs/soak/index-100000 --out bench/results/qdrant.json
    python bench/qdrant.py --index runs/soak/index-100000 --qdrant-url http://localhost:6333   # a server too

Vectors: the document vectors of ``--index`` (a deepsem index on Faiss Flat or HNSW, which keep the full vectors:
read back with ``reconstruct``), the first ``--latency-size`` of them; without ``--index``, seeded random unit
vectors of ``--dim``. Queries: ``--queries`` of those vectors picked at random, plus Gaussian noise (sigma 0.05)
and renormalised, so that a query is near, not on, a document.

Stores compared, all through deepsem's :mod:`deepsem.vectorstore` (what an :class:`~deepsem.index.Index` calls):

- ``faiss-flat``: FaissStore "Flat" (exact inner product).
- ``qdrant-embedded``: QdrantStore in qdrant-client's embedded mode, in memory. This is a pure-Python/NumPy
  brute force inside this process (qdrant-client warns above 20k points), not the Qdrant engine; it is what the
  tests use. Its on-disk variant (``--qdrant-path``) also commits and fsyncs every point on its own, about 5 ms a
  point on a disk: the build time is reported for the in-memory one only.
- ``qdrant-edge`` (when qdrant-edge-py is installed): the Qdrant engine itself in process (its Rust shard: segments,
  HNSW with its defaults, the optimizer run after the upsert), searched one query per request.
- ``qdrant-server`` (with ``--qdrant-url``): the Qdrant engine (HNSW, its defaults: m=16, ef_construct=100) in a
  fresh collection, dropped afterwards; latency is timed once the collection's optimizer has finished (status
  green). The API key, if any, is read from ``QDRANT_API_KEY``.

Measured: identity on ``--identity-size`` (10k), and again on the ``--latency-size`` set (an HNSW index is
approximate there): per query, whether the top-10 ids equal Faiss Flat's (ties
aside: a differing id must have Faiss's score at that rank within 1e-5) and the largest score difference.
Latency on ``--latency-size`` (100k): one query at a time (p50 / p99 over ``--queries`` queries) and batched
(``--batch`` queries a request, p50 / p99 per batch and queries/s), after ``--warmup`` untimed searches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.index import Index
from deepsem.vectorstore import FaissStore, QdrantStore


def load_vectors(index: Path | None, size: int, dim: int, seed: int) -> tuple[np.ndarray, str]:
    """``size`` document vectors: from a deepsem index, else random unit vectors; and what they are."""
    if index is None:
        x = np.random.default_rng(seed).standard_normal((size, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), f"random unit vectors (dim {dim}, seed {seed})"
    idx = Index.load(index)
    rows = np.array(sorted(r for batch in idx.store.iter_live() for r, _, _, _ in batch), np.int64)
    if len(rows) < size:
        sys.exit(f"{index} holds {len(rows)} documents; --latency-size is {size}")
    vectors = np.concatenate([idx.vectors.reconstruct(rows[i : i + 10_000]) for i in range(0, size, 10_000)])[:size]
    return vectors.astype(np.float32), f"document vectors of {index} ({idx.factory}, dim {vectors.shape[1]})"


def make_queries(docs: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    q = docs[rng.choice(len(docs), size=n, replace=False)] + rng.normal(0, 0.05, (n, docs.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def fill(store: Any, docs: np.ndarray) -> float:
    t0 = time.perf_counter()
    store.add(docs, np.arange(len(docs), dtype=np.int64))
    return time.perf_counter() - t0


def wait_green(store: QdrantStore, limit_s: float = 1800.0) -> float:
    """Seconds until the server's collection is indexed (status green)."""
    t0 = time.perf_counter()
    while str(store.client.get_collection(store.collection).status).lower().endswith("yellow") or \
            str(store.client.get_collection(store.collection).status).lower().endswith("grey"):
        if time.perf_counter() - t0 > limit_s:
            break
        time.sleep(0.5)
    return time.perf_counter() - t0


def identity(store: Any, reference: tuple[np.ndarray, np.ndarray], queries: np.ndarray, k: int = 10,
             tol: float = 1e-5) -> dict[str, Any]:
    want_scores, want_ids = reference
    scores, ids = store.search(queries, k)
    same = 0
    for s, i, ws, wi in zip(scores, ids, want_scores, want_ids, strict=True):
        close = np.abs(s - ws) <= tol
        same += bool(close.all() and all(a == b or c for a, b, c in zip(i, wi, close, strict=True)))
    return {"queries": len(queries), "identical_top10": same, "identical_share": same / len(queries),
            "max_score_diff": float(np.max(np.abs(scores - want_scores)))}


def latency(store: Any, queries: np.ndarray, batch: int, warmup: int, k: int = 10) -> dict[str, Any]:
    for q in queries[:warmup]:
        store.search(q[None], k)
    single = []
    for q in queries:
        t0 = time.perf_counter()
        store.search(q[None], k)
        single.append(time.perf_counter() - t0)
    batched = []
    for start in range(0, len(queries) - batch + 1, batch):
        t0 = time.perf_counter()
        store.search(queries[start : start + batch], k)
        batched.append(time.perf_counter() - t0)
    out = {"single_p50_ms": 1e3 * float(np.percentile(single, 50)),
           "single_p99_ms": 1e3 * float(np.percentile(single, 99)), "single_qps": len(single) / sum(single)}
    if batched:
        out |= {"batch": batch, "batch_p50_ms": 1e3 * float(np.percentile(batched, 50)),
                "batch_p99_ms": 1e3 * float(np.percentile(batched, 99)),
                "batched_qps": batch * len(batched) / sum(batched)}
    return out


class EdgeStore:
    """The Qdrant engine itself in process (qdrant-edge-py, a Rust binding of Qdrant's shard: its segments, HNSW
    index (defaults m=16, ef_construct=100) and optimizer), behind the two calls the bench makes; not a deepsem store.
    ``add`` upserts, then runs the optimizer (which builds the HNSW index) so that search is timed on the index."""

    def __init__(self, dim: int) -> None:
        import tempfile

        import qdrant_edge as edge

        self.edge, self.dir = edge, tempfile.TemporaryDirectory(prefix="deepsem-edge-")
        config = edge.EdgeConfig(vectors={"": edge.EdgeVectorParams(size=dim, distance=edge.Distance.Dot)})
        self.shard = edge.EdgeShard.create(self.dir.name, config)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        edge = self.edge
        for start in range(0, len(vectors), 2000):
            self.shard.update(edge.UpdateOperation.upsert_points(
                [edge.Point(int(i), v.tolist(), {}) for i, v in zip(ids[start : start + 2000],
                                                                    vectors[start : start + 2000], strict=True)]))
        self.shard.optimize()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        edge = self.edge
        scores, ids = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        for row, q in enumerate(queries):
            hits = self.shard.query(edge.QueryRequest(limit=k, query=edge.Query.Nearest(q.tolist())))
            for j, h in enumerate(hits):
                scores[row, j], ids[row, j] = h.score, int(h.id)
        return scores, ids

    def close(self) -> None:
        self.shard.close()
        self.dir.cleanup()


def stores(dim: int, url: str | None) -> dict[str, Any]:
    made: dict[str, Any] = {"faiss-flat": FaissStore.create(dim, "Flat"), "qdrant-embedded": QdrantStore.create(dim)}
    with contextlib.suppress(ImportError):  # qdrant-edge-py (the test extra) not installed: the engine is left out
        made["qdrant-edge"] = EdgeStore(dim)
    if url is not None:
        made["qdrant-server"] = QdrantStore.create(dim, url=url, collection=f"deepsem-bench-{uuid.uuid4().hex[:8]}",
                                                   api_key=os.environ.get("QDRANT_API_KEY"))
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="A deepsem index (Faiss Flat/HNSW) whose vectors to use.")
    ap.add_argument("--dim", type=int, default=64, help="Width of random vectors (without --index).")
    ap.add_argument("--identity-size", type=int, default=10_000)
    ap.add_argument("--latency-size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--qdrant-url", help="Also measure a Qdrant server or cluster (e.g. http://localhost:6333).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="Write the results as JSON here.")
    args = ap.parse_args()

    docs, source = load_vectors(args.index, args.latency_size, args.dim, args.seed)
    dim = docs.shape[1]
    queries = make_queries(docs, args.queries, args.seed)
    result: dict[str, Any] = {"vectors": source, "queries": f"{args.queries} documents + N(0, 0.05) noise",
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "identity": {},
                              "latency": {}, "build_s": {}}
    print(f"{source}; {args.queries} queries", flush=True)

    small = docs[: args.identity_size]
    made = stores(dim, args.qdrant_url)
    try:
        for store in made.values():
            fill(store, small)
        if "qdrant-server" in made:
            wait_green(made["qdrant-server"])
        reference = made["faiss-flat"].search(queries, 10)
        for name, store in made.items():
            if name != "faiss-flat":
                result["identity"][name] = identity(store, reference, queries)
                print(f"identity on {len(small):,}: {name} vs faiss-flat: {result['identity'][name]}", flush=True)
    finally:
        for name, store in made.items():
            if isinstance(store, QdrantStore | EdgeStore):
                if name == "qdrant-server":
                    store.drop()
                store.close()

    made = stores(dim, args.qdrant_url)
    try:
        for name, store in made.items():
            result["build_s"][name] = round(fill(store, docs), 2)
            if name == "qdrant-server":
                result["build_s"]["qdrant-server-indexing"] = round(wait_green(store), 2)
            print(f"{name}: {len(docs):,} vectors added in {result['build_s'][name]} s", flush=True)
        reference = made["faiss-flat"].search(queries, 10)
        result["identity_at_latency_size"] = {}
        for name, store in made.items():
            if name != "faiss-flat":  # an HNSW index (the engine's) is approximate: its top-10 against exact search
                result["identity_at_latency_size"][name] = identity(store, reference, queries)
            result["latency"][name] = latency(store, queries, args.batch, args.warmup)
            print(f"latency on {len(docs):,}: {name}: {result['latency'][name]}", flush=True)
    finally:
        for name, store in made.items():
            if isinstance(store, QdrantStore | EdgeStore):
                if name == "qdrant-server":
                    store.drop()
                store.close()

    print(f"\n| store | identical top-10 on {len(small):,} | on {len(docs):,} | single p50 / p99 ms "
          f"| batch {args.batch} p50 / p99 ms | batched q/s |")
    print("|---|---|---|---|---|---|")
    for name, lat in result["latency"].items():
        ident, big = result["identity"].get(name), result["identity_at_latency_size"].get(name)
        same = "reference" if ident is None else f"{ident['identical_top10']}/{ident['queries']}"
        same += " | reference" if big is None else f" | {big['identical_top10']}/{big['queries']}"
        batch = (f"{lat['batch_p50_ms']:.2f} / {lat['batch_p99_ms']:.2f}" if "batch" in lat else "-")
        print(f"| {name} | {same} | {lat['single_p50_ms']:.2f} / {lat['single_p99_ms']:.2f} | {batch} | "
              f"{lat.get('batched_qps', float('nan')):.0f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
