"""Distillation into a two-tower model, beside its pair loss: a module that owns the student (so DDP can wrap it).

Two teachers, two terms (either or both), each weighted beside :class:`~deepsem.losses.MatchingLoss`:

- **scores** of a cross-encoder over each positive pair's fixed candidate list (the positive first, then ``K``
  negatives), computed once before training and cached (``deepsem.tasks.distill``). The student scores the same
  list with ``gamma * cosine`` (``gamma`` the model's softmax scale) and learns either the teacher's distribution,
  KL(softmax(teacher / T) || softmax(gamma * cos)) (:func:`kl_distill_loss`), or its margins, margin-MSE of
  Hofstaetter et al. 2020: mean over negatives of ((gamma cos+ - gamma cos-) - (t+ - t-) / T)^2
  (:func:`margin_mse_loss`);
- **vectors** of an embedding model (e5, another two-tower model): the squared L2 distance between the student's
  vector, through a learned linear map to the teacher's width when the widths differ, and the teacher's vector
  (:func:`vector_mse_loss`; sentence-transformers' model distillation, summed over dimensions so that its size does
  not shrink with the width), over the batch's texts that have a teacher vector and over extra unlabelled texts;
- **relations** between the batch's texts, from the same vectors (relational, or in-batch, distillation): each
  query's distribution over the batch's documents, KL(softmax(teacher cos / T) || softmax(gamma * cos)) over the
  queries and documents that have a teacher vector (:func:`relation_loss`). The student's side is the pair loss's
  own in-batch similarity matrix, so the term costs no forward pass, unlike the vector term;
- **pair probabilities** of a cross-encoder for every labelled training pair (its negatives too): the student's
  probability of the pair, sigma(gamma * cos + bias) as in its pointwise loss, learns the teacher's sigma(logit / T)
  (:func:`soft_target_loss`, Hinton et al. 2015's soft targets). The score term teaches each query's order of its
  candidates; this one the teacher's confidence in each pair, which is comparable across queries (what a pooled
  measure such as ROC-AUC or Spearman over all pairs ranks). No forward pass either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.config import TrainConfig
from deepsem.losses.matching import MatchingLoss
from deepsem.models import TwoTowerModel

#: The score terms :class:`DistillLoss` knows.
SCORE_LOSSES = ("kl", "margin-mse")


def kl_distill_loss(student: Tensor, teacher: Tensor, gamma: Tensor | float, temperature: float = 1.0,
                    valid: Tensor | None = None) -> Tensor:
    """Mean over lists of KL(softmax(teacher / T) || softmax(gamma * student)).

    ``student`` ``(P, C)`` cosines and ``teacher`` ``(P, C)`` logits of the same candidates; ``valid`` ``(P, C)``
    False where a list has no candidate (left out of both distributions). The temperature softens the teacher
    only: the student's scale is its own ``gamma``, as in its softmax loss. The teacher's side is a target, detached."""
    if valid is None:
        valid = torch.ones_like(student, dtype=torch.bool)
    t = (teacher.detach().float() / temperature).masked_fill(~valid, float("-inf"))
    s = (student.float().masked_fill(~valid, 0.0) * gamma).masked_fill(~valid, float("-inf"))
    log_t, log_s = F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(~valid, 0.0).sum(-1)
    return kl.mean()


def margin_mse_loss(student: Tensor, teacher: Tensor, gamma: Tensor | float, temperature: float = 1.0,
                    valid: Tensor | None = None) -> Tensor:
    """Margin-MSE: mean over (list, negative) of ((gamma s+ - gamma s-) - (t+ - t-) / T)^2; column 0 of ``student``
    and ``teacher`` ``(P, C)`` is the positive, ``valid`` ``(P, C)`` False for missing negatives."""
    if valid is None:
        valid = torch.ones_like(student, dtype=torch.bool)
    s_margin = (student[:, :1] - student[:, 1:]).float() * gamma
    teacher = teacher.detach()  # a target: nothing flows back into the teacher
    t_margin = (teacher[:, :1] - teacher[:, 1:]).float() / temperature
    keep = valid[:, 1:] & valid[:, :1]
    squared = (s_margin - t_margin).pow(2).masked_fill(~keep, 0.0)
    return squared.sum() / keep.sum().clamp(min=1)


def soft_target_loss(logits: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of T² KL(Bernoulli(sigmoid(teacher / T)) || Bernoulli(sigmoid(logits / T))): zero where the
    two logits agree, whatever the labels."""
    t = temperature
    target = torch.sigmoid(teacher.float() / t)
    kl = (F.binary_cross_entropy_with_logits(logits / t, target, reduction="none")
          - F.binary_cross_entropy_with_logits(teacher.float() / t, target, reduction="none"))
    return t * t * kl.mean()


def vector_mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over rows of the squared L2 distance ``||student - teacher||^2`` (``(N, D)`` each; 0 with no row)."""
    if not len(student):
        return student.sum() * 0.0
    return (student.float() - teacher.detach().float()).pow(2).sum(-1).mean()


def relation_loss(q: Tensor, d: Tensor, t_q: Tensor, t_d: Tensor, gamma: Tensor | float,
                  temperature: float) -> Tensor:
    """:func:`kl_distill_loss` of each query's row over the documents: the student's cosines ``q d^T`` (unit
    vectors ``(P, D)`` and ``(C, D)``) against the teacher's ``t_q t_d^T`` (its vectors, normalised here). 0 with
    no query or fewer than two documents (no distribution to learn)."""
    if not len(q) or len(d) < 2:
        return q.sum() * 0.0 + d.sum() * 0.0
    teacher = F.normalize(t_q.detach().float(), dim=-1) @ F.normalize(t_d.detach().float(), dim=-1).T
    return kl_distill_loss(q.float() @ d.float().T, teacher, gamma, temperature)


class Student(nn.Module):
    """What a distilled run trains and checkpoints: the two-tower model and, for vector distillation into a
    teacher of another width, the linear map from the student's vectors to the teacher's (a training aid, not
    part of the saved model directory)."""

    def __init__(self, net: TwoTowerModel, projection: nn.Linear | None = None) -> None:
        super().__init__()
        self.net = net
        self.projection = projection


class DistillLoss(nn.Module):
    """The pair loss of ``config`` plus ``score_weight`` x the score term and ``vector_weight`` x the vector term.

    The batch is :class:`~deepsem.losses.MatchingLoss`'s, plus, for scores: ``c_ids``/``c_len`` (``P * K`` negative
    candidates, ``K`` per positive pair in the order of ``positive``), ``c_teacher`` ``(P, 1 + K)`` the teacher's
    logits (the positive first) and ``c_valid`` ``(P, 1 + K)``; for vectors: ``t_q``/``t_d`` ``(B, D)`` the teacher's
    vectors of the batch's queries / documents with ``t_q_mask``/``t_d_mask`` ``(B,)`` (True: one exists), and
    ``x_ids``/``x_len``/``t_x`` extra texts with theirs (the relation term, ``relation_weight`` > 0, reads ``t_q`` and
    ``t_d`` too, at ``relation_temperature``); for pair probabilities (``pair_weight`` > 0): ``p_teacher`` ``(B,)`` the
    teacher's logit of each pair of the batch. The queries' and documents' vectors are those the pair loss
    computed (recorded, not encoded twice: the same dropout draws); the candidates and extra texts are encoded
    here, after it. ``teacher_dim``: the teacher vectors' width (a linear map is learnt when it is not the
    student's); None without vector distillation.
    """

    def __init__(self, model: TwoTowerModel, config: TrainConfig, *, score_loss: str = "kl", score_weight: float = 1.0,
                 temperature: float = 1.0, vector_weight: float = 1.0, teacher_dim: int | None = None,
                 relation_weight: float = 0.0, relation_temperature: float = 0.05, pair_weight: float = 0.0) -> None:
        super().__init__()
        if score_loss not in SCORE_LOSSES:
            raise ValueError(f"score_loss must be one of {', '.join(SCORE_LOSSES)}, got {score_loss!r}")
        for name, value in (("temperature", temperature), ("relation_temperature", relation_temperature)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.pairs = MatchingLoss(model, config)
        width = model.config.tower.output_dim
        projection = (nn.Linear(width, teacher_dim, bias=False)
                      if teacher_dim is not None and teacher_dim != width else None)
        self.model = Student(model, projection)
        self.score_loss, self.score_weight, self.temperature = score_loss, score_weight, temperature
        self.vector_weight = vector_weight
        self.relation_weight, self.relation_temperature = relation_weight, relation_temperature
        self.pair_weight = pair_weight

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        net = self.model.net
        with _recorded(net) as vectors:
            loss = self.pairs(batch)
        q, d = vectors[0], vectors[1]
        if "c_teacher" in batch and self.score_weight:
            loss = loss + self.score_weight * self.score_term(batch, q, d)
        if ("t_q" in batch or "t_x" in batch) and self.vector_weight:
            loss = loss + self.vector_weight * self.vector_term(batch, q, d)
        if "t_q" in batch and self.relation_weight:
            loss = loss + self.relation_weight * self.relation_term(batch, q, d)
        if "p_teacher" in batch and self.pair_weight:
            loss = loss + self.pair_weight * self.pair_term(batch, q, d)
        return loss

    def pair_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor) -> Tensor:
        """:func:`soft_target_loss` of every pair of the batch: the student's logit ``gamma * cos + bias`` (its
        pointwise loss's) against the teacher's ``p_teacher``."""
        net = self.model.net
        logits = (q * d).sum(-1).float() * net.gamma + net.bias
        return soft_target_loss(logits, batch["p_teacher"], self.temperature)

    def relation_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor) -> Tensor:
        """:func:`relation_loss` over the batch's queries and documents that have a teacher vector."""
        qm, dm = batch["t_q_mask"], batch["t_d_mask"]
        return relation_loss(q[qm], d[dm], batch["t_q"][qm], batch["t_d"][dm], self.model.net.gamma,
                             self.relation_temperature)

    def student_scores(self, batch: dict[str, Tensor], q: Tensor, d: Tensor) -> Tensor:
        """Cosines ``(P, 1 + K)`` of each positive pair's query with its positive and its ``K`` candidates."""
        p = batch["positive"]
        k = batch["c_teacher"].shape[1] - 1
        negatives = encode_by_length(self.model.net, batch["c_ids"], batch["c_len"], "doc", max(32, len(p)))
        negatives = negatives.view(len(p), k, -1)
        qp = q[p]
        return torch.cat([(qp * d[p]).sum(-1, keepdim=True), torch.einsum("pe,pke->pk", qp, negatives)], dim=1)

    def score_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor) -> Tensor:
        """The KL or margin-MSE term of this batch's positive pairs (0 without one)."""
        if not len(batch["positive"]):
            return q.sum() * 0.0
        student = self.student_scores(batch, q, d)
        kernel = kl_distill_loss if self.score_loss == "kl" else margin_mse_loss
        return kernel(student, batch["c_teacher"], self.model.net.gamma, self.temperature, batch["c_valid"])

    def vector_term(self, batch: dict[str, Tensor], q: Tensor, d: Tensor) -> Tensor:
        """:func:`vector_mse_loss` over the batch's texts with a teacher vector and the extra texts."""
        students, teachers = [], []
        if "t_q" in batch:
            students += [q[batch["t_q_mask"]], d[batch["t_d_mask"]]]
            teachers += [batch["t_q"][batch["t_q_mask"]], batch["t_d"][batch["t_d_mask"]]]
        if "t_x" in batch and len(batch["t_x"]):
            students.append(encode_by_length(self.model.net, batch["x_ids"], batch["x_len"], "query", 32))
            teachers.append(batch["t_x"])
        student, teacher = torch.cat(students), torch.cat(teachers)
        if self.model.projection is not None:
            student = self.model.projection(student)
        return vector_mse_loss(student, teacher)


def encode_by_length(net: TwoTowerModel, ids: Tensor, lengths: Tensor, side: str, rows: int) -> Tensor:
    """``net.encode`` of a padded batch in groups of ``rows`` texts of similar lengths, each trimmed to its longest:
    a recurrent tower runs every step up to the width it is given, and candidates drawn at random (unlike the
    length-bucketed pairs) would otherwise all run to the longest of them. The vectors come back in input order."""
    if len(ids) <= rows:
        return net.encode(ids, lengths, side)
    order = torch.argsort(lengths, stable=True)
    parts = []
    for group in order.split(rows):
        width = max(int(lengths[group].max()), 1)
        parts.append(net.encode(ids[group, :width], lengths[group], side))
    return torch.cat(parts)[torch.argsort(order)]


@contextmanager
def _recorded(net: TwoTowerModel) -> Iterator[list[Tensor]]:
    """The vectors of every ``net.encode`` call inside the block, in call order: :class:`MatchingLoss` encodes the
    queries, then the documents (its documented order), which the distillation terms reuse."""
    vectors: list[Tensor] = []
    encode = net.encode

    def record(ids: Tensor, lengths: Tensor, side: str = "query") -> Tensor:
        out = encode(ids, lengths, side)
        vectors.append(out)
        return out

    net.encode = record  # type: ignore[method-assign]  # an instance attribute, removed below
    try:
        yield vectors
    finally:
        del net.encode
