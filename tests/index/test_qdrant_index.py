"""An index whose vectors are in Qdrant (embedded local mode, no server) against the same index on Faiss Flat:
same top-10 with and without filters, add, delete, rebuild (alias moved, old collection dropped), the CLI and the
service."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_pairs

pytest.importorskip("qdrant_client")

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.errors import IndexFileError
from deepsem.index import Document, Index, QdrantTarget
from deepsem.index import vector_index as vi
from deepsem.serve import create_app
from deepsem.vectorstore import QdrantStore

N = 10_000
LANGS = ("en", "zh", "fr")


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _meta(i: int) -> dict[str, Any]:
    """Metadata of document i: strings, integers, booleans, floats; a nested key and a list in some."""
    meta: dict[str, Any] = {"lang": LANGS[i % 3], "parity": i % 2, "flag": i % 5 == 0, "score": float(i % 4) / 2}
    if i % 7 == 0:
        meta["tags"] = ["x", "y"]
    if i % 11 == 0:
        meta["a.b"] = "dotted"
    return meta


def _fast_dir() -> Path:
    """A scratch directory on tmpfs where there is one: embedded Qdrant commits (and fsyncs) each point on its own,
    about 5 ms a point on a disk, 0.5 ms on tmpfs."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="deepsem-qdrant-", dir=shm if shm.is_dir() else None))


@pytest.fixture
def qdata() -> Iterator[Path]:
    where = _fast_dir()
    yield where / "qdrant"
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def module_qdata() -> Iterator[Path]:
    where = _fast_dir()
    yield where / "qdrant"
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path) -> tuple[Path, np.ndarray, Path]:
    """10k documents (texts are their ids: encoding is skipped with precomputed random unit vectors)."""
    from deepsem import load

    dim = load(trained_model_dir).dim
    home = tmp_path_factory.mktemp("qcorpus")
    path = home / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(N):
            fh.write(json.dumps({"id": f"d{i}", "text": f"document {i}", **_meta(i)}) + "\n")
    vectors = _unit(np.random.default_rng(7), N, dim)
    np.save(home / "vectors.npy", vectors)
    return path, vectors, home


@pytest.fixture(scope="module")
def pair(corpus, trained_model_dir: Path, module_qdata: Path) -> tuple[Index, Index]:
    """The same 10k documents and vectors in Faiss Flat and in Qdrant."""
    path, _, home = corpus
    faiss = Index.build(trained_model_dir, path, home / "faiss", "Flat", vectors=home / "vectors.npy")
    qdrant = Index.build(trained_model_dir, path, home / "qdrant", vectors=home / "vectors.npy",
                         qdrant=QdrantTarget(path=module_qdata))
    return faiss, qdrant


def _same_hits(qdrant: Index, faiss: Index, queries: Any, k: int = 10, where: dict[str, Any] | None = None,
               tol: float = 1e-5) -> list[list[Any]]:
    """Qdrant's hits against Faiss Flat's: the same scores rank by rank, the same ids except among equal scores
    (a different id must be one Faiss ranks with the same score, looked up in a longer Faiss list), the same
    metadata. Queries are texts or vectors. Returns Qdrant's hits."""
    def run(index: Index, n: int) -> list[list[Any]]:
        if isinstance(queries, np.ndarray):
            return index.search_encoded(queries, n, where)
        return index.search(queries, n, where)

    got, want, wider = run(qdrant, k), run(faiss, k), run(faiss, k + 50)
    for g, w, more in zip(got, want, wider, strict=True):
        assert len(g) == len(w)
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=tol)
        scores = {h.id: (h.score, h.metadata) for h in more}
        for rank, (a, b) in enumerate(zip(g, w, strict=True)):
            if a.id != b.id:
                assert a.id in scores and abs(scores[a.id][0] - a.score) <= tol, f"rank {rank}: {a.id} vs {b.id}"
            assert a.metadata == scores[a.id][1]
    return got


FILTERS = [None, {"lang": "zh"}, {"parity": 1}, {"lang": "en", "parity": 0}, {"flag": True}, {"score": 1.0},
           {"parity": True}, {"lang": "de"}, {"a.b": "dotted"}, {"tags": "x"}]


@pytest.mark.parametrize("where", FILTERS)
def test_same_top10_as_faiss_flat_on_10k(pair, corpus, where) -> None:
    faiss, qdrant = pair
    assert qdrant.in_qdrant and len(qdrant) == N and len(qdrant.vectors) == N
    queries = _unit(np.random.default_rng(1), 4 if where else 50, faiss.meta["dim"])
    got = _same_hits(qdrant, faiss, queries, 10, where)
    if where:  # Python's filter is the reference: every hit matches, as many as Faiss's path finds
        assert all(all(h.metadata.get(k) == v for k, v in where.items()) for row in got for h in row)
    if where == {"lang": "de"}:
        assert got == [[]] * 4


def test_filters_are_evaluated_by_qdrant(pair, monkeypatch: pytest.MonkeyPatch) -> None:
    _, qdrant = pair
    calls: list[tuple[int, Any]] = []
    search = QdrantStore.search

    def spy(self, queries, k, **kw):
        calls.append((k, kw.get("equal")))
        return search(self, queries, k, **kw)

    monkeypatch.setattr(QdrantStore, "search", spy)
    queries = _unit(np.random.default_rng(2), 3, qdrant.meta["dim"])
    hits = qdrant.search_encoded(queries, 10, {"lang": "fr", "parity": 1})
    assert calls == [(10, {"lang": "fr", "parity": 1})]  # k points asked for, the filter sent to Qdrant
    assert all(len(row) == 10 for row in hits)
    calls.clear()
    qdrant.search_encoded(queries, 10, {"a.b": "dotted", "lang": "en"})  # a dotted key is a path to Qdrant
    assert calls == [(1000, {"lang": "en"})]  # so it is checked in Python, over a wider candidate list


def test_add_delete_rebuild_follow_faiss(corpus, trained_model_dir: Path, tmp_path: Path, qdata: Path) -> None:
    texts = list(dict.fromkeys(t for a, b, _ in make_pairs(400, 5) for t in (a, b)))
    docs = [Document(f"d{i}", text, _meta(i)) for i, text in enumerate(texts[:300])]
    faiss = Index.build(trained_model_dir, docs, tmp_path / "f", "Flat")
    target = QdrantTarget(path=qdata, alias="small")
    qdrant = Index.build(trained_model_dir, docs, tmp_path / "q", qdrant=target)
    first = qdrant.vectors.collection
    assert first.startswith("small-") and qdrant.vectors.aliased("small") == first
    queries = [texts[i] for i in (1, 50, 299)]

    new = [Document(f"n{i}", text, {"lang": "zh", "parity": 0}) for i, text in enumerate(texts[300:320])]
    assert qdrant.add(new) == faiss.add(new) == 20
    assert len(qdrant.vectors) == 320 and qdrant.vectors.collection == first  # added into the live collection
    assert qdrant.vectors.payloads(np.array([300]))[0] == {"lang": "zh", "parity": 0}
    _same_hits(qdrant, faiss, queries)
    _same_hits(qdrant, faiss, queries, 10, {"lang": "zh"})

    gone = ["d1", "d50", "n3", "missing"]
    assert qdrant.delete(gone) == faiss.delete(gone) == 3
    assert len(qdrant.vectors) == 317  # the points left the collection
    got = _same_hits(qdrant, faiss, queries)
    assert not {h.id for row in got for h in row} & set(gone)

    reader = Index.load(tmp_path / "q")  # another reader of the version before the rebuild
    during: list[list[str]] = []

    def hook(step: str) -> None:
        if step == "build: documents stored":  # the new collection is filled, not yet published
            during.append([h.id for h in reader.search(queries[0], k=3)[0]])

    vi._fault_hook = hook
    try:
        qdrant.rebuild()
    finally:
        vi._fault_hook = None
    faiss.rebuild()
    second = qdrant.vectors.collection
    assert second != first and second.startswith("small-") and qdrant.vectors.aliased("small") == second
    assert not qdrant.vectors.client.collection_exists(first)  # the old collection is dropped
    assert len(during) == 1 and len(during[0]) == 3  # a search during the rebuild answered (old collection)
    _same_hits(reader, faiss, queries)  # the old reader follows the new version (its collection is gone)
    assert reader.version == qdrant.version
    _same_hits(qdrant, faiss, queries, 10, {"parity": 1})
    assert qdrant.stats()["qdrant"]["alias"] == "small" and qdrant.stats()["documents"] == 317
    with pytest.raises(ValueError, match="Faiss setting"):
        qdrant.rebuild("HNSW32")
    reader.close()
    qdrant.close()
    faiss.close()


def test_a_failed_build_drops_its_collection_and_another_index_cannot_take_the_alias(
        trained_model_dir: Path, tmp_path: Path, qdata: Path) -> None:
    target = QdrantTarget(path=qdata, alias="shared")
    docs = [Document(f"d{i}", f"text {i}", {"n": i}) for i in range(30)]
    one = Index.build(trained_model_dir, docs, tmp_path / "one", qdrant=target)
    with pytest.raises(IndexFileError, match="alias 'shared' already names the collection"):
        Index.build(trained_model_dir, docs, tmp_path / "two", qdrant=target)
    names = {c.name for c in one.vectors.client.get_collections().collections}
    assert names == {one.vectors.collection}  # the refused build's collection was dropped
    assert not (tmp_path / "two" / "CURRENT").exists()

    def boom(step: str) -> None:
        if step == "build: documents stored":
            raise RuntimeError("killed")

    vi._fault_hook = boom
    try:
        with pytest.raises(RuntimeError, match="killed"):
            Index.build(trained_model_dir, docs, tmp_path / "one", qdrant=target)  # a rebuild that fails
    finally:
        vi._fault_hook = None
    assert {c.name for c in one.vectors.client.get_collections().collections} == names
    assert len(one.search("text 3", k=5)[0]) == 5  # the index still answers from its collection
    with pytest.raises(ValueError, match="Faiss settings"):
        Index.build(trained_model_dir, docs, tmp_path / "three", "HNSW32", qdrant=target)
    one.close()


runner = CliRunner()


def test_cli_build_search_stats_and_the_service(corpus, pair, trained_model_dir: Path, tmp_path: Path,
                                                qdata: Path) -> None:
    path, _, home = corpus
    faiss, _ = pair
    idx = tmp_path / "products"
    build = ["index", "build", "--model", str(trained_model_dir), "--corpus", str(path), "--index", str(idx),
             "--vectors", str(home / "vectors.npy")]
    result = runner.invoke(app, [*build, "--qdrant-path", str(qdata)])
    assert result.exit_code == 0, result.output
    assert "indexed 10,000 documents with Qdrant collection deepsem-products-" in result.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--index", str(idx)]).output)
    assert stats["factory"] == "qdrant" and stats["qdrant"]["alias"] == "deepsem-products"

    result = runner.invoke(app, ["search", "--index", str(idx), "document 17", "document 4242", "-k", "10",
                                 "--json"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    want = faiss.search(["document 17", "document 4242"], k=10)
    for answer, hits in zip(answers, want, strict=True):
        np.testing.assert_allclose([r["score"] for r in answer["results"]], [h.score for h in hits], atol=1e-5)

    for bad, message in [(["--store", "qdrant"], "needs --qdrant-url URL"),
                         (["--store", "faiss", "--qdrant-path", "x"], "are for --store qdrant"),
                         (["--qdrant-url", "http://localhost:1", "--factory", "HNSW32"], "Faiss settings")]:
        result = runner.invoke(app, [*build[:-2], *bad])
        assert result.exit_code == 2 and message in result.output, result.output

    served = Index.load(idx)
    with TestClient(create_app(served, reload_interval_s=None)) as client, \
            TestClient(create_app(faiss, reload_interval_s=None)) as reference:
        for body in ({"queries": ["document 5", "document 9000"], "k": 10},
                     {"queries": "document 5", "k": 10, "filter": {"lang": "zh", "flag": False}},
                     {"queries": "document 5", "k": 10, "filter": {"score": 0.5}}):
            got, want_json = client.post("/search", json=body), reference.post("/search", json=body)
            assert got.status_code == want_json.status_code == 200, got.text
            for g, w in zip(got.json()["results"], want_json.json()["results"], strict=True):
                np.testing.assert_allclose([h["score"] for h in g], [h["score"] for h in w], atol=1e-5)
                assert all(h["metadata"]["lang"] == "zh" for h in g) or "filter" not in body or \
                    body["filter"] == {"score": 0.5}
    served.close()


def test_a_failed_add_takes_its_points_back_and_the_next_add_works(trained_model_dir: Path, tmp_path: Path,
                                                                    qdata: Path) -> None:
    texts = list(dict.fromkeys(t for a, b, _ in make_pairs(100, 8) for t in (a, b)))
    index = Index.build(trained_model_dir, [Document(f"d{i}", t) for i, t in enumerate(texts[:50])], tmp_path / "i",
                        qdrant=QdrantTarget(path=qdata))
    more = [Document(f"n{i}", t, {"new": True}) for i, t in enumerate(texts[50:60])]

    def boom(step: str) -> None:
        if step == "add: documents stored":  # the points are in the collection, the version is not published
            raise RuntimeError("killed")

    vi._fault_hook = boom
    try:
        with pytest.raises(RuntimeError, match="killed"):
            index.add(more)
    finally:
        vi._fault_hook = None
    assert len(index.vectors) == 50 and len(index) == 50  # the unpublished points were taken back
    index.vectors.add(np.zeros((1, index.meta["dim"]), np.float32) + 0.1, np.array([50]))  # as a killed add leaves
    assert index.add(more) == 10 and len(index.vectors) == 60  # the stale point under row 50 was replaced
    assert index.search(texts[55], k=1, filter={"new": True})[0][0].id == "n5"
    index.close()
