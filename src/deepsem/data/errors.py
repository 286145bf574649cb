"""Errors raised while reading data files, and the report of rows skipped because of them.

:class:`DataError` and :class:`DataFileNotFoundError` are defined in :mod:`deepsem.errors` (the file readers in
:mod:`deepsem.fileio`, below this package, raise them) and are the same classes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deepsem.errors import DataError, DataFileNotFoundError

__all__ = ["DataError", "DataFileNotFoundError", "SkipReport"]


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
