"""The errors deepsem raises on input a user can fix: each message names the file, option or field and the cause.

Every one derives from :class:`DeepsemError`, which the command line turns into a one-line ``error:`` message
(never a traceback). Most also derive from ``ValueError`` so code written against earlier versions, which caught
``ValueError``, keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
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
