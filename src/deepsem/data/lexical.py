"""BM25 (the ``bm25s`` library) over CJK characters and Latin words: the lexical side of hybrid search, and the
ranking that hard-negative mining (and re-mining during training) draws its BM25 candidates from.

Documents are tokenised as deepsem's ``char`` tokenizer splits text (NFKC, lower-case, one token per CJK
character, Latin words and numbers whole, punctuation dropped), with no vocabulary limit. Row ``j`` of the
BM25 index is the document of store row ``rows[j]``. Saved as bm25s's own files (NumPy arrays written without
pickle, a JSON vocabulary) plus ``rows.npy``; loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.errors import IndexFileError
from deepsem.text.char import normalize_text, word_pattern

_TOKENS = word_pattern(keep_punct=False)
#: ``rank(queries, n)``: for each query, the rows of its ``n`` best documents by BM25, best first.
Lexical = Callable[[Sequence[str], int], list[np.ndarray]]
ROWS_FILE = "rows.npy"


def lexical_tokens(text: str) -> list[str]:
    """CJK characters one by one and Latin words whole, normalised: ``"Hello 世界!"`` -> hello, 世, 界."""
    return _TOKENS.findall(normalize_text(text))


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("lexical (hybrid) search needs bm25s: pip install bm25s") from exc
    return bm25s


def _cause(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class LexicalIndex:
    """BM25 scores of every document for a query; see the module docstring."""

    def __init__(self, engine: Any, rows: np.ndarray) -> None:
        self.engine, self.rows = engine, rows
        self._position = np.full(int(rows.max(initial=-1)) + 1, -1, dtype=np.int64)
        self._position[rows] = np.arange(len(rows))

    @classmethod
    def build(cls, rows: Sequence[int], texts: Iterable[str], k1: float = 1.5, b: float = 0.75) -> LexicalIndex:
        bm25s = _bm25s()
        tokens = [lexical_tokens(t) or [""] for t in texts]  # bm25s needs a token per document
        if len(tokens) != len(rows):
            raise ValueError(f"{len(rows)} rows for {len(tokens)} texts")
        engine = bm25s.BM25(k1=k1, b=b)
        engine.index(tokens, show_progress=False)
        return cls(engine, np.asarray(rows, dtype=np.int64))

    def save(self, directory: Path) -> None:
        """Write into ``directory`` (a fresh index version folder: the version switch makes it atomic)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.engine.save(str(directory), show_progress=False)
        np.save(directory / ROWS_FILE, self.rows, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        """Read what :meth:`save` wrote; any damaged, missing or non-regular file is an :class:`IndexFileError`
        naming the folder and the cause (checked before reading, so a FIFO never blocks the load)."""
        bm25s = _bm25s()
        try:
            if not stat.S_ISDIR(directory.stat().st_mode):
                raise IndexFileError(f"{directory}: the lexical (BM25) index is not a directory")
            for item in directory.iterdir():
                if not stat.S_ISREG(item.stat().st_mode):
                    raise IndexFileError(f"{item}: not a regular file in the lexical (BM25) index")
            engine = bm25s.BM25.load(str(directory), allow_pickle=False, show_progress=False)
            rows = np.load(directory / ROWS_FILE, allow_pickle=False)
            num_docs = int(engine.scores["num_docs"])
        except IndexFileError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, EOFError, RecursionError,
                MemoryError, json.JSONDecodeError) as exc:
            raise IndexFileError(f"{directory}: unreadable lexical (BM25) index: {_cause(exc)}") from None
        if rows.ndim != 1 or rows.dtype.kind not in "iu" or len(rows) != num_docs:
            raise IndexFileError(f"{directory / ROWS_FILE}: {rows.shape} rows for {num_docs} documents")
        return cls(engine, rows.astype(np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document (aligned with :attr:`rows`) for ``query``; all 0 without a known token."""
        ids = self.engine.get_tokens_ids(lexical_tokens(query))
        if not ids:
            return np.zeros(len(self.rows), dtype=np.float32)
        return np.asarray(self.engine.get_scores_from_ids(ids), dtype=np.float32)

    def scores_of(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Pick the documents ``rows`` (store rows) out of a :meth:`scores` vector; 0 for rows not indexed."""
        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= 0) & (rows < len(self._position))
        pos = np.where(inside, self._position[np.where(inside, rows, 0)], -1)
        return np.where(pos >= 0, scores[np.maximum(pos, 0)], 0.0).astype(np.float32)

    def top(self, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best (scores, store rows) of a :meth:`scores` vector, best first, ties in row order; zero
        scores left out. Linear time: one partition, then a sort of the ``n`` kept."""
        n = min(n, len(scores))
        if n <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        kth = np.partition(scores, len(scores) - n)[len(scores) - n]  # the n-th largest score
        above = np.flatnonzero(scores > kth)
        part = np.concatenate([above, np.flatnonzero(scores == kth)[: n - len(above)]])
        part = part[np.lexsort((part, -scores[part]))]
        part = part[scores[part] > 0]
        return scores[part], self.rows[part]


def bm25_ranking(docs: Sequence[str]) -> Lexical:
    """A BM25 index of ``docs`` (row ``i`` = ``docs[i]``) as a ranking function: ``rank(queries, n)`` gives each
    query's ``n`` best rows, best first (documents sharing no token with the query are left out)."""
    index = LexicalIndex.build(range(len(docs)), docs)

    def rank(queries: Sequence[str], n: int) -> list[np.ndarray]:
        return [index.top(index.scores(q), n)[1] for q in queries]

    return rank
