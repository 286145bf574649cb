"""From texts to padded id tensors: a table of unique texts, pair sets that index it, and batches.

Texts are tokenised once; a pair set stores two integer indices per pair, so a document that occurs in
many pairs (common in click logs and question sets) is stored and tokenised once, and in-batch negatives
can tell two rows holding the same text apart from a real negative.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deepsem.text import Tokenizer


class TextTable:
    """Unique texts and their token ids, stored as one padded ``int32`` matrix and a lengths vector."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []
        self._index: dict[str, int] = {}
        self._ids: list[list[int]] = []
        self._matrix: np.ndarray | None = None
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str]) -> np.ndarray:
        """Add texts (deduplicated); return the row index of each."""
        new = [t for t in dict.fromkeys(texts) if t not in self._index]
        for t in new:
            self._index[t] = len(self.texts)
            self.texts.append(t)
        if new:
            self._ids.extend(self.tokenizer.encode_batch(new))
            self._matrix = None
        return np.fromiter((self._index[t] for t in texts), dtype=np.int64, count=len(texts))

    def _freeze(self) -> None:
        if self._matrix is None:
            lengths = np.fromiter((len(x) for x in self._ids), dtype=np.int64, count=len(self._ids))
            width = int(lengths.max()) if len(lengths) else 1
            matrix = np.zeros((len(self._ids), width), dtype=np.int32)
            for row, ids in enumerate(self._ids):
                matrix[row, : len(ids)] = ids
            self._matrix, self._lengths = matrix, lengths

    def batch(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        """Padded ids ``(B, T)`` trimmed to the longest row of the batch, and lengths ``(B,)``."""
        self._freeze()
        assert self._matrix is not None and self._lengths is not None
        lengths = self._lengths[rows]
        width = max(int(lengths.max()), 1)
        return torch.from_numpy(self._matrix[rows, :width].astype(np.int64)), torch.from_numpy(lengths)


@dataclass
class PairSet:
    """Pairs as row indices into a :class:`TextTable`, with float labels (1.0 = relevant)."""

    table: TextTable
    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_texts(
        cls, table: TextTable, text_a: Sequence[str], text_b: Sequence[str], labels: Sequence[float] | None
    ) -> PairSet:
        lab = np.ones(len(text_a), np.float32) if labels is None else np.asarray(labels, np.float32)
        return cls(table, table.add(text_a), table.add(text_b), lab)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
        """Index arrays of pairs; shuffled when ``rng`` is given, in order otherwise."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def encode_texts(
    model: torch.nn.Module, tokenizer: Tokenizer, texts: Sequence[str], side: str = "query", batch_size: int = 512
) -> np.ndarray:
    """L2-normalised vectors ``(N, dim)`` float32 of ``texts``; batches are length-sorted for speed."""
    ids = tokenizer.encode_batch(list(texts))
    order = np.argsort([len(x) for x in ids], kind="stable")
    dim = model.config.tower.output_dim  # type: ignore[union-attr]
    out = np.zeros((len(ids), dim), dtype=np.float32)
    was_training = model.training
    if was_training:  # switching modes walks every submodule: ~0.1 ms, a tenth of encoding one short query
        model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            lengths = torch.tensor([len(ids[r]) for r in rows])
            batch = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
            for i, r in enumerate(rows):
                batch[i, : len(ids[r])] = torch.tensor(ids[r])
            out[rows] = model.encode(batch, lengths, side).float().numpy()  # type: ignore[operator]
    if was_training:
        model.train()
    return out
