"""The classification objective, as a module that owns the classifier (so DDP can wrap it)."""

from __future__ import annotations

from torch import Tensor, nn

from deepsem.losses.functional import classification_loss
from deepsem.models.classifier import TextClassifier


class ClassificationLoss(nn.Module):
    """Cross-entropy (with ``label_smoothing``) or, for a multi-label model, per-label BCE with logits.

    ``weights``: per-class weights of the cross-entropy, or the positives' ``pos_weight`` of the BCE (a buffer,
    moved with the module, never saved with the model). A batch is a dict of ``ids`` ``(B, T)``, ``lengths``
    ``(B,)`` and ``targets`` (label ids ``(B,)`` or a 0/1 matrix ``(B, L)``).
    """

    weights: Tensor | None

    def __init__(self, model: TextClassifier, *, weights: Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.multi_label = model.config.multi_label
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self.model(batch["ids"], batch["lengths"])
        return classification_loss(logits, batch["targets"], multi_label=self.multi_label, weights=self.weights,
                                   label_smoothing=self.label_smoothing)
