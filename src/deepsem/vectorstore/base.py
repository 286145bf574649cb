"""The :class:`VectorStore` protocol: where vectors live, keyed by integer ids, searched by inner product.

A store is what an :class:`~deepsem.index.Index` or a recommender's item index talks to; nothing above
:mod:`deepsem.vectorstore` calls a vector library itself. A new backend (Milvus, ...) is one module with a class
that has these members, plus one entry in :data:`deepsem.vectorstore.STORES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorStore(Protocol):
    """Vectors of width :attr:`dim` under int64 ids, searched by inner product (cosine on L2-normalised vectors)."""

    @property
    def dim(self) -> int:
        """The width of every vector."""
        ...

    def __len__(self) -> int:
        """How many vectors the store holds."""
        ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``(n, dim)`` float32 ``vectors`` under ``ids`` (``(n,)`` int64, not yet in the store)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, both ``(n_queries, k)``, best first; ids are -1 where fewer than ``k`` exist."""
        ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, ``(n, dim)`` (lossy for compressed stores)."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors of ``ids``; returns how many were there."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the store to ``path`` atomically."""
        ...

    @classmethod
    def load(cls, path: str | Path) -> VectorStore:
        """Read a store :meth:`save` wrote, checked: a damaged file is a :class:`~deepsem.errors.DeepsemError`."""
        ...


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``scores``/``ids`` widened to ``k`` columns: -inf scores and -1 ids where fewer than ``k`` were found."""
    missing = k - ids.shape[1]
    if missing <= 0:
        return scores, ids
    n = ids.shape[0]
    return (np.concatenate([scores, np.full((n, missing), -np.inf, np.float32)], 1).astype(np.float32),
            np.concatenate([ids, np.full((n, missing), -1, np.int64)], 1))
