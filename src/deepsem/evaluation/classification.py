"""Evaluators of classifiers: scores of predicted probabilities against the true labels, the confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from deepsem.fileio import atomic_write
from deepsem.metrics import precision_recall_f1


def classification_metrics(targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], *,
                           multi_label: bool = False, threshold: float = 0.5, top_confused: int = 5
                           ) -> dict[str, Any]:
    """Scores of predictions ``probs (N, L)`` against ``targets`` (label ids ``(N,)``, or a 0/1 ``(N, L)``
    matrix for multi-label data; a label is predicted when its probability is at least ``threshold``).

    ``accuracy`` (multi-label: every label of the text right), ``macro_f1`` / ``macro_precision`` /
    ``macro_recall`` (unweighted over the labels that occur in the truth or the predictions; multi-label:
    over all labels, as scikit-learn), ``micro_f1``, ``weighted_f1``, ``per_class`` (precision, recall,
    F1, support, predicted count of every label), and for one label per text the ``confusion`` matrix (rows:
    true label, columns: predicted; order of ``labels``), the ``most_confused`` pairs (the ``top_confused``
    largest off-diagonal counts) and ``log_loss``.
    """
    labels = list(labels)
    n, num = probs.shape if probs.ndim == 2 else (0, len(labels))
    out: dict[str, Any] = {"examples": int(n)}
    if multi_label:
        truth = np.asarray(targets, dtype=bool)
        pred = probs >= threshold
        tp = (truth & pred).sum(0).astype(np.float64)
        n_pred = pred.sum(0).astype(np.float64)
        n_true = truth.sum(0).astype(np.float64)
        prec = np.divide(tp, n_pred, out=np.zeros(num), where=n_pred > 0)
        rec = np.divide(tp, n_true, out=np.zeros(num), where=n_true > 0)
        f1 = np.divide(2 * tp, n_pred + n_true, out=np.zeros(num), where=n_pred + n_true > 0)
        denom = n_pred.sum() + n_true.sum()
        out.update(
            accuracy=float((truth == pred).all(1).mean()) if n else 0.0,
            hamming_loss=float((truth != pred).mean()) if n else 0.0,
            macro_precision=float(prec.mean()), macro_recall=float(rec.mean()), macro_f1=float(f1.mean()),
            micro_precision=float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0,
            micro_recall=float(tp.sum() / n_true.sum()) if n_true.sum() else 0.0,
            micro_f1=float(2 * tp.sum() / denom) if denom else 0.0,
            weighted_f1=float((f1 * n_true).sum() / n_true.sum()) if n_true.sum() else 0.0,
        )
        out["per_class"] = {y: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                "support": int(n_true[i]), "predicted": int(n_pred[i])}
                            for i, y in enumerate(labels)}
        return out
    truth_ids = np.asarray(targets, dtype=np.int64)
    pred_ids = probs.argmax(1) if n else np.zeros(0, np.int64)
    p, r, f = precision_recall_f1(truth_ids, pred_ids, average="macro")
    _, _, micro = precision_recall_f1(truth_ids, pred_ids, average="micro")
    _, _, weighted = precision_recall_f1(truth_ids, pred_ids, average="weighted")
    per_class = precision_recall_f1(truth_ids, pred_ids, average=None, labels=list(range(num)))
    pc, rc, fc = cast(tuple[np.ndarray, np.ndarray, np.ndarray], per_class)  # average=None: arrays
    confusion = np.bincount(truth_ids * num + pred_ids, minlength=num * num).reshape(num, num)
    picked = np.clip(probs[np.arange(n), truth_ids], 1e-12, 1.0) if n else np.ones(0)
    out.update(accuracy=float((truth_ids == pred_ids).mean()) if n else 0.0,
               macro_precision=float(p), macro_recall=float(r), macro_f1=float(f), micro_f1=float(micro),
               weighted_f1=float(weighted), log_loss=float(-np.log(picked).mean()) if n else 0.0)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    out["per_class"] = {y: {"precision": float(pc[i]), "recall": float(rc[i]), "f1": float(fc[i]),
                            "support": int(support[i]), "predicted": int(predicted[i])}
                        for i, y in enumerate(labels)}
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.flatnonzero(off)
    flat = flat[np.lexsort((flat, -off.reshape(-1)[flat]))][:top_confused]
    out["most_confused"] = [{"true": labels[i // num], "predicted": labels[i % num], "count": int(off.flat[i])}
                            for i in flat]
    out["confusion"] = {"labels": labels, "matrix": confusion.tolist()}
    return out


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: str | os.PathLike[str],
                   title: str = "confusion matrix") -> Path:
    """Write a PNG of the confusion matrix (colour: share of the true class; numbers: counts), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num = len(labels)
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = min(4 + 0.45 * num, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(num), [str(y) for y in labels], rotation=45 if num > 4 else 0, ha="right")
    ax.set_yticks(range(num), [str(y) for y in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if num <= 30:
        for i in range(num):
            for j in range(num):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out
