"""Streaming readers for text-pair, click-log and retrieval data sets.

Formats (chosen from the file suffix, or explicitly with ``fmt=``):

* ``tsv`` (``.tsv``, ``.txt``, ``.tab``): fields split on TAB only, no quoting (Chinese text often holds
  quote characters); the trailing ``\\r\\n`` / ``\\n`` is stripped.
* ``csv`` (``.csv``): Python's :mod:`csv` module with normal quoting (a quoted field may span lines).
* ``jsonl`` (``.jsonl``, ``.json``, ``.ndjson``): one JSON object (or array) per line.
* ``parquet`` (``.parquet``, ``.pq``): read in record batches with :mod:`pyarrow`.

Text formats may be compressed (``.gz``, ``.bz2``, ``.xz`` after the format suffix, e.g.
``train.tsv.xz``); they are decompressed while streaming. Text files are read in binary and decoded one
line at a time, so bytes that are not valid in ``encoding`` are reported with their line number. The
encoding must be ASCII-compatible (UTF-8, GBK, GB18030, Latin-1, ...). A byte-order mark at the start
of a line is dropped, and blank lines are skipped (they still count in line numbers).

A column is given by an ``int`` (0-based position; negative counts from the end) or a ``str`` (a name).
Names need a header line in TSV/CSV, keys in JSON-lines objects and column names in Parquet.
``header=None`` (the default) means: the first line is a header when any column is given by name;
with only numbered columns it is a header when its label (or count) field is not a number (and not a
``label_map`` key) while the next line's is, or there is no next line -- e.g. the
``id  sentence1  sentence2  label`` line of PAWS-X. Pass ``header=True`` / ``False`` to decide yourself.

Every file is streamed: rows are parsed as lines are read, never after reading the whole file.
Only regular files are read: a missing path, a directory, a FIFO or a device is a :class:`DataError` before
anything is opened (a FIFO would block, ``/dev/zero`` never ends). No line is read whole past
:data:`deepsem.fileio.MAX_LINE_BYTES` (1 MiB): a longer one is a :class:`DataError` naming it. A CSV quoted field
may span lines, but one still open after :data:`MAX_CSV_RECORD_LINES` lines or at the end of the file (an
unbalanced ``"`` that would swallow the rows after it) is an error naming the line where it opened, even with
``skip_bad_rows``.

A malformed row (missing column, a label that is not a number, undecodable bytes, empty text, bad JSON)
raises :class:`~deepsem.data.errors.DataError`, whose message names the file, the line (1-based,
counting the header; for Parquet the row number) and the field::

    bq/train.tsv, line 17, field 'label': 'abc' is not a number

With ``skip_bad_rows=True`` such rows are skipped instead and counted in a
:class:`~deepsem.data.errors.SkipReport` (the count and the first five messages). Problems with the
file as a whole (a named column that is not in the header, a missing file) always raise.

Text fields are stripped of surrounding whitespace; a text that is empty after that is a bad row.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import json
import logging
import lzma
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, TypeVar, cast

import numpy as np

from deepsem import fileio
from deepsem.data.errors import DataError, SkipReport
from deepsem.errors import ConfigError

__all__ = [
    "Clicks",
    "Column",
    "Format",
    "LabelMap",
    "PairRow",
    "Pairs",
    "Record",
    "RetrievalSet",
    "detect_format",
    "iter_click_counts",
    "iter_pairs",
    "iter_records",
    "read_clicks",
    "read_pairs",
    "read_retrieval",
    "sniff_labelled_header",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

Column = int | str
"""A column: 0-based position (``int``) or name (``str``)."""

Format = Literal["tsv", "csv", "jsonl", "parquet"]

LabelMap = Callable[[Any], Any] | Mapping[Any, Any]
"""Maps a raw label to a number (or to ``None`` to drop the row on purpose)."""

_SUFFIX_FORMATS: dict[str, Format] = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".tab": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FORMAT_ALIASES: dict[str, Format] = {
    "tsv": "tsv",
    "txt": "tsv",
    "tab": "tsv",
    "csv": "csv",
    "jsonl": "jsonl",
    "json": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
_COMPRESSION: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_PARQUET_BATCH_ROWS = 4096
_SURROGATES = re.compile("[\udc80-\udcff]")

#: Most lines one CSV record may span (a quoted field may hold line breaks). A quote left open swallows the
#: rows after it into one field; past this many lines (or at the end of the file) that is an error naming the
#: line where the quoted field opened.
MAX_CSV_RECORD_LINES = 100


# --------------------------------------------------------------------------------------------------
# Public result types


class PairRow(NamedTuple):
    """One text pair with its label and the line (Parquet: row) it came from."""

    text_a: str
    text_b: str
    label: float
    line: int


@dataclass
class Pairs:
    """Labelled text pairs read by :func:`read_pairs`."""

    text_a: list[str]
    text_b: list[str]
    labels: np.ndarray  # float32, one per pair
    source: str = ""
    skipped: SkipReport = field(default_factory=SkipReport)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if not (len(self.text_a) == len(self.text_b) == len(self.labels)):
            raise ValueError(
                f"Pairs: text_a, text_b and labels differ in length "
                f"({len(self.text_a)}, {len(self.text_b)}, {len(self.labels)})"
            )

    def __len__(self) -> int:
        return len(self.text_a)

    def __iter__(self) -> Iterator[tuple[str, str, float]]:
        yield from zip(self.text_a, self.text_b, self.labels.tolist(), strict=True)


@dataclass
class Clicks:
    """A click log aggregated per (query, doc) pair, in first-seen order.

    ``clicks[i]`` is the summed clicks of ``(queries[i], docs[i])``; ``impressions[i]`` the summed
    impressions, or ``impressions`` is ``None`` when the log has no impressions column.
    ``n_rows`` counts the raw rows that were aggregated.
    """

    queries: list[str]
    docs: list[str]
    clicks: np.ndarray  # float64
    impressions: np.ndarray | None = None  # float64
    n_rows: int = 0
    source: str = ""
    skipped: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def ctr(self) -> np.ndarray:
        """Click-through rate per pair (clicks / impressions; 0 where there were no impressions)."""
        if self.impressions is None:
            raise ValueError("this click log has no impressions column, so it has no click-through rate")
        out = np.zeros_like(self.clicks)
        np.divide(self.clicks, self.impressions, out=out, where=self.impressions > 0)
        return out


@dataclass
class RetrievalSet:
    """A BEIR-style retrieval set: documents, queries and relevance judgements of one split.

    ``corpus`` maps doc id to ``title + " " + text`` (just ``text`` without a title), ``queries``
    holds only the queries judged in ``qrels`` (query id to text), ``qrels`` maps query id to
    ``{doc id: relevance}``.
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    skipped: SkipReport = field(default_factory=SkipReport)

    def __repr__(self) -> str:
        n_judged = sum(len(v) for v in self.qrels.values())
        return (
            f"RetrievalSet({len(self.corpus)} docs, {len(self.queries)} queries, "
            f"{n_judged} judgements, source={self.source!r})"
        )


class Record(NamedTuple):
    """One row from :func:`iter_records`: its line (Parquet: row) and raw values by field name.

    Values are ``str`` for TSV/CSV, JSON values for JSON lines and Python values for Parquet; an
    optional field that is absent is ``None``.
    """

    line: int
    values: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Format detection and file opening


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> Format:
    """The format of ``path``: ``fmt`` if given (aliases like ``"json"`` allowed), else from its suffix.

    A compression suffix (``.gz``, ``.bz2``, ``.xz``) is looked through: ``a.tsv.gz`` is ``tsv``.
    """
    if fmt is not None:
        try:
            return _FORMAT_ALIASES[fmt.lower().lstrip(".")]
        except (KeyError, AttributeError):
            raise ConfigError(f"unknown format {fmt!r}; use one of tsv, csv, jsonl, parquet") from None
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise DataError(
        path, None, None, "cannot tell the format from the file name's suffix (.tsv, .csv, .jsonl, .parquet, "
        "optionally .gz/.bz2/.xz); pass fmt='tsv', 'csv', 'jsonl' or 'parquet'"
    )


def _open_binary(path: str) -> IO[bytes]:
    opener = _COMPRESSION.get(Path(path).suffix.lower(), open)
    return cast(IO[bytes], opener(path, "rb"))


def _check_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    if name.startswith(("utf-16", "utf-32")):
        raise ConfigError(
            f"encoding {encoding!r} is not ASCII-compatible; the readers split lines on b'\\n' before "
            "decoding. Convert the file to UTF-8 first."
        )
    return encoding


# --------------------------------------------------------------------------------------------------
# The record layer: rows as raw values by field name, or DataError objects for bad rows


@dataclass(frozen=True)
class _Col:
    name: str  # the field's name in messages ("text_a")
    spec: Column  # where it is in the file
    optional: bool = False


class _Ctx:
    """What error messages need: the file and what a row is called."""

    def __init__(self, path: str, fmt: Format, cols: Sequence[_Col]) -> None:
        self.path = path
        self.unit = "row" if fmt == "parquet" else "line"
        self.specs = {c.name: c.spec for c in cols}

    def error(self, line: int | None, field_name: str | None, problem: str) -> DataError:
        column = self.specs.get(field_name) if field_name is not None else None
        return DataError(self.path, line, field_name, problem, column=column, unit=self.unit)


def _decoded_lines(fh: IO[bytes], encoding: str, path: str) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line number, text with its line end, had undecodable bytes)`` for each line.

    Undecodable bytes are kept as lone surrogates (``surrogateescape``), which valid text never
    contains, so the field that holds them can be named later. A line longer than
    :data:`deepsem.fileio.MAX_LINE_BYTES` is a :class:`DataError` (never read whole).
    """
    for lineno, raw in fileio.bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
        try:
            text = raw.decode(encoding)
            bad = False
        except UnicodeDecodeError:
            text = raw.decode(encoding, "surrogateescape")
            bad = True
        if text.startswith("\ufeff"):
            text = text[1:]
        yield lineno, text, bad


def _bad_bytes(text: str) -> bytes:
    return bytes(ord(c) - 0xDC00 for c in _SURROGATES.findall(text))


def _undecodable(ctx: _Ctx, line: int, field_name: str | None, text: str, encoding: str) -> DataError:
    shown = _bad_bytes(text)[:8]
    return ctx.error(line, field_name, f"undecodable bytes {shown!r} (not valid {encoding})")


def _tsv_rows(lines: Iterable[tuple[int, str, bool]]) -> Iterator[tuple[int, list[str], bool]]:
    for lineno, text, bad in lines:
        text = text.rstrip("\r\n")
        if not text.strip(" "):
            continue
        yield lineno, text.split("\t"), bad


def _csv_rows(
    lines: Iterable[tuple[int, str, bool]], ctx: _Ctx
) -> Iterator[tuple[int, list[str], bool] | DataError]:
    last_bad = 0
    prev = 0  # the last line of the previous record
    eof = False

    def feed() -> Iterator[str]:
        nonlocal last_bad, eof
        for lineno, text, bad in lines:
            if bad:
                last_bad = lineno
            if lineno - prev > MAX_CSV_RECORD_LINES:
                raise ctx.error(prev + 1, None, f"a quoted field opened on this line is still open "
                                f"{MAX_CSV_RECORD_LINES} lines later: an unbalanced '\"'? (quote it as '\"\"')")
            yield text
        eof = True

    reader = csv.reader(feed())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start, prev = prev + 1, reader.line_num
            yield ctx.error(start, None, f"malformed CSV ({e})")
            continue
        start, prev = prev + 1, reader.line_num
        if eof:  # the reader asked for more lines after the last one: a quoted field never closed
            raise ctx.error(start, None, "a quoted field opened on this line runs to the end of the file: "
                            "an unbalanced '\"'? (quote it as '\"\"')")
        if not row or (len(row) == 1 and not row[0].strip(" ")):
            continue
        yield start, row, last_bad >= start


def _delimited_records(
    path: str,
    fmt: Format,
    cols: Sequence[_Col],
    header: bool | None,
    encoding: str,
    sniff: Callable[[dict[str, Any]], bool] | None,
    ctx: _Ctx,
) -> Iterator[Record | DataError]:
    named = any(isinstance(c.spec, str) for c in cols)
    if header is False and named:
        raise ConfigError(f"{path}: columns given by name need a header line (header=False was passed)")
    positions: dict[str, int | None] = {c.name: c.spec for c in cols if isinstance(c.spec, int)}
    with _open_binary(path) as fh:
        lines = _decoded_lines(fh, encoding, path)
        rows = _tsv_rows(lines) if fmt == "tsv" else _csv_rows(lines, ctx)
        first = True
        pending: list[tuple[int, list[str], bool] | DataError] = []  # a row read ahead by the header check
        while True:
            item: tuple[int, list[str], bool] | DataError | None
            if pending:
                item = pending.pop()
            else:
                item = next(rows, None)
                if item is None:
                    return
            if isinstance(item, DataError):
                if first and (named or header):
                    raise item  # the header line itself is unreadable: no row can be read
                first = False
                yield item
                continue
            lineno, fields, bad = item
            if first:
                first = False
                if header is not None:
                    is_header = header
                elif named:
                    is_header = True
                else:
                    # numbered columns: a header when its count/label field is not a number and the next
                    # row's is (or there is no next row)
                    is_header = sniff is not None and _sniff_header(fields, cols, sniff)
                    if is_header and sniff is not None:
                        ahead = next(rows, None)
                        if ahead is not None:
                            pending.append(ahead)
                            if not isinstance(ahead, DataError) and _sniff_header(ahead[1], cols, sniff):
                                is_header = False
                if is_header:
                    names = [f.strip() for f in fields]
                    index: dict[str, int] = {}
                    for i, name in enumerate(names):
                        index.setdefault(name, i)
                    for c in cols:
                        if isinstance(c.spec, str):
                            if c.spec in index:
                                positions[c.name] = index[c.spec]
                            elif c.optional:
                                positions[c.name] = None
                            else:
                                raise ctx.error(
                                    lineno, c.name, f"no column {c.spec!r} in the header ({', '.join(names)})"
                                )
                    continue
            values: dict[str, Any] = {}
            error: DataError | None = None
            n = len(fields)
            for c in cols:
                pos = positions[c.name]
                if pos is None or not -n <= pos < n:
                    if c.optional:
                        values[c.name] = None
                        continue
                    error = ctx.error(lineno, c.name, f"missing (the row has {n} field{'s' * (n != 1)})")
                    break
                value = fields[pos]
                if bad and _SURROGATES.search(value):
                    error = _undecodable(ctx, lineno, c.name, value, encoding)
                    break
                values[c.name] = value
            yield error if error is not None else Record(lineno, values)


def _sniff_header(fields: list[str], cols: Sequence[_Col], sniff: Callable[[dict[str, Any]], bool]) -> bool:
    n = len(fields)
    values = {c.name: fields[c.spec] for c in cols if isinstance(c.spec, int) and -n <= c.spec < n}
    try:
        return sniff(values)
    except Exception:
        return False


def _jsonl_records(path: str, cols: Sequence[_Col], encoding: str, ctx: _Ctx) -> Iterator[Record | DataError]:
    with _open_binary(path) as fh:
        for lineno, text, bad in _decoded_lines(fh, encoding, path):
            text = text.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                if bad:
                    yield _undecodable(ctx, lineno, None, text, encoding)
                else:
                    yield ctx.error(lineno, None, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:
                yield ctx.error(lineno, None, "invalid JSON (nested too deeply)")
                continue
            yield _json_values(obj, lineno, cols, bad, encoding, ctx)


def _json_values(
    obj: Any, lineno: int, cols: Sequence[_Col], bad: bool, encoding: str, ctx: _Ctx
) -> Record | DataError:
    if isinstance(obj, dict):
        ordered: list[Any] | None = None
        values: dict[str, Any] = {}
        for c in cols:
            if isinstance(c.spec, str):
                present = c.spec in obj
                value = obj.get(c.spec)
            else:
                if ordered is None:
                    ordered = list(obj.values())
                present = -len(ordered) <= c.spec < len(ordered)
                value = ordered[c.spec] if present else None
            if not present and not c.optional:
                return ctx.error(lineno, c.name, "missing (no such key in the JSON object)")
            if bad and isinstance(value, str) and _SURROGATES.search(value):
                return _undecodable(ctx, lineno, c.name, value, encoding)
            values[c.name] = value
        return Record(lineno, values)
    if isinstance(obj, list):
        values = {}
        for c in cols:
            if isinstance(c.spec, str):
                return ctx.error(lineno, c.name, f"the line is a JSON array, so it has no key {c.spec!r}")
            present = -len(obj) <= c.spec < len(obj)
            if not present and not c.optional:
                return ctx.error(lineno, c.name, f"missing (the JSON array has {len(obj)} items)")
            value = obj[c.spec] if present else None
            if bad and isinstance(value, str) and _SURROGATES.search(value):
                return _undecodable(ctx, lineno, c.name, value, encoding)
            values[c.name] = value
        return Record(lineno, values)
    return ctx.error(lineno, None, f"expected a JSON object or array, got {type(obj).__name__}")


def _parquet_records(
    path: str, cols: Sequence[_Col], encoding: str, ctx: _Ctx
) -> Iterator[Record | DataError]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        yield from _parquet_rows(pq, path, cols, encoding, ctx)
    except (pa.ArrowException, OSError) as exc:  # not Parquet, damaged, truncated
        raise ctx.error(None, None, f"cannot read the Parquet file: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                        ) from None


def _parquet_rows(pq: Any, path: str, cols: Sequence[_Col], encoding: str, ctx: _Ctx
                  ) -> Iterator[Record | DataError]:
    with pq.ParquetFile(path) as pf:
        names = list(pf.schema_arrow.names)
        resolved: dict[str, str | None] = {}
        for c in cols:
            if isinstance(c.spec, int):
                if not -len(names) <= c.spec < len(names):
                    if c.optional:
                        resolved[c.name] = None
                        continue
                    raise ctx.error(None, c.name, f"no column {c.spec} (the file has {len(names)} columns)")
                resolved[c.name] = names[c.spec]
            elif c.spec in names:
                resolved[c.name] = c.spec
            elif c.optional:
                resolved[c.name] = None
            else:
                raise ctx.error(None, c.name, f"no column {c.spec!r} (columns: {', '.join(names)})")
        wanted = list(dict.fromkeys(n for n in resolved.values() if n is not None))
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted):
            data = {n: batch.column(n).to_pylist() for n in wanted}
            for j in range(batch.num_rows):
                row += 1
                values: dict[str, Any] = {}
                error: DataError | None = None
                for c in cols:
                    name = resolved[c.name]
                    value = None if name is None else data[name][j]
                    if isinstance(value, bytes):
                        raw = value
                        try:
                            value = raw.decode(encoding)
                        except UnicodeDecodeError:
                            error = _undecodable(
                                ctx, row, c.name, raw.decode(encoding, "surrogateescape"), encoding
                            )
                            break
                    values[c.name] = value
                yield error if error is not None else Record(row, values)


def _records(
    path: str | os.PathLike[str],
    cols: Sequence[_Col],
    *,
    fmt: str | None,
    header: bool | None,
    encoding: str,
    sniff: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[_Ctx, Iterator[Record | DataError]]:
    spath = os.fspath(path)
    fileio.regular_file(spath, "data file")
    kind = detect_format(spath, fmt)
    _check_encoding(encoding)
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate field names {names}")
    for c in cols:
        if isinstance(c.spec, bool) or not isinstance(c.spec, int | str):
            raise TypeError(f"column for {c.name!r} must be an int position or a str name, got {c.spec!r}")
    ctx = _Ctx(spath, kind, cols)
    if kind == "parquet":
        it = _parquet_records(spath, cols, encoding, ctx)
    elif kind == "jsonl":
        it = _jsonl_records(spath, cols, encoding, ctx)
    else:
        it = _delimited_records(spath, kind, cols, header, encoding, sniff, ctx)
    return ctx, it


class _Drop:
    """Returned by a row converter for a row that ``label_map`` dropped on purpose."""


_DROP = _Drop()


def _convert(
    items: Iterator[Record | DataError],
    convert: Callable[[Record], _T | _Drop],
    skip_bad_rows: bool,
    report: SkipReport,
) -> Iterator[_T]:
    for item in items:
        try:
            if isinstance(item, DataError):
                raise item
            out = convert(item)
        except DataError as e:
            if not skip_bad_rows:
                raise
            report.add(e)
            continue
        if isinstance(out, _Drop):
            report.filtered += 1
            continue
        yield out


def iter_records(
    path: str | os.PathLike[str],
    columns: Mapping[str, Column],
    *,
    optional: Iterable[str] = (),
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    report: SkipReport | None = None,
    encoding: str = "utf-8",
) -> Iterator[Record]:
    """Stream raw rows of any supported file as :class:`Record` s, for data shapes not covered here.

    ``columns`` maps a field name to its column. Fields named in ``optional`` may be absent (their
    value is then ``None``); a missing required column or undecodable bytes in a field raise
    :class:`DataError` (or are skipped and counted in ``report`` with ``skip_bad_rows=True``).
    Values are not converted: validate them yourself. With ``header=None`` the first TSV/CSV line is a
    header exactly when some column is given by name.
    """
    opt = set(optional)
    cols = [_Col(name, spec, name in opt) for name, spec in columns.items()]
    _, items = _records(path, cols, fmt=fmt, header=header, encoding=encoding)
    return _convert(items, lambda r: r, skip_bad_rows, report if report is not None else SkipReport())


# --------------------------------------------------------------------------------------------------
# Value conversion


def _text(ctx: _Ctx, rec: Record, name: str) -> str:
    value = rec.values.get(name)
    if value is None:
        raise ctx.error(rec.line, name, "missing value (null)")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ctx.error(rec.line, name, f"expected text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ctx.error(rec.line, name, "empty text")
    return text


def _number(value: Any) -> float:
    """``value`` as a finite float; ValueError with a short reason otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    elif value is None:
        raise ValueError("missing value (null)")
    else:
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _map_label(value: Any, label_map: LabelMap) -> Any:
    if callable(label_map):
        try:
            return label_map(value)
        except Exception as e:
            raise ValueError(f"label_map failed on {value!r}: {type(e).__name__}: {e}") from None
    try:
        if value in label_map:
            return label_map[value]
    except TypeError:  # unhashable (a JSON list or object)
        raise ValueError(f"{value!r} is not in label_map") from None
    if isinstance(value, str):
        key = value.strip()
        if key in label_map:
            return label_map[key]
        try:
            num = float(key)
        except ValueError:
            num = None
        if num is not None and num in label_map:
            return label_map[num]
    elif str(value) in label_map:
        return label_map[str(value)]
    raise ValueError(f"{value!r} is not in label_map (keys: {', '.join(map(repr, list(label_map)[:10]))})")


def _label(value: Any, label_map: LabelMap | None) -> float | _Drop:
    if label_map is not None:
        mapped = _map_label(value, label_map)
        if mapped is None:
            return _DROP
        try:
            return _number(mapped)
        except ValueError:
            raise ValueError(f"label_map gave {mapped!r} for {value!r}, which is not a number") from None
    return _number(value)


def _header_like(value: Any, label_map: LabelMap | None = None) -> bool:
    """True when ``value`` cannot be a label or count: not a number and not mapped by ``label_map``."""
    if label_map is not None:
        try:
            _map_label(value, label_map)
            return False
        except ValueError:
            pass
    try:
        float(str(value).strip())
    except ValueError:
        return True
    return False


# --------------------------------------------------------------------------------------------------
# Header detection for labelled texts (labels are words, so "not a number" cannot tell a header)

#: Column names that mark a first line as the header of a labelled-text file (compared case-insensitively).
TEXT_HEADER_NAMES = frozenset({
    "text", "texts", "sentence", "sentences", "content", "review", "comment", "document", "doc", "body", "title",
    "query", "question", "message", "utterance", "sentence1", "text_a", "input",
})
LABEL_HEADER_NAMES = frozenset({
    "label", "labels", "class", "classes", "category", "categories", "tag", "tags", "target", "targets", "y",
    "intent", "topic", "sentiment", "polarity", "gold_label",
})


def _name_like(value: Any, names: frozenset[str]) -> bool:
    return isinstance(value, str) and value.strip().casefold() in names


def sniff_labelled_header(
    path: str | os.PathLike[str], text_col: Column, label_col: Column, *, fmt: str | None = None,
    encoding: str = "utf-8",
) -> bool:
    """Whether the first line of a TSV/CSV file of labelled texts (columns given by position) is a header.

    It is when its text field is a usual text column name (``text``, ``sentence``, ...) or its label field a
    usual label column name (``label``, ``class``, ...), and the next line's are not. The decision is logged
    (a warning when only one of the two fields looked like a name); pass ``header=`` to decide yourself.
    """
    spath = os.fspath(path)
    cols = [_Col("text", text_col), _Col("label", label_col)]
    _, items = _records(spath, cols, fmt=fmt, header=False, encoding=encoding)
    try:
        rows = []
        for item in items:
            rows.append(item)
            if len(rows) == 2:
                break
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    if not rows or not isinstance(rows[0], Record):
        return False
    first = rows[0].values
    by_text = _name_like(first.get("text"), TEXT_HEADER_NAMES)
    by_label = _name_like(first.get("label"), LABEL_HEADER_NAMES)
    if not (by_text or by_label):
        return False
    nxt = rows[1] if len(rows) > 1 and isinstance(rows[1], Record) else None
    if nxt is not None and (_name_like(nxt.values.get("text"), TEXT_HEADER_NAMES)
                            or _name_like(nxt.values.get("label"), LABEL_HEADER_NAMES)):
        logger.warning("%s: lines %d and %d both look like a header; reading line %d as data (pass header=True "
                       "to skip it)", spath, rows[0].line, nxt.line, rows[0].line)
        return False
    shown = f"{first.get('text')!r}, {first.get('label')!r}"
    if by_text and by_label:
        logger.info("%s: line %d (%s) is a header", spath, rows[0].line, shown)
    else:
        logger.warning("%s: reading line %d (%s) as a header, not a training row; pass header=False if it is "
                       "data", spath, rows[0].line, shown)
    return True


# --------------------------------------------------------------------------------------------------
# Labelled pairs


def iter_pairs(
    path: str | os.PathLike[str],
    *,
    text_a: Column = 0,
    text_b: Column = 1,
    label: Column | None = 2,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    label_map: LabelMap | None = None,
    encoding: str = "utf-8",
    report: SkipReport | None = None,
    binary: bool = False,
) -> Iterator[PairRow]:
    """Stream ``(text_a, text_b, label, line)`` rows from a file of text pairs.

    Labels must be numbers (``"1"``, ``"0"``, ``"3.2"``); ``label_map`` (a dict or a function) maps each
    raw label first, e.g. ``{0: 0, 1: 1, 2: 1}`` for graded 0/1/2 labels or
    ``{"entailment": 1, "contradiction": 0}``. A dict is looked up with the raw value, then its number;
    a function gets the raw value. A mapped value of ``None`` drops the row on purpose (counted in
    ``report.filtered``, not as a bad row). ``label=None`` reads unlabelled positives: every row gets
    label 1.0 (translation pairs, clicked query-title pairs).

    ``binary=True`` (training pairs): a label, after ``label_map``, that is not 0 or 1 is a bad row whose
    message says how to map it; without it graded labels (STS-B 0-5, 0/1/2 relevance) are read as they are,
    for Spearman and graded evaluation.

    Bad rows raise :class:`DataError`, or with ``skip_bad_rows=True`` are skipped and counted in
    ``report`` (pass your own :class:`SkipReport` to see it). Rows come out as the file is read.
    """
    cols = [_Col("text_a", text_a), _Col("text_b", text_b)]
    if label is not None:
        cols.append(_Col("label", label))
    sniff = None if label is None else (lambda v: "label" in v and _header_like(v["label"], label_map))
    ctx, items = _records(path, cols, fmt=fmt, header=header, encoding=encoding, sniff=sniff)

    def convert(rec: Record) -> PairRow | _Drop:
        a = _text(ctx, rec, "text_a")
        b = _text(ctx, rec, "text_b")
        if label is None:
            return PairRow(a, b, 1.0, rec.line)
        try:
            y = _label(rec.values["label"], label_map)
        except ValueError as e:
            raise ctx.error(rec.line, "label", str(e)) from None
        if isinstance(y, _Drop):
            return y
        if binary and y not in (0.0, 1.0):
            raw = rec.values["label"]
            how = ("label_map gave it; make label_map return 0, 1 or None" if label_map is not None else
                   "training needs 0/1 labels: map them with label_map, e.g. {'0': 0, '1': 0, '2': 1}, or a "
                   "threshold, e.g. label_map=lambda v: float(v) >= 4")
            shown = f"{raw!r}" if label_map is None else f"{raw!r} (mapped to {y:g})"
            raise ctx.error(rec.line, "label", f"{shown} is not 0 or 1; {how}")
        return PairRow(a, b, y, rec.line)

    return _convert(items, convert, skip_bad_rows, report if report is not None else SkipReport())


def read_pairs(
    path: str | os.PathLike[str],
    *,
    text_a: Column = 0,
    text_b: Column = 1,
    label: Column | None = 2,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    label_map: LabelMap | None = None,
    encoding: str = "utf-8",
    binary: bool = False,
) -> Pairs:
    """Read a whole file of text pairs into :class:`Pairs` (see :func:`iter_pairs` for the options).

    ``Pairs.skipped`` tells how many bad rows were skipped (with ``skip_bad_rows=True``); a warning
    is logged when there were any.
    """
    report = SkipReport()
    a_list: list[str] = []
    b_list: list[str] = []
    labels: list[float] = []
    for row in iter_pairs(
        path,
        text_a=text_a,
        text_b=text_b,
        label=label,
        fmt=fmt,
        header=header,
        skip_bad_rows=skip_bad_rows,
        label_map=label_map,
        encoding=encoding,
        report=report,
        binary=binary,
    ):
        a_list.append(row.text_a)
        b_list.append(row.text_b)
        labels.append(row.label)
    if report.count:
        logger.warning("%s: %s", os.fspath(path), report)
    return Pairs(a_list, b_list, np.asarray(labels, dtype=np.float32), os.fspath(path), report)


# --------------------------------------------------------------------------------------------------
# Click logs


def iter_click_counts(
    path: str | os.PathLike[str],
    *,
    query: Column = 0,
    doc: Column = 1,
    clicks: Column | None = 2,
    impressions: Column | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
    report: SkipReport | None = None,
) -> Iterator[tuple[str, str, float, float]]:
    """``(query, doc, clicks, impressions)`` of each row of a click log, checked (counts non-negative numbers,
    clicks at most impressions in a row) and not aggregated: what :func:`read_clicks` sums per pair and the shard
    stream reads row by row. Without a clicks column every row counts as one click; without impressions they are 0.
    Skipped rows (``skip_bad_rows``) are counted in ``report``."""
    cols = [_Col("query", query), _Col("doc", doc)]
    if clicks is not None:
        cols.append(_Col("clicks", clicks))
    if impressions is not None:
        cols.append(_Col("impressions", impressions))
    count_field = "clicks" if clicks is not None else ("impressions" if impressions is not None else None)

    def sniff(values: dict[str, Any]) -> bool:
        return count_field is not None and count_field in values and _header_like(values[count_field])

    ctx, items = _records(path, cols, fmt=fmt, header=header, encoding=encoding, sniff=sniff)

    def count(rec: Record, name: str) -> float:
        try:
            value = _number(rec.values[name])
        except ValueError as e:
            raise ctx.error(rec.line, name, str(e)) from None
        if value < 0:
            raise ctx.error(rec.line, name, f"{rec.values[name]!r} is negative")
        return value

    def convert(rec: Record) -> tuple[str, str, float, float]:
        q = _text(ctx, rec, "query")
        d = _text(ctx, rec, "doc")
        c = count(rec, "clicks") if clicks is not None else 1.0
        imp = count(rec, "impressions") if impressions is not None else 0.0
        if impressions is not None and c > imp:
            raise ctx.error(rec.line, "clicks", f"{c:g} clicks exceed {imp:g} impressions")
        return q, d, c, imp

    yield from _convert(items, convert, skip_bad_rows, report if report is not None else SkipReport())


def read_clicks(
    path: str | os.PathLike[str],
    *,
    query: Column = 0,
    doc: Column = 1,
    clicks: Column | None = 2,
    impressions: Column | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
) -> Clicks:
    """Read a click log and aggregate it per (query, doc) pair, in first-seen order.

    Each row holds a query, a document (title, URL text, ...) and optionally a click count and an
    impression count (non-negative numbers; clicks may not exceed impressions in a row). Without a
    clicks column (``clicks=None``) every row counts as one click. The file is streamed: only the
    running sums per pair are kept, never the raw rows.
    """
    report = SkipReport()
    rows = iter_click_counts(path, query=query, doc=doc, clicks=clicks, impressions=impressions, fmt=fmt,
                             header=header, skip_bad_rows=skip_bad_rows, encoding=encoding, report=report)
    index: dict[tuple[str, str], int] = {}
    queries: list[str] = []
    docs: list[str] = []
    click_sums: list[float] = []
    imp_sums: list[float] = []
    n_rows = 0
    for q, d, c, imp in rows:
        n_rows += 1
        i = index.get((q, d))
        if i is None:
            index[(q, d)] = len(queries)
            queries.append(q)
            docs.append(d)
            click_sums.append(c)
            imp_sums.append(imp)
        else:
            click_sums[i] += c
            imp_sums[i] += imp
    if report.count:
        logger.warning("%s: %s", os.fspath(path), report)
    return Clicks(
        queries=queries,
        docs=docs,
        clicks=np.asarray(click_sums, dtype=np.float64),
        impressions=np.asarray(imp_sums, dtype=np.float64) if impressions is not None else None,
        n_rows=n_rows,
        source=os.fspath(path),
        skipped=report,
    )


# --------------------------------------------------------------------------------------------------
# Retrieval sets (BEIR layout)


def read_retrieval(
    directory: str | os.PathLike[str] | None = None,
    split: str = "test",
    *,
    corpus_path: str | os.PathLike[str] | None = None,
    queries_path: str | os.PathLike[str] | None = None,
    qrels_path: str | os.PathLike[str] | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
) -> RetrievalSet:
    """Read a retrieval set in the BEIR layout.

    ``directory`` holds ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
    (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id  corpus-id  score`` with a header).
    Any of the three may be given explicitly instead (``corpus_path=`` ...; then ``directory`` may be
    ``None``); other formats work too when they use the same column names (TSV/CSV with a header).

    Only queries judged in the split are kept. A judged query without a text is a bad qrels row
    (skipped with ``skip_bad_rows=True``); judged documents missing from the corpus are kept in the
    qrels (they count as relevant but cannot be retrieved) and a warning is logged. Of repeated
    judgements of one (query, doc) pair the last one wins.
    """
    base = Path(directory) if directory is not None else None
    if base is not None and not base.is_dir():
        fileio.regular_file(base, "retrieval folder")  # missing, a FIFO, a device: says which
        raise DataError(base, None, None, "is a file; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or "
                        "corpus_path=, queries_path=, qrels_path=")

    def resolve(explicit: str | os.PathLike[str] | None, *parts: str) -> str:
        if explicit is not None:
            return os.fspath(explicit)
        if base is None:
            raise ValueError("read_retrieval needs a directory or explicit corpus/queries/qrels paths")
        return os.fspath(base.joinpath(*parts))

    c_path = resolve(corpus_path, "corpus.jsonl")
    q_path = resolve(queries_path, "queries.jsonl")
    r_path = resolve(qrels_path, "qrels", f"{split}.tsv")
    report = SkipReport()

    # qrels first: they decide which queries are kept
    qcols = [_Col("query-id", 0), _Col("corpus-id", 1), _Col("score", 2)]

    def sniff(values: dict[str, Any]) -> bool:
        return "score" in values and _header_like(values["score"])

    rctx, items = _records(r_path, qcols, fmt=None, header=None, encoding=encoding, sniff=sniff)

    def qrel(rec: Record) -> tuple[str, str, int, int]:
        qid = _text(rctx, rec, "query-id")
        did = _text(rctx, rec, "corpus-id")
        try:
            rel = _number(rec.values["score"])
        except ValueError as e:
            raise rctx.error(rec.line, "score", str(e)) from None
        if rel != int(rel):
            raise rctx.error(rec.line, "score", f"{rec.values['score']!r} is not a whole number")
        return qid, did, int(rel), rec.line

    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[str, int] = {}
    for qid, did, rel, line in _convert(items, qrel, skip_bad_rows, report):
        qrels.setdefault(qid, {})[did] = rel
        first_line.setdefault(qid, line)

    queries: dict[str, str] = {}
    for qid, text in _iter_id_text(q_path, skip_bad_rows, report, encoding, with_title=False):
        if qid in qrels and qid not in queries:
            queries[qid] = text
    for qid in list(qrels):
        if qid not in queries:
            err = rctx.error(
                first_line[qid], "query-id", f"query {qid!r} is not in {os.path.basename(q_path)}"
            )
            if not skip_bad_rows:
                raise err
            report.add(err)
            del qrels[qid]

    corpus: dict[str, str] = {}
    for did, text in _iter_id_text(c_path, skip_bad_rows, report, encoding, with_title=True):
        corpus.setdefault(did, text)
    missing = {d for judged in qrels.values() for d in judged if d not in corpus}
    if missing:
        logger.warning(
            "%s: %d judged documents are not in %s (e.g. %r)",
            r_path,
            len(missing),
            os.path.basename(c_path),
            sorted(missing)[0],
        )
    if report.count:
        logger.warning("%s: %s", os.fspath(base) if base is not None else r_path, report)
    source = os.fspath(base) if base is not None else r_path
    return RetrievalSet(corpus=corpus, queries=queries, qrels=qrels, source=source, skipped=report)


def _iter_id_text(
    path: str, skip_bad_rows: bool, report: SkipReport, encoding: str, *, with_title: bool
) -> Iterator[tuple[str, str]]:
    cols = [_Col("_id", "_id"), _Col("text", "text", optional=with_title)]
    if with_title:
        cols.append(_Col("title", "title", optional=True))
    ctx, items = _records(path, cols, fmt=None, header=None, encoding=encoding)

    def convert(rec: Record) -> tuple[str, str]:
        did = _text(ctx, rec, "_id")
        if not with_title:
            return did, _text(ctx, rec, "text")
        parts = []
        for name in ("title", "text"):
            value = rec.values.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ctx.error(rec.line, name, f"expected text, got {type(value).__name__}")
            if value.strip():
                parts.append(value.strip())
        if not parts:
            raise ctx.error(rec.line, "text", "empty text (and no title)")
        return did, " ".join(parts)

    return _convert(items, convert, skip_bad_rows, report)
