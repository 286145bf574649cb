"""Errors raised while reading data files, and the report of rows skipped because of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from deepsem.errors import DeepsemError

__all__ = ["DataError", "DataFileNotFoundError", "SkipReport"]


class DataError(DeepsemError, ValueError):
    """A malformed row (or file) in a data set.

    The message names the file, the 1-based line number (counting a header line; for Parquet the
    1-based row number) and the field, e.g.
    ``bq/train.tsv, line 17, field 'label': 'abc' is not a number``.
    A field read from a named column that differs from the field's name is shown as
    ``field 'text_a' (column 'sentence1')``. The parts are also kept as attributes
    (``path``, ``line``, ``field``, ``column``, ``problem``) so callers can act on them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        field: str | None,
        problem: str,
        *,
        column: int | str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.column = column
        self.problem = problem
        parts = [_short_path(self.path)]
        if line is not None:
            parts.append(f"{unit} {line}")
        if field is not None:
            where = f"field {field!r}"
            if isinstance(column, str) and column != field:
                where += f" (column {column!r})"
            parts.append(where)
        super().__init__(", ".join(parts) + ": " + problem)


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that does not exist: a :class:`DataError` that is also a ``FileNotFoundError``, so code that
    caught the latter from earlier versions keeps working."""


def _short_path(path: str) -> str:
    """The file name with its parent folder (``bq/train.tsv``): enough to find it, short enough to read."""
    parent = os.path.basename(os.path.dirname(path))
    name = os.path.basename(path) or path
    return f"{parent}/{name}" if parent else name


@dataclass
class SkipReport:
    """Rows skipped by a reader with ``skip_bad_rows=True``.

    ``count`` is the number of bad rows skipped, ``messages`` the error messages of the first
    ``max_messages`` of them. ``filtered`` counts rows that a ``label_map`` dropped on purpose (by
    returning ``None``); those are not bad rows.
    """

    count: int = 0
    messages: list[str] = field(default_factory=list)
    filtered: int = 0
    max_messages: int = 5

    def add(self, error: DataError | str) -> None:
        """Count one skipped bad row and keep its message if fewer than ``max_messages`` are kept."""
        self.count += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(str(error))

    def __bool__(self) -> bool:
        return self.count > 0 or self.filtered > 0

    def __str__(self) -> str:
        if self.count == 0:
            text = "skipped no bad rows"
        else:
            noun = "row" if self.count == 1 else "rows"
            text = f"skipped {self.count} bad {noun} (first: {self.messages[0]})"
        if self.filtered:
            text += f"; {self.filtered} rows dropped by label_map"
        return text
