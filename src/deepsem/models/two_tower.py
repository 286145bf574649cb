"""The two-tower model of DSSM: R(Q, D) = cosine(y_Q, y_D), P(D|Q) = softmax over gamma * R."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.config import ModelConfig
from deepsem.towers import build_tower


class TwoTowerModel(nn.Module):
    """A query tower and a document tower (the same module when ``shared_towers``).

    ``gamma`` is the smoothing factor of the DSSM softmax (learned in log space when ``learn_gamma``);
    ``bias`` is the offset of the pointwise logit ``gamma * cos + bias`` used with labelled pairs.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.query_tower = build_tower(config.tower)
        self.doc_tower = self.query_tower if config.shared_towers else build_tower(config.tower)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(config.gamma)), requires_grad=config.learn_gamma)
        self.bias = nn.Parameter(torch.tensor(-0.5 * config.gamma))

    @property
    def gamma(self) -> Tensor:
        return self.log_gamma.exp().clamp(max=100.0)

    def encode(self, ids: Tensor, lengths: Tensor, side: str = "query") -> Tensor:
        """L2-normalised semantic vectors of a padded batch; ``side`` is "query" or "doc"."""
        tower = self.query_tower if side == "query" else self.doc_tower
        return F.normalize(tower(ids, lengths), dim=-1)

    def forward(self, q_ids: Tensor, q_len: Tensor, d_ids: Tensor, d_len: Tensor) -> Tensor:
        """Cosine relevance of aligned query/document rows."""
        return (self.encode(q_ids, q_len, "query") * self.encode(d_ids, d_len, "doc")).sum(-1)
