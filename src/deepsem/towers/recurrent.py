"""The recurrent tower of LSTM-DSSM: embedding -> LSTM (peephole by default) -> pooling -> tanh layer.

With ``pooling="last"`` the sentence vector is the LSTM state at each sequence's own last real token
(and, when bidirectional, the backward state at its first token), as in Palangi et al. (2016).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepsem.config import TowerConfig
from deepsem.nn.lstm import LSTM


class RecurrentTower(nn.Module):
    """Token ids ``(B, T)`` right-padded with 0, and their lengths ``(B,)`` -> vectors ``(B, output_dim)``."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=c.embedding_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.embedding_dropout = nn.Dropout(c.embedding_dropout)
        self.rnn = LSTM(
            c.embedding_dim,
            c.hidden_size,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            bidirectional=c.bidirectional,
            peephole=c.encoder == "lstm-peephole",
            coupled=c.encoder == "lstm-coupled",
        )
        directions = 2 if c.bidirectional else 1
        pooled = c.hidden_size * directions * (2 if c.pooling == "last+max" else 1)
        self.dropout = nn.Dropout(c.dropout)
        self.proj = nn.Linear(pooled, c.output_dim)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding_dropout(self.embedding(ids))
        output, (h_n, _) = self.rnn(x, lengths=lengths)
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


def build_tower(config: TowerConfig) -> nn.Module:
    """The tower named by ``config.encoder`` (an allow-list, never an import string)."""
    if config.encoder in ("lstm", "lstm-peephole", "lstm-coupled"):
        return RecurrentTower(config)
    raise ValueError(f"unknown encoder {config.encoder!r}")
