"""Labelled texts for classification: one label per text or several (multi-label), read from TSV/CSV/JSONL/Parquet.

Labels are strings (numbers are read as their text: ``3`` and ``"3"`` are the same label); in multi-label data one
field holds several labels split on ``label_sep`` (or a JSON list), and an empty field means "none of the labels".
Bad rows (empty text, undecodable bytes, a missing column, an unknown label in dev/test data) raise
:class:`~deepsem.data.errors.DataError` naming the file, line and field, or are skipped and counted with
``skip_bad_rows=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepsem.data.errors import DataError, SkipReport
from deepsem.data.readers import Column, detect_format, iter_records, sniff_labelled_header

__all__ = ["LabelledTexts", "as_labelled", "iter_labelled", "read_labelled", "sort_labels"]


class LabelledTexts:
    """Texts and their labels: one label per text, or a tuple of labels per text (multi-label data).

    ``labels`` may be given as strings (one label each) or sequences of strings; they are stored as tuples.
    ``lines`` are the file lines the rows came from (for messages), ``skipped`` the bad rows left out.
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[str | Sequence[str]], *,
                 lines: Sequence[int] | None = None, source: str = "", skipped: SkipReport | None = None) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.texts = list(texts)
        self.labels: list[tuple[str, ...]] = [
            (y,) if isinstance(y, str) else tuple(str(v) for v in y) for y in labels
        ]
        self.lines = list(lines) if lines is not None else list(range(1, len(self.texts) + 1))
        self.source = source
        self.skipped = skipped if skipped is not None else SkipReport()

    def __len__(self) -> int:
        return len(self.texts)

    def label_set(self) -> list[str]:
        """Every label that occurs, in :func:`sort_labels` order."""
        return sort_labels({y for row in self.labels for y in row})

    def __repr__(self) -> str:
        return f"LabelledTexts({len(self)} texts, {len(self.label_set())} labels, source={self.source!r})"


def sort_labels(labels: Sequence[str] | set[str]) -> list[str]:
    """Labels in a stable order: by number when every label is a whole number (``2`` before ``10``),
    by text otherwise."""
    unique = set(labels)
    try:
        return sorted(unique, key=lambda y: (int(y), y))
    except ValueError:
        return sorted(unique)


def _whole_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _label_values(value: Any, multi_label: bool, label_sep: str) -> tuple[str, ...]:
    """The labels of one raw field value; ValueError with a short reason when it holds none."""
    if value is None:
        raise ValueError("missing value (null)")
    if isinstance(value, list | tuple):
        if not multi_label:
            raise ValueError(f"{value!r} is a list of labels: read it with multi_label=True")
        items = list(value)
    else:
        items = [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            parts = item.split(label_sep) if multi_label and label_sep else [item]
        elif _whole_number(item):
            parts = [str(int(item))]
        else:
            raise ValueError(f"{item!r} is not a label (a text or a whole number)")
        out.extend(p.strip() for p in parts if p.strip())
    if not out and not multi_label:
        raise ValueError("empty label")
    return tuple(dict.fromkeys(out))


def iter_labelled(
    path: str | os.PathLike[str],
    *,
    text_col: Column = 0,
    label_col: Column = 1,
    multi_label: bool = False,
    label_sep: str = ",",
    labels: Sequence[str] | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
    report: SkipReport | None = None,
) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """``(text, labels, line)`` of a file of labelled texts, row by row, checked as :func:`read_labelled` does
    (which collects them): one row held at a time, what a stream of shards reads. Skipped rows go to ``report``."""
    spath = os.fspath(path)
    unit = "row" if detect_format(spath, fmt) == "parquet" else "line"
    known = set(labels) if labels is not None else None
    report = report if report is not None else SkipReport()
    columns = {"text": text_col, "label": label_col}
    if (header is None and isinstance(text_col, int) and isinstance(label_col, int)
            and detect_format(spath, fmt) in ("tsv", "csv")):
        header = sniff_labelled_header(spath, text_col, label_col, fmt=fmt, encoding=encoding)
    for rec in iter_records(spath, columns, fmt=fmt, header=header, skip_bad_rows=skip_bad_rows, report=report,
                            encoding=encoding):
        try:
            raw = rec.values["text"]
            if raw is None or isinstance(raw, bool) or not isinstance(raw, str | int | float):
                problem = "missing value (null)" if raw is None else f"expected text, got {type(raw).__name__}"
                raise DataError(spath, rec.line, "text", problem, column=text_col, unit=unit)
            text = str(raw).strip()
            if not text:
                raise DataError(spath, rec.line, "text", "empty text", column=text_col, unit=unit)
            try:
                row = _label_values(rec.values["label"], multi_label, label_sep)
            except ValueError as e:
                raise DataError(spath, rec.line, "label", str(e), column=label_col, unit=unit) from None
            if known is not None:
                unknown = [y for y in row if y not in known]
                if unknown:
                    shown = ", ".join(map(repr, sort_labels(known)[:10])) + (", ..." if len(known) > 10 else "")
                    raise DataError(spath, rec.line, "label", f"unknown label {unknown[0]!r}; the model knows "
                                    f"{len(known)} labels ({shown})", column=label_col, unit=unit)
        except DataError as e:
            if not skip_bad_rows:
                raise
            report.add(e)
            continue
        yield text, row, rec.line


def read_labelled(
    path: str | os.PathLike[str],
    *,
    text_col: Column = 0,
    label_col: Column = 1,
    multi_label: bool = False,
    label_sep: str = ",",
    labels: Sequence[str] | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
) -> LabelledTexts:
    """Read a file of labelled texts (TSV/CSV/JSONL/Parquet; see :mod:`deepsem.data.readers`).

    ``labels``: the labels a model knows; a row with any other label is a bad row (dev and test files).
    ``header=None``: the first TSV/CSV line is a header when a column is given by name, or, with columns given by
    position, when it holds column names such as ``text`` / ``label`` (see
    :func:`deepsem.data.readers.sniff_labelled_header`; the decision is logged). ``True`` / ``False`` decide.
    Bad rows raise :class:`DataError` naming file, line and field, or with ``skip_bad_rows`` are skipped and
    counted in ``.skipped``.
    """
    spath = os.fspath(path)
    report = SkipReport()
    texts: list[str] = []
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    for text, row, line in iter_labelled(path, text_col=text_col, label_col=label_col, multi_label=multi_label,
                                         label_sep=label_sep, labels=labels, fmt=fmt, header=header,
                                         skip_bad_rows=skip_bad_rows, encoding=encoding, report=report):
        texts.append(text)
        rows.append(row)
        lines.append(line)
    return LabelledTexts(texts, rows, lines=lines, source=spath, skipped=report)


def as_labelled(data: str | os.PathLike[str] | LabelledTexts, labels: Sequence[str] | None,
                 options: dict[str, Any]) -> LabelledTexts:
    if isinstance(data, LabelledTexts):
        if labels is not None:
            known = set(labels)
            for row, line in zip(data.labels, data.lines, strict=True):
                for y in row:
                    if y not in known:
                        raise DataError(data.source or "<data>", line, "label", f"unknown label {y!r}")
        return data
    out = read_labelled(data, labels=labels, **options)
    if out.skipped.count:
        print(f"{data}: {out.skipped}")
    return out
