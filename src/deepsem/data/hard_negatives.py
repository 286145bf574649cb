"""Hard negatives: the rules that pick them from a ranking, and the file that holds them.

For each training query, candidates come from a ranking of the training documents (the two-tower model's cosine,
BM25, or both); the query's known positives and its own text are taken out first. Then the false-negative guards
of sentence-transformers' ``mine_hard_negatives``:

- a rank window: ranks ``skip_top + 1 .. depth`` of what is left (``range_min`` / ``range_max``), skipping the
  very top, where unlabelled duplicates of the positive sit;
- a margin: a candidate whose cosine is above the query's lowest positive cosine minus ``margin`` is dropped
  (``absolute_margin``), as is one above ``max_score``. Both use the model's cosine, for BM25 candidates too (a
  BM25 score has no scale to compare with a positive's);
- ``per_query`` of the survivors are kept: the best ranked (``top``) or a seeded random sample (``random``).

With both sources the two windows are interleaved (dense rank 1, BM25 rank 1, dense rank 2, ...), a document met
twice keeping its first place. Known positives are every document paired with the query with label 1, in either
order (a pair set of paraphrases is symmetric), compared by text.

The file is JSONL (UTF-8), written atomically: a header line ``{"format": "deepsem-hard-negatives", "version": 1,
"source", "settings", "model"}``, then one line per query ``{"query", "positives": [...], "negatives": [{"text",
"source", "rank", "score"}, ...]}`` (``rank``: 1-based in the source's ranking less the positives; ``score``: the
model's cosine). :func:`read_hard_negatives` also takes files without the header and negatives given as plain
strings, e.g. from another tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.data.batches import PairSet
from deepsem.data.lexical import Lexical
from deepsem.data.pairs import TextPairs
from deepsem.errors import DataError
from deepsem.fileio import atomic_write, regular_file, utf8_lines
from deepsem.vectorstore.exact import exact_search

FORMAT = "deepsem-hard-negatives"
VERSION = 1
SOURCES = ("dense", "bm25", "both")
SAMPLING = ("top", "random")

#: ``encode(texts, side)``: L2-normalised vectors ``(N, dim)``; ``side`` "query" or "doc".
Encode = Callable[[Sequence[str], str], np.ndarray]


@dataclass
class MiningSettings:
    """What :func:`mine_negatives` keeps per query; see the module docstring."""

    per_query: int = 8
    depth: int = 50
    skip_top: int = 0
    margin: float | None = None
    max_score: float | None = None
    sampling: str = "top"
    seed: int = 13

    def validate(self) -> MiningSettings:
        if self.per_query < 1:
            raise ValueError(f"per_query must be >= 1, got {self.per_query}")
        if self.skip_top < 0:
            raise ValueError(f"skip_top must be >= 0, got {self.skip_top}")
        if self.depth <= self.skip_top:
            raise ValueError(f"depth ({self.depth}) must be above skip_top ({self.skip_top}): the window is ranks "
                             "skip_top+1 .. depth")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MiningSettings:
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known).validate()


@dataclass
class Negative:
    """One mined document: its text, the source that ranked it, its rank there (1-based) and the model's cosine."""

    text: str
    source: str
    rank: int
    score: float


@dataclass
class QueryNegatives:
    query: str
    positives: list[str]
    negatives: list[Negative]


@dataclass
class HardNegatives:
    """A hard-negatives file in memory: one entry per query, and how it was mined (None for a file without one)."""

    rows: list[QueryNegatives]
    source: str | None = None
    settings: MiningSettings | None = None
    model: str | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def by_query(self) -> dict[str, list[str]]:
        """Each query's negative texts, in file order, without repeats (a query on several lines: all of them)."""
        out: dict[str, dict[str, None]] = {}
        for row in self.rows:
            out.setdefault(row.query, {}).update(dict.fromkeys(n.text for n in row.negatives))
        return {q: list(texts) for q, texts in out.items()}


def known_positives(text_a: Sequence[str], text_b: Sequence[str], labels: np.ndarray | None) -> dict[str, set[str]]:
    """Each text's known positives: every text paired with it with label 1 (or no label), in either order."""
    out: dict[str, set[str]] = {}
    positive = np.ones(len(text_a), bool) if labels is None else np.asarray(labels) > 0.5
    for a, b, y in zip(text_a, text_b, positive.tolist(), strict=True):
        if y:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


def mining_inputs(pairs: TextPairs) -> tuple[list[str], list[str], dict[str, set[str]]]:
    """What to mine from training pairs: the queries (the distinct text_a of the positive pairs, in order of first
    appearance), the documents (the distinct text_b of every pair) and each text's known positives."""
    positive = np.ones(len(pairs.text_a), bool) if pairs.labels is None else np.asarray(pairs.labels) > 0.5
    queries = list(dict.fromkeys(a for a, y in zip(pairs.text_a, positive.tolist(), strict=True) if y))
    return queries, list(dict.fromkeys(pairs.text_b)), known_positives(pairs.text_a, pairs.text_b, pairs.labels)


def window(ranked: Iterable[int], excluded: set[int], settings: MiningSettings) -> list[tuple[int, int]]:
    """``(row, rank)`` of the ranks ``skip_top + 1 .. depth`` of a best-first ranking, the ``excluded`` rows (known
    positives, the query itself) taken out before counting."""
    out: list[tuple[int, int]] = []
    rank = 0
    for row in ranked:
        row = int(row)
        if row < 0 or row in excluded:
            continue
        rank += 1
        if rank > settings.depth:
            break
        if rank > settings.skip_top:
            out.append((row, rank))
    return out


def mine_negatives(queries: Sequence[str], docs: Sequence[str], positives: dict[str, set[str]],
                   settings: MiningSettings, *, encode: Encode, source: str = "dense",
                   lexical: Lexical | None = None, block: int = 1024) -> HardNegatives:
    """Mine ``settings.per_query`` negatives per query among ``docs`` (see the module docstring).

    ``encode`` gives the model's vectors (every guard uses its cosine); ``lexical`` ranks by BM25 (needed for
    ``source`` "bm25" and "both"). Dense search is exact, ``block`` queries at a time."""
    settings.validate()
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source != "dense" and lexical is None:
        raise ValueError(f"source {source!r} needs a BM25 ranking (lexical)")
    doc_row = {text: i for i, text in enumerate(docs)}
    q_vec = encode(list(queries), "query")
    d_vec = encode(list(docs), "doc")
    excluded = [{doc_row[t] for t in (positives.get(q, set()) | {q}) if t in doc_row} for q in queries]
    extra = max((len(e) for e in excluded), default=0)
    n = settings.depth + extra
    rankings: dict[str, list[np.ndarray]] = {}
    if source in ("dense", "both"):
        dense: list[np.ndarray] = []
        for start in range(0, len(queries), block):
            dense.extend(exact_search(q_vec[start:start + block], d_vec, n)[1])
        rankings["dense"] = dense
    if source in ("bm25", "both"):
        assert lexical is not None
        rankings["bm25"] = lexical(queries, n)
    stats = {"queries": len(queries), "with_negatives": 0, "negatives": 0, "dropped_by_margin": 0,
             "dropped_by_max_score": 0}
    rows: list[QueryNegatives] = []
    for i, query in enumerate(queries):
        pos_rows = [doc_row[t] for t in positives.get(query, set()) if t in doc_row and t != query]
        floor = float((d_vec[pos_rows] @ q_vec[i]).min()) if pos_rows else None
        lists = []
        for name, ranked in rankings.items():
            kept: list[Negative] = []
            for row, rank in window(ranked[i], excluded[i], settings):
                score = float(d_vec[row] @ q_vec[i])
                if settings.margin is not None and floor is not None and score > floor - settings.margin:
                    stats["dropped_by_margin"] += 1
                elif settings.max_score is not None and score > settings.max_score:
                    stats["dropped_by_max_score"] += 1
                else:
                    kept.append(Negative(docs[row], name, rank, score))
            lists.append(kept)
        merged: dict[str, Negative] = {}
        for j in range(max((len(x) for x in lists), default=0)):  # interleaved by rank, the first place kept
            for kept in lists:
                if j < len(kept):
                    merged.setdefault(kept[j].text, kept[j])
        chosen = list(merged.values())
        if settings.sampling == "random" and len(chosen) > settings.per_query:
            picks = np.random.default_rng([settings.seed, i]).choice(len(chosen), settings.per_query, replace=False)
            chosen = [chosen[j] for j in sorted(picks.tolist())]
        chosen = chosen[: settings.per_query]
        stats["with_negatives"] += bool(chosen)
        stats["negatives"] += len(chosen)
        rows.append(QueryNegatives(query, sorted(positives.get(query, set()) - {query}), chosen))
    return HardNegatives(rows, source, settings, None, stats)


def write_hard_negatives(path: str | Path, mined: HardNegatives) -> Path:
    """Write ``mined`` as a hard-negatives file (see the module docstring), atomically: a reader sees the old file
    or the whole new one."""
    header = {"format": FORMAT, "version": VERSION, "source": mined.source,
              "settings": None if mined.settings is None else asdict(mined.settings), "model": mined.model}

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(header, ensure_ascii=False) + "\n")
            for row in mined.rows:
                fh.write(json.dumps({"query": row.query, "positives": row.positives,
                                     "negatives": [asdict(n) for n in row.negatives]}, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def read_hard_negatives(path: str | Path) -> HardNegatives:
    """Read a hard-negatives file; a malformed line is a :class:`DataError` naming the file, line and field."""
    path = regular_file(path, "hard-negatives file")
    mined = HardNegatives([])
    with open(path, "rb") as fh:
        for lineno, line in utf8_lines(fh, path):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, lineno, None, f"not JSON: {exc.msg}") from None
            if not isinstance(doc, dict):
                raise DataError(path, lineno, None, "each line must be a JSON object")
            if "format" in doc:
                if doc["format"] != FORMAT or doc.get("version") != VERSION:
                    raise DataError(path, lineno, "format", f"not a {FORMAT} file of version {VERSION}")
                try:
                    mined.settings = (None if doc.get("settings") is None
                                      else MiningSettings.from_dict(doc["settings"]))
                except (TypeError, ValueError) as exc:
                    raise DataError(path, lineno, "settings", str(exc)) from None
                mined.source, mined.model = doc.get("source"), doc.get("model")
                continue
            mined.rows.append(_row(doc, path, lineno))
    return mined


def _row(doc: dict[str, Any], path: Path, lineno: int) -> QueryNegatives:
    query = doc.get("query")
    if not isinstance(query, str):
        raise DataError(path, lineno, "query", "missing or not a string")
    negatives = doc.get("negatives")
    if not isinstance(negatives, list):
        raise DataError(path, lineno, "negatives", "missing or not a list")
    out = []
    for n in negatives:
        if isinstance(n, str):
            out.append(Negative(n, "file", 0, float("nan")))
        elif isinstance(n, dict) and isinstance(n.get("text"), str):
            try:
                out.append(Negative(n["text"], str(n.get("source", "file")), int(n.get("rank", 0)),
                                    float(n.get("score", float("nan")))))
            except (TypeError, ValueError):
                raise DataError(path, lineno, "negatives", "a negative's rank and score must be numbers") from None
        else:
            raise DataError(path, lineno, "negatives", "each negative must be a string or an object with a 'text'")
    positives = doc.get("positives", [])
    if not isinstance(positives, list) or not all(isinstance(p, str) for p in positives):
        raise DataError(path, lineno, "positives", "must be a list of strings")
    return QueryNegatives(query, positives, out)


class HardNegativeRows:
    """The mined negatives as :class:`~deepsem.data.batches.PairCollate`'s per-query document rows (``own``), for
    the epoch about to start: ``mined`` until the first re-mining, then, every ``every`` epochs, what ``remine()``
    returns (mined again with the current model), saved to ``cache/epoch-E.jsonl`` so that a resumed run reads
    the very negatives the broken run used instead of mining them again from other weights.

    Queries of ``pairs`` without mined negatives are left out: :func:`~deepsem.data.batches.sample_negatives`
    gives them random documents."""

    def __init__(self, pairs: PairSet, mined: HardNegatives, *, every: int | None = None,
                 remine: Callable[[], HardNegatives] | None = None, cache: Path | None = None,
                 log: Callable[[str], None] = print) -> None:
        if every and (remine is None or cache is None):
            raise ValueError("re-mining needs remine() and a cache folder")
        self.pairs, self.initial, self.every, self.remine, self.cache = pairs, mined, every, remine, cache
        self.log = log
        table = pairs.table
        self.queries = {table.texts[r]: r for r in np.unique(pairs.a[pairs.labels > 0.5]).tolist()}
        self._epoch: int | None = None
        self._own: dict[int, np.ndarray] = {}

    def __call__(self, epoch: int) -> dict[int, np.ndarray]:
        mined_at = (epoch // self.every) * self.every if self.every else 0
        if mined_at != self._epoch:
            if mined_at == 0:
                mined = self.initial
            else:
                assert self.cache is not None and self.remine is not None
                path = self.cache / f"epoch-{mined_at}.jsonl"
                if path.exists():
                    mined = read_hard_negatives(path)
                else:
                    mined = self.remine()
                    write_hard_negatives(path, mined)
            self._own = self.rows_of(mined, f"epoch {mined_at + 1}: re-mined" if mined_at else "")
            self._epoch = mined_at
        return self._own

    def rows_of(self, mined: HardNegatives, what: str = "") -> dict[int, np.ndarray]:
        """``{query row: document rows}`` of the training queries that have mined negatives (the documents are
        added to the text table)."""
        table = self.pairs.table
        own: dict[int, np.ndarray] = {}
        for query, texts in mined.by_query().items():
            row = self.queries.get(query)
            if row is not None and texts:
                own[row] = np.unique(table.add(texts))
        n, total = len(own), len(self.queries)
        self.log(f"hard negatives{' (' + what + ')' if what else ''}: {n} of {total} training queries have mined "
                 f"negatives" + (f"; the other {total - n} get random ones" if n < total else ""))
        return own
