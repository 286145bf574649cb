"""Evaluation metrics for text pairs, retrieval runs and classification, in plain numpy.

Pair data (a similarity score per pair and a 0/1 label):

* :func:`best_threshold` – the score threshold with the highest accuracy on the given data.
* :func:`pair_metrics` – accuracy and F1 at a threshold, ROC-AUC and Spearman's rank correlation.
* :func:`roc_auc`, :func:`spearman`, :func:`rankdata` – the building blocks.

Retrieval (``run``: query id -> {doc id: score} or a ranked list of doc ids; ``qrels``: query id ->
{doc id: graded relevance}), following the definitions of ``trec_eval`` / ``pytrec_eval``:

* :func:`mrr_at_k` (``recip_rank`` truncated at k), :func:`ndcg_at_k` (``ndcg_cut_k``),
  :func:`map_at_k` (``map`` over the whole list, or ``map_cut_k``), :func:`recall_at_k` (``recall_k``),
* :func:`retrieval_metrics` – all of them at several cut-offs, averaged over queries,
* per-query primitives :func:`reciprocal_rank`, :func:`ndcg`, :func:`average_precision`, :func:`recall`.

A document is relevant when its relevance is > 0. Scores are ranked by score, highest first; equal
scores are ordered by doc id, *descending* (string order), which is what ``trec_eval`` does, so that
results are deterministic and match it even with ties. Queries are averaged over those in ``qrels``
that have at least one relevant document; such a query missing from the run scores 0.

Recommendation (targets ranked among all items): :func:`recommendation_metrics` – HitRate@k, Recall@k,
NDCG@k, MRR and catalogue coverage@k from each user's target ranks.

Classification: :func:`accuracy`, :func:`precision_recall_f1`, :func:`confusion_matrix`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "Qrels",
    "Run",
    "accuracy",
    "average_precision",
    "best_threshold",
    "confusion_matrix",
    "map_at_k",
    "mrr_at_k",
    "ndcg",
    "ndcg_at_k",
    "pair_metrics",
    "per_query_metrics",
    "precision_recall_f1",
    "rank_documents",
    "rankdata",
    "recall",
    "recall_at_k",
    "reciprocal_rank",
    "recommendation_metrics",
    "retrieval_metrics",
    "roc_auc",
    "spearman",
]

Ranking = Mapping[str, float] | Sequence[str]
"""One query's result: {doc id: score} (ranked by :func:`rank_documents`) or doc ids, best first."""
Run = Mapping[str, Ranking]
Qrels = Mapping[str, Mapping[str, int]]


# ==================================================================================================
# Pair data


def _vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _pair_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _vector(scores, "scores")
    y = _vector(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length ({s.size} vs {y.size})")
    return s, y


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.all((y == 0) | (y == 1)))


def _binary(y: np.ndarray) -> np.ndarray:
    if not _is_binary(y):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"labels must be 0 or 1, got {bad.tolist()}")
    return y == 1


def rankdata(x: Any) -> np.ndarray:
    """1-based ranks of ``x`` (ascending), ties given the average of the ranks they span."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    n = a.size
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new_group = np.empty(n, dtype=bool)
    if n:
        new_group[0] = True
        new_group[1:] = s[1:] != s[:-1]
    group = np.cumsum(new_group) - 1  # group index of each sorted item
    starts = np.flatnonzero(new_group)  # 0-based first position of each group
    ends = np.append(starts[1:], n)  # one past the last position
    avg = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative.

    Computed from ranks (Mann-Whitney U); ties count one half. NaN when only one class is present.
    """
    s, y = _pair_arrays(scores, labels)
    pos = _binary(y)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = rankdata(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks). NaN if either is constant."""
    a, b = _pair_arrays(x, y)
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0.0:
        return math.nan
    return float(np.clip((ra @ rb) / denom, -1.0, 1.0))


def best_threshold(scores: Any, labels: Any) -> float:
    """The threshold that maximises accuracy of ``score >= threshold`` -> positive on this data.

    Candidates are the midpoints between adjacent distinct sorted scores, plus one value below the
    lowest score (everything positive) and one above the highest (everything negative), 1.0 away.
    Of equally good candidates the lowest is returned, so the result is deterministic.
    """
    s, y = _pair_arrays(scores, labels)
    pos = _binary(y)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    pos_sorted = pos[order]
    values, first = np.unique(s_sorted, return_index=True)
    # cum_neg[j] / cum_pos[j]: negatives / positives with a score below values[j] (j = 0..m)
    neg_before = np.concatenate([[0], np.cumsum(~pos_sorted)])
    pos_before = np.concatenate([[0], np.cumsum(pos_sorted)])
    idx = np.append(first, s.size)
    n_pos = int(pos.sum())
    correct = neg_before[idx] + (n_pos - pos_before[idx])  # candidate j: values[j:] predicted positive
    j = int(np.argmax(correct))  # first maximum = lowest threshold
    if j == 0:
        t = values[0] - 1.0
        return float(t if t < values[0] else np.nextafter(values[0], -np.inf))
    if j == values.size:
        t = values[-1] + 1.0
        return float(t if t > values[-1] else np.nextafter(values[-1], np.inf))
    return float((values[j - 1] + values[j]) / 2.0)


def pair_metrics(scores: Any, labels: Any, threshold: float | None = None) -> dict[str, float]:
    """Metrics of similarity scores against pair labels.

    With 0/1 labels: ``accuracy`` and ``f1`` (of the positive class) of ``score >= threshold``,
    ``roc_auc``, ``spearman`` and the ``threshold`` used (chosen with :func:`best_threshold` on this
    same data when ``None``, which is optimistic: choose it on a dev set for test numbers).
    With other labels (graded relevance 0/1/2, similarity scores 0-5) only ``spearman`` is returned.
    """
    s, y = _pair_arrays(scores, labels)
    if not _is_binary(y):
        return {"spearman": spearman(s, y)}
    pos = y == 1
    t = best_threshold(s, y) if threshold is None else float(threshold)
    pred = s >= t
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    denom = 2 * tp + fp + fn
    return {
        "accuracy": float(np.mean(pred == pos)),
        "f1": 2 * tp / denom if denom else 0.0,
        "roc_auc": roc_auc(s, y),
        "spearman": spearman(s, y),
        "threshold": t,
    }


# ==================================================================================================
# Retrieval


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score, highest first; equal scores by doc id, descending (as ``trec_eval``)."""
    items = list(scores.items())
    for doc, score in items:
        if not isinstance(score, int | float | np.integer | np.floating) or math.isnan(score):
            raise ValueError(f"score of doc {doc!r} is not a number: {score!r}")
    items.sort(key=lambda kv: (kv[1], kv[0]), reverse=True)
    return [doc for doc, _ in items]


def _ranking(result: Ranking) -> list[str]:
    if isinstance(result, Mapping):
        return rank_documents(result)
    if isinstance(result, str):
        raise TypeError("a ranking must be a mapping {doc id: score} or a sequence of doc ids, not a str")
    docs = list(result)
    if len(set(docs)) != len(docs):
        seen: set[str] = set()
        for d in docs:
            if d in seen:
                raise ValueError(f"doc {d!r} appears twice in a ranking")
            seen.add(d)
    return docs


def _cut(k: int | None) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"cut-off k must be a positive integer, got {k!r}")
    return int(k)


def _gains(ranking: list[str], rels: Mapping[str, int]) -> np.ndarray:
    return np.array([max(rels.get(d, 0), 0) for d in ranking], dtype=np.float64)


def _n_relevant(rels: Mapping[str, int]) -> int:
    return sum(1 for r in rels.values() if r > 0)


def reciprocal_rank(ranking: Ranking, rels: Mapping[str, int], k: int | None = None) -> float:
    """1 / rank of the first relevant doc within the top ``k`` (whole list if None), else 0."""
    k = _cut(k)
    docs = _ranking(ranking)[:k]
    for i, d in enumerate(docs):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _dcg(gains: np.ndarray) -> float:
    if gains.size == 0:
        return 0.0
    return float(np.sum(gains / np.log2(np.arange(2, gains.size + 2))))


def ndcg(ranking: Ranking, rels: Mapping[str, int], k: int | None = None) -> float:
    """Normalised DCG at ``k``: gain = relevance (negative counts as 0), discount log2(rank + 1).

    The ideal DCG orders all judged relevances of the query, best first, cut at ``k``
    (``trec_eval``'s ``ndcg_cut_k``; ``k=None`` is its ``ndcg``). 0 when nothing is relevant.
    """
    k = _cut(k)
    ideal = np.sort(np.array([r for r in rels.values() if r > 0], dtype=np.float64))[::-1][:k]
    idcg = _dcg(ideal)
    if idcg == 0.0:
        return 0.0
    return _dcg(_gains(_ranking(ranking)[:k], rels)) / idcg


def average_precision(ranking: Ranking, rels: Mapping[str, int], k: int | None = None) -> float:
    """Average precision: the mean over *all* relevant docs of the precision at their rank
    (0 for those not retrieved within the top ``k``). ``trec_eval``'s ``map`` / ``map_cut_k``."""
    k = _cut(k)
    n_rel = _n_relevant(rels)
    if n_rel == 0:
        return 0.0
    hits = _gains(_ranking(ranking)[:k], rels) > 0
    if not hits.any():
        return 0.0
    precision_at_hits = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hits.sum() / n_rel)


def recall(ranking: Ranking, rels: Mapping[str, int], k: int | None = None) -> float:
    """Share of the relevant docs retrieved within the top ``k`` (whole list if None)."""
    k = _cut(k)
    n_rel = _n_relevant(rels)
    if n_rel == 0:
        return 0.0
    hits = _gains(_ranking(ranking)[:k], rels) > 0
    return float(hits.sum() / n_rel)


def _query_metrics(docs: list[str], rels: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    gains = _gains(docs, rels)
    hits = gains > 0
    n_rel = _n_relevant(rels)
    hit_pos = np.flatnonzero(hits)  # 0-based ranks of relevant retrieved docs
    prec_at_hits = np.cumsum(hits)[hits] / (hit_pos + 1)
    ideal = np.sort(np.array([r for r in rels.values() if r > 0], dtype=np.float64))[::-1]
    discounts = 1.0 / np.log2(np.arange(2, max(len(docs), ideal.size) + 2))
    dcg_prefix = np.concatenate([[0.0], np.cumsum(gains * discounts[: len(docs)])])
    idcg_prefix = np.concatenate([[0.0], np.cumsum(ideal * discounts[: ideal.size])])
    first = int(hit_pos[0]) if hit_pos.size else None

    def at(k: int | None) -> dict[str, float]:
        kk = len(docs) if k is None else min(k, len(docs))
        ik = ideal.size if k is None else min(k, ideal.size)
        n_hits = int(np.searchsorted(hit_pos, kk))  # relevant docs within the top kk
        idcg = idcg_prefix[ik]
        return {
            "mrr": 1.0 / (first + 1) if first is not None and first < kk else 0.0,
            "ndcg": float(dcg_prefix[kk] / idcg) if idcg > 0 else 0.0,
            "map": float(prec_at_hits[:n_hits].sum() / n_rel) if n_rel else 0.0,
            "recall": n_hits / n_rel if n_rel else 0.0,
        }

    whole = at(None)
    out = {"mrr": whole["mrr"], "map": whole["map"], "ndcg": whole["ndcg"]}
    for k in ks:
        for name, value in at(k).items():
            out[f"{name}@{k}"] = value
    return out


def _judged_queries(qrels: Qrels) -> list[str]:
    qids = [q for q, rels in qrels.items() if _n_relevant(rels) > 0]
    if not qids:
        raise ValueError("no query in qrels has a relevant document (relevance > 0)")
    return qids


def per_query_metrics(
    run: Run, qrels: Qrels, ks: Iterable[int] = (1, 10, 100)
) -> dict[str, dict[str, float]]:
    """The metrics of :func:`retrieval_metrics` for each query in ``qrels`` with a relevant doc."""
    cut_offs = [c for c in (_cut(k) for k in ks) if c is not None]
    out: dict[str, dict[str, float]] = {}
    for qid in _judged_queries(qrels):
        result = run.get(qid)
        docs = _ranking(result) if result is not None else []
        out[qid] = _query_metrics(docs, qrels[qid], cut_offs)
    return out


def retrieval_metrics(run: Run, qrels: Qrels, ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
    """Mean retrieval metrics over the queries in ``qrels`` that have a relevant doc.

    Keys: ``mrr``, ``map`` and ``ndcg`` over the whole ranked list, and for each ``k`` in ``ks``:
    ``mrr@k``, ``ndcg@k``, ``map@k`` (``map_cut_k``) and ``recall@k``. A query missing from ``run``
    scores 0 on all of them.
    """
    per_query = per_query_metrics(run, qrels, ks)
    keys = next(iter(per_query.values())).keys()
    n = len(per_query)
    return {key: float(sum(m[key] for m in per_query.values()) / n) for key in keys}


def _mean_over_queries(run: Run, qrels: Qrels, metric: Any, k: int | None) -> float:
    qids = _judged_queries(qrels)
    total = 0.0
    for qid in qids:
        result = run.get(qid)
        if result is not None:
            total += metric(result, qrels[qid], k)
    return total / len(qids)


def mrr_at_k(run: Run, qrels: Qrels, k: int | None = 10) -> float:
    """Mean reciprocal rank of the first relevant doc within the top ``k`` (None: whole list)."""
    return _mean_over_queries(run, qrels, reciprocal_rank, k)


def ndcg_at_k(run: Run, qrels: Qrels, k: int | None = 10) -> float:
    """Mean NDCG at ``k`` (``trec_eval`` ``ndcg_cut_k``; None: ``ndcg`` over the whole list)."""
    return _mean_over_queries(run, qrels, ndcg, k)


def map_at_k(run: Run, qrels: Qrels, k: int | None = None) -> float:
    """Mean average precision; ``k=None`` uses the whole list (``trec_eval`` ``map``), else ``map_cut_k``."""
    return _mean_over_queries(run, qrels, average_precision, k)


def recall_at_k(run: Run, qrels: Qrels, k: int | None = 100) -> float:
    """Mean share of relevant docs retrieved within the top ``k``."""
    return _mean_over_queries(run, qrels, recall, k)


# ==================================================================================================
# Classification


def _label_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    if t.size == 0:
        raise ValueError("y_true is empty")
    return t, p


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Share of predictions equal to the truth."""
    t, p = _label_arrays(y_true, y_pred)
    return float(np.mean(t == p))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(
    y_true: Any,
    y_pred: Any,
    average: Literal["macro", "micro", "weighted", "binary"] | None = "macro",
    *,
    labels: Sequence[Any] | None = None,
    pos_label: Any = 1,
) -> tuple[float, float, float] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1.

    ``labels`` are the classes to score (default: every label seen in ``y_true`` or ``y_pred``,
    sorted). ``average``: ``"macro"`` (unweighted mean over classes), ``"micro"`` (from the summed
    counts), ``"weighted"`` (mean weighted by each class's true count), ``"binary"`` (the class
    ``pos_label`` only) or ``None`` (one value per class, as arrays in the order of ``labels``).
    A ratio with a zero denominator is 0 (like scikit-learn's default).
    """
    t, p = _label_arrays(y_true, y_pred)
    if average == "binary":
        labels = [pos_label]
    classes = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    tp = np.array([np.sum((t == c) & (p == c)) for c in classes], dtype=np.float64)
    n_pred = np.array([np.sum(p == c) for c in classes], dtype=np.float64)
    n_true = np.array([np.sum(t == c) for c in classes], dtype=np.float64)
    if average == "micro":
        tp_s, pred_s, true_s = tp.sum(), n_pred.sum(), n_true.sum()
        prec = tp_s / pred_s if pred_s else 0.0
        rec = tp_s / true_s if true_s else 0.0
        f1 = 2 * tp_s / (pred_s + true_s) if pred_s + true_s else 0.0
        return float(prec), float(rec), float(f1)
    prec_c = _safe_div(tp, n_pred)
    rec_c = _safe_div(tp, n_true)
    f1_c = _safe_div(2 * tp, n_pred + n_true)
    if average is None:
        return prec_c, rec_c, f1_c
    if average in ("macro", "binary"):
        return float(prec_c.mean()), float(rec_c.mean()), float(f1_c.mean())
    if average == "weighted":
        total = n_true.sum()
        if total == 0:
            return 0.0, 0.0, 0.0
        w = n_true / total
        return float(prec_c @ w), float(rec_c @ w), float(f1_c @ w)
    raise ValueError(f"unknown average {average!r}; use 'macro', 'micro', 'weighted', 'binary' or None")


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; row = true class, column = predicted class.

    Labels must be integers in ``[0, n_classes)``; ``n_classes`` defaults to the largest label + 1.
    """
    t, p = _label_arrays(y_true, y_pred)
    if not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        t_int, p_int = t.astype(np.int64), p.astype(np.int64)
        if not (np.array_equal(t_int, t) and np.array_equal(p_int, p)):
            raise ValueError("confusion_matrix needs integer class labels")
        t, p = t_int, p_int
    if n_classes is None:
        n_classes = int(max(t.max(), p.max())) + 1
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    flat = t.astype(np.int64) * n_classes + p.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Recommendation


def recommendation_metrics(ranks: Sequence[Any], ks: Iterable[int] = (10, 50), top: Any | None = None,
                           n_items: int | None = None) -> dict[str, float]:
    """Top-k metrics of a recommender, averaged over users.

    ``ranks[u]``: the 1-based ranks of user ``u``'s held-out items among all candidate items (one rank per
    target; each rank counts the other targets ranked above it). Per user, with ``T`` the targets:

    * ``hr@k`` – 1 if any target is in the top k (HitRate),
    * ``recall@k`` – the share of ``T`` in the top k (equal to ``hr@k`` with one target),
    * ``ndcg@k`` – sum over targets in the top k of 1/log2(rank + 1), divided by the ideal DCG
      sum_{j=1..min(|T|, k)} 1/log2(j + 1),
    * ``mrr`` – 1 / the best target's rank (over the whole ranking, no cut-off).

    ``top`` ``(users, >= max(k))``: each user's recommended items, best first; with ``n_items`` it gives
    ``coverage@k``, the share of the catalogue recommended to at least one user in a top k.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError("ks must hold cut-offs >= 1")
    if not len(ranks):
        raise ValueError("no users to average over")
    rank_arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in ranks]
    if any(len(r) == 0 or (r < 1).any() for r in rank_arrays):
        raise ValueError("every user needs at least one target, with ranks >= 1")
    out: dict[str, float] = {}
    for k in ks:
        hits = [(r <= k) for r in rank_arrays]
        ideal = [float(np.sum(1.0 / np.log2(np.arange(2, min(len(r), k) + 2)))) for r in rank_arrays]
        dcg = [float(np.sum(1.0 / np.log2(r[h] + 1))) for r, h in zip(rank_arrays, hits, strict=True)]
        out[f"hr@{k}"] = float(np.mean([h.any() for h in hits]))
        out[f"recall@{k}"] = float(np.mean([h.mean() for h in hits]))
        out[f"ndcg@{k}"] = float(np.mean([d / i for d, i in zip(dcg, ideal, strict=True)]))
    out["mrr"] = float(np.mean([1.0 / r.min() for r in rank_arrays]))
    if top is not None and n_items:
        top = np.asarray(top)
        for k in ks:
            if top.shape[1] >= k:
                out[f"coverage@{k}"] = float(len(np.unique(top[:, :k])) / n_items)
    return out
