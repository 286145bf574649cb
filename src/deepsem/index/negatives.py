"""Mining hard negatives for training pairs with a two-tower model and BM25 (what ``deepsem negatives mine`` runs).

The rules and the file format are :mod:`deepsem.data.hard_negatives`'s; this module brings the model (loaded from
its directory) and the BM25 ranking (:func:`~deepsem.data.lexical.bm25_ranking`: the BM25 index hybrid search uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepsem.data.hard_negatives import (
    HardNegatives,
    MiningSettings,
    mine_negatives,
    mining_inputs,
    read_hard_negatives,
    write_hard_negatives,
)
from deepsem.data.lexical import bm25_ranking
from deepsem.data.pairs import TextPairs, as_pairs

__all__ = ["HardNegatives", "MiningSettings", "bm25_ranking", "mine_hard_negatives", "read_hard_negatives",
           "write_hard_negatives"]


def mine_hard_negatives(data: str | Path | TextPairs, model: str | Path | Any, *, source: str = "both",
                        settings: MiningSettings | None = None, columns: Sequence[int | str | None] = (0, 1, 2),
                        skip_bad_rows: bool = False, label_map: Any = None, batch_size: int = 512,
                        out: str | Path | None = None) -> HardNegatives:
    """Mine hard negatives for the positive pairs of ``data`` among its documents (every distinct text_b).

    ``model``: a two-tower model directory (or a loaded :class:`~deepsem.tasks.matching.SemanticModel`): its
    cosine ranks the ``dense`` candidates and is the score every guard compares. ``source``: ``dense``, ``bm25`` or
    ``both``. ``settings``: the window, margin and count (:class:`MiningSettings`). Written to ``out`` (atomically)
    when given. See :mod:`deepsem.data.hard_negatives` for the rules and the file."""
    from deepsem.tasks import load

    settings = (settings or MiningSettings()).validate()
    pairs = as_pairs(data, columns, skip_bad_rows, label_map, binary=True)
    semantic = load(model) if isinstance(model, str | Path) else model
    if not callable(getattr(semantic, "encode", None)) or not hasattr(semantic, "dim"):
        raise ValueError(f"{model}: not a two-tower model (it makes no vectors to rank documents by)")
    queries, docs, positives = mining_inputs(pairs)
    if not queries:
        raise ValueError(f"{data}: no positive pairs to mine negatives for")
    lexical = bm25_ranking(docs) if source in ("bm25", "both") else None
    mined = mine_negatives(queries, docs, positives, settings, source=source, lexical=lexical,
                           encode=lambda texts, side: semantic.encode(texts, batch_size, side))
    mined.model = str(model) if isinstance(model, str | Path) else None
    if out is not None:
        write_hard_negatives(out, mined)
    return mined
