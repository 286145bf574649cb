"""Compatibility: the BM25 index moved to :mod:`deepsem.data.lexical` (this name keeps old imports working)."""

from deepsem.data.lexical import ROWS_FILE, LexicalIndex, lexical_tokens

__all__ = ["ROWS_FILE", "LexicalIndex", "lexical_tokens"]
