"""The recurrent towers of LSTM-DSSM: embedding -> RNN / LSTM / GRU -> pooling -> tanh semantic layer.

``encoder`` picks the cell: ``lstm-peephole`` (the LSTM-DSSM default), ``lstm``, ``lstm-coupled`` (coupled
input/forget gate), all from :mod:`deepsem.nn.lstm`; ``gru`` and ``rnn`` (vanilla tanh RNN) from torch.
With ``pooling="last"`` the sentence vector is the state at each sequence's own last real token (and, when
bidirectional, the backward state at its first token), as in Palangi et al. (2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepsem.nn.lstm import LSTM
from deepsem.nn.onnx import pool_steps, states_by_row
from deepsem.nn.onnx import rnn as onnx_rnn
from deepsem.towers.registry import TensorSizes, TowerSpec, register, widths

if TYPE_CHECKING:
    from deepsem.config import TowerConfig
    from deepsem.nn.onnx import Graph

#: Defaults of a recurrent tower's ``hidden_size`` / ``num_layers`` (the best BQ setting).
HIDDEN_SIZE, NUM_LAYERS = 128, 1
#: The LSTM-DSSM cell (Palangi et al. 2016): the default tower, first in every list of choices.
DEFAULT_CELL = "lstm-peephole"


def init_recurrent(rnn: nn.Module, hidden: int, orthogonal: bool) -> None:
    """Recurrent matrices orthogonal gate block by gate block (every singular value 1), or, with
    ``orthogonal=False``, torch's default U(-1/sqrt(H), 1/sqrt(H)); other parameters are left as they are."""
    with torch.no_grad():
        for name, weight in rnn.named_parameters():
            if not name.startswith("weight_hh"):
                continue
            for start in range(0, weight.shape[0], hidden):
                if orthogonal:
                    nn.init.orthogonal_(weight[start : start + hidden])
                else:
                    nn.init.uniform_(weight[start : start + hidden], -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))


def _lstm(peephole: bool = False, coupled: bool = False) -> Callable[..., nn.Module]:
    def build(input_size: int, hidden: int, **options: Any) -> nn.Module:
        return LSTM(input_size, hidden, peephole=peephole, coupled=coupled, **options)
    return build


def _torch_rnn(cls: type[nn.GRU] | type[nn.RNN]) -> Callable[..., nn.Module]:
    """torch's GRU / tanh RNN with Xavier input blocks and zero biases, like deepsem's LSTM."""
    def build(input_size: int, hidden: int, **options: Any) -> nn.Module:
        rnn = cls(input_size, hidden, **options)
        for name, p in rnn.named_parameters():
            if name.startswith("weight_ih"):
                for start in range(0, p.shape[0], hidden):
                    nn.init.xavier_uniform_(p.data[start : start + hidden])
            elif name.startswith("bias"):
                nn.init.zeros_(p)
        return rnn
    return build


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: ``build(input_size, hidden, **options)`` and its gate blocks per hidden unit."""

    build: Callable[..., nn.Module]
    gates: int
    summary: str


#: The recurrent cells by name: deepsem's LSTMs (:mod:`deepsem.nn.lstm`), torch's GRU and tanh RNN.
CELLS: dict[str, Cell] = {
    "lstm": Cell(_lstm(), 4, "LSTM"),
    "lstm-peephole": Cell(_lstm(peephole=True), 4, "LSTM with peepholes (LSTM-DSSM, Palangi et al. 2016)"),
    "lstm-coupled": Cell(_lstm(coupled=True), 4, "LSTM with coupled input and forget gates"),
    "gru": Cell(_torch_rnn(nn.GRU), 3, "GRU"),
    "rnn": Cell(_torch_rnn(nn.RNN), 1, "vanilla tanh RNN"),
}
LSTM_ENCODERS = tuple(name for name in CELLS if name.startswith("lstm"))
RECURRENT_ENCODERS = tuple(CELLS)


def build_rnn(encoder: str, input_size: int, hidden: int, num_layers: int = 1, bidirectional: bool = False,
              dropout: float = 0.0, orthogonal: bool = True) -> nn.Module:
    """The recurrent net named by ``encoder`` (batch first), one of :data:`CELLS`; recurrent matrices by
    :func:`init_recurrent`."""
    cell = CELLS.get(encoder)
    if cell is None:
        raise ValueError(f"unknown recurrent encoder {encoder!r}; expected one of {', '.join(RECURRENT_ENCODERS)}")
    rnn = cell.build(input_size, hidden, num_layers=num_layers, batch_first=True, bidirectional=bidirectional,
                     dropout=dropout if num_layers > 1 else 0.0)
    init_recurrent(rnn, hidden, orthogonal)
    return rnn


def recurrent_sizes(encoder: str, input_size: int, hidden: int, layers: int, directions: int = 1,
                    prefix: str = "") -> TensorSizes:
    """(name, elements) of the input and recurrent matrices of each layer and direction of a recurrent net
    (biases and peepholes are a few ``hidden`` wide and left out)."""
    gates = CELLS[encoder].gates
    out = []
    for layer in range(layers):
        width = input_size if layer == 0 else directions * hidden
        for _ in range(directions):
            out.append((f"{prefix}layer {layer} input ({gates} gates x hidden_size {hidden:,} x {width:,})",
                        gates * hidden * width))
            out.append((f"{prefix}layer {layer} recurrent ({gates} gates x hidden_size {hidden:,} x {hidden:,})",
                        gates * hidden * hidden))
    return out


def run_rnn(rnn: nn.Module, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``rnn`` (from :func:`build_rnn`) over right-padded ``x`` ``(B, T, E)``: all outputs ``(B, T, D*H)``
    (zero past each length) and the final states ``(layers*D, B, H)`` at each sequence's own end."""
    if isinstance(rnn, LSTM):
        if torch.is_autocast_enabled(x.device.type):
            # deepsem's LSTM updates its gate buffers in place and with out= (which autocast leaves alone) next
            # to matmuls it does cast: under bf16 autocast the two meet as bf16 and float32 (an error, or gates
            # rounded to bf16 every step). Its recurrence runs in float32, as torch.amp.custom_fwd(cast_inputs=
            # torch.float32) would run it; the layers around it still run in bf16.
            with torch.autocast(x.device.type, enabled=False):
                output, (h_n, _) = rnn(x.float(), lengths=lengths)
            return output, h_n
        output, (h_n, _) = rnn(x, lengths=lengths)
        return output, h_n
    packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
    output, h_n = rnn(packed)
    output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
    return output, h_n


class RecurrentTower(nn.Module):
    """Token ids ``(B, T)`` right-padded with 0, and their lengths ``(B,)`` -> vectors ``(B, output_dim)``."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=c.embedding_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding_dropout = nn.Dropout(c.embedding_dropout)
        hidden, layers = widths(c)
        self.rnn = build_rnn(c.encoder, c.embedding_dim, hidden, layers, c.bidirectional, c.dropout,
                             c.orthogonal_init)
        directions = 2 if c.bidirectional else 1
        pooled = hidden * directions * (2 if c.pooling == "last+max" else 1)
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(pooled, c.output_dim)

    def run(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """All outputs ``(B, T, D*H)`` (zero past each length) and the final states ``(layers*D, B, H)``."""
        return run_rnn(self.rnn, x, lengths)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        output, h_n = self.run(self.embedding_dropout(self.embedding(ids)), lengths)
        pooling = self.config.pooling
        parts = []
        if pooling in ("last", "last+max"):
            directions = 2 if self.config.bidirectional else 1
            parts.append(h_n[-directions:].transpose(0, 1).reshape(ids.shape[0], -1))
        if pooling in ("max", "last+max", "mean"):
            mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).unsqueeze(-1)
            if pooling == "mean":
                parts.append((output * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(output.dtype))
            else:
                parts.append(output.masked_fill(~mask, float("-inf")).amax(1))
        pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return torch.tanh(self.proj(self.dropout(pooled)))

    def onnx(self, g: Graph, ids: str, lengths: str) -> str:
        """This tower in ONNX operators (:mod:`deepsem.nn.onnx`): the same steps as :meth:`forward`."""
        x = g.op("Gather", g.const(self.embedding.weight, "embedding"), g.op("Transpose", ids, perm=[1, 0]))
        output, h_n = onnx_rnn(g, self.rnn, x, lengths, time_major=True)  # (T, D, B, H) and (D, B, H)
        pooling, parts = self.config.pooling, []
        if pooling in ("last", "last+max"):
            parts.append(states_by_row(g, h_n))
        if pooling in ("max", "last+max", "mean"):
            parts.append(pool_steps(g, output, lengths, "mean" if pooling == "mean" else "max"))
        pooled = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=-1)
        return g.op("Tanh", g.linear(pooled, self.proj))


def recurrent_tower_sizes(c: TowerConfig, prefix: str = "") -> TensorSizes:
    """A recurrent tower's weight matrices: the embedding, the recurrent net, the semantic layer."""
    v, e, o = c.vocab_size, c.embedding_dim, c.output_dim
    h, layers = int(c.hidden_size or 1), int(c.num_layers or 1)
    directions = 2 if c.bidirectional else 1
    pooled = h * directions * (2 if c.pooling == "last+max" else 1)
    return [(f"{prefix}vocab_size x embedding_dim ({v:,} x {e:,})", v * e),
            *recurrent_sizes(c.encoder, e, h, layers, directions, prefix),
            (f"{prefix}pooled x output_dim ({pooled:,} x {o:,})", pooled * o)]


for _name in sorted(CELLS, key=lambda name: name != DEFAULT_CELL):  # the default first, then the table's order
    register(TowerSpec(_name, CELLS[_name].summary, RecurrentTower, recurrent_tower_sizes, HIDDEN_SIZE, NUM_LAYERS,
                       gates=CELLS[_name].gates))
