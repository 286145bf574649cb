"""Training pairs streamed from shards larger than memory: discovery, a per-rank split, a bounded shuffle buffer.

``deepsem train DIR`` (or a glob) reads its shards (TSV, CSV, JSON lines, Parquet; mixed) with the readers of
:mod:`deepsem.data.readers`, one shard at a time (Parquet in record batches), so no more than one shuffle buffer of
pairs is ever held: no table of every text, no list of every pair.

Each epoch is a function of ``(seed, epoch, rank, world)`` alone (a resumed run replays it and skips the batches it
already trained on):

* rank ``r`` of ``W`` reads shards ``i`` (sorted by name) with ``i % W == r`` when there are at least ``W`` shards,
  otherwise rows ``j % W == r`` of every shard (``j`` counting the pairs a shard yields): disjoint parts that
  together are the whole data;
* its shards are read in an order drawn per epoch; the pairs pass through a shuffle buffer of ``shuffle_buffer``
  pairs (a pair leaves at a random place when a new one comes in);
* the pairs leaving it are grouped into windows of ``bucket_batches`` batches, sorted by the token count of
  the longer text (length buckets: a recurrent tower runs fewer padding steps), cut into batches and the batches
  shuffled. The buffer and the window together never hold more than ``shuffle_buffer`` pairs.

Every rank yields exactly :meth:`PairStream.steps_per_epoch` batches per epoch (the same number on every rank, from
row counts alone: Parquet metadata, a newline count of text files); a rank whose rows run out first (rows a reader
skipped or the click rule dropped) reads its part again from its start to make up the difference.

Click logs that do not fit in memory cannot be summed per (query, doc) here: a streamed click log is taken as
aggregated upstream, one row per (query, doc) with its clicks (and impressions). A row clicked at least
``min_clicks`` times is a positive; with impressions, a row shown but never clicked a negative; other rows are left
out: :func:`deepsem.data.pairs.clicks_to_pairs`' rule, row by row.

``deepsem classify train DIR`` streams labelled texts the same way (:class:`LabelledStream`: the same split,
buffer, windows and step count over rows of ``(text, labels)``); its one pass learns the label set with its counts
beside the vocabulary.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import lzma
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import numpy as np
import torch
from torch import Tensor

from deepsem.data.errors import DataError, SkipReport
from deepsem.data.labelled import iter_labelled, sort_labels
from deepsem.data.readers import (
    Column,
    iter_click_counts,
    iter_pairs,
)
from deepsem.text import Tokenizer

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "LabelledStream",
    "PairBatch",
    "PairStream",
    "ShardStream",
    "StreamCollate",
    "TextBatch",
    "TokenCache",
    "find_shards",
    "is_sharded",
    "rank_part",
    "shard_fingerprint",
]

#: Pairs the shuffle buffer holds by default (~100 k short pairs: tens of MB).
DEFAULT_SHUFFLE_BUFFER = 100_000
#: File names read as shards in a directory (a compression suffix after a text format's is looked through).
SHARD_SUFFIXES = (".tsv", ".txt", ".tab", ".csv", ".jsonl", ".json", ".ndjson", ".parquet", ".pq")
_COMPRESSED: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_FINGERPRINT_BYTES = 1 << 20
_T = TypeVar("_T")
_B = TypeVar("_B")


# -- shards ----------------------------------------------------------------------------------------------------
def is_sharded(data: Any) -> bool:
    """True when ``data`` names shards to stream: a directory, or a glob pattern that is not an existing file."""
    if not isinstance(data, str | os.PathLike):
        return False
    path = Path(data)
    return path.is_dir() or (glob.has_magic(os.fspath(data)) and not path.exists())


def _is_shard_name(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in SHARD_SUFFIXES


def find_shards(source: str | os.PathLike[str]) -> list[Path]:
    """The shards of a directory (every data file under it, hidden ones aside) or of a glob pattern, sorted by
    path so that every process and every run sees the same list. Neither matching a file is a :class:`DataError`."""
    text = os.fspath(source)
    path = Path(source)
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and _is_shard_name(p)
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not found:
            raise DataError(text, None, None, "is a directory with no readable shards (files ending .tsv, .csv, "
                            ".jsonl, .parquet, optionally .gz/.bz2/.xz)", unit="file")
    else:
        found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not found:
            raise DataError(text, None, None, "the pattern matches no file", unit="file")
    return sorted(found, key=lambda p: os.fspath(p))


def shard_root(source: str | os.PathLike[str]) -> Path:
    """The folder shard names are given relative to: the directory itself, or a pattern's part before any wildcard."""
    path = Path(source)
    if path.is_dir():
        return path
    parts: list[str] = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def shard_fingerprint(shards: Sequence[Path], root: Path) -> list[list[Any]]:
    """Per shard: its name relative to ``root``, its size, and a sha256 of its first and last MiB. What a resumed
    run checks it reads the same data with, without reading it all."""
    out: list[list[Any]] = []
    for shard in shards:
        size = shard.stat().st_size
        h = hashlib.sha256()
        with open(shard, "rb") as fh:
            h.update(fh.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                h.update(fh.read())
        name = os.path.relpath(shard, root) if root != Path(".") else os.fspath(shard)
        out.append([Path(name).as_posix(), size, h.hexdigest()])
    return out


def count_rows(path: Path) -> int:
    """Rows of a shard, cheaply: Parquet's metadata; the lines of a text file (a header, a blank line or a CSV field
    spanning lines count too: an estimate, the same on every call, which is what the step count needs)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception as exc:
            raise DataError(path, None, None, f"cannot read the Parquet file: {exc}", unit="file") from None
    opener: Callable[..., Any] = _COMPRESSED.get(suffixes[-1], open) if suffixes else open
    lines, last = 0, b"\n"
    with cast(IO[bytes], opener(path, "rb")) as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    return max(0, lines)


def rank_part(n_shards: int, rank: int, world: int) -> tuple[list[int], bool]:
    """Which shards rank ``rank`` of ``world`` reads, and whether it takes every ``world``-th row of them: shards
    ``i % world == rank`` when there are at least ``world`` shards, else every shard, rows ``j % world == rank``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world} processes")
    if n_shards >= world:
        return [i for i in range(n_shards) if i % world == rank], False
    return list(range(n_shards)), True


# -- rows ------------------------------------------------------------------------------------------------------
def iter_click_rows(path: str | os.PathLike[str], *, query: Column = 0, doc: Column = 1, clicks: Column | None = 2,
                    impressions: Column | None = None, skip_bad_rows: bool = False, report: SkipReport | None = None,
                    min_clicks: float = 1.0) -> Iterator[tuple[str, str, float]]:
    """``(query, doc, label)`` of a click log aggregated upstream (one row per (query, doc)), row by row, with the
    rule of :func:`deepsem.data.pairs.clicks_to_pairs`: label 1 when clicked ``min_clicks`` times or more; with
    impressions, 0 when shown and never clicked; other rows are left out. Checks as :func:`read_clicks` does."""
    rows = iter_click_counts(path, query=query, doc=doc, clicks=clicks, impressions=impressions,
                             skip_bad_rows=skip_bad_rows, report=report)
    for q, d, c, imp in rows:
        if c >= min_clicks:
            yield q, d, 1.0
        elif impressions is not None and c == 0 and imp > 0:
            yield q, d, 0.0


@dataclass
class PairBatch:
    """One batch of a stream: the texts and 0/1 labels of its pairs, and ``pool``: documents of the window it was
    cut from (positive pairs' documents), where sampled random negatives come from."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray
    pool: list[str] = field(default_factory=list)
    #: token ids of both sides when tokenised ahead (:class:`TokenCache`), else None: the collate tokenises
    ids_a: list[list[int]] | None = None
    ids_b: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.text_a)


class ShardStream:
    """What every stream of shards shares: the rows of a list of shards (``shard_rows``, in the subclass), a rank's
    part of them, and the steps per epoch from row counts."""

    shards: list[Path]
    report: SkipReport
    _counts: list[int] | None

    def shard_rows(self, index: int) -> Iterator[Any]:
        raise NotImplementedError

    def rows(self, order: Sequence[int] | None = None, rank: int = 0, world: int = 1,
             by_row: bool = False) -> Iterator[Any]:
        """Rows of the shards ``order`` (default: all, sorted), every ``world``-th one from ``rank`` if ``by_row``.
        :attr:`report` starts again with each pass: it counts the rows skipped by the latest one."""
        self.report = SkipReport()
        for index in range(len(self.shards)) if order is None else order:
            if not by_row or world == 1:
                yield from self.shard_rows(index)
                continue
            for j, row in enumerate(self.shard_rows(index)):
                if j % world == rank:
                    yield row

    def row_counts(self) -> list[int]:
        """Rows per shard (:func:`count_rows`), counted once."""
        if self._counts is None:
            self._counts = [count_rows(p) for p in self.shards]
        return self._counts

    def rank_rows(self, rank: int, world: int) -> int:
        """Rows in rank ``rank``'s part, from :meth:`row_counts`."""
        indices, by_row = rank_part(len(self.shards), rank, world)
        counts = self.row_counts()
        if by_row:
            return sum(max(0, -(-(counts[i] - rank) // world)) for i in indices)
        return sum(counts[i] for i in indices)

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        """Batches per epoch on every rank: the fewest any rank's part fills (``batch_size`` is per rank), so that
        every rank runs the same number of steps; computed alike on every rank, without communication."""
        return max(1, min(-(-self.rank_rows(r, world) // batch_size) for r in range(world)))



    def epoch_batches(self, epoch: int, batch_size: int, seed: int, steps: int, rank: int, world: int,
                      shuffle_buffer: int, bucket_batches: int, stats: dict[str, int] | None,
                      cut: Callable[[list[Any], np.random.Generator], Iterator[_B]], *, unit: str,
                      empty: str) -> Iterator[_B]:
        """Exactly ``steps`` batches of rank ``rank``'s part, drawn from ``(seed, epoch, rank, world)`` only: passes
        over the part's shards in an order drawn per pass, rows through a shuffle buffer of ``shuffle_buffer``
        (``stats['held']``: the most it held at once) in windows of ``bucket_batches`` batches, each window made
        into batches by ``cut(window, rng)``. ``unit``/``empty`` name what a row is in the errors."""
        if batch_size < 1 or shuffle_buffer < batch_size:
            raise ValueError(f"the shuffle buffer ({shuffle_buffer} {unit}) must hold at least one batch "
                             f"({batch_size} {unit})")
        rng = np.random.default_rng([seed, epoch, rank, world, 0x5EED])
        indices, by_row = rank_part(len(self.shards), rank, world)
        window = batch_size * max(1, min(bucket_batches, (shuffle_buffer // 2) // batch_size))
        capacity = shuffle_buffer - window
        stats = stats if stats is not None else {}
        stats.setdefault("held", 0)
        made = 0
        while made < steps:
            order = [indices[k] for k in rng.permutation(len(indices))]
            before = made
            for part in _shuffled_windows(self.rows(order, rank, world, by_row), rng, window, capacity, stats):
                for batch in cut(part, rng):
                    yield batch
                    made += 1
                    if made == steps:
                        return
            if made == before:
                raise DataError(self.shards[indices[0]] if len(indices) == 1 else os.path.dirname(self.shards[0]),
                                None, None, f"no {empty} in the part of rank {rank} of {world}", unit="file")


class PairStream(ShardStream):
    """Pairs of a list of shards, read again on every pass: see the module's docstring.

    ``columns``, ``skip_bad_rows``, ``label_map`` as for :func:`deepsem.data.readers.iter_pairs`; with ``clicks``
    the shards are click logs aggregated upstream (``columns``: query, doc, clicks; ``impressions``), see
    :func:`iter_click_rows`. ``report``: the rows skipped (``skip_bad_rows``) by the latest pass.
    """

    def __init__(self, shards: Sequence[Path], *, columns: Sequence[Column | None] = (0, 1, 2),
                 skip_bad_rows: bool = False, label_map: Any = None, clicks: bool = False,
                 impressions: Column | None = None, min_clicks: float = 1.0) -> None:
        if not shards:
            raise ValueError("a stream needs at least one shard")
        self.shards = list(shards)
        self.columns, self.skip_bad_rows, self.label_map = tuple(columns), skip_bad_rows, label_map
        self.clicks, self.impressions, self.min_clicks = clicks, impressions, min_clicks
        self.report = SkipReport()
        self._counts: list[int] | None = None
        # whether the pairs carry labels (0/1) or are all positives: as the in-memory reader decides
        self.labelled = (columns[2] is not None) if not clicks else impressions is not None

    # rows of one shard
    def shard_rows(self, index: int) -> Iterator[tuple[str, str, float]]:
        """``(text_a, text_b, label)`` of shard ``index``, as read (label 1.0 for unlabelled positives)."""
        path = self.shards[index]
        a, b, y = self.columns
        if self.clicks:
            yield from iter_click_rows(path, query=cast(Column, a), doc=cast(Column, b), clicks=y,
                                       impressions=self.impressions, skip_bad_rows=self.skip_bad_rows,
                                       report=self.report, min_clicks=self.min_clicks)
            return
        for row in iter_pairs(path, text_a=cast(Column, a), text_b=cast(Column, b), label=y,
                              skip_bad_rows=self.skip_bad_rows, label_map=self.label_map, report=self.report,
                              binary=True):
            yield row.text_a, row.text_b, row.label

    def texts(self, limit: int | None = None) -> Iterator[str]:
        """Both texts of every pair (of the first ``limit`` pairs), in shard order: what a vocabulary is learnt
        from, one pass, one pair held at a time."""
        for n, (a, b, _) in enumerate(self.rows()):
            if limit is not None and n >= limit:
                return
            yield a
            yield b

    def batches(self, epoch: int, *, batch_size: int, seed: int, steps: int, rank: int = 0, world: int = 1,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, by_length: bool = True, bucket_batches: int = 50,
                stats: dict[str, int] | None = None, prepare: Callable[[PairBatch], PairBatch] | None = None,
                prefetch: int = 0, tokens: TokenCache | None = None) -> Iterator[PairBatch]:
        """Exactly ``steps`` batches of ``batch_size`` pairs (the last of a pass may be smaller) of rank ``rank``'s
        part, drawn from ``(seed, epoch, rank, world)`` only. ``stats['held']``: the most pairs the buffer held at
        once. ``prepare`` (e.g. a :class:`TokenCache`) is applied to each batch; with ``prefetch`` > 0 reading,
        shuffling and ``prepare`` run in a background thread up to that many batches ahead of the consumer (the
        same batches in the same order: only the time they are made differs). ``tokens``: each window is tokenised
        (through this cache) before it is sorted, so length buckets sort by token count, the padding a recurrent
        tower pays for, and the batches carry their ids; without it they sort by character count."""
        made = self._batches(epoch, batch_size, seed, steps, rank, world, shuffle_buffer, by_length, bucket_batches,
                             stats, tokens)
        if prepare is not None:
            made = map(prepare, made)
        return background(made, prefetch) if prefetch > 0 else made

    def _batches(self, epoch: int, batch_size: int, seed: int, steps: int, rank: int, world: int,
                 shuffle_buffer: int, by_length: bool, bucket_batches: int,
                 stats: dict[str, int] | None, tokens: TokenCache | None = None) -> Iterator[PairBatch]:
        return self.epoch_batches(
            epoch, batch_size, seed, steps, rank, world, shuffle_buffer, bucket_batches, stats,
            lambda part, rng: _cut(part, rng, batch_size, by_length, tokens), unit="pairs", empty="training pairs")


def _shuffled_windows(rows: Iterator[_T], rng: np.random.Generator, window: int, capacity: int,
                      stats: dict[str, int]) -> Iterator[list[_T]]:
    """Rows through a shuffle buffer of ``capacity`` (a row leaves at a random place when a new one comes in), in
    windows of ``window`` rows; at the end the buffer's rest, shuffled. Lazy: the consumer's draws from ``rng``
    between two windows come in the same order as if it were one loop."""
    buffer: list[_T] = []
    out: list[_T] = []
    draws = np.empty(0, np.int64)
    k = 0
    for row in rows:
        if len(buffer) < capacity:
            buffer.append(row)
        else:
            if capacity:
                if k == len(draws):
                    draws, k = rng.integers(0, capacity, size=4096), 0
                j = int(draws[k])
                k += 1
                row, buffer[j] = buffer[j], row
            out.append(row)
            if len(out) == window:
                stats["held"] = max(stats["held"], len(buffer) + len(out))
                yield out
                out = []
    stats["held"] = max(stats["held"], len(buffer) + len(out))
    rest = out + [buffer[j] for j in rng.permutation(len(buffer))]
    buffer, out = [], []
    for start in range(0, len(rest), window):
        yield rest[start : start + window]


def _cut(rows: list[tuple[str, str, float]], rng: np.random.Generator, batch_size: int,
         by_length: bool, tokens: TokenCache | None = None) -> Iterator[PairBatch]:
    """A window of rows sorted by length (``by_length``: the longer side's token count when ``tokens`` tokenises
    the window, else its character count), cut into batches, the batches in random order."""
    ids_a = ids_b = None
    if tokens is not None:
        ids_a, ids_b = tokens.encode([r[0] for r in rows]), tokens.encode([r[1] for r in rows])
    if by_length:
        if ids_a is not None and ids_b is not None:
            lengths = np.fromiter(map(max, map(len, ids_a), map(len, ids_b)), np.int64, count=len(rows))
        else:
            lengths = np.fromiter((max(len(a), len(b)) for a, b, _ in rows), np.int64, count=len(rows))
        order = np.argsort(lengths, kind="stable").tolist()
        rows = [rows[j] for j in order]
        if ids_a is not None and ids_b is not None:
            ids_a, ids_b = [ids_a[j] for j in order], [ids_b[j] for j in order]
    pool = list(dict.fromkeys(b for _, b, y in rows if y > 0.5)) or list(dict.fromkeys(b for _, b, _ in rows))
    starts = list(range(0, len(rows), batch_size))
    for s in rng.permutation(len(starts)):
        lo, hi = starts[s], starts[s] + batch_size
        part = rows[lo:hi]
        yield PairBatch([r[0] for r in part], [r[1] for r in part], np.fromiter((r[2] for r in part), np.float32,
                                                                               count=len(part)), pool,
                        None if ids_a is None else ids_a[lo:hi], None if ids_b is None else ids_b[lo:hi])


# -- labelled texts (classification) ------------------------------------------------------------------------------
@dataclass
class TextBatch:
    """One batch of a :class:`LabelledStream`: texts, their targets (label ids ``(B,)`` int64, or a 0/1 matrix
    ``(B, L)`` float32 for multi-label data) and their token ids when the window was tokenised ahead."""

    texts: list[str]
    targets: np.ndarray
    ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)


class LabelledStream(ShardStream):
    """Labelled texts of a list of shards (``deepsem classify train DIR``), read again on every pass, split, shuffled
    and bucketed as :class:`PairStream` (see the module's docstring).

    The options are :func:`deepsem.data.labelled.read_labelled`'s. :meth:`scan` is the one pass that learns the
    label set with its counts (always over every row) while it hands the texts to the vocabulary; :attr:`labels`
    is then the label set in :func:`sort_labels` order, which :meth:`batches` turns labels into targets with.
    """

    def __init__(self, shards: Sequence[Path], *, text_col: Column = 0, label_col: Column = 1,
                 multi_label: bool = False, label_sep: str = ",", fmt: str | None = None, header: bool | None = None,
                 skip_bad_rows: bool = False) -> None:
        if not shards:
            raise ValueError("a stream needs at least one shard")
        self.shards = list(shards)
        self.options: dict[str, Any] = {"text_col": text_col, "label_col": label_col, "multi_label": multi_label,
                                        "label_sep": label_sep, "fmt": fmt, "header": header,
                                        "skip_bad_rows": skip_bad_rows}
        self.multi_label = multi_label
        self.report = SkipReport()
        self._counts = None
        #: rows per label (multi-label: rows holding it) and rows read, from the latest complete :meth:`scan`
        self.label_counts: Counter[str] = Counter()
        self.examples = 0
        self.scanned = False

    @property
    def labels(self) -> list[str]:
        """The label set learnt by :meth:`scan` (a pass is made first if none was)."""
        if not self.scanned:
            for _ in self.scan(0):
                pass
        return sort_labels(set(self.label_counts))

    def shard_rows(self, index: int) -> Iterator[tuple[str, tuple[str, ...]]]:
        """``(text, labels)`` of shard ``index``, checked as :func:`read_labelled` checks a file."""
        for text, row, _ in iter_labelled(self.shards[index], report=self.report, **self.options):
            yield text, row

    def scan(self, limit: int | None = None) -> Iterator[str]:
        """One pass over every row: counts the labels (all of them, whatever ``limit``) and yields the texts of the
        first ``limit`` rows (all with None): what the vocabulary is learnt from. The counts are kept once the
        pass is complete."""
        counts: Counter[str] = Counter()
        n = 0
        for text, row in self.rows():
            counts.update(row)
            if limit is None or n < limit:
                yield text
            n += 1
        self.label_counts, self.examples, self.scanned = counts, n, True

    def targets(self, rows: Sequence[tuple[str, tuple[str, ...]]], index: dict[str, int]) -> np.ndarray:
        """Label ids ``(N,)`` int64, or a 0/1 matrix ``(N, L)`` float32 for multi-label data."""
        if self.multi_label:
            out = np.zeros((len(rows), len(index)), np.float32)
            for r, (_, row) in enumerate(rows):
                out[r, [index[y] for y in row]] = 1.0
            return out
        return np.fromiter((index[row[0]] for _, row in rows), np.int64, count=len(rows))

    def batches(self, epoch: int, *, batch_size: int, seed: int, steps: int, rank: int = 0, world: int = 1,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, by_length: bool = True, bucket_batches: int = 50,
                stats: dict[str, int] | None = None, prefetch: int = 0,
                tokens: TokenCache | None = None) -> Iterator[TextBatch]:
        """Exactly ``steps`` batches of ``batch_size`` texts of rank ``rank``'s part, drawn from ``(seed, epoch,
        rank, world)`` only, as :meth:`PairStream.batches` (``tokens``: windows sorted by token count, batches
        carrying their ids; ``prefetch``: made in a background thread)."""
        made = self._batches(epoch, batch_size, seed, steps, rank, world, shuffle_buffer, by_length, bucket_batches,
                             stats, tokens)
        return background(made, prefetch) if prefetch > 0 else made

    def _batches(self, epoch: int, batch_size: int, seed: int, steps: int, rank: int, world: int,
                 shuffle_buffer: int, by_length: bool, bucket_batches: int, stats: dict[str, int] | None,
                 tokens: TokenCache | None) -> Iterator[TextBatch]:
        index = {y: i for i, y in enumerate(self.labels)}
        return self.epoch_batches(
            epoch, batch_size, seed, steps, rank, world, shuffle_buffer, bucket_batches, stats,
            lambda part, rng: self._cut(part, rng, batch_size, by_length, tokens, index), unit="texts",
            empty="labelled texts")

    def _cut(self, rows: list[tuple[str, tuple[str, ...]]], rng: np.random.Generator, batch_size: int,
             by_length: bool, tokens: TokenCache | None, index: dict[str, int]) -> Iterator[TextBatch]:
        """A window sorted by length (token count with ``tokens``, else characters), cut into batches, shuffled."""
        ids = tokens.encode([r[0] for r in rows]) if tokens is not None else None
        if by_length:
            lengths = np.fromiter(map(len, ids) if ids is not None else (len(r[0]) for r in rows), np.int64,
                                  count=len(rows))
            order = np.argsort(lengths, kind="stable").tolist()
            rows = [rows[j] for j in order]
            if ids is not None:
                ids = [ids[j] for j in order]
        targets = self.targets(rows, index)
        starts = list(range(0, len(rows), batch_size))
        for s in rng.permutation(len(starts)):
            lo, hi = starts[s], starts[s] + batch_size
            yield TextBatch([r[0] for r in rows[lo:hi]], targets[lo:hi], None if ids is None else ids[lo:hi])


# -- ahead of the trainer ---------------------------------------------------------------------------------------
class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def background(items: Iterable[_T], depth: int) -> Iterator[_T]:
    """``items``, made by a background thread at most ``depth`` ahead (a bounded queue): the data side (reading,
    tokenising; Python that mostly waits on the GIL) overlaps the training step (torch, which releases it). An
    exception there is raised here; closing this generator stops the thread."""
    box: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failed(error))

    thread = threading.Thread(target=work, name="deepsem-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class TokenCache:
    """Token ids of a batch's texts, kept for up to ``size`` distinct texts (then forgotten all at once: the memory
    stays bounded). A click log repeats its popular queries and documents: they are tokenised once, not per row."""

    def __init__(self, tokenizer: Tokenizer, size: int = 200_000) -> None:
        self.tokenizer, self.size = tokenizer, size
        self._ids: dict[str, list[int]] = {}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        cache = self._ids
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            if len(cache) + len(missing) > self.size:
                cache.clear()
            cache.update(zip(missing, self.tokenizer.encode_batch(missing), strict=True))
        return [cache[t] for t in texts]

    def __call__(self, batch: PairBatch) -> PairBatch:
        batch.ids_a, batch.ids_b = self.encode(batch.text_a), self.encode(batch.text_b)
        return batch


# -- collate ---------------------------------------------------------------------------------------------------
def _pad(ids: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
    matrix = np.zeros((len(ids), max(int(lengths.max()) if len(ids) else 1, 1)), np.int64)
    for row, x in enumerate(ids):
        matrix[row, : len(x)] = x
    return torch.from_numpy(matrix), torch.from_numpy(lengths)


class StreamCollate:
    """A :class:`PairBatch` -> the tensors :class:`~deepsem.losses.MatchingLoss` takes, tokenising on the fly (the
    counterpart of :class:`deepsem.data.batches.PairCollate`). Texts are told apart by their text within the batch;
    across ranks by their token ids. ``num_negatives`` > 0: that many random documents of the batch's ``pool`` per
    positive pair, drawn from ``rng``."""

    def __init__(self, tokenizer: Tokenizer, rng: np.random.Generator, num_negatives: int = 0) -> None:
        self.tokenizer, self.rng, self.num_negatives = tokenizer, rng, num_negatives

    def __call__(self, batch: PairBatch) -> dict[str, Tensor]:
        index: dict[str, int] = {}
        a_keys = np.fromiter((index.setdefault(t, len(index)) for t in batch.text_a), np.int64, count=len(batch))
        b_keys = np.fromiter((index.setdefault(t, len(index)) for t in batch.text_b), np.int64, count=len(batch))
        q_ids, q_len = _pad(batch.ids_a if batch.ids_a is not None else self.tokenizer.encode_batch(batch.text_a))
        d_ids, d_len = _pad(batch.ids_b if batch.ids_b is not None else self.tokenizer.encode_batch(batch.text_b))
        positive = np.flatnonzero(batch.labels > 0.5)
        a_pos, b_pos = a_keys[positive], b_keys[positive]
        out = {"q_ids": q_ids, "q_len": q_len, "d_ids": d_ids, "d_len": d_len,
               "labels": torch.from_numpy(np.asarray(batch.labels, np.float32)),
               "positive": torch.from_numpy(positive),
               "same": torch.from_numpy(b_pos[:, None] == b_keys[None, :]),
               "same_q": torch.from_numpy(a_pos[:, None] == a_pos[None, :])}
        if self.num_negatives and len(positive):
            pool = batch.pool or batch.text_b
            drawn = self.rng.integers(0, len(pool), size=(len(positive), self.num_negatives))
            texts = [pool[j] for j in drawn.reshape(-1).tolist()]
            s_keys = np.fromiter((index.setdefault(t, len(index)) for t in texts), np.int64, count=len(texts))
            out["s_ids"], out["s_len"] = _pad(self.tokenizer.encode_batch(texts))
            out["clash"] = torch.from_numpy(s_keys.reshape(drawn.shape) == b_pos[:, None])
        return out
