"""Corpus files for indexing: JSONL, TSV/CSV with a header, or plain text (one document per line).

Every document has an ``id`` (a column or key named by ``id_field``; the line number when absent), a
``text`` and any other columns as metadata. A malformed line is a :class:`DataError` naming the file, line
and field, or is skipped and counted when ``skip_bad_rows``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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
) -> Iterator[Document]:
    """Stream the documents of a corpus file; the format follows the suffix (.jsonl, .tsv, .csv, other: text).

    The file must be a regular UTF-8 file (a leading byte-order mark is dropped); a line longer than
    :data:`deepsem.fileio.MAX_LINE_BYTES` and a CSV quote left open are errors for the whole file, a malformed
    row is a :class:`DataError` naming its line (or is skipped and counted with ``skip_bad_rows``)."""
    path = Path(path)
    regular_file(path, "corpus file")
    suffix = path.suffix.lower()
    report = report if report is not None else SkipReport()
    return _iter_corpus(path, suffix, id_field, text_field, skip_bad_rows, report)


def _iter_corpus(path: Path, suffix: str, id_field: str, text_field: str, skip_bad_rows: bool,
                 report: SkipReport) -> Iterator[Document]:
    def bad(line: int, name: str, problem: str) -> None:
        error = DataError(str(path), line, name, problem)
        if not skip_bad_rows:
            raise error
        report.add(str(error))

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
                doc = _document(obj, number, id_field, text_field, bad)
                if doc is not None:
                    yield doc
        elif suffix in (".tsv", ".csv"):
            yield from _delimited(fh, path, suffix, id_field, text_field, bad)
        else:
            for number, raw in bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    bad(number, "text", f"not UTF-8 (byte {exc.start + 1} of the line: {raw[exc.start:exc.end]!r})")
                    continue
                if text.strip():
                    yield Document(str(number), text)


def _delimited(fh: IO[bytes], path: Path, suffix: str, id_field: str, text_field: str,
               bad: Callable[[int, str, str], None]) -> Iterator[Document]:
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
        doc = _document(dict(zip(header, row, strict=True)), number, id_field, text_field, bad)
        if doc is not None:
            yield doc


def _document(obj: dict[str, Any], number: int, id_field: str, text_field: str,
              bad: Callable[[int, str, str], None]) -> Document | None:
    text = obj.get(text_field)
    if not isinstance(text, str) or not text.strip():
        bad(number, text_field, "missing or empty text")
        return None
    raw_id = obj.get(id_field, number)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        bad(number, id_field, "empty id")
        return None
    meta = {k: v for k, v in obj.items() if k not in (id_field, text_field)}
    return Document(str(raw_id), text, meta)
