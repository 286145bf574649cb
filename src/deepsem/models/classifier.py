"""A text classifier on top of any tower: text ids -> tower vector -> dropout -> linear logits.

Optionally (``ClassifierConfig.ngram_buckets > 0``) a bag of token n-grams sits next to the tower, as in
fastText (Joulin et al., 2017): the tokens and their hashed n-grams are embedded and averaged, and that
vector is concatenated to the tower's before the linear layer. Word order beyond the n-grams is the tower's
business; the bag adds cheap, directly learnt phrase features (character bigrams are close to words in
Chinese).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.config import ClassifierConfig
from deepsem.towers import build_tower

if TYPE_CHECKING:
    from deepsem.nn.onnx import Graph

#: Multiplier of the n-gram hash ``h = (h * P + id) mod buckets``, started from the order ``n``.
_PRIME = 1_000_003


class TextClassifier(nn.Module):
    """``forward(ids (B, T), lengths (B,)) -> logits (B, num_labels)``.

    The tower is any of :mod:`deepsem.towers` (``config.tower.encoder``); its ``output_dim`` tanh vector (and
    the n-gram bag's vector, if configured) feeds one linear layer. Logits go through a softmax (one label
    per text) or a sigmoid per label (``config.multi_label``); :meth:`probabilities` applies the right one.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tower = build_tower(c.tower)
        width = c.tower.output_dim
        self.ngrams: nn.Embedding | None = None
        if c.ngram_buckets > 0:
            # rows [0, vocab) are the tokens, [vocab, vocab + buckets) the hashed n-grams
            self.ngrams = nn.Embedding(c.tower.vocab_size + c.ngram_buckets, c.ngram_dim)
            nn.init.normal_(self.ngrams.weight, std=c.ngram_dim**-0.5)
            width += c.ngram_dim
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(width, c.num_labels)

    def ngram_ids(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of the n-gram table for every token and every n-gram of orders 2..``ngram_order``, ``(B, S)``,
        and a mask ``(B, S)`` of the ones inside each text."""
        c = self.config
        steps = ids.shape[1]
        positions = torch.arange(steps, device=ids.device)
        rows = [ids]
        masks = [positions[None, :] < lengths[:, None]]
        for n in range(2, c.ngram_order + 1):
            span = steps - n + 1
            if span <= 0:
                break
            h = torch.full_like(ids[:, :span], n)
            for k in range(n):
                h = (h * _PRIME + ids[:, k : k + span]) % c.ngram_buckets
            rows.append(h + c.tower.vocab_size)
            masks.append(positions[None, :span] + (n - 1) < lengths[:, None])
        return torch.cat(rows, 1), torch.cat(masks, 1)

    def ngram_vector(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """The mean embedding of the text's tokens and n-grams ``(B, ngram_dim)``."""
        assert self.ngrams is not None
        rows, mask = self.ngram_ids(ids, lengths)
        weights = mask.to(self.ngrams.weight.dtype)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)
        # a weighted sum per text in one kernel: never the (B, S, ngram_dim) tensor of every looked-up row
        return F.embedding_bag(rows, self.ngrams.weight, mode="sum", per_sample_weights=weights)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        features = self.tower(ids, lengths)
        if self.ngrams is not None:
            features = torch.cat([features, self.ngram_vector(ids, lengths)], dim=-1)
        return self.head(self.dropout(features))

    def onnx(self, g: Graph, ids: str, lengths: str) -> str:
        """:meth:`forward` in ONNX operators (:mod:`deepsem.nn.onnx`): the logits ``(B, num_labels)``."""
        features = self.tower.onnx(g, ids, lengths)  # type: ignore[operator]
        if self.ngrams is not None:
            features = g.op("Concat", features, self._onnx_ngram_vector(g, ids, lengths), axis=-1)
        return g.linear(features, self.head)

    def _onnx_ngram_vector(self, g: Graph, ids: str, lengths: str) -> str:
        """:meth:`ngram_vector` in ONNX operators: the n-gram hashes over slices whose end follows the length."""
        c = self.config
        i64 = np.int64
        steps = g.steps_of(ids)
        positions = g.op("Range", g.const(0, dtype=i64), steps, g.const(1, dtype=i64))
        rows, masks = [ids], [g.positions_mask(lengths, steps)]
        for n in range(2, c.ngram_order + 1):
            span = g.op("Max", g.op("Sub", steps, g.const(n - 1, dtype=i64)), g.const(0, dtype=i64))
            h = g.op("Mul", g.op("Cast", g.op("Slice", ids, g.const([0]), g.op("Unsqueeze", span, g.const([0])),
                                              g.const([1])), to=7), g.const(0, dtype=i64))
            h = g.op("Add", h, g.const(n, dtype=i64))
            for k in range(n):
                window = g.op("Slice", ids, g.const([k]),
                              g.op("Unsqueeze", g.op("Add", span, g.const(k, dtype=i64)), g.const([0])), g.const([1]))
                h = g.op("Mod", g.op("Add", g.op("Mul", h, g.const(_PRIME, dtype=i64)), window),
                         g.const(c.ngram_buckets, dtype=i64))
            rows.append(g.op("Add", h, g.const(c.tower.vocab_size, dtype=i64)))
            first = g.op("Slice", positions, g.const([0]), g.op("Unsqueeze", span, g.const([0])), g.const([0]))
            masks.append(g.op("Less", g.op("Unsqueeze", g.op("Add", first, g.const(n - 1, dtype=i64)), g.const([0])),
                              g.op("Unsqueeze", lengths, g.const([1]))))
        weights = g.op("Cast", g.op("Concat", *masks, axis=1), to=1)
        total = g.op("Max", g.op("ReduceSum", weights, g.const([1]), keepdims=1), g.const(np.float32(1.0)))
        weights = g.op("Div", weights, total)
        table = g.const(self.ngrams.weight, "ngrams")  # type: ignore[union-attr]
        rows_all = g.op("Gather", table, g.op("Concat", *rows, axis=1))
        return g.op("ReduceSum", g.op("Mul", rows_all, g.op("Unsqueeze", weights, g.const([2]))), g.const([1]),
                    keepdims=0)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax over labels, or an independent sigmoid per label for multi-label models."""
        return logits.sigmoid() if self.config.multi_label else logits.softmax(-1)
