"""Corpus files for indexing: JSONL, TSV/CSV with a header, or plain text (one document per line).

Every document has an ``id`` (a column or key named by ``id_field``; the line number when absent), a
``text`` and any other columns as metadata. A malformed line is a :class:`DataError` naming the file, line
and field, or is skipped and counted when ``skip_bad_rows``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsem.data.errors import DataError, SkipReport


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
    """Stream the documents of a corpus file; the format follows the suffix (.jsonl, .tsv, .csv, other: text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    report = report if report is not None else SkipReport()

    def bad(line: int, name: str, problem: str) -> None:
        error = DataError(str(path), line, name, problem)
        if not skip_bad_rows:
            raise error
        report.add(str(error))

    with open(path, "rb") as fh:
        if suffix in (".jsonl", ".json"):
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    bad(number, "json", f"not a JSON object: {exc}")
                    continue
                if not isinstance(obj, dict):
                    bad(number, "json", "not a JSON object")
                    continue
                doc = _document(obj, number, id_field, text_field, bad)
                if doc is not None:
                    yield doc
        elif suffix in (".tsv", ".csv"):
            text_stream = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.reader(text_stream, delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            try:
                header = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise DataError(str(path), 1, "header", f"not UTF-8: {exc}") from None
            if text_field not in header:
                raise DataError(str(path), 1, text_field, f"no {text_field!r} column in the header {header}")
            number = 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except (UnicodeDecodeError, csv.Error) as exc:
                    number += 1
                    bad(number, "row", f"unreadable: {exc}")
                    continue
                number = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    bad(number, "row", f"{len(row)} fields, the header has {len(header)}")
                    continue
                doc = _document(dict(zip(header, row, strict=True)), number, id_field, text_field, bad)
                if doc is not None:
                    yield doc
        else:
            for number, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    bad(number, "text", f"not UTF-8: {exc}")
                    continue
                if text.strip():
                    yield Document(str(number), text)


def _document(obj: dict[str, Any], number: int, id_field: str, text_field: str, bad) -> Document | None:
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
