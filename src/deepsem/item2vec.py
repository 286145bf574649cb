"""Item2Vec (Barkan & Koenigstein 2016): skip-gram with negative sampling over users' item sequences (gensim).

Items a user interacts with close together in time get close vectors. Used two ways:

* a recommender on its own (:meth:`ItemVectors.scorer`): a user is the mean of the normalised vectors of the
  last ``last_n`` items of the history; items are ranked by cosine to it;
* the initialisation of the two-tower model's item-id embeddings (:meth:`ItemVectors.copy_into`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepsem.data.interactions import SequenceSplit

logger = logging.getLogger(__name__)


@dataclass
class ItemVectors:
    """``items[i]`` has the vector ``matrix[i]`` (float32)."""

    items: list[str]
    matrix: np.ndarray

    def normalised(self) -> np.ndarray:
        norms = np.linalg.norm(self.matrix, axis=1, keepdims=True)
        return self.matrix / np.maximum(norms, 1e-12)

    def aligned(self, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised vectors in the order of ``items`` (zero rows for unknown items) and the found mask."""
        index = {item: i for i, item in enumerate(self.items)}
        unit = self.normalised()
        out = np.zeros((len(items), self.matrix.shape[1]), dtype=np.float32)
        found = np.zeros(len(items), dtype=bool)
        for row, item in enumerate(items):
            i = index.get(str(item))
            if i is not None:
                out[row] = unit[i]
                found[row] = True
        return out, found

    def scorer(self, split: SequenceSplit, last_n: int = 10
               ) -> Callable[[Sequence[int], Sequence[np.ndarray]], np.ndarray]:  # an evaluation Scorer
        """Scores of every item of ``split`` for a history: cosine to the mean of its last ``last_n`` items."""
        vectors, _ = self.aligned([str(i) for i in range(len(split.items))])
        popularity = split.train_counts().astype(np.float64)
        popularity = popularity / max(1.0, popularity.sum())

        def score(users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
            out = np.tile(popularity, (len(users), 1))
            for row, hist in enumerate(histories):
                if len(hist):
                    user = vectors[np.asarray(hist)[-last_n:]].mean(0)
                    if np.any(user):
                        out[row] = vectors @ user
            return out

        return score

    def copy_into(self, weight: torch.Tensor, items: Sequence[str]) -> int:
        """Copy the vectors of ``items`` (row ``i + 1`` of ``weight`` is ``items[i]``; row 0 is padding) into the
        embedding matrix, scaled to the mean norm of its current rows. Returns how many were found."""
        if weight.shape[1] != self.matrix.shape[1]:
            raise ValueError(f"item vectors have dimension {self.matrix.shape[1]}, the embedding {weight.shape[1]}")
        if weight.shape[0] != len(items) + 1:
            raise ValueError(f"{len(items)} items for an embedding of {weight.shape[0]} rows (row 0 is padding)")
        vectors, found = self.aligned(items)
        rows = torch.from_numpy(np.flatnonzero(found) + 1)
        with torch.no_grad():
            target = weight[1:].norm(dim=1).mean()
            weight[rows] = torch.from_numpy(vectors[found]).to(weight.dtype) * target
        return int(found.sum())


def train_item2vec(sequences: Sequence[Sequence[int | str]], dim: int = 64, window: int = 5, epochs: int = 10,
                   negative: int = 5, min_count: int = 1, sample: float = 0.0, ns_exponent: float = 0.75,
                   seed: int = 13, workers: int = 1) -> ItemVectors:
    """Skip-gram over item sequences (each user's items in time order). Deterministic with ``workers=1``.

    ``sample``: word2vec's down-sampling of frequent tokens, off by default (a catalogue is far smaller than a
    vocabulary, so almost every item counts as frequent and would be dropped); ``ns_exponent``: the exponent of
    the negative-sampling distribution (0.75 in word2vec; Caselles-Dupré et al. 2018 find other values better
    for recommendation, so it is worth tuning)."""
    try:
        from gensim.models import Word2Vec
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Item2Vec needs gensim: pip install 'deepsem[embeddings]'") from exc
    sentences = [[str(i) for i in seq] for seq in sequences if len(seq)]
    if not sentences:
        raise ValueError("no item sequences to learn from")
    model = Word2Vec(sentences=sentences, vector_size=dim, window=window, min_count=min_count, sg=1,
                     negative=negative, sample=sample, ns_exponent=ns_exponent, epochs=epochs, seed=seed,
                     workers=workers)
    items = list(model.wv.index_to_key)
    return ItemVectors(items, np.asarray(model.wv.vectors, dtype=np.float32))
