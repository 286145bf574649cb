"""Exact (brute-force) nearest-neighbour search by inner product: the chunked kernel and a store built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepsem.errors import IndexFileError
from deepsem.fileio import atomic_write
from deepsem.vectorstore.base import pad_results


def exact_search(queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products of each query row against every document row.

    Returns ``(scores, indices)``, both ``(n_queries, k')`` with ``k' = min(k, n_docs)``, best first.
    Documents are scanned in chunks of ``chunk`` rows, so memory stays ``O(n_queries * (chunk + k))``.
    """
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise ValueError(f"shapes do not match: queries {queries.shape}, docs {docs.shape}")
    k = min(k, docs.shape[0])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    d = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32))
    best_s = torch.full((q.shape[0], 0), float("-inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, d.shape[0], chunk):
            scores = q @ d[start : start + chunk].T
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            best_s = torch.cat([best_s, s], 1)
            best_i = torch.cat([best_i, i + start], 1)
            if best_s.shape[1] > k:
                best_s, pos = best_s.topk(k, dim=1)
                best_i = best_i.gather(1, pos)
    return best_s.numpy(), best_i.numpy()


class ExactStore:
    """A :class:`~deepsem.vectorstore.base.VectorStore` held as plain arrays and searched by :func:`exact_search`:
    exact answers, no training, no approximation. Saved as a directory of two ``.npy`` files (``vectors.npy``
    float32, ``ids.npy`` int64), read back without pickle."""

    VECTORS, IDS = "vectors.npy", "ids.npy"

    def __init__(self, dim: int, vectors: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._dim = dim
        self._vectors = np.zeros((0, dim), np.float32) if vectors is None else vectors
        self._ids = np.zeros(0, np.int64) if ids is None else ids

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if vectors.ndim != 2 or vectors.shape[1] != self._dim or len(vectors) != len(ids):
            raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}; the store holds width {self._dim}")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids).any():
            raise ValueError("ids must be new to the store and distinct")
        self._vectors = np.concatenate([self._vectors, vectors])
        self._ids = np.concatenate([self._ids, ids])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if not len(self._ids):
            return pad_results(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        scores, pos = exact_search(queries, self._vectors, k)
        return pad_results(scores, self._ids[pos], k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        position = {int(i): j for j, i in enumerate(self._ids)}
        try:
            return self._vectors[[position[int(i)] for i in np.asarray(ids).reshape(-1)]]
        except KeyError as exc:
            raise KeyError(f"id {exc.args[0]} is not in the store") from None

    def remove(self, ids: np.ndarray) -> int:
        gone = np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        self._vectors, self._ids = self._vectors[~gone], self._ids[~gone]
        return int(gone.sum())

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / self.IDS, lambda p: _save_npy(p, self._ids))
        atomic_write(path / self.VECTORS, lambda p: _save_npy(p, self._vectors))

    @classmethod
    def load(cls, path: str | Path, error: type[Exception] = IndexFileError) -> ExactStore:
        """Read a saved store, checked (shapes, dtypes, finite vectors, distinct ids); ``error`` is raised."""
        path = Path(path)
        arrays = []
        for name, kind in ((cls.VECTORS, "f"), (cls.IDS, "i")):
            try:
                array = np.load(path / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise error(f"{path / name}: not a NumPy .npy array file: {exc}") from None
            if array.dtype.kind != kind:
                raise error(f"{path / name}: dtype {array.dtype} is not what the store writes")
            arrays.append(array)
        vectors, ids = arrays
        if vectors.ndim != 2 or vectors.shape[1] < 1 or ids.shape != (len(vectors),):
            raise error(f"{path}: vectors of shape {vectors.shape} with ids of shape {ids.shape}")
        if not np.isfinite(vectors).all():
            raise error(f"{path / cls.VECTORS}: holds NaN or infinite values")
        if len(np.unique(ids)) != len(ids):
            raise error(f"{path / cls.IDS}: holds the same id twice")
        return cls(vectors.shape[1], vectors.astype(np.float32), ids.astype(np.int64))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
