"""The re-ranker's document cache: each document's encoder states, kept between queries.

A cross-encoder's first BiLSTM reads each text alone, so a document's states (``(T, 2H)`` float32, its tokens'
encodings before the alignment with the query) are the same whatever the query: a third of what re-ranking a
document costs, computed once per document instead of once per (query, document). A service re-ranks the same
documents again and again (the first stage's top results of similar queries), so it keeps them here.

:class:`DocumentStates` is a least-recently-used map from a document's token ids to its states, bounded in bytes
(the arrays plus their keys), safe to share between threads (the service answers requests on a thread pool).
Beside it, a smaller least-recently-used map from a document's text to its token ids (:meth:`DocumentStates.token_ids`)
spares tokenizing a document met again: about half of what is left of the Python around a cached call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: The default budget (``CrossEncoder.cache_documents``, ``deepsem serve --rerank-cache-mb``): some 28,000
#: documents of 12 tokens at the default hidden size of 96 (about 9.7 KB each), more for narrower models.
DOCUMENT_CACHE_MB = 256.0
#: What an entry costs beyond its array: the key (a tuple of ints) and the map's bookkeeping, about.
ENTRY_OVERHEAD = 120
KEY_BYTES_PER_TOKEN = 36
#: The text -> token ids map keeps one text per this many bytes of the budget (65,536 texts for 256 MB: some 16 MB
#: of short texts and their ids, beside the budget).
BYTES_PER_TEXT = 4096

Key = tuple[int, ...]


def _entry_bytes(key: Key, states: np.ndarray) -> int:
    return int(states.nbytes) + ENTRY_OVERHEAD + KEY_BYTES_PER_TOKEN * len(key)


class DocumentStates:
    """Documents' encoder states by token ids, at most ``max_bytes`` in all, least recently used dropped first.

    :meth:`lookup` gives what is held, :meth:`put` keeps more, :meth:`get` does both around a function that
    computes what is missing. An entry larger than the whole budget is not kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"the document cache needs a budget of at least 1 byte, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._ids: OrderedDict[str, Key] = OrderedDict()
        self.max_texts = max(self.max_bytes // BYTES_PER_TEXT, 1)
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """What the entries held now cost (arrays and keys, about)."""
        return self._bytes

    def lookup(self, keys: Sequence[Key]) -> list[np.ndarray | None]:
        """The states held for each key (None where there are none), counted as hits and misses."""
        with self._lock:
            found = [self._entries.get(key) for key in keys]
            for key, states in zip(keys, found, strict=True):
                if states is not None:
                    self._entries.move_to_end(key)
            missing = sum(states is None for states in found)
            self.hits += len(keys) - missing
            self.misses += missing
        return found

    def token_ids(self, texts: Sequence[str], encode: Callable[[list[str]], Sequence[Sequence[int]]]) -> list[Key]:
        """The token ids of each of ``texts``: remembered ones read, the others made by ``encode`` (called once, outside
        the lock, with each missing text once) and remembered, the least recently used text forgotten first."""
        with self._lock:
            found = [self._ids.get(text) for text in texts]
            for text, ids in zip(texts, found, strict=True):
                if ids is not None:
                    self._ids.move_to_end(text)
        missing = list(dict.fromkeys(text for text, ids in zip(texts, found, strict=True) if ids is None))
        if not missing:
            return found  # type: ignore[return-value]  # every one found
        made = {text: tuple(int(t) for t in ids) for text, ids in zip(missing, encode(missing), strict=True)}
        with self._lock:
            for text, ids in made.items():
                self._ids[text] = ids
                self._ids.move_to_end(text)
            while len(self._ids) > self.max_texts:
                self._ids.popitem(last=False)
        return [ids if ids is not None else made[text] for text, ids in zip(texts, found, strict=True)]

    def put(self, keys: Sequence[Key], states: Sequence[np.ndarray]) -> None:
        """Keep ``states[i]`` for ``keys[i]`` (the least recently used dropped while over the budget)."""
        with self._lock:
            for key, value in zip(keys, states, strict=True):
                self._keep(key, value)

    def get(self, ids: Sequence[Sequence[int]],
            compute: Callable[[list[Key]], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """The states of each document of ``ids`` (aligned with it), those not held computed by ``compute`` (called
        once, outside the lock, with the missing documents' ids, each once) and kept."""
        keys = [tuple(int(t) for t in x) for x in ids]
        held = self.lookup(keys)
        found = {key: states for key, states in zip(keys, held, strict=True) if states is not None}
        missing = list(dict.fromkeys(key for key, states in zip(keys, held, strict=True) if states is None))
        if missing:
            computed = compute(missing)
            if len(computed) != len(missing):
                raise RuntimeError(f"{len(computed)} documents' states computed for {len(missing)} documents")
            found.update(zip(missing, computed, strict=True))
            self.put(missing, computed)
        return [found[key] for key in keys]

    def _keep(self, key: Key, states: np.ndarray) -> None:
        size = _entry_bytes(key, states)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _entry_bytes(key, old)
        self._entries[key] = states
        self._bytes += size
        while self._bytes > self.max_bytes:
            dropped_key, dropped = self._entries.popitem(last=False)
            self._bytes -= _entry_bytes(dropped_key, dropped)

    def clear(self) -> None:
        """Forget every entry (and the counts): the states of other weights or another backend are not these."""
        with self._lock:
            self._entries.clear()
            self._ids.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def stats(self) -> dict[str, Any]:
        """``documents``, ``mb`` (held), ``max_mb``, ``hits`` and ``misses`` (documents looked up since made)."""
        with self._lock:
            return {"documents": len(self._entries), "mb": round(self._bytes / 2**20, 3),
                    "max_mb": round(self.max_bytes / 2**20, 3), "hits": self.hits, "misses": self.misses}
