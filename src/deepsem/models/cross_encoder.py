"""ESIM (Chen et al., 2017, "Enhanced LSTM for Natural Language Inference"): a cross-encoder that reads a query and
a document together and gives one relevance logit per pair.

Both texts: token embedding -> a BiLSTM (the recurrent towers' cells, :mod:`deepsem.nn.lstm`). Soft alignment:
``e = a b^T``; each query step reads the document steps weighted by a softmax of its row (document padding masked),
each document step the query steps (query padding masked). Enhancement ``[a; ã; a - ã; a * ã]``, a ReLU projection,
a composition BiLSTM, mean and max pooling over each text's real steps, then an MLP (tanh) to the logit.
With ``exact_match`` each step's enhancement also carries a 0/1 flag: its token occurs in the other text (the
word-overlap feature of answer-selection models, Yang et al. 2015; Chen et al.'s ESIM has none): the lexical match that
BM25 rewards, which a model trained on a few thousand questions does not learn from its embeddings alone.

The query and the document play different parts in nothing but their order in the pooled vector ``[q; d]``: swapping
them may change the score (the MLP is not symmetric), as it does in the paper's premise / hypothesis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor, nn

from deepsem.config import CrossEncoderConfig
from deepsem.nn.onnx import rnn as onnx_rnn
from deepsem.nn.onnx import steps_by_row
from deepsem.towers.recurrent import build_rnn, run_rnn

if TYPE_CHECKING:
    from deepsem.nn.onnx import Graph


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """``(B, T)`` True at each row's real steps."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def soft_align(a: Tensor, b: Tensor, mask_a: Tensor, mask_b: Tensor) -> tuple[Tensor, Tensor]:
    """ESIM's soft alignment of ``a`` ``(B, Ta, D)`` and ``b`` ``(B, Tb, D)``: ``ã`` ``(B, Ta, D)``, each step of a as
    the attention-weighted sum of b's real steps, and ``b̃`` ``(B, Tb, D)`` the other way round."""
    e = torch.bmm(a, b.transpose(1, 2))  # (B, Ta, Tb)
    a_tilde = torch.bmm(e.masked_fill(~mask_b[:, None, :], float("-inf")).softmax(2), b)
    b_tilde = torch.bmm(e.masked_fill(~mask_a[:, :, None], float("-inf")).softmax(1).transpose(1, 2), a)
    return a_tilde, b_tilde


def exact_match(q_ids: Tensor, q_mask: Tensor, d_ids: Tensor, d_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, Tq)`` and ``(B, Td)`` 0/1 floats: whether each real step's token occurs among the other text's real
    steps (``[PAD]`` and ``[UNK]``, ids 0 and 1, match nothing). One query ``(1, Tq)`` pairs with every document."""
    known_q = q_mask & (q_ids > 1)
    known_d = d_mask & (d_ids > 1)
    same = (q_ids[:, :, None] == d_ids[:, None, :]) & known_q[:, :, None] & known_d[:, None, :]  # (B, Tq, Td)
    return same.any(2).float(), same.any(1).float()


def mean_max(x: Tensor, mask: Tensor) -> Tensor:
    """Mean and max of ``x`` ``(B, T, D)`` over the real steps of ``mask`` -> ``(B, 2D)``."""
    m = mask.unsqueeze(-1)
    mean = (x * m).sum(1) / m.sum(1).clamp(min=1).to(x.dtype)
    return torch.cat([mean, x.masked_fill(~m, float("-inf")).amax(1)], dim=-1)


class CrossEncoderModel(nn.Module):
    """``forward(q_ids (B, Tq), q_lengths (B,), d_ids (B, Td), d_lengths (B,)) -> logits (B,)``; ids right-padded
    with 0. A length below 1 is read as 1 (the pad token), so every text has a step to attend to. One query
    (``q_ids`` (1, Tq)) against B documents is encoded once and shared by every pair (re-ranking)."""

    def __init__(self, config: CrossEncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        h = c.hidden_size
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=c.embedding_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding_dropout = nn.Dropout(c.embedding_dropout)
        self.encoder = build_rnn(c.encoder, c.embedding_dim, h, 1, True, 0.0, c.orthogonal_init)
        self.projection = nn.Sequential(nn.Linear(8 * h + int(c.exact_match), h), nn.ReLU())
        self.composition = build_rnn(c.encoder, h, h, 1, True, 0.0, c.orthogonal_init)
        self.dropout = nn.Dropout(c.dropout)
        self.mlp = nn.Sequential(nn.Linear(8 * h, h), nn.Tanh(), nn.Dropout(c.dropout), nn.Linear(h, 1))

    def _both(self, rnn: nn.Module, q: Tensor, q_len: Tensor, d: Tensor, d_len: Tensor) -> tuple[Tensor, Tensor]:
        """``rnn`` over the queries and the documents as one batch (one recurrent loop, not two)."""
        steps = max(q.shape[1], d.shape[1])
        x = torch.cat([nn.functional.pad(q, (0, 0, 0, steps - q.shape[1])),
                       nn.functional.pad(d, (0, 0, 0, steps - d.shape[1]))])
        out, _ = run_rnn(rnn, x, torch.cat([q_len, d_len]))
        out = out.to(q.dtype)
        return out[: q.shape[0], : q.shape[1]], out[q.shape[0] :, : d.shape[1]]

    def encode_documents(self, d_ids: Tensor, d_lengths: Tensor) -> Tensor:
        """The documents' encoder states ``(B, Td, 2H)`` (zero past each length): all :meth:`interact` reads of a
        document before the alignment, and a third of what re-ranking one costs. They do not depend on the query,
        so a document's can be computed once and passed to :meth:`forward` (``d_states``) with any query."""
        out, _ = run_rnn(self.encoder, self.embedding_dropout(self.embedding(d_ids)), d_lengths.clamp(min=1))
        return out

    def interact(self, q: Tensor, q_len: Tensor, d: Tensor, d_len: Tensor, q_ids: Tensor | None = None,
                 d_ids: Tensor | None = None, *, encoded: bool = False) -> Tensor:
        """The logits of embedded queries ``(B, Tq, E)`` and documents ``(B, Td, E)`` (everything after the lookup;
        the ids only for the ``exact_match`` flags); ``encoded``: ``d`` holds the documents' encoder states
        ``(B, Td, 2H)`` (:meth:`encode_documents`) instead of their embeddings."""
        return self._interact(q, q_len, d, d_len, q_ids, d_ids, encoded)[0]

    def _interact(self, q: Tensor, q_len: Tensor, d: Tensor, d_len: Tensor, q_ids: Tensor | None,
                  d_ids: Tensor | None, encoded: bool) -> tuple[Tensor, Tensor]:
        """:meth:`interact`'s logits and the documents' encoder states it read."""
        q_len, d_len = q_len.clamp(min=1), d_len.clamp(min=1)
        q_mask, d_mask = step_mask(q_len, q.shape[1]), step_mask(d_len, d.shape[1])
        if encoded:
            a, b = run_rnn(self.encoder, q, q_len)[0].to(q.dtype), d.to(q.dtype)
        else:
            a, b = self._both(self.encoder, q, q_len, d, d_len)
        flags = None
        if self.config.exact_match:
            if q_ids is None or d_ids is None:
                raise ValueError("a cross-encoder with exact_match needs the token ids of both texts")
            flags = exact_match(q_ids, q_mask, d_ids, d_mask)
        if a.shape[0] != b.shape[0]:  # one query for every document: its encoding is shared
            a, q_len, q_mask = a.expand(b.shape[0], -1, -1), q_len.expand(b.shape[0]), q_mask.expand(b.shape[0], -1)
        a_tilde, b_tilde = soft_align(a, b, q_mask, d_mask)
        enhanced_a = [a, a_tilde, a - a_tilde, a * a_tilde]
        enhanced_b = [b, b_tilde, b - b_tilde, b * b_tilde]
        if flags is not None:
            enhanced_a.append(flags[0].unsqueeze(-1).to(a.dtype))
            enhanced_b.append(flags[1].unsqueeze(-1).to(b.dtype))
        m_a = self.projection(self.dropout(torch.cat(enhanced_a, -1)))
        m_b = self.projection(self.dropout(torch.cat(enhanced_b, -1)))
        v_a, v_b = self._both(self.composition, m_a, q_len, m_b, d_len)
        pooled = torch.cat([mean_max(v_a, q_mask), mean_max(v_b, d_mask)], -1)
        return self.mlp(self.dropout(pooled)).squeeze(-1), b

    def forward(self, q_ids: Tensor, q_lengths: Tensor, d_ids: Tensor, d_lengths: Tensor,
                d_states: Tensor | None = None) -> Tensor:
        """``d_states``: the documents' :meth:`encode_documents` (padded to ``d_ids``' steps), computed earlier."""
        embed = self.embedding_dropout
        if d_states is not None:
            return self.interact(embed(self.embedding(q_ids)), q_lengths, d_states, d_lengths, q_ids, d_ids,
                                 encoded=True)
        return self.interact(embed(self.embedding(q_ids)), q_lengths, embed(self.embedding(d_ids)), d_lengths,
                             q_ids, d_ids)

    def score_and_encode(self, q_ids: Tensor, q_lengths: Tensor, d_ids: Tensor,
                         d_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward`'s logits and, from the same pass, the documents' encoder states (``(B, Td, 2H)``, what
        :meth:`encode_documents` gives): a cache fills itself at no extra cost."""
        embed = self.embedding_dropout
        return self._interact(embed(self.embedding(q_ids)), q_lengths, embed(self.embedding(d_ids)), d_lengths,
                              q_ids, d_ids, False)

    @staticmethod
    def _onnx_rnn(g: Graph, rnn: nn.Module, x: str, lengths: str) -> str:
        """``rnn`` over time-major ``x`` (T, B, E) -> rows of steps (B, T, 2H)."""
        return steps_by_row(g, onnx_rnn(g, rnn, x, lengths, time_major=True)[0])

    def _onnx_encode(self, g: Graph, table: str, ids: str, lengths: str) -> str:
        """The encoder states (B, T, 2H) of ids (B, T) with lengths already at least 1."""
        return self._onnx_rnn(g, self.encoder, g.op("Gather", table, g.op("Transpose", ids, perm=[1, 0])), lengths)

    def onnx_documents(self, g: Graph, d_ids: str, d_len: str) -> str:
        """:meth:`encode_documents` in ONNX operators: the encoder states ``(N, Td, 2H)`` of ``N`` documents."""
        table = g.const(self.embedding.weight, "embedding")
        return self._onnx_encode(g, table, d_ids, g.op("Max", d_len, g.const(1, dtype=np.int64)))

    def onnx(self, g: Graph, q_ids: str, q_len: str, d_ids: str, d_len: str,
             d_states: str | None = None) -> tuple[str, str]:
        """:meth:`forward` in ONNX operators (:mod:`deepsem.nn.onnx`): logits ``(N,)`` of ``N`` documents against
        ``N`` queries or one query (its rows broadcast to every document), and the documents' encoder states
        ``(N, Td, 2H)`` (:meth:`score_and_encode`). Padded steps carry zeros, as run_rnn's. ``d_states``: those
        states as an input (computed earlier, :meth:`onnx_documents`), not computed here."""
        one, n = g.const(1, dtype=np.int64), g.op("Shape", d_ids, start=0, end=1)
        q_len, d_len = g.op("Max", q_len, one), g.op("Max", d_len, one)
        q_mask, d_mask = g.positions_mask(q_len, g.steps_of(q_ids)), g.positions_mask(d_len, g.steps_of(d_ids))
        table = g.const(self.embedding.weight, "embedding")

        a = self._onnx_encode(g, table, q_ids, q_len)
        b = d_states or self._onnx_encode(g, table, d_ids, d_len)
        # ``a`` keeps its one row when one query goes with every document: MatMul, Mul and Add broadcast it.
        q_len = g.op("Expand", q_len, n)

        def outside(mask: str, axis: int) -> str:  # the softmax's mask, broadcast over ``axis``
            return g.op("Unsqueeze", g.outside(mask), g.const([axis]))

        e = g.op("MatMul", a, g.op("Transpose", b, perm=[0, 2, 1]))  # (N, Tq, Td)
        a_tilde = g.op("MatMul", g.op("Softmax", g.op("Add", e, outside(d_mask, 1)), axis=2), b)
        b_tilde = g.op("MatMul", g.op("Transpose", g.op("Softmax", g.op("Add", e, outside(q_mask, 2)), axis=1),
                                      perm=[0, 2, 1]), a)
        flags: list[str | None] = [None, None]
        if self.config.exact_match:  # exact_match(): a known token of one text among the other's known tokens
            known_q = g.op("And", q_mask, g.op("Greater", q_ids, one))
            known_d = g.op("And", d_mask, g.op("Greater", d_ids, one))
            same = g.op("Equal", g.op("Unsqueeze", q_ids, g.const([2])), g.op("Unsqueeze", d_ids, g.const([1])))
            same = g.op("Cast", g.op("And", g.op("And", same, g.op("Unsqueeze", known_q, g.const([2]))),
                                     g.op("Unsqueeze", known_d, g.const([1]))), to=1)  # (N, Tq, Td)
            flags = [g.op("ReduceMax", same, axes=[2], keepdims=1),
                     g.op("Unsqueeze", g.op("ReduceMax", same, axes=[1], keepdims=0), g.const([2]))]
        # The projection of [x; x~; x - x~; x * x~; flag] as (W1 + W3) x + (W2 - W3) x~ + W4 (x * x~) + w5 flag + b:
        # the same sum without the widest tensor of the graph, and the query's first term on its one row.
        projection = cast(nn.Linear, self.projection[0])
        w = projection.weight.detach().float().t()  # (8H [+ 1], H)
        w1, w2, w3, w4 = w[: 8 * self.config.hidden_size].split(2 * self.config.hidden_size)
        own, aligned, product = g.const(w1 + w3, "weight"), g.const(w2 - w3, "weight"), g.const(w4, "weight")
        flag_row = g.const(w[8 * self.config.hidden_size :], "weight") if self.config.exact_match else ""
        bias = g.const(projection.bias, "bias")

        def compose(x: str, x_tilde: str, flag: str | None, lengths: str) -> str:
            m = g.op("Add", g.op("Add", g.op("MatMul", x, own), bias),
                     g.op("Add", g.op("MatMul", x_tilde, aligned), g.op("MatMul", g.op("Mul", x, x_tilde), product)))
            if flag:
                m = g.op("Add", m, g.op("Mul", flag, flag_row))
            return self._onnx_rnn(g, self.composition, g.op("Transpose", g.op("Relu", m), perm=[1, 0, 2]), lengths)

        def mean_max(v: str, mask: str, lengths: str) -> str:
            inside = g.op("Unsqueeze", mask, g.const([2]))
            total = g.op("ReduceSum", g.op("Mul", v, g.op("Cast", inside, to=1)), g.const([1]), keepdims=0)
            mean = g.op("Div", total, g.op("Unsqueeze", g.op("Cast", lengths, to=1), g.const([1])))
            return g.op("Concat", mean, g.masked_max(v, inside), axis=-1)

        pooled = g.op("Concat", mean_max(compose(a, a_tilde, flags[0], q_len), q_mask, q_len),
                      mean_max(compose(b, b_tilde, flags[1], d_len), d_mask, d_len), axis=-1)
        hidden = g.op("Tanh", g.linear(pooled, cast(nn.Linear, self.mlp[0])))
        logits = g.linear(hidden, cast(nn.Linear, self.mlp[3]))
        return g.op("Squeeze", logits, g.const([1])), b
