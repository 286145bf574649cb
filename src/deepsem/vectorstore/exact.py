"""Exact (brute-force) nearest-neighbour search by inner product, in chunks of queries and documents."""

from __future__ import annotations

import numpy as np
import torch


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
