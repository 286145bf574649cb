"""The loss kernels: plain functions of scores and targets, shared by the objective modules of this package.

The two-tower kernels take L2-normalised vectors, so every score is a cosine R(Q, D) in [-1, 1].

- :func:`softmax_loss` — the DSSM objective: -log P(D+ | Q) with
  P(D+ | Q) = exp(gamma R(Q, D+)) / sum_{D in {D+} u negatives} exp(gamma R(Q, D)); negatives are the other
  documents of the batch (in-batch), K sampled documents per query, or both.
- :func:`pointwise_loss` — labelled 0/1 pairs: binary cross-entropy on the logit gamma R(Q, D) + b.
- :func:`hinge_loss` — pairwise: max(0, margin - R(Q, D+) + R(Q, D-)) over the negatives.
- :func:`cosent_loss` — CoSENT: every pair of the batch ranked against every other pair of a lower label, by cosine.
- :func:`candidate_softmax_loss` — recommendation: softmax of each user's next item over a set of candidate
  items (all items, the batch's targets, or those plus sampled ones), with the log-Q correction.
- :func:`classification_loss` — cross-entropy over labels, or per-label binary cross-entropy (multi-label).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def negative_scores(
    q: Tensor,
    docs: Tensor,
    positive: Tensor,
    same_doc: Tensor | None = None,
    sampled: Tensor | None = None,
    in_batch: bool = True,
) -> tuple[Tensor, Tensor]:
    """Positive scores ``(P,)`` and negative scores ``(P, N)``.

    ``q`` ``(P, E)`` are queries, ``docs`` ``(B, E)`` the documents of the batch and ``positive`` ``(P,)``
    the row of each query's relevant document. With ``in_batch`` every other document of the batch is a
    negative, except those marked in ``same_doc`` ``(P, B)`` (True where a document has the same text as
    the query's positive: a false negative). ``sampled`` ``(P, K, E)`` adds K sampled negatives per query;
    a sampled negative equal to the positive should be passed as ``-inf`` by masking its score afterwards.
    """
    rows = torch.arange(q.shape[0], device=q.device)
    sim = q @ docs.T
    pos = sim[rows, positive]
    parts = []
    if in_batch:
        mask = torch.zeros_like(sim, dtype=torch.bool)
        mask[rows, positive] = True
        if same_doc is not None:
            mask = mask | same_doc
        parts.append(sim.masked_fill(mask, float("-inf")))
    if sampled is not None:
        parts.append(torch.einsum("pe,pke->pk", q, sampled))
    if not parts:
        raise ValueError("no negatives: enable in-batch negatives or pass sampled ones")
    return pos, torch.cat(parts, dim=1)


def softmax_loss(pos: Tensor, neg: Tensor, gamma: Tensor | float) -> Tensor:
    """-log softmax of the positive among itself and the negatives, scores scaled by gamma."""
    scores = torch.cat([pos[:, None], neg], dim=1)
    masked = ~torch.isfinite(scores)
    # scale the finite scores only: -inf * gamma would give a NaN gradient for a learned gamma
    logits = (scores.masked_fill(masked, 0.0) * gamma).masked_fill(masked, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device))


def pointwise_loss(score: Tensor, labels: Tensor, gamma: Tensor | float, bias: Tensor | float) -> Tensor:
    """Binary cross-entropy of sigma(gamma * cos + bias) against 0/1 labels."""
    return F.binary_cross_entropy_with_logits(score * gamma + bias, labels)


def cosent_loss(score: Tensor, labels: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT (Su 2022, the loss of text2vec): ``log(1 + sum over (i, j) with label_i > label_j of exp(scale (s_j -
    s_i)))`` over the batch's pairs, ``score`` ``(B,)`` their cosines, ``labels`` ``(B,)`` (0/1 or graded).

    It ranks every pair of the batch against every pair of a lower label, whatever their queries: a smooth surrogate
    of the ranking that a pooled metric (ROC-AUC, Spearman over all pairs) measures. 0, without a gradient, when
    no two labels differ."""
    score = score.to(torch.promote_types(score.dtype, torch.float32))  # bf16 scores: the sum in fp32
    diff = (score[None, :] - score[:, None]) * scale  # [i, j]: s_j - s_i
    above = labels[:, None] > labels[None, :]
    terms = diff.masked_fill(~above, float("-inf")).flatten()
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


def hinge_loss(pos: Tensor, neg: Tensor, margin: float) -> Tensor:
    """Mean over (query, negative) pairs of max(0, margin - R(Q, D+) + R(Q, D-)); -inf negatives count 0."""
    finite = torch.isfinite(neg)
    losses = F.relu(margin - pos[:, None] + neg.masked_fill(~finite, -1e4))
    return losses.sum() / finite.sum().clamp(min=1)


def candidate_softmax_loss(users: Tensor, candidates: Tensor, target: Tensor, gamma: Tensor | float,
                           log_q: Tensor | None = None) -> Tensor:
    """-log P(target | user) over a shared candidate set, with the sampling-bias (log-Q) correction.

    ``users`` ``(P, E)`` and ``candidates`` ``(C, E)`` are L2-normalised; ``target`` ``(P,)`` is each user's
    positive's row in ``candidates`` (the set holds every positive once, so there are no accidental hits).
    When the candidates are the batch's targets or items sampled by popularity, popular items are negatives far
    more often than under the full softmax, and the model learns to push them down; subtracting ``log_q``
    ``(C,)``, the log of each candidate's sampling probability, from its logit removes that bias (Yi et al.
    2019, "Sampling-bias-corrected neural modeling"). ``log_q=None``: no correction (the full softmax).
    """
    logits = (users @ candidates.T) * gamma
    if log_q is not None:
        logits = logits - log_q[None, :]
    return F.cross_entropy(logits, target)


def classification_loss(logits: Tensor, targets: Tensor, *, multi_label: bool = False,
                        weights: Tensor | None = None, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over the labels (``weights``: per class, a weighted mean), or for multi-label data the
    mean binary cross-entropy of every (text, label) with ``weights`` as the positives' ``pos_weight``."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=weights)
    return F.cross_entropy(logits, targets, weight=weights, label_smoothing=label_smoothing)
