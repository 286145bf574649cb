"""Text pairs for matching: aligned texts with optional labels, read from a pair file or a click log."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from deepsem.data.readers import Clicks, Column, read_clicks, read_pairs


@dataclass
class TextPairs:
    """Aligned lists of texts; ``labels`` None means every pair is a positive (clicked, translated...)."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.text_a) != len(self.text_b) or (self.labels is not None and len(self.labels) != len(self.text_a)):
            raise ValueError("text_a, text_b and labels must have the same length")

    @property
    def is_labelled(self) -> bool:
        """True when the labels hold both classes (a pair classification set), not only positives."""
        return self.labels is not None and len(np.unique(self.labels > 0.5)) == 2


def clicks_to_pairs(log: Clicks, min_clicks: float = 1.0) -> TextPairs:
    """A click log aggregated per (query, doc) -> pairs, as DSSM trains on clicks.

    A pair clicked at least ``min_clicks`` times is a positive. When the log has impressions, a pair shown
    but never clicked is a negative (label 0), so pointwise losses can use it; a pair clicked fewer than
    ``min_clicks`` times (but at least once) is left out as ambiguous.
    """
    a: list[str] = []
    b: list[str] = []
    y: list[float] = []
    for i, (q, d) in enumerate(zip(log.queries, log.docs, strict=True)):
        if log.clicks[i] >= min_clicks:
            label = 1.0
        elif log.impressions is not None and log.clicks[i] == 0 and log.impressions[i] > 0:
            label = 0.0
        else:
            continue
        a.append(q)
        b.append(d)
        y.append(label)
    return TextPairs(a, b, np.asarray(y, np.float32) if log.impressions is not None else None)


def as_pairs(data: str | Path | TextPairs | Any, columns: Sequence[int | str | None] = (0, 1, 2),
             skip_bad_rows: bool = False, label_map: Any = None, clicks: bool = False,
             impressions: int | str | None = None, *, binary: bool = False) -> TextPairs:
    """A file path (TSV/CSV/JSONL/Parquet) or already loaded pairs -> :class:`TextPairs`.

    With ``clicks`` the file is a click log: ``columns`` name the query, document and clicks columns (clicks
    ``None``: every row is one click), ``impressions`` an optional impressions column; see
    :func:`clicks_to_pairs`.
    ``binary=True`` (training data): a label that is not 0/1 after ``label_map`` is a :class:`DataError` saying
    how to map it. Otherwise graded labels are kept (pair evaluation then reports Spearman only) and one line on
    stderr says that ranking metrics and training count a label above 0.5 as relevant.
    """
    if isinstance(data, TextPairs):
        return data
    if clicks and isinstance(data, str | Path):
        q, d, c = columns
        log = read_clicks(data, query=cast(Column, q), doc=cast(Column, d), clicks=c, impressions=impressions,
                          skip_bad_rows=skip_bad_rows)
        if log.skipped.count:
            print(f"{data}: {log.skipped}")
        return clicks_to_pairs(log)
    if isinstance(data, str | Path):
        a, b, label = columns
        pairs = read_pairs(data, text_a=cast(Column, a), text_b=cast(Column, b), label=label,
                           skip_bad_rows=skip_bad_rows, label_map=label_map, binary=binary)
        if pairs.skipped.count:
            print(f"{data}: {pairs.skipped}")
        labels = None if label is None else np.asarray(pairs.labels, dtype=np.float32)
        if labels is not None and len(labels) and not np.isin(labels, (0.0, 1.0)).all():
            values = np.unique(labels)
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            print(f"{data}: graded labels ({shown}): pair evaluation reports Spearman only; ranking metrics and "
                  "training count a label above 0.5 as relevant (pass label_map to binarise)", file=sys.stderr)
        return TextPairs(list(pairs.text_a), list(pairs.text_b), labels)
    if hasattr(data, "text_a") and hasattr(data, "text_b"):
        labels = getattr(data, "labels", None)
        return TextPairs(list(data.text_a), list(data.text_b), None if labels is None else np.asarray(labels))
    raise TypeError(f"cannot read pairs from {type(data).__name__}")
