"""The errors deepsem raises on input a user can fix: each message names the file, option or field and the cause.

Every one derives from :class:`DeepsemError`, which the command line turns into a one-line ``error:`` message
(never a traceback). Most also derive from ``ValueError`` so code written against earlier versions, which caught
``ValueError``, keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileNotFoundError",
    "DeepsemError",
    "IndexFileError",
    "IndexLockedError",
    "ModelFileError",
    "ModelFileMissingError",
    "QueryError",
    "ResumeMismatchError",
    "TrainingDivergedError",
]


class DeepsemError(Exception):
    """Base of every error deepsem raises about its inputs (files, options, requests)."""


class ConfigError(DeepsemError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class ModelFileError(DeepsemError, ValueError):
    """A model directory or checkpoint is damaged, truncated, hostile or does not match its config."""


class ModelFileMissingError(ModelFileError, FileNotFoundError):
    """A file a model directory needs is missing (also a ``FileNotFoundError``, as raised before)."""


class IndexFileError(DeepsemError, ValueError):
    """An index directory is damaged or not an index, or an index operation cannot be done."""


class IndexLockedError(IndexFileError):
    """Another process is writing the same index and did not finish in time."""


class QueryError(DeepsemError, ValueError):
    """A search request cannot be answered as given (an empty query, k < 1, an unknown mode); ``position`` is
    the 0-based number of the offending query when there is one."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class ResumeMismatchError(DeepsemError, ValueError):
    """The output folder holds a run whose data or settings differ from the ones given now."""


class TrainingDivergedError(DeepsemError, FloatingPointError):
    """The training loss or the gradients became NaN or infinite."""


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


# defined here so that deepsem.fileio (below deepsem.data) can raise them; named by their documented home
DataError.__module__ = DataFileNotFoundError.__module__ = "deepsem.data.errors"
