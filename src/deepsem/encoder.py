"""The encoder a user holds after training or loading: texts in, L2-normalised float32 vectors out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from deepsem.data.batches import encode_texts
from deepsem.io import load_model_dir, read_config, save_model_dir
from deepsem.models import TwoTowerModel
from deepsem.text import Tokenizer

if TYPE_CHECKING:
    from deepsem.classification import Classifier
    from deepsem.recommend import Recommender


class SemanticModel:
    """A trained two-tower model with its tokenizer.

    >>> model = deepsem.load("runs/bq")                       # doctest: +SKIP
    >>> model.encode(["怎么还款", "如何还钱"]).shape            # doctest: +SKIP
    (2, 128)
    >>> model.similarity("怎么还款", "如何还钱")                # doctest: +SKIP
    0.93
    """

    def __init__(self, model: TwoTowerModel, tokenizer: Tokenizer, info: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = dict(info or {})

    @classmethod
    def load(cls, directory: str | Path) -> SemanticModel:
        model, tokenizer, config = load_model_dir(directory)
        return cls(model, tokenizer, config)

    def save(self, directory: str | Path) -> Path:
        extra = {k: v for k, v in self.info.items() if k not in ("deepsem_version", "task", "model")}
        return save_model_dir(directory, self.model, self.tokenizer, extra)

    @property
    def dim(self) -> int:
        return self.model.config.tower.output_dim

    @property
    def threshold(self) -> float | None:
        """The cosine above which a pair is predicted relevant (chosen on dev data at training time)."""
        return self.model.config.threshold

    def encode(self, texts: str | Sequence[str], batch_size: int = 512, side: str = "query") -> np.ndarray:
        """Vectors ``(N, dim)`` (or ``(dim,)`` for one string), float32, L2-normalised.

        ``side`` picks the tower: "query" or "doc" (the same tower when the model shares them).
        """
        if side not in ("query", "doc"):
            raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
        if isinstance(texts, str):
            return self.encode([texts], batch_size, side)[0]
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return encode_texts(self.model, self.tokenizer, texts, side=side, batch_size=batch_size)

    @overload
    def similarity(self, a: str, b: str) -> float: ...
    @overload
    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...
    def similarity(self, a: str | Sequence[str], b: str | Sequence[str]) -> float | np.ndarray:
        """Cosine relevance R(a, b): of one pair, or of aligned lists of texts (query side a, doc side b)."""
        if isinstance(a, str) and isinstance(b, str):
            return float(self.similarity([a], [b])[0])
        if isinstance(a, str) or isinstance(b, str) or len(a) != len(b):
            raise ValueError("similarity takes two strings or two lists of the same length")
        return (self.encode(a, side="query") * self.encode(b, side="doc")).sum(-1)

    def __repr__(self) -> str:
        c = self.model.config.tower
        return (f"SemanticModel(encoder={c.encoder!r}, tokenizer={self.tokenizer.name!r}, "
                f"vocab={c.vocab_size}, dim={c.output_dim})")


def load(directory: str | Path) -> SemanticModel | Classifier | Recommender:
    """Load a model directory written by ``deepsem train`` / :func:`deepsem.train` (a :class:`SemanticModel`),
    by ``deepsem classify train`` / :func:`deepsem.classification.train_classifier` (a
    :class:`~deepsem.classification.Classifier`) or by ``deepsem recommend train`` /
    :func:`deepsem.recommend.train_recommender` (a :class:`~deepsem.recommend.Recommender`): ``config.json``'s
    ``task`` tells which."""
    task = read_config(directory)["task"]
    if task == "classifier":
        from deepsem.classification import Classifier

        return Classifier.load(directory)
    if task == "recommender":
        from deepsem.recommend import Recommender

        return Recommender.load(directory)
    return SemanticModel.load(directory)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
