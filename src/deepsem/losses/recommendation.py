"""The next-item objective of the two-tower recommender, as a module that owns the model (so DDP can wrap it)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from deepsem.config import RECOMMEND_NEGATIVES
from deepsem.losses.functional import candidate_softmax_loss
from deepsem.models.recommender import TwoTowerRecommender


class NextItemLoss(nn.Module):
    """Softmax of each position's next item over every item (``"full"``), the batch's target items
    (``"in-batch"``) or those plus ``num_negatives`` items drawn by popularity (``"sampled"``); with ``logq``
    the last two subtract the log of each candidate's sampling probability (see
    :func:`~deepsem.losses.candidate_softmax_loss`). ``counts``: training interactions per item, in catalogue
    order (the popularity the log-Q correction and the sampling use).

    A batch is a dict of ``inputs`` ``(B, T)`` and ``targets`` ``(B, T)`` (model rows: catalogue position + 1,
    0 is padding), ``lengths`` ``(B,)``, ``keep`` ``(B, T)`` (the positions trained on) and, with user features,
    ``features``. The sampled candidates are drawn here, after the user tower ran (the order of torch's random
    draws).
    """

    log_q: Tensor
    sample_p: Tensor

    def __init__(self, model: TwoTowerRecommender, counts: np.ndarray, *, negatives: str = "full",
                 num_negatives: int = 256, logq: bool = True) -> None:
        super().__init__()
        if negatives not in RECOMMEND_NEGATIVES:
            raise ValueError(f"negatives must be one of {', '.join(RECOMMEND_NEGATIVES)}, got {negatives!r}")
        self.model = model
        self.negatives, self.num_negatives, self.logq = negatives, num_negatives, logq
        share = np.maximum(counts, 1).astype(np.float64)
        self.register_buffer("log_q", torch.from_numpy(np.log(share / share.sum())).float(), persistent=False)
        self.register_buffer("sample_p", torch.from_numpy(share / share.sum()).float(), persistent=False)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        net, keep = self.model, batch["keep"]
        users = net.user_steps(batch["inputs"], batch["lengths"], batch.get("features"))[keep]
        target = batch["targets"][keep] - 1  # catalogue positions
        if self.negatives == "full":
            return candidate_softmax_loss(users, net.item_vectors(), target, net.gamma)
        candidates = target
        if self.negatives == "sampled":
            drawn = torch.multinomial(self.sample_p, self.num_negatives, replacement=True)
            candidates = torch.cat([target, drawn])
        candidates, where = torch.unique(candidates, return_inverse=True)
        return candidate_softmax_loss(users, net.item_vectors(candidates + 1), where[: len(target)], net.gamma,
                                      self.log_q[candidates] if self.logq else None)
