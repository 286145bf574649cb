"""The cross-encoder's objectives, as a module that owns the model (so DDP can wrap it).

Labelled pairs (0/1): BCE on each pair's logit. Positive-only pairs: each query's positive and ``k`` documents of
other pairs of the batch form one candidate list, scored with a softmax over the list (cross-entropy with the
positive first) — the two-tower models' softmax loss over sampled negatives, made into pairs. A listwise softmax
rather than BCE on 1:k pairs: it needs no class weight for the 1:k imbalance and trains what a re-ranker does
(order one query's candidates); sampled rather than every in-batch document: a cross-encoder pays for each pair.

Distillation (``distill_weight`` > 0): beside either, KL(softmax(teacher / T) || softmax(logits)) over each
candidate list of the batch (:func:`~deepsem.losses.distill.kl_distill_loss`): the student learns how a teacher
orders one query's candidates, not the teacher's scale. A cross-encoder teacher of labelled pairs gives each pair's
logit instead (``teacher_logits``): the KL between the two Bernoullis, sigmoid(teacher / T) and sigmoid(logit / T),
times T² (Hinton et al. 2015's soft targets, whose gradients then keep their size whatever T): the student learns
the teacher's confidence in each pair, scale included, since a re-ranker's probability is what it answers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.losses.distill import kl_distill_loss, soft_target_loss
from deepsem.models.cross_encoder import CrossEncoderModel


class RerankLoss(nn.Module):
    """``forward(batch)``: a dict of ``q_ids``, ``q_lengths``, ``d_ids``, ``d_lengths`` and either ``targets``
    ``(B,)`` 0/1 (BCE), or ``valid`` ``(Q, 1 + k)`` (the rows are Q candidate lists of 1 + k pairs, the positive
    first; False marks a negative that is not one, e.g. the positive's own text; listwise softmax). Distilling, also
    ``teacher`` ``(B,)`` the teacher's score of each row and ``lists`` ``(G, L)`` the rows of each candidate list
    (``lists_valid`` ``(G, L)`` False for padding), or ``teacher_logits`` ``(B,)`` a cross-encoder teacher's logit
    of each labelled row."""

    def __init__(self, model: CrossEncoderModel, distill_weight: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.distill_weight, self.temperature = distill_weight, temperature

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["q_ids"], batch["q_lengths"], batch["d_ids"], batch["d_lengths"]).float()
        loss = self.label_loss(logits, batch)
        if self.distill_weight and "teacher_logits" in batch:
            loss = loss + self.distill_weight * soft_target_loss(logits, batch["teacher_logits"], self.temperature)
        if self.distill_weight and "teacher" in batch and len(batch["lists"]):
            lists = batch["lists"]
            loss = loss + self.distill_weight * kl_distill_loss(
                logits[lists], batch["teacher"][lists], 1.0, self.temperature, batch["lists_valid"])
        return loss

    @staticmethod
    def label_loss(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if "targets" in batch:
            return F.binary_cross_entropy_with_logits(logits, batch["targets"].float())
        valid = batch["valid"]
        lists = logits.view(valid.shape).masked_fill(~valid, float("-inf"))
        return F.cross_entropy(lists, torch.zeros(valid.shape[0], dtype=torch.long, device=lists.device))

