"""The document store beside a vector index: SQLite, one row per document (id, text, metadata as JSON).

The Faiss id of a document is its ``row``; deleted documents keep their row with ``deleted = 1`` until
the index is rebuilt, so a search filters them out without touching the vector index.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepsem.errors import IndexFileError

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    deleted INTEGER NOT NULL DEFAULT 0
);
"""



def check_regular(path: Path, what: str) -> None:
    """``path`` is a regular file that can be stat'ed; else an :class:`IndexFileError` naming it as the ``what`` of
    an index version (a folder, FIFO or device where a file should be, or a file that cannot be read)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise IndexFileError(f"{path}: the {what} is not a regular file")

class DocStore:
    def __init__(self, path: str | Path) -> None:
        """Open (or create) a store for writing: only ever a new index version's own work copy."""
        self.path = Path(path)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False)
        self.db.executescript(SCHEMA)

    @classmethod
    def open_existing(cls, path: str | Path) -> DocStore:
        """Open the store of a published index version read-only, checked: a missing, truncated or garbage
        file, a directory or an unreadable one is an :class:`IndexFileError` naming the file and the cause
        (never a raw ``sqlite3.DatabaseError``, never an empty store silently created in its place)."""
        path = Path(path)
        check_regular(path, "document store")
        store = cls.__new__(cls)
        store.path = path
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
        try:
            store.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise IndexFileError(f"{path}: cannot open the document store: {exc}") from None
        try:
            problems = [r[0] for r in store.db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise IndexFileError(f"{path}: the document store is damaged: {problems[0]}")
            store.db.execute("SELECT row, id, text, meta, deleted FROM docs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            store.db.close()
            raise IndexFileError(f"{path}: not a deepsem document store (SQLite): {exc}") from None
        except IndexFileError:
            store.db.close()
            raise
        return store

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs WHERE deleted = 0").fetchone()[0])

    def next_row(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(row) + 1, 0) FROM docs").fetchone()[0])

    def add(self, rows: Sequence[int], ids: Sequence[str], texts: Sequence[str],
            metas: Sequence[dict[str, Any]]) -> None:
        """Insert documents; an id that already exists (and is not deleted) is an error."""
        clash = self.existing(ids)
        if clash:
            raise ValueError(f"document id(s) already in the index: {', '.join(sorted(clash)[:5])}")
        with self.db:
            self.db.execute("DELETE FROM docs WHERE deleted = 1 AND id IN (SELECT value FROM json_each(?))",
                            (json.dumps(list(ids)),))
            self.db.executemany(
                "INSERT INTO docs (row, id, text, meta) VALUES (?, ?, ?, ?)",
                ((int(r), i, t, json.dumps(m, ensure_ascii=False)) for r, i, t, m in
                 zip(rows, ids, texts, metas, strict=True)),
            )

    def existing(self, ids: Iterable[str]) -> set[str]:
        found = self.db.execute("SELECT id FROM docs WHERE deleted = 0 AND id IN (SELECT value FROM json_each(?))",
                                (json.dumps(list(ids)),))
        return {r[0] for r in found}

    def delete(self, ids: Sequence[str]) -> int:
        """Mark documents deleted; returns how many were found."""
        with self.db:
            cur = self.db.execute(
                "UPDATE docs SET deleted = 1 WHERE deleted = 0 AND id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),))
        return cur.rowcount

    def live_rows(self, ids: Sequence[str]) -> list[int]:
        """The rows of the live documents among ``ids``."""
        found = self.db.execute("SELECT row FROM docs WHERE deleted = 0 AND id IN (SELECT value FROM json_each(?))",
                                (json.dumps(list(ids)),))
        return [int(r) for (r,) in found]

    def deleted_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs WHERE deleted = 1").fetchone()[0])

    def fetch(self, rows: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """row -> (id, text, metadata) for the live documents among ``rows``."""
        if not len(rows):
            return {}
        found = self.db.execute(
            "SELECT row, id, text, meta FROM docs WHERE deleted = 0 AND row IN (SELECT value FROM json_each(?))",
            (json.dumps([int(r) for r in rows]),))
        return {r: (i, t, json.loads(m)) for r, i, t, m in found}

    def iter_live(self, batch: int = 10_000) -> Iterable[list[tuple[int, str, str, dict[str, Any]]]]:
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT row, id, text, meta FROM docs WHERE deleted = 0 AND row > ? ORDER BY row LIMIT ?",
                (last, batch)).fetchall()
            if not rows:
                return
            yield [(r, i, t, json.loads(m)) for r, i, t, m in rows]
            last = rows[-1][0]
