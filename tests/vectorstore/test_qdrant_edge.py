"""The real Qdrant engine in process (qdrant-edge-py, a Rust binding; skipped where it is not installed) against
Faiss Flat and Python's equality: the filters deepsem sends (:func:`equality_filter`) mean on the engine what they
mean in qdrant-client's embedded mode, and its top-10 is Faiss Flat's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

edge = pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from qdrant_client.http import models  # noqa: E402

from deepsem.vectorstore import FaissStore  # noqa: E402
from deepsem.vectorstore.qdrant_store import equality_filter  # noqa: E402

DIM = 16
PAYLOADS = [{"x": 1}, {"x": 1.0}, {"x": "1"}, {"x": [1, 2]}, {"x": 0}, {}, {"x": None}, {"x": 2.5}, {"x": "a"},
            {"x": ["a"]}, {"x": 2}, {"x": 0.0}, {"x": "b"}]


def _edge_filter(where: Any) -> Any:
    """qdrant-client's filter model as the edge binding's (the same Qdrant filter, built with its classes)."""
    if isinstance(where, models.Filter):
        return edge.Filter(must=[_edge_filter(c) for c in where.must or []] or None,
                           should=[_edge_filter(c) for c in where.should or []] or None)
    if where.range is not None:
        return edge.FieldCondition(key=where.key, range=edge.RangeFloat(gte=where.range.gte, lte=where.range.lte))
    return edge.FieldCondition(key=where.key, match=edge.MatchValue(where.match.value))


def _shard(tmp_path: Path, vectors: np.ndarray, payloads: list[dict[str, Any]]) -> Any:
    config = edge.EdgeConfig(vectors={"": edge.EdgeVectorParams(size=vectors.shape[1], distance=edge.Distance.Dot)})
    shard = edge.EdgeShard.create(str(tmp_path), config)
    shard.update(edge.UpdateOperation.upsert_points(
        [edge.Point(i, v.tolist(), p) for i, (v, p) in enumerate(zip(vectors, payloads, strict=True))]))
    return shard


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# booleans are left out: the binding takes MatchValue(True) as the integer 1 (Python's bool is an int)
@pytest.mark.parametrize("value", [1, 1.0, 0, "1", "a", 2.5, 2])
def test_the_engine_keeps_what_python_equality_keeps(tmp_path: Path, value: Any) -> None:
    rng = np.random.default_rng(5)
    shard = _shard(tmp_path, _unit(rng, len(PAYLOADS)), PAYLOADS)
    where = equality_filter({"x": value})
    request = edge.QueryRequest(limit=len(PAYLOADS), query=edge.Query.Nearest(_unit(rng, 1)[0].tolist()),
                                filter=_edge_filter(where))
    kept = {int(p.id) for p in shard.query(request)}
    python = {i for i, p in enumerate(PAYLOADS) if "x" in p and p["x"] == value}
    lists = {i for i, p in enumerate(PAYLOADS) if isinstance(p.get("x"), list)}
    assert python <= kept and kept - python <= lists  # a list holding the value also matches (Qdrant's rule)
    shard.close()


def test_the_engine_top10_is_faiss_flat(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    docs, queries = _unit(rng, 3000), _unit(rng, 20)
    shard = _shard(tmp_path, docs, [{"n": i % 3} for i in range(len(docs))])
    faiss = FaissStore.create(DIM, "Flat")
    faiss.add(docs, np.arange(len(docs), dtype=np.int64))
    want_scores, want_ids = faiss.search(queries, 10)
    for q, ws, wi in zip(queries, want_scores, want_ids, strict=True):
        hits = shard.query(edge.QueryRequest(limit=10, query=edge.Query.Nearest(q.tolist())))
        np.testing.assert_allclose([h.score for h in hits], ws, atol=1e-5)
        assert [int(h.id) for h in hits] == wi.tolist()  # random vectors: no ties
    shard.close()
