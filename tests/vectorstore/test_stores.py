"""The vector stores against each other and against the exact kernel: same answers, removal, files, training."""

from pathlib import Path

import numpy as np
import pytest

from deepsem.errors import IndexFileError, ModelFileError
from deepsem.vectorstore import STORES, ExactStore, FaissStore, VectorStore, exact_search

DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    docs = _unit(rng, 300)
    ids = np.arange(300, dtype=np.int64) * 3 + 5  # ids are not positions
    return docs, ids, _unit(rng, 12)


def _filled(name: str, docs: np.ndarray, ids: np.ndarray) -> VectorStore:
    store = FaissStore.create(DIM) if name == "faiss" else ExactStore(DIM)
    store.add(docs[:100], ids[:100])
    store.add(docs[100:], ids[100:])
    return store


def _reference(queries: np.ndarray, docs: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A full sort of every inner product: the independent answer."""
    scores = queries @ docs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def test_both_stores_are_vector_stores_and_registered() -> None:
    assert set(STORES) == {"faiss", "exact", "qdrant"}  # qdrant: tests/vectorstore/test_qdrant_store.py
    for store in (FaissStore.create(DIM), FaissStore.create(DIM, id_map=False), ExactStore(DIM)):
        assert isinstance(store, VectorStore)
        assert store.dim == DIM and len(store) == 0
    assert not isinstance(np.zeros(3), VectorStore)


@pytest.mark.parametrize("name", ["faiss", "exact"])
def test_search_equals_a_full_sort_and_the_kernel(name: str, data) -> None:
    docs, ids, queries = data
    store = _filled(name, docs, ids)
    assert len(store) == 300
    scores, found = store.search(queries, 10)
    want_scores, want_ids = _reference(queries, docs, ids, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    _, pos = exact_search(queries, docs, 10)
    np.testing.assert_array_equal(found, ids[pos])


def test_the_faiss_store_answers_as_faiss_itself(data) -> None:
    docs, ids, queries = data
    store = _filled("faiss", docs, ids)
    assert isinstance(store, FaissStore)
    np.testing.assert_array_equal(store.search(queries, 10)[1], store.search_native(queries, 10)[1])
    flat = FaissStore.create(DIM, id_map=False)  # the recommender's shape: ids are positions
    flat.add(docs, np.arange(len(docs)))
    np.testing.assert_array_equal(flat.search(queries, 10)[1], _reference(queries, docs, np.arange(300), 10)[1])
    np.testing.assert_array_equal(flat.reconstruct(np.array([7, 2])), docs[[7, 2]])
    assert sorted(store.ids().tolist()) == ids.tolist() and flat.ids().tolist() == list(range(300))
    assert (flat.ntotal, flat.d) == (300, DIM)  # the raw index's members, as when the recommender returned it


@pytest.mark.parametrize("name", ["faiss", "exact"])
def test_missing_results_are_minus_one(name: str, data) -> None:
    docs, ids, queries = data
    store = _filled(name, docs[:3], ids[:3])
    scores, found = store.search(queries[:2], 5)
    assert found.shape == (2, 5) and (found[:, 3:] == -1).all() and set(found[0, :3]) == set(ids[:3])
    assert (scores[:, :3] > -2).all()


@pytest.mark.parametrize("name", ["faiss", "exact"])
def test_remove_then_search(name: str, data) -> None:
    docs, ids, queries = data
    store = _filled(name, docs, ids)
    _, before = store.search(queries, 5)
    gone = np.unique(before[:, :2])
    assert store.remove(gone) == len(gone)
    assert store.remove(gone) == 0
    assert len(store) == 300 - len(gone)
    keep = ~np.isin(ids, gone)
    _, found = store.search(queries, 5)
    assert not np.isin(found, gone).any()
    np.testing.assert_array_equal(found, _reference(queries, docs[keep], ids[keep], 5)[1])


@pytest.mark.parametrize("name", ["faiss", "exact"])
def test_save_load_round_trip_and_reconstruct(name: str, data, tmp_path: Path) -> None:
    docs, ids, queries = data
    store = _filled(name, docs, ids)
    store.save(tmp_path / "store")
    loaded = type(store).load(tmp_path / "store")
    assert isinstance(loaded, VectorStore) and len(loaded) == 300 and loaded.dim == DIM
    for a, b in zip(store.search(queries, 7), loaded.search(queries, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    pick = ids[[5, 0, 299, 42]]
    np.testing.assert_array_equal(loaded.reconstruct(pick), docs[[5, 0, 299, 42]])


def test_an_ivf_store_trains_and_searches_every_list_exactly(data, tmp_path: Path) -> None:
    docs, ids, queries = data
    store = FaissStore.create(DIM, "IVF4,Flat", "nprobe=4")  # every list probed: exact answers
    assert store.needs_training
    store.train(docs)
    assert not store.needs_training
    store.add(docs, ids)
    np.testing.assert_array_equal(store.search(queries, 10)[1], _reference(queries, docs, ids, 10)[1])
    np.testing.assert_allclose(store.reconstruct(ids[[3, 200]]), docs[[3, 200]], atol=1e-6)
    assert store.remove(ids[:10]) == 10 and len(store) == 290
    assert not np.isin(store.search(queries, 10)[1], ids[:10]).any()
    store.save(tmp_path / "ivf.faiss")
    loaded = FaissStore.load(tmp_path / "ivf.faiss", DIM)
    loaded.set_search_params("nprobe=4")
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], store.search(queries, 10)[1])


def test_bad_factories_and_parameters_say_why() -> None:
    with pytest.raises(ValueError, match="bad Faiss factory string 'Nonsense7'"):
        FaissStore.create(DIM, "Nonsense7")
    with pytest.raises(ValueError, match="search_params 'efSearch=3' do not fit Flat"):
        FaissStore.create(DIM, "Flat", "efSearch=3")
    flat = FaissStore.create(DIM, id_map=False)
    with pytest.raises(ValueError, match="in order"):
        flat.add(np.zeros((2, DIM), np.float32), np.array([5, 6]))
    with pytest.raises(ValueError, match="only grows"):
        flat.remove(np.array([0]))


def test_faiss_files_of_the_wrong_kind_are_refused(data, tmp_path: Path) -> None:
    docs, ids, _ = data
    mapped, flat = FaissStore.create(DIM), FaissStore.create(DIM, id_map=False)
    mapped.add(docs[:4], ids[:4])
    flat.add(docs[:4], np.arange(4))
    mapped.save(tmp_path / "mapped.faiss")
    flat.save(tmp_path / "flat.faiss")
    with pytest.raises(IndexFileError, match="IndexFlatIP, not the IndexIDMap2"):
        FaissStore.load(tmp_path / "flat.faiss")
    with pytest.raises(ModelFileError, match="IndexIDMap2, not the flat inner-product index deepsem writes; redo"):
        FaissStore.load(tmp_path / "mapped.faiss", id_map=False, error=ModelFileError, remedy="redo")
    with pytest.raises(IndexFileError, match="dimension 16, expected 8"):
        FaissStore.load(tmp_path / "mapped.faiss", 8)
    (tmp_path / "junk.faiss").write_bytes(b"\0" * 64)
    with pytest.raises(IndexFileError, match=r"junk\.faiss: unreadable Faiss index"):
        FaissStore.load(tmp_path / "junk.faiss")
    with pytest.raises(IndexFileError, match="not a regular file"):
        FaissStore.load(tmp_path)
    assert len(FaissStore.load(tmp_path / "flat.faiss", DIM, id_map=False)) == 4


def test_exact_store_files_are_checked_and_never_unpickled(data, tmp_path: Path) -> None:
    docs, ids, _ = data
    store = ExactStore(DIM)
    store.add(docs[:4], ids[:4])
    store.save(tmp_path / "s")
    np.save(tmp_path / "s" / "ids.npy", np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(IndexFileError, match=r"ids\.npy: not a NumPy \.npy array file"):
        ExactStore.load(tmp_path / "s")
    np.save(tmp_path / "s" / "ids.npy", np.array([1, 1, 2, 3]))
    with pytest.raises(IndexFileError, match="the same id twice"):
        ExactStore.load(tmp_path / "s")
    np.save(tmp_path / "s" / "ids.npy", np.array([1, 2, 3]))
    with pytest.raises(IndexFileError, match="shape"):
        ExactStore.load(tmp_path / "s")
    with pytest.raises(ValueError, match="new to the store"):
        store.add(docs[:1], ids[:1])
