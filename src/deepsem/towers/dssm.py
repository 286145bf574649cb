"""The DSSM tower (Huang et al., 2013): a bag of letter trigrams -> tanh layers, 30k -> 300 -> 300 -> 128.

The input layer multiplies the text's trigram count vector (as wide as the trigram vocabulary) by ``W_1``.
That vector is never built: ``W_1 x`` is the sum of the columns of ``W_1`` for the trigrams the text holds,
an :class:`torch.nn.EmbeddingBag` sum over the flat trigram ids (padding, ``[UNK]`` and word separators
weigh 0). Word order is lost by design; the CNN and recurrent towers keep it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from deepsem.text.trigram import SEPARATOR_ID
from deepsem.towers.registry import TensorSizes, TowerSpec, register, widths

if TYPE_CHECKING:
    from deepsem.config import TowerConfig
    from deepsem.nn.onnx import Graph


class DSSMTower(nn.Module):
    """Trigram ids ``(B, T)`` (the ``trigram`` tokenizer) and lengths -> vectors ``(B, output_dim)``.

    ``hidden_size`` and ``num_layers`` are the width and number of the hidden tanh layers (the paper: 300, 2);
    ``embedding_dropout`` drops whole trigram occurrences while training, ``dropout`` acts before each layer
    after the first.
    """

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = c = config
        hidden, layers = widths(c)
        self.word_hashing = nn.EmbeddingBag(c.vocab_size, hidden, mode="sum")  # the columns of W_1
        bound = math.sqrt(6.0 / (c.vocab_size + hidden))  # Xavier-uniform on the 30k x 300 matrix, as the paper
        nn.init.uniform_(self.word_hashing.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(hidden, c.output_dim)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        counts = (ids > SEPARATOR_ID).to(self.bias.dtype)  # 1 per real trigram occurrence
        if self.training and self.config.embedding_dropout > 0:
            counts = counts * torch.bernoulli(torch.full_like(counts, 1.0 - self.config.embedding_dropout))
        x = torch.tanh(self.word_hashing(ids, per_sample_weights=counts) + self.bias)
        for layer in self.hidden:
            x = torch.tanh(layer(self.dropout(x)))
        return torch.tanh(self.proj(self.dropout(x)))

    def onnx(self, g: Graph, ids: str, lengths: str) -> str:
        """This tower in ONNX operators (:mod:`deepsem.nn.onnx`): the bag sum as a gather and a weighted sum."""
        counts = g.op("Cast", g.op("Greater", ids, g.const(SEPARATOR_ID, dtype=np.int64)), to=1)
        rows = g.op("Gather", g.const(self.word_hashing.weight, "word_hashing"), ids)
        summed = g.op("ReduceSum", g.op("Mul", rows, g.op("Unsqueeze", counts, g.const([2]))), g.const([1]),
                      keepdims=0)
        x = g.op("Tanh", g.op("Add", summed, g.const(self.bias, "bias")))
        for layer in self.hidden:
            assert isinstance(layer, nn.Linear)
            x = g.op("Tanh", g.linear(x, layer))
        return g.op("Tanh", g.linear(x, self.proj))


def dssm_sizes(c: TowerConfig, prefix: str = "") -> TensorSizes:
    """The DSSM tower's weight matrices: the word-hashing layer, the hidden layers, the semantic layer."""
    v, h, layers, o = c.vocab_size, int(c.hidden_size or 1), int(c.num_layers or 1), c.output_dim
    return [(f"{prefix}vocab_size x hidden_size ({v:,} x {h:,})", v * h),
            *[(f"{prefix}hidden layer {k} (hidden_size^2)", h * h) for k in range(layers - 1)],
            (f"{prefix}hidden_size x output_dim ({h:,} x {o:,})", h * o)]


register(TowerSpec("dssm", "bag of letter trigrams -> tanh layers (Huang et al. 2013)", DSSMTower, dssm_sizes,
                   hidden_size=300, num_layers=2, tokenizer="trigram"))
