"""Evaluators: a model's answers scored with the numpy metrics of :mod:`deepsem.metrics`, one module per kind of
answer (pairs and retrieval, classification, recommendation over all items)."""

from deepsem.evaluation.classification import classification_metrics, plot_confusion
from deepsem.evaluation.pairs import (
    RANKING_METRICS,
    TextEncoder,
    evaluate_pairs,
    evaluate_ranking,
    evaluate_retrieval,
    evaluate_translation,
    ranking_metrics,
)
from deepsem.evaluation.recommendation import (
    Scorer,
    evaluate_ranking_over_items,
    popularity_scores,
    target_ranks,
)

__all__ = [
    "RANKING_METRICS",
    "Scorer",
    "TextEncoder",
    "classification_metrics",
    "evaluate_pairs",
    "evaluate_ranking",
    "evaluate_ranking_over_items",
    "evaluate_retrieval",
    "evaluate_translation",
    "plot_confusion",
    "popularity_scores",
    "ranking_metrics",
    "target_ranks",
]
