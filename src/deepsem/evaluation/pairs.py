"""Evaluators of a text encoder on pairs: pair classification, candidate ranking and retrieval.

Each takes anything with ``encode(texts, side=...)`` and ``similarity(a, b)`` (:class:`TextEncoder`, e.g. a
:class:`~deepsem.tasks.matching.SemanticModel`) and scores it with :mod:`deepsem.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from deepsem.data.pairs import TextPairs
from deepsem.metrics import best_threshold, pair_metrics, retrieval_metrics
from deepsem.vectorstore.exact import exact_search


class TextEncoder(Protocol):
    """What the evaluators (and the index) need of a model: vectors of texts, one tower per side."""

    def encode(self, texts: Sequence[str], batch_size: int = ..., side: str = ...) -> np.ndarray: ...

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...


def threshold_on(model: TextEncoder, dev: TextPairs) -> float:
    """The cosine threshold that makes ``score >= threshold`` most accurate on the labelled ``dev`` pairs
    (:func:`deepsem.metrics.best_threshold`): a threshold chosen on other pairs than those it is scored on."""
    if dev.labels is None:
        raise ValueError("choosing a threshold needs labelled dev pairs")
    return best_threshold(model.similarity(dev.text_a, dev.text_b), dev.labels)


def evaluate_pairs(model: TextEncoder, pairs: TextPairs, threshold: float | None = None,
                   dev: TextPairs | None = None) -> dict[str, float]:
    """Accuracy and F1 at ``threshold``, ROC-AUC and Spearman.

    The threshold is ``threshold`` when given, else the one chosen on the ``dev`` pairs (:func:`threshold_on`)
    when given, else the one chosen on ``pairs`` themselves (an optimistic score); not both.
    """
    if threshold is not None and dev is not None:
        raise ValueError("give a threshold or dev pairs to choose it on, not both")
    if pairs.labels is None:
        raise ValueError("pair evaluation needs labels")
    if dev is not None:
        threshold = threshold_on(model, dev)
    scores = model.similarity(pairs.text_a, pairs.text_b)
    return pair_metrics(scores, pairs.labels, threshold=threshold)


RANKING_METRICS = ("map", "mrr", "ndcg@3", "ndcg@5", "ndcg@10")


def evaluate_ranking(model: TextEncoder, pairs: TextPairs) -> dict[str, float]:
    """Labelled pairs as candidate lists (answer selection, re-ranking): the pairs sharing a text_a are one
    query's candidates, ranked by score. MAP, MRR, NDCG@3/5/10 over the queries with at least one positive
    (as WikiQA is scored); ``queries`` is how many were scored."""
    if pairs.labels is None:
        raise ValueError("ranking evaluation needs labels")
    return ranking_metrics(pairs, model.similarity(pairs.text_a, pairs.text_b))


def ranking_metrics(pairs: TextPairs, scores: np.ndarray) -> dict[str, float]:
    """MAP, MRR, NDCG@3/5/10 of the candidate lists of labelled ``pairs`` (the pairs sharing a text_a) ranked by
    ``scores`` (one per pair, from any model), over the queries with a positive candidate; ``queries``: how many."""
    if pairs.labels is None:
        raise ValueError("ranking evaluation needs labels")
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    qid_of: dict[str, str] = {}
    for i, (a, label) in enumerate(zip(pairs.text_a, pairs.labels, strict=True)):
        qid = qid_of.setdefault(a, f"q{len(qid_of)}")
        run.setdefault(qid, {})[str(i)] = float(scores[i])
        if label > 0.5:
            qrels.setdefault(qid, {})[str(i)] = 1
    if not qrels:
        raise ValueError("ranking evaluation needs at least one query with a positive candidate")
    metrics = retrieval_metrics(run, qrels, ks=(3, 5, 10))
    return {**{key: metrics[key] for key in RANKING_METRICS}, "queries": float(len(qrels))}


def evaluate_translation(model: TextEncoder, pairs: TextPairs, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Positive-only pairs as retrieval: each text_a searches all distinct text_b of the set."""
    docs = list(dict.fromkeys(pairs.text_b))
    doc_id = {t: str(i) for i, t in enumerate(docs)}
    qid_of: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for a, b in zip(pairs.text_a, pairs.text_b, strict=True):
        qid = qid_of.setdefault(a, f"q{len(qid_of)}")
        qrels.setdefault(qid, {})[doc_id[b]] = 1
    queries = {qid: text for text, qid in qid_of.items()}
    return evaluate_retrieval(model, queries, {str(i): t for i, t in enumerate(docs)}, qrels, ks)


def evaluate_retrieval(model: TextEncoder, queries: dict[str, str], corpus: dict[str, str],
                       qrels: dict[str, dict[str, int]], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """Encode the corpus (doc tower) and queries (query tower), search exactly, score with ``qrels``."""
    doc_ids = list(corpus)
    doc_vecs = model.encode([corpus[d] for d in doc_ids], side="doc")
    qids = [q for q in queries if q in qrels]
    q_vecs = model.encode([queries[q] for q in qids], side="query")
    scores, idx = exact_search(q_vecs, doc_vecs, max(ks))
    run = {q: {doc_ids[j]: float(s) for s, j in zip(scores[r], idx[r], strict=True)} for r, q in enumerate(qids)}
    return retrieval_metrics(run, qrels, ks=tuple(ks))
