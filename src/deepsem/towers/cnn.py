"""The CNN-DSSM / CLSM tower (Shen et al., 2014): words as letter-trigram vectors -> convolution over
word-trigram windows (300 feature maps) -> max pooling over time -> a 128-wide tanh semantic layer.

A window of three words concatenates their trigram count vectors ``[x_{t-1}; x_t; x_{t+1}]`` (three times
the trigram vocabulary wide) and the convolution multiplies it by ``W_c = [W_0 W_1 W_2]``, so
``W_c [x_{t-1}; x_t; x_{t+1}] = W_0 x_{t-1} + W_1 x_t + W_2 x_{t+1}``. Each ``W_k x`` is a sum of columns
over the word's trigrams: one :class:`torch.nn.EmbeddingBag` ``(V, 3C)`` holds ``[W_0 W_1 W_2]`` transposed
and sums it per word (the flat sequence marks words with the separator id), and the window sum is three
shifted slices. Words outside the text are zero vectors, so an n-word text has n windows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.text.trigram import SEPARATOR_ID
from deepsem.towers.registry import TensorSizes, TowerSpec, register, widths

if TYPE_CHECKING:
    from deepsem.config import TowerConfig
    from deepsem.nn.onnx import Graph

WINDOW = 3


class CNNTower(nn.Module):
    """Trigram ids ``(B, T)`` (the ``trigram`` tokenizer, words split by the separator) -> ``(B, output_dim)``.

    ``hidden_size`` is the number of convolution feature maps (the paper: 300).
    """

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = c = config
        maps, _ = widths(c)
        # [W_0 W_1 W_2]^T, one row a trigram; a word's rows are summed by the bag (its count vector times W)
        self.conv = nn.EmbeddingBag(c.vocab_size, WINDOW * maps, mode="sum")
        bound = math.sqrt(6.0 / (WINDOW * c.vocab_size + maps))
        nn.init.uniform_(self.conv.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(maps))
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(maps, c.output_dim)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        batch, steps = ids.shape
        maps, _ = widths(self.config)
        positions = torch.arange(steps, device=ids.device)
        real = positions[None, :] < lengths[:, None]
        word = (ids == SEPARATOR_ID).cumsum(1)  # word index of every position
        n_words = word.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1) + 1
        keep = (ids > SEPARATOR_ID) & real
        if self.training and self.config.embedding_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=ids.device) >= self.config.embedding_dropout)
        width = int(n_words.max())
        # one bag per (row, word) slot, in row-major order: the kept trigrams of a word are contiguous
        slot = (torch.arange(batch, device=ids.device)[:, None] * width + word)[keep]
        counts = torch.bincount(slot, minlength=batch * width)
        offsets = torch.cumsum(counts, 0) - counts
        # W_0 x, W_1 x, W_2 x of every word slot, each (B, n, C)
        before, centre, after = self.conv(ids[keep], offsets).view(batch, width, WINDOW, maps).unbind(2)
        # window t: W_0 x_{t-1} + W_1 x_t + W_2 x_{t+1}, with zero words outside the text
        conv = centre + F.pad(before, (0, 0, 1, 0))[:, :width] + F.pad(after, (0, 0, 0, 1))[:, 1:]
        h = torch.tanh(conv + self.bias)  # (B, n, C): one feature vector per word-trigram window
        valid = torch.arange(width, device=ids.device)[None, :] < n_words[:, None]
        pooled = h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)
        return torch.tanh(self.proj(self.dropout(pooled)))

    def onnx(self, g: Graph, ids: str, lengths: str) -> str:
        """This tower in ONNX operators (:mod:`deepsem.nn.onnx`): each word's bag is a one-hot (position ->
        word) matrix product instead of the flat bag of :meth:`forward`; the rest is the same."""
        maps, _ = widths(self.config)
        i64 = np.int64
        real = g.positions_mask(lengths, g.steps_of(ids))
        word = g.op("CumSum", g.op("Cast", g.op("Equal", ids, g.const(SEPARATOR_ID, dtype=i64)), to=7),
                    g.const(1, dtype=i64))
        last = g.op("Unsqueeze", g.op("Max", g.op("Sub", lengths, g.const(1, dtype=i64)), g.const(0, dtype=i64)),
                    g.const([1]))
        n_words = g.op("Add", g.op("Squeeze", g.op("GatherElements", word, last, axis=1), g.const([1])),
                       g.const(1, dtype=i64))
        width = g.op("ReduceMax", n_words, keepdims=0)
        keep = g.op("Cast", g.op("And", g.op("Greater", ids, g.const(SEPARATOR_ID, dtype=i64)), real), to=1)
        rows = g.op("Mul", g.op("Gather", g.const(self.conv.weight, "conv"), ids),
                    g.op("Unsqueeze", keep, g.const([2])))  # (B, T, 3C), zero where not kept
        one_hot = g.op("OneHot", word, width, g.const(np.array([0.0, 1.0], np.float32)), axis=-1)  # (B, T, n)
        bags = g.op("MatMul", g.op("Transpose", one_hot, perm=[0, 2, 1]), rows)  # (B, n, 3C)
        before, centre, after = g.op("Split", g.op("Reshape", bags, g.const([0, 0, WINDOW, maps])),
                                     g.const([1, 1, 1]), axis=2, outputs=3)
        shape = g.op("Shape", centre)  # (B, n, 1, C)

        def shifted(part: str, pads: list[int], start: int) -> str:  # the neighbour word's W_k x, zero outside
            padded = g.op("Pad", part, g.const(pads), g.const(np.float32(0.0)))
            ends = g.op("Add", g.op("Slice", shape, g.const([1]), g.const([2])), g.const([start]))
            return g.op("Slice", padded, g.const([start]), ends, g.const([1]))

        conv = g.op("Add", g.op("Add", centre, shifted(before, [0, 1, 0, 0, 0, 0, 0, 0], 0)),
                    shifted(after, [0, 0, 0, 0, 0, 1, 0, 0], 1))
        h = g.op("Tanh", g.op("Add", g.op("Squeeze", conv, g.const([2])), g.const(self.bias, "bias")))
        pooled = g.masked_max(h, g.op("Unsqueeze", g.positions_mask(n_words, width), g.const([2])))
        return g.op("Tanh", g.linear(pooled, self.proj))


def cnn_sizes(c: TowerConfig, prefix: str = "") -> TensorSizes:
    """The CLSM tower's weight matrices: the convolution over word-trigram windows, the semantic layer."""
    v, h, o = c.vocab_size, int(c.hidden_size or 1), c.output_dim
    return [(f"{prefix}vocab_size x 3 hidden_size ({v:,} x {3 * h:,})", 3 * v * h),
            (f"{prefix}hidden_size x output_dim ({h:,} x {o:,})", h * o)]


register(TowerSpec("cnn", "CLSM: word-trigram convolution -> max pool (Shen et al. 2014)", CNNTower, cnn_sizes,
                   hidden_size=300, num_layers=1, tokenizer="trigram"))
