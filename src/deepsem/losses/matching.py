"""The pair objectives of the two-tower model, as one module that owns the model (so DDP can wrap it)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepsem.config import TrainConfig
from deepsem.losses.functional import hinge_loss, negative_scores, pointwise_loss, softmax_loss
from deepsem.models import TwoTowerModel

#: ``TrainConfig.loss`` values with a softmax (or hinge) term over negatives.
SOFTMAX_LOSSES = ("softmax", "hinge", "pointwise+softmax")


class MatchingLoss(nn.Module):
    """The loss of a batch of text pairs, as ``config.loss`` and ``config.negatives`` choose.

    A batch (see ``deepsem.tasks.matching.PairCollate``) is a dict of tensors: ``q_ids``/``q_len`` and
    ``d_ids``/``d_len`` (the pairs' texts, padded), ``labels`` ``(B,)``, ``positive`` ``(P,)`` (rows of the
    positive pairs), ``same`` ``(P, B)`` (documents with the text of a query's positive), ``same_q`` ``(P, P)``,
    and with sampled negatives ``s_ids``/``s_len`` (``P * K`` documents) and ``clash`` ``(P, K)`` (a sampled
    document equal to the positive). Every model call happens here, in the order queries, documents, sampled
    documents (the order of dropout's random draws).
    """

    def __init__(self, model: TwoTowerModel, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        cfg, model = self.config, self.model
        q = model.encode(batch["q_ids"], batch["q_len"], "query")
        d = model.encode(batch["d_ids"], batch["d_len"], "doc")
        loss = q.new_zeros(())
        if cfg.loss in ("pointwise", "pointwise+softmax"):
            loss = loss + pointwise_loss((q * d).sum(-1), (batch["labels"] > 0.5).float(), model.gamma, model.bias)
        p = batch["positive"]
        if cfg.loss in SOFTMAX_LOSSES and len(p):
            loss = loss + cfg.softmax_weight * self._negatives_term(batch, q, d, p)
        if not loss.requires_grad:  # a batch without a positive pair under a softmax/hinge loss: nothing to learn
            loss = 0.0 * (q.sum() + d.sum())
        return loss

    def _negatives_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor, p: Tensor) -> Tensor:
        """The softmax (or hinge) term of the positive pairs ``p`` against their negatives."""
        cfg, model = self.config, self.model
        sampled = None
        if "s_ids" in batch:
            sampled = model.encode(batch["s_ids"], batch["s_len"], "doc").view(len(p), cfg.num_negatives, -1)
        pos, neg = negative_scores(q[p], d, p, same_doc=batch["same"], sampled=sampled,
                                   in_batch=cfg.negatives != "random")
        if "clash" in batch:
            k = cfg.num_negatives
            neg = torch.cat([neg[:, : neg.shape[1] - k], neg[:, -k:].masked_fill(batch["clash"], float("-inf"))],
                            dim=1)
        if cfg.loss == "hinge":
            return hinge_loss(pos, neg, cfg.margin)
        term = softmax_loss(pos, neg, model.gamma)
        if cfg.symmetric and model.config.shared_towers and cfg.negatives != "random":
            # the other direction: each positive document picks its query among the batch's queries
            rows = torch.arange(len(p), device=p.device)
            rpos, rneg = negative_scores(d[p], q[p], rows, same_doc=batch["same_q"])
            term = 0.5 * (term + softmax_loss(rpos, rneg, model.gamma))
        return term
