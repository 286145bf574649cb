"""The Faiss store: any Faiss index factory string, inner product, the only module of deepsem that calls Faiss.

Two shapes of file, both as deepsem has always written them: an ``IndexIDMap2`` around the factory's index (an
:class:`~deepsem.index.Index`'s ``index.faiss``: ids are document rows) and a bare ``IndexFlatIP`` whose ids are
the positions 0..n-1 (a recommender's ``items.faiss``). A flat store inside an ID map is searched with
:func:`~deepsem.vectorstore.exact.exact_search` (a chunked matmul + top-k beats Faiss Flat at every batch size).
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.errors import IndexFileError
from deepsem.fileio import atomic_write
from deepsem.vectorstore.base import pad_results
from deepsem.vectorstore.exact import exact_search

_FAISS_WHERE = re.compile(r"\.(?:cpp|h):\d+: ")


def _faiss() -> Any:
    import faiss

    return faiss


def faiss_cause(exc: BaseException) -> str:
    """One line saying why: the OS reason, or a Faiss message without its C++ source location."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = _FAISS_WHERE.split(text.strip())[-1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def default_search_params(factory: str) -> str:
    """Faiss search parameters that give high recall@10 for a factory (measured in bench/search.py)."""
    if "HNSW" in factory:
        return "efSearch=128"
    if factory.startswith("IVF"):
        return "nprobe=32"
    return ""


class FaissStore:
    """A :class:`~deepsem.vectorstore.base.VectorStore` on a Faiss index (``index``: the raw Faiss object)."""

    def __init__(self, index: Any) -> None:
        faiss = _faiss()
        self.index = index
        self.mapped = isinstance(index, faiss.IndexIDMap2)
        inner = faiss.downcast_index(index.index) if self.mapped else index
        self._exact = self.mapped and isinstance(inner, faiss.IndexFlat)
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # (ids, vectors) of an exact store, read once
        self._position: dict[int, int] | None = None

    def __getattr__(self, name: str) -> Any:
        """Anything else is the raw Faiss index's (``ntotal``, ``d``, ...): code written when a recommender's
        ``index()`` returned the Faiss index itself keeps working."""
        if name == "index":  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        return getattr(self.index, name)

    @classmethod
    def create(cls, dim: int, factory: str = "Flat", search_params: str = "", *, id_map: bool = True) -> FaissStore:
        """An empty store of ``factory`` (a Faiss index factory string: "Flat", "HNSW32", "IVF1024,Flat",
        "IVF256,PQ16", ...) on inner product. ``id_map=False`` (flat only): ids are the positions 0..n-1.
        A bad factory or parameters are a ``ValueError`` saying why."""
        faiss = _faiss()
        if not id_map:
            if factory != "Flat":
                raise ValueError(f"a store without an id map is flat, not {factory!r}")
            return cls(faiss.IndexFlatIP(dim))
        try:
            base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"bad Faiss factory string {factory!r}: {faiss_cause(exc)}") from None
        store = cls(faiss.IndexIDMap2(base))
        if search_params:
            try:
                store.set_search_params(search_params)
            except ValueError as exc:
                raise ValueError(f"search_params {search_params!r} do not fit {factory}: {exc}") from None
        return store

    def set_search_params(self, params: str) -> None:
        """Faiss run-time parameters ("efSearch=128", "nprobe=32"); ones the index lacks are a ``ValueError``."""
        try:
            _faiss().ParameterSpace().set_index_parameters(self.index, params)
        except RuntimeError as exc:
            raise ValueError(faiss_cause(exc)) from None

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        """True until :meth:`train` has run, for factories that learn from data (IVF, PQ)."""
        return not self.index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.mapped:
            self.index.add_with_ids(vectors, ids)
        else:
            if not np.array_equal(ids, np.arange(len(self), len(self) + len(vectors))):
                raise ValueError("a store without an id map takes the ids len(store), len(store) + 1, ... in order")
            self.index.add(vectors)
        self._flat = self._position = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._exact:
            ids, vectors = self._flat_vectors()
            scores, pos = exact_search(queries, vectors, k)
            return pad_results(scores, ids[pos], k)
        scores, ids = self.index.search(queries, k)
        return scores, ids

    def search_native(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` by Faiss itself, even for a flat store (what recall is measured on)."""
        return self.index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)

    def _flat_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is None:
            faiss = _faiss()
            inner = faiss.downcast_index(self.index.index)
            vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            self._flat = (ids, np.array(vectors, copy=True))
        return self._flat

    def ids(self) -> np.ndarray:
        """Every id in the store (the positions, without an id map)."""
        if not self.mapped:
            return np.arange(len(self), dtype=np.int64)
        return _faiss().vector_to_array(self.index.id_map).astype(np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
        if self._exact:
            stored, vectors = self._flat_vectors()
            if self._position is None:
                self._position = {int(r): j for j, r in enumerate(stored)}
            return vectors[[self._position[int(r)] for r in keys]]
        if not self.mapped:
            if len(keys) and keys.min() == 0 and np.array_equal(keys, np.arange(len(keys))):
                return self.index.reconstruct_n(0, len(keys))
            return np.stack([self.index.reconstruct(int(i)) for i in keys]) if len(keys) else np.zeros(
                (0, self.dim), np.float32)
        try:
            return self.index.reconstruct_batch(keys)
        except RuntimeError:  # an IVF index reconstructs only with its direct map
            _faiss().extract_index_ivf(self.index.index).make_direct_map()
            return self.index.reconstruct_batch(keys)

    def remove(self, ids: np.ndarray) -> int:
        if not self.mapped:
            raise ValueError("a store without an id map only grows (its ids are positions)")
        faiss = _faiss()
        try:
            removed = int(self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))
        except RuntimeError:  # an IVF index removes only with a hashed direct map (or none)
            ivf = faiss.extract_index_ivf(self.index.index)
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
            removed = int(self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))
        self._flat = self._position = None
        return removed

    def save(self, path: str | Path) -> None:
        faiss = _faiss()
        atomic_write(path, lambda p: faiss.write_index(self.index, str(p)))

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None, *, id_map: bool = True,
             error: type[Exception] = IndexFileError, remedy: str = "") -> FaissStore:
        """Read a Faiss file as deepsem writes it: an ``IndexIDMap2`` (``id_map``) or a flat inner-product index,
        of ``dim``-wide vectors when ``dim`` is given. Anything else, a truncated or garbage file included, is an
        ``error`` naming the file and the cause; ``remedy`` ends the messages of a file the caller can rebuild."""
        faiss = _faiss()
        path = Path(path)
        tail = f"; {remedy}" if remedy else ""
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise error(f"{path}: cannot read the Faiss index: {faiss_cause(exc)}") from None
        if not stat.S_ISREG(mode):
            raise error(f"{path}: the Faiss index is not a regular file")
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, MemoryError, OSError) as exc:
            if id_map:
                raise error(f"{path}: unreadable Faiss index: {faiss_cause(exc)}{tail}") from None
            raise error(f"{path}: not a readable Faiss index ({str(exc).splitlines()[-1][:200]}){tail}") from None
        if id_map and not isinstance(index, faiss.IndexIDMap2):
            raise error(f"{path}: a Faiss {type(index).__name__}, not the IndexIDMap2 deepsem writes{tail}")
        if not id_map and (not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT):
            raise error(f"{path}: a {type(index).__name__}, not the flat inner-product index deepsem writes{tail}")
        if dim is not None and index.d != dim:
            raise error(f"{path}: vectors of dimension {index.d}, expected {dim}{tail}")
        return cls(index)
