"""Data: readers for pair, click and retrieval files, and batching of tokenised texts."""

from deepsem.data.errors import DataError, SkipReport
from deepsem.data.readers import (
    Clicks,
    Column,
    PairRow,
    Pairs,
    Record,
    RetrievalSet,
    detect_format,
    iter_pairs,
    iter_records,
    read_clicks,
    read_pairs,
    read_retrieval,
)

__all__ = [
    "Clicks",
    "Column",
    "DataError",
    "PairRow",
    "Pairs",
    "Record",
    "RetrievalSet",
    "SkipReport",
    "detect_format",
    "iter_pairs",
    "iter_records",
    "read_clicks",
    "read_pairs",
    "read_retrieval",
]
