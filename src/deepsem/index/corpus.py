"""Corpus files for indexing: JSONL, TSV/CSV with a header, Parquet, or plain text (one document per line).

Every document has an ``id`` (a column or key named by ``id_field``; the line number when absent), a
``text`` and any other columns as metadata. A malformed line is a :class:`DataError` naming the file, line
and field, or is skipped and counted when ``skip_bad_rows``.

A corpus may also come in shards: a folder (every file below it whose name does not start with ``.`` or ``_``,
the convention of Spark and pyarrow) or a glob pattern, always read in the order of :func:`corpus_shards`
(sorted by the name relative to the folder). Read as shards, a document without an id of its own gets
``NAME:LINE`` (its shard's name and line), so that ids stay unique across shards.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deepsem import fileio
from deepsem.data.errors import DataError, SkipReport
from deepsem.data.readers import _bad_bytes, _csv_rows, _Ctx, _decoded_lines, _tsv_rows
from deepsem.fileio import bounded_lines, regular_file


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def iter_corpus(
    path: str | Path,
    *,
    id_field: str = "id",
    text_field: str = "text",
    skip_bad_rows: bool = False,
    report: SkipReport | None = None,
    id_prefix: str = "",
) -> Iterator[Document]:
    """Stream the documents of a corpus file; the format follows the suffix (.jsonl, .tsv, .csv, .parquet,
    other: text).

    The file must be a regular UTF-8 file (a leading byte-order mark is dropped); a line longer than
    :data:`deepsem.fileio.MAX_LINE_BYTES` and a CSV quote left open are errors for the whole file, a malformed
    row is a :class:`DataError` naming its line (or is skipped and counted with ``skip_bad_rows``).
    ``id_prefix`` goes before the line (Parquet: row) number that is the id of a document without one."""
    path = Path(path)
    regular_file(path, "corpus file")
    suffix = path.suffix.lower()
    report = report if report is not None else SkipReport()
    return _iter_corpus(path, suffix, id_field, text_field, skip_bad_rows, report, id_prefix)


def _iter_corpus(path: Path, suffix: str, id_field: str, text_field: str, skip_bad_rows: bool,
                 report: SkipReport, id_prefix: str = "") -> Iterator[Document]:
    def bad(line: int, name: str, problem: str) -> None:
        error = DataError(str(path), line, name, problem)
        if not skip_bad_rows:
            raise error
        report.add(str(error))

    if suffix in PARQUET_SUFFIXES:
        yield from _parquet(path, id_field, text_field, bad, id_prefix)
        return
    with open(path, "rb") as fh:
        if suffix in (".jsonl", ".json"):
            for number, raw in bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    bad(number, "json", f"not UTF-8 (byte {exc.start + 1} of the line: {raw[exc.start:exc.end]!r})")
                    continue
                except json.JSONDecodeError as exc:
                    bad(number, "json", f"not a JSON object: {exc.msg} at column {exc.colno}")
                    continue
                except RecursionError:
                    bad(number, "json", "JSON nested too deeply")
                    continue
                if not isinstance(obj, dict):
                    bad(number, "json", f"not a JSON object (a JSON {type(obj).__name__})")
                    continue
                doc = _document(obj, number, id_field, text_field, bad, id_prefix)
                if doc is not None:
                    yield doc
        elif suffix in (".tsv", ".csv"):
            yield from _delimited(fh, path, suffix, id_field, text_field, bad, id_prefix)
        else:
            for number, raw in bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    bad(number, "text", f"not UTF-8 (byte {exc.start + 1} of the line: {raw[exc.start:exc.end]!r})")
                    continue
                if text.strip():
                    yield Document(f"{id_prefix}{number}", text)


def _delimited(fh: IO[bytes], path: Path, suffix: str, id_field: str, text_field: str,
               bad: Callable[[int, str, str], None], id_prefix: str = "") -> Iterator[Document]:
    """Rows of a TSV (split on tabs, no quoting) or CSV (quoted fields) corpus with a header line."""
    ctx = _Ctx(str(path), "csv", [])
    lines = _decoded_lines(fh, "utf-8", str(path))
    rows = _tsv_rows(lines) if suffix == ".tsv" else _csv_rows(lines, ctx)
    header: list[str] | None = None
    for item in rows:
        if isinstance(item, DataError):
            if header is None:
                raise item
            bad(item.line or 0, "row", item.problem)
            continue
        number, row, undecodable = item
        if suffix == ".tsv":
            row = [f.rstrip("\r") for f in row]
        if header is None:
            if undecodable:
                raise DataError(str(path), number, "header", "not UTF-8 (undecodable bytes "
                                f"{_bad_bytes(chr(0).join(row))[:8]!r})")
            header = row
            if text_field not in header:
                raise DataError(str(path), number, text_field, f"no {text_field!r} column in the header {header}")
            continue
        if undecodable:
            bad(number, "row", f"not UTF-8 (undecodable bytes {_bad_bytes(chr(0).join(row))[:8]!r})")
            continue
        if len(row) != len(header):
            bad(number, "row", f"{len(row)} fields, the header has {len(header)}")
            continue
        doc = _document(dict(zip(header, row, strict=True)), number, id_field, text_field, bad, id_prefix)
        if doc is not None:
            yield doc


#: Suffixes read as Parquet (column batches with pyarrow); a column named ``id_field`` / ``text_field``, the rest
#: metadata.
PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_BATCH_ROWS = 4096


def _parquet(path: Path, id_field: str, text_field: str, bad: Callable[[int, str, str], None],
             id_prefix: str) -> Iterator[Document]:
    """Rows of a Parquet corpus (row numbers count from 1); values JSON cannot hold become their ``str``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            names = list(pf.schema_arrow.names)
            if text_field not in names:
                raise DataError(str(path), None, text_field, f"no {text_field!r} column (columns: {', '.join(names)})")
            number = 0
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for obj in batch.to_pylist():
                    number += 1
                    meta = {k: _json_value(v) for k, v in obj.items()}
                    doc = _document(meta, number, id_field, text_field, bad, id_prefix)
                    if doc is not None:
                        yield doc
    except (pa.ArrowException, OSError) as exc:  # not Parquet, damaged, truncated
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise DataError(str(path), None, None, f"cannot read the Parquet file: {first}") from None


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def _document(obj: dict[str, Any], number: int, id_field: str, text_field: str,
              bad: Callable[[int, str, str], None], id_prefix: str = "") -> Document | None:
    text = obj.get(text_field)
    if not isinstance(text, str) or not text.strip():
        bad(number, text_field, "missing or empty text")
        return None
    raw_id = obj.get(id_field, f"{id_prefix}{number}")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        bad(number, id_field, "empty id")
        return None
    meta = {k: v for k, v in obj.items() if k not in (id_field, text_field)}
    return Document(str(raw_id), text, meta)


# -- a corpus in shards -------------------------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class CorpusShard:
    """One file of a corpus: its ``path``, its ``name`` (relative to the corpus folder or the glob's folder; what
    manifests record) and the ``id_prefix`` of its documents without an id ("" for a corpus of one file)."""

    path: Path
    name: str
    id_prefix: str


def is_sharded(spec: str | Path | Sequence[str | Path]) -> bool:
    """Whether ``spec`` names a corpus in shards: a folder, a glob pattern (that is not itself a file), or several
    paths."""
    if not isinstance(spec, str | Path):
        return len(spec) != 1 or is_sharded(spec[0])
    text = str(spec)
    return Path(spec).is_dir() or (bool(_GLOB_CHARS & set(text)) and not os.path.lexists(text))


def corpus_shards(spec: str | Path | Sequence[str | Path]) -> list[CorpusShard]:
    """The files of a corpus, in the one order every reader uses (sorted by name): a file (one shard, named by
    its file name, ids as :func:`iter_corpus` gives them); a folder (every regular file below it whose name, and
    whose folders' names, do not start with ``.`` or ``_``); a glob pattern (``**`` goes into subfolders); or a
    list of files (named relative to their common folder). An empty set is a :class:`DataError` naming it."""
    if not isinstance(spec, str | Path):
        paths = [Path(p) for p in spec]
        if len(paths) == 1 and not is_sharded(paths[0]):
            return corpus_shards(paths[0])
        if any(is_sharded(p) for p in paths):
            raise DataError(str(paths[0]), None, None, "give one folder or glob pattern, or a list of files")
        for p in paths:
            regular_file(p, "corpus file")
        root = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else Path(".")
        return _named([(p, os.path.relpath(p.resolve(), root)) for p in paths], str(root))
    path = Path(spec)
    if path.is_dir():
        found = [(p, p.relative_to(path).as_posix()) for p in path.rglob("*")
                 if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts) and p.is_file()]
        return _named(found, str(path), "is a folder with no corpus files in it")
    if is_sharded(spec):
        base = _glob_base(str(spec))
        found = [(Path(p), os.path.relpath(p, base)) for p in glob.glob(str(spec), recursive=True)
                 if Path(p).is_file() and not os.path.basename(p).startswith((".", "_"))]
        return _named(found, str(spec), "matches no corpus files")
    regular_file(path, "corpus file")
    return [CorpusShard(path, path.name, "")]


def _glob_base(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading parts without glob characters."""
    parts = Path(pattern).parts
    lead = [p for p in parts[: next((i for i, p in enumerate(parts) if _GLOB_CHARS & set(p)), len(parts))]]
    return str(Path(*lead)) if lead else "."


def _named(found: list[tuple[Path, str]], where: str, empty: str = "no corpus files") -> list[CorpusShard]:
    if not found:
        raise DataError(where, None, None, empty)
    names = [name.replace(os.sep, "/") for _, name in found]
    if len(set(names)) != len(names):
        raise DataError(where, None, None, "two corpus files have the same name relative to their folder")
    return [CorpusShard(p, name, f"{name}:") for (p, _), name in sorted(zip(found, names, strict=True),
                                                                       key=lambda item: item[1])]


def iter_corpus_shards(
    shards: Sequence[CorpusShard],
    *,
    id_field: str = "id",
    text_field: str = "text",
    skip_bad_rows: bool = False,
    report: SkipReport | None = None,
) -> Iterator[Document]:
    """The documents of every shard in turn (:func:`iter_corpus` each, with its ``id_prefix``)."""
    report = report if report is not None else SkipReport()
    for shard in shards:
        yield from iter_corpus(shard.path, id_field=id_field, text_field=text_field, skip_bad_rows=skip_bad_rows,
                               report=report, id_prefix=shard.id_prefix)


def read_corpus(
    spec: str | Path | Sequence[str | Path],
    *,
    id_field: str = "id",
    text_field: str = "text",
    skip_bad_rows: bool = False,
    report: SkipReport | None = None,
) -> Iterator[Document]:
    """:func:`iter_corpus` of one file (exactly), or :func:`iter_corpus_shards` of a folder, glob or list."""
    if isinstance(spec, str | Path) and not is_sharded(spec):
        return iter_corpus(spec, id_field=id_field, text_field=text_field, skip_bad_rows=skip_bad_rows,
                           report=report)
    return iter_corpus_shards(corpus_shards(spec), id_field=id_field, text_field=text_field,
                              skip_bad_rows=skip_bad_rows, report=report)
