"""Evaluators of recommenders: every held-out target ranked among all items (never a sample of candidates)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from deepsem.data.interactions import SequenceSplit
from deepsem.metrics import recommendation_metrics

Scorer = Callable[[Sequence[int], Sequence[np.ndarray]], np.ndarray]
"""``scorer(users, histories) -> (len(users), n_items)`` scores of every item (item positions of the split)."""


# -- evaluation over all items ---------------------------------------------------------------------------------
def target_ranks(scores: np.ndarray, histories: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 exclude_seen: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """1-based ranks of each user's targets among all items, and each row's items sorted best first.

    Items in the history are removed first (``exclude_seen``). Ties are broken by item position, smaller first,
    so the rank of a target is 1 + (#items scoring higher) + (#items scoring the same with a smaller position):
    the place it takes in a stable sort, the same for every method.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if exclude_seen:
        for row, hist in enumerate(histories):
            scores[row, hist] = -np.inf
    positions = np.arange(scores.shape[1])
    ranks = []
    for row, tgt in enumerate(targets):
        s = scores[row]
        t_scores = s[tgt]
        higher = (s[None, :] > t_scores[:, None]).sum(1)
        tied = ((s[None, :] == t_scores[:, None]) & (positions[None, :] < np.asarray(tgt)[:, None])).sum(1)
        ranks.append((1 + higher + tied).astype(np.int64))
    order = np.lexsort((np.broadcast_to(positions, scores.shape), -scores), axis=1)
    return ranks, order


def evaluate_ranking_over_items(scorer: Scorer, split: SequenceSplit, stage: str = "test",
                                ks: Sequence[int] = (10, 50), exclude_seen: bool = True,
                                batch_size: int = 256) -> dict[str, float]:
    """HitRate@k, Recall@k, NDCG@k, MRR and coverage@k of ``scorer`` on ``split``'s ``stage`` targets, each
    ranked among all items (the history's items excluded). See :func:`deepsem.metrics.recommendation_metrics`."""
    users, histories, targets = split.examples(stage)
    if not users:
        raise ValueError(f"no {stage} targets in the split")
    kmax = max(ks)
    all_ranks: list[np.ndarray] = []
    tops: list[np.ndarray] = []
    for start in range(0, len(users), batch_size):
        sl = slice(start, start + batch_size)
        scores = np.asarray(scorer(users[sl], histories[sl]))
        if scores.shape != (len(users[sl]), split.n_items):
            raise ValueError(f"scorer returned shape {scores.shape}, expected ({len(users[sl])}, {split.n_items})")
        ranks, order = target_ranks(scores, histories[sl], targets[sl], exclude_seen)
        all_ranks.extend(ranks)
        tops.append(order[:, :kmax])
    return recommendation_metrics(all_ranks, ks, np.concatenate(tops), split.n_items)


def popularity_scores(split: SequenceSplit) -> Scorer:
    """The most-popular baseline: every user gets the items by training count."""
    counts = split.train_counts().astype(np.float64)

    def scorer(users: Sequence[int], histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(counts, (len(users), len(counts)))

    return scorer
