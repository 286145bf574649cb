"""Training objectives: each an ``nn.Module`` that owns the model it trains and returns the loss of a batch from
``forward(batch)``, so the trainer needs nothing but the module (and ``DistributedDataParallel`` can wrap it: the
model runs inside the wrapped forward, which is what triggers the gradient all-reduce).

- :class:`MatchingLoss` (``matching.py``): the two-tower pair objectives — pointwise, softmax with in-batch /
  random / both / labelled negatives, hinge, symmetric, CoSENT;
- :class:`ClassificationLoss` (``classification.py``): cross-entropy or multi-label BCE, class weights, smoothing;
- :class:`NextItemLoss` (``recommendation.py``): next-item softmax over full / in-batch / sampled candidates, log-Q;
- :class:`RerankLoss` (``rerank.py``): the cross-encoder's BCE on labelled pairs, or a softmax over each query's
  positive and documents of other pairs;
- :class:`DistillLoss` (``distill.py``): the pair loss plus a teacher's scores (KL or margin-MSE over each positive
  pair's cached candidate list) and/or its vectors (regression through a learned linear map).

The kernels they share (``functional.py``) are plain functions of scores and targets. A new objective is a new
module here holding its model and computing its loss from the batch its task's collate function builds.
"""

from deepsem.losses.classification import ClassificationLoss
from deepsem.losses.distill import (
    DistillLoss,
    kl_distill_loss,
    margin_mse_loss,
    soft_target_loss,
    vector_mse_loss,
)
from deepsem.losses.functional import (
    candidate_softmax_loss,
    classification_loss,
    cosent_loss,
    hinge_loss,
    negative_scores,
    pointwise_loss,
    softmax_loss,
)
from deepsem.losses.matching import MatchingLoss
from deepsem.losses.recommendation import NextItemLoss
from deepsem.losses.rerank import RerankLoss

__all__ = [
    "ClassificationLoss",
    "DistillLoss",
    "MatchingLoss",
    "NextItemLoss",
    "RerankLoss",
    "candidate_softmax_loss",
    "classification_loss",
    "cosent_loss",
    "hinge_loss",
    "kl_distill_loss",
    "margin_mse_loss",
    "negative_scores",
    "pointwise_loss",
    "soft_target_loss",
    "softmax_loss",
    "vector_mse_loss",
]
