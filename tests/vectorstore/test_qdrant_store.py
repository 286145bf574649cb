"""The Qdrant store (embedded mode, no server) against the exact store and Faiss Flat, and its descriptor file."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from deepsem.errors import ConfigError, IndexFileError
from deepsem.vectorstore import ExactStore, FaissStore, QdrantStore, VectorStore

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    ids = np.arange(200, dtype=np.int64) * 5 + 2  # ids are not positions
    return _unit(rng, 200), ids, _unit(rng, 6)


def _reference(queries: np.ndarray, docs: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A full sort of every inner product: the independent answer."""
    scores = queries @ docs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def _same_ranking(scores: np.ndarray, found: np.ndarray, want_scores: np.ndarray, want_ids: np.ndarray,
                  queries: np.ndarray, docs: np.ndarray, ids: np.ndarray, tol: float = 1e-5) -> None:
    """Same scores within ``tol``, same ids except where the reference ties (scores within ``tol``), and every
    returned id's score is its true inner product."""
    np.testing.assert_allclose(scores, want_scores, atol=tol)
    row_of = {int(i): j for j, i in enumerate(ids)}
    true = np.array([[queries[q] @ docs[row_of[int(i)]] for i in row] for q, row in enumerate(found)])
    np.testing.assert_allclose(scores, true, atol=tol)
    gaps = np.diff(want_scores, axis=1)
    tied = np.zeros(want_scores.shape, bool)
    tied[:, 1:] |= gaps > -tol
    tied[:, :-1] |= gaps > -tol
    assert (found[~tied] == want_ids[~tied]).all()


def test_same_top10_as_exact_and_faiss_flat_on_10k() -> None:
    rng = np.random.default_rng(2026)
    docs, queries = _unit(rng, 10_000, 64), _unit(rng, 50, 64)
    ids = rng.permutation(10_000 * 3)[:10_000].astype(np.int64)
    store = QdrantStore.create(64)
    store.add(docs, ids)
    assert len(store) == 10_000
    scores, found = store.search(queries, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, 10)
    want_scores, want_ids = _reference(queries, docs, ids, 10)
    _same_ranking(scores, found, want_scores, want_ids, queries, docs, ids)
    for other in (ExactStore(64), FaissStore.create(64, "Flat")):
        other.add(docs, ids)
        other_scores, other_ids = other.search(queries, 10)
        _same_ranking(scores, found, other_scores, other_ids, queries, docs, ids)
    store.close()


def test_a_vector_store_that_imports_without_qdrant_client(monkeypatch: pytest.MonkeyPatch) -> None:
    store = QdrantStore.create(DIM)
    assert isinstance(store, VectorStore) and store.dim == DIM and len(store) == 0
    assert store.collection.startswith("deepsem-")
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'deepsem\[qdrant\]'"):
        QdrantStore.create(DIM)
    code = ("import sys; sys.modules['qdrant_client'] = None; import deepsem, deepsem.vectorstore as v; "
            "print(v.QdrantStore.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "QdrantStore"


def test_add_remove_reconstruct_len(data) -> None:
    docs, ids, queries = data
    store = QdrantStore.create(DIM)
    store.add(docs[:150], ids[:150])
    store.add(docs[150:], ids[150:])
    assert len(store) == 200
    pick = ids[[7, 0, 199, 42]]
    np.testing.assert_array_equal(store.reconstruct(pick), docs[[7, 0, 199, 42]])
    assert store.reconstruct(np.zeros(0, np.int64)).shape == (0, DIM)
    _, before = store.search(queries, 5)
    gone = np.unique(before[:, :2])
    assert store.remove(np.concatenate([gone, [10**9, -1]])) == len(gone)  # absent ids count nothing
    assert store.remove(gone) == 0
    assert len(store) == 200 - len(gone)
    with pytest.raises(KeyError, match=f"id {gone[0]} is not in the store"):
        store.reconstruct(gone[:1])
    keep = ~np.isin(ids, gone)
    scores, found = store.search(queries, 5)
    assert not np.isin(found, gone).any()
    want_scores, want_ids = _reference(queries, docs[keep], ids[keep], 5)
    _same_ranking(scores, found, want_scores, want_ids, queries, docs, ids)
    store.add(docs[:1] * -1, gone[:1])  # a removed id may come back, with a new vector
    np.testing.assert_array_equal(store.reconstruct(gone[:1]), -docs[:1])


def test_bad_additions_are_refused_and_leave_the_store_unchanged(data) -> None:
    docs, ids, _ = data
    store = QdrantStore.create(DIM)
    store.add(docs[:10], ids[:10])
    with pytest.raises(ValueError, match="new to the store and distinct"):
        store.add(docs[10:12], ids[[9, 10]])  # one already there
    with pytest.raises(ValueError, match="new to the store and distinct"):
        store.add(docs[10:12], ids[[10, 10]])
    with pytest.raises(ValueError, match="the store holds width 16"):
        store.add(docs[10:12, :8], ids[10:12])
    with pytest.raises(ValueError, match="2 ids for vectors of shape"):
        store.add(docs[10:13], ids[10:12])
    bad = docs[10:12].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.add(bad, ids[10:12])
    with pytest.raises(ValueError, match="id -3 is negative"):
        store.add(docs[10:12], np.array([5000, -3]))
    with pytest.raises(ValueError, match="1 payloads for 2 vectors"):
        store.add(docs[10:12], ids[10:12], payloads=[{"a": 1}])
    with pytest.raises(ValueError, match="queries of shape"):
        store.search(docs[:2, :8], 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        store.search(docs[:2], 0)
    assert len(store) == 10
    np.testing.assert_array_equal(store.reconstruct(ids[:10]), docs[:10])
    with pytest.raises(ValueError, match="already has a collection"):
        store.sibling(store.collection)
    with pytest.raises(ValueError, match=r"collection name '\.\./x'"):
        QdrantStore.create(DIM, collection="../x")


def test_k_larger_than_the_store_is_padded(data) -> None:
    docs, ids, queries = data
    store = QdrantStore.create(DIM)
    scores, found = store.search(queries[:2], 4)  # empty
    assert (found == -1).all() and np.isneginf(scores).all() and found.shape == (2, 4)
    store.add(docs[:3], ids[:3])
    scores, found = store.search(queries[:2], 5)
    want_scores, want_ids = _reference(queries[:2], docs[:3], ids[:3], 3)
    assert found.shape == scores.shape == (2, 5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    np.testing.assert_array_equal(found[:, :3], want_ids)
    np.testing.assert_allclose(scores[:, :3], want_scores, atol=1e-5)


def test_a_filter_searches_the_matching_payloads_only(data) -> None:
    docs, ids, queries = data
    langs = np.array(["en", "de", "fr", "en"])[np.arange(200) % 4]
    store = QdrantStore.create(DIM)
    store.add(docs, ids, payloads=[{"lang": str(lang), "year": 2000 + i % 3} for i, lang in enumerate(langs)])
    assert store.payloads(ids[[0, 1]]) == [{"lang": "en", "year": 2000}, {"lang": "de", "year": 2001}]
    for where, keep in (({"lang": "en"}, langs == "en"),
                        ({"lang": ["de", "fr"]}, np.isin(langs, ["de", "fr"])),
                        ({"lang": "en", "year": 2001}, (langs == "en") & (np.arange(200) % 3 == 1))):
        scores, found = store.search(queries, 7, filter=where)
        want_scores, want_ids = _reference(queries, docs[keep], ids[keep], 7)
        _same_ranking(scores, found, want_scores, want_ids, queries, docs, ids)
    _, none = store.search(queries, 3, filter={"lang": "xx"})
    assert (none == -1).all()
    with pytest.raises(ValueError, match="filter field 'lang'"):
        store.search(queries, 3, filter={"lang": {"nested": 1}})  # type: ignore[dict-item]


def test_an_alias_moves_atomically_to_a_rebuilt_collection(data) -> None:
    docs, ids, queries = data
    old = QdrantStore.create(DIM)
    old.add(docs[:100], ids[:100])
    assert old.point_alias("live") is None
    live = QdrantStore(old.client, "live", DIM)  # what readers open: the alias
    np.testing.assert_array_equal(live.search(queries, 5)[1], _reference(queries, docs[:100], ids[:100], 5)[1])
    new = old.sibling()
    new.add(docs[100:], ids[100:])
    assert new.point_alias("live") == old.collection
    assert len(live) == 100
    np.testing.assert_array_equal(live.search(queries, 5)[1], _reference(queries, docs[100:], ids[100:], 5)[1])
    old.drop()
    assert not old.client.collection_exists(old.collection) and len(live) == 100


def test_save_load_round_trip_on_a_local_directory(data, tmp_path: Path) -> None:
    docs, ids, queries = data
    home = tmp_path / "index"
    store = QdrantStore.create(DIM, path=home / "qdrant", collection="docs")
    store.add(docs, ids)
    store.save(home / "store.json")
    spec = json.loads((home / "store.json").read_text())
    assert spec["path"] == "qdrant" and spec["url"] is None and spec["collection"] == "docs" and spec["dim"] == DIM
    answer = store.search(queries, 8)
    code = ("import sys; from deepsem.vectorstore import QdrantStore\n"
            "try:\n    QdrantStore.load(sys.argv[1])\nexcept Exception as exc:\n    print(exc)")
    other = subprocess.run([sys.executable, "-c", code, str(home / "store.json")], capture_output=True, text=True,
                           timeout=120)
    assert "already accessed by another instance" in other.stdout  # embedded mode: one process per directory
    with QdrantStore.load(home / "store.json") as again:  # this process: the stores share one client
        assert again.client is store.client and len(again) == 200
    assert len(store) == 200  # closing the other store left the shared client open
    store.close()
    store.close()  # twice is harmless
    shutil.move(home, tmp_path / "moved")  # the descriptor and its directory travel together
    with QdrantStore.load(tmp_path / "moved" / "store.json") as loaded:
        assert isinstance(loaded, VectorStore) and len(loaded) == 200 and loaded.dim == DIM
        np.testing.assert_array_equal(loaded.reconstruct(ids), docs)
        for a, b in zip(answer, loaded.search(queries, 8), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="in-memory Qdrant store has nothing to reconnect to"):
        QdrantStore.create(DIM).save(tmp_path / "mem.json")


GOOD = {"format": "deepsem-qdrant-store", "version": 1, "url": None, "path": "qdrant", "collection": "docs", "dim": DIM}


@pytest.mark.parametrize(("change", "message"), [
    ("not json {", "not valid JSON"),
    ([1, 2], "not a Qdrant store descriptor"),
    ({"format": "faiss"}, "field 'format' is 'faiss'"),
    ({"version": 9}, "field 'version' is 9"),
    ({"dim": "16"}, "field 'dim' is '16'"),
    ({"dim": True}, "field 'dim' is True"),
    ({"dim": 0}, "field 'dim' is 0"),
    ({"collection": "../etc"}, "field 'collection' is '../etc'"),
    ({"path": 7}, "field 'path' is 7"),
    ({"url": "http://x:6333"}, "exactly one of the fields 'url' and 'path'"),
    ({"path": None}, "exactly one of the fields 'url' and 'path'"),
    ({"path": "elsewhere"}, "field 'path': the Qdrant directory"),
    ({"collection": "other"}, "cannot read collection 'other'"),
    ({"dim": 8}, "holds 16-wide vectors under Dot, the descriptor says 8-wide"),
])
def test_a_damaged_descriptor_is_refused_naming_file_and_field(data, tmp_path: Path, change, message: str) -> None:
    docs, ids, _ = data
    with QdrantStore.create(DIM, path=tmp_path / "qdrant", collection="docs") as store:
        store.add(docs[:5], ids[:5])
    target = tmp_path / "store.json"
    if isinstance(change, dict):
        target.write_text(json.dumps({**GOOD, **change}))
    else:
        target.write_text(change if isinstance(change, str) else json.dumps(change))
    with pytest.raises(IndexFileError, match=message) as info:
        QdrantStore.load(target)
    assert str(target) in str(info.value)
    target.write_text(json.dumps(GOOD))
    with QdrantStore.load(target) as loaded:  # the refusals left the directory usable
        assert len(loaded) == 5


def test_a_damaged_or_foreign_local_directory_is_refused(data, tmp_path: Path) -> None:
    docs, ids, _ = data
    with QdrantStore.create(DIM, path=tmp_path / "qdrant", collection="docs") as store:
        store.add(docs[:5], ids[:5])
        store.save(tmp_path / "store.json")
    (tmp_path / "qdrant" / "meta.json").write_text('{"collections": {"docs": {"vectors": "x"}}}')
    with pytest.raises(IndexFileError, match=r"store\.json: cannot open Qdrant at .*qdrant: "):
        QdrantStore.load(tmp_path / "store.json")
    (tmp_path / "qdrant" / "meta.json").unlink()
    with pytest.raises(IndexFileError, match="not a Qdrant local storage directory"):
        QdrantStore.load(tmp_path / "store.json")
    assert not (tmp_path / "qdrant" / "meta.json").exists()  # nothing written into a directory it refused


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "store.json"
    target.write_text(json.dumps({**GOOD, "path": None, "url": "http://127.0.0.1:9"}))  # nothing listens on 9
    with pytest.raises(IndexFileError, match=r"cannot read collection 'docs' at http"):
        QdrantStore.load(target)
    with pytest.raises(ConfigError, match=r"cannot create a collection in Qdrant at http://127\.0\.0\.1:9: "):
        QdrantStore.create(DIM, url="http://127.0.0.1:9")


PAYLOADS = [{"x": 1}, {"x": 1.0}, {"x": True}, {"x": "1"}, {"x": [1, 2]}, {"x": False}, {"x": 0}, {}, {"x": None},
            {"x": 2.5}, {"x": "a", "y": "b"}, {"x": ["a"]}, {"x.y": "a"}, {"x": {"y": 1}}, {"x": 0.0}, {"x": 2**60}]


@pytest.mark.parametrize("value", [1, 1.0, True, False, 0, "1", "a", 2.5, 2**60, None, [1, 2]])
def test_an_equality_filter_keeps_what_python_equality_keeps(value) -> None:
    from deepsem.vectorstore.qdrant_store import exact_condition

    rng = np.random.default_rng(3)
    with QdrantStore.create(DIM) as store:
        store.add(_unit(rng, len(PAYLOADS)), np.arange(len(PAYLOADS)), payloads=PAYLOADS)
        _, found = store.search(_unit(rng, 1), len(PAYLOADS), equal={"x": value})
    kept = {int(i) for i in found[0] if i >= 0}
    python = {i for i, p in enumerate(PAYLOADS) if "x" in p and p["x"] == value}
    assert python <= kept  # never a point Python keeps left out
    lists = {i for i, p in enumerate(PAYLOADS) if isinstance(p.get("x"), list | dict)}
    if exact_condition("x", value):  # evaluated by Qdrant: only list payloads holding the value may be extra
        assert kept - python <= lists
    else:  # not sent to Qdrant: nothing filtered
        assert len(kept) == len(PAYLOADS)
    assert not exact_condition("x.y", "a") and not exact_condition("x", float("nan"))
