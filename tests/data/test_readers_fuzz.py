"""Issue 13, "prove the class": every data reader, given any bytes, returns a result or raises a DeepsemError in
bounded time -- never another exception, never a hang -- and files written the ordinary way (the csv module, TSV,
json.dumps) read back whole: the same rows, the same count, nothing merged, nothing dropped.

Examples are derandomized (CI-reproducible) and few, with a small line cap so long lines are cheap to try.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepsem import fileio
from deepsem.data import read_clicks, read_pairs, read_retrieval
from deepsem.data.interactions import read_interactions, read_items, read_user_features
from deepsem.embeddings import read_vectors
from deepsem.errors import DeepsemError
from deepsem.index import iter_corpus
from deepsem.tasks.classification import read_labelled

FUZZ = settings(max_examples=40, deadline=3000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROUND_TRIP = settings(max_examples=30, deadline=3000, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
LINE_CAP = 300


@contextlib.contextmanager
def small_line_cap() -> Iterator[None]:
    old = fileio.MAX_LINE_BYTES
    fileio.MAX_LINE_BYTES = LINE_CAP
    try:
        yield
    finally:
        fileio.MAX_LINE_BYTES = old


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="deepsem-fuzz-") as d:
        yield Path(d)


# -- hostile file contents -----------------------------------------------------------------------------------------
PIECES = ["\t", ",", '"', "'", "\n", "\r\n", "\r", "\0", " ", "0", "1", "2", "-1", "0.5", "nan", "inf", "1e400",
          "text", "label", "id", "{", "}", "[", "]", ":", '{"id": 1, "text": "x"}', "\ufeff", "中文", "é", "\\",
          "|", "::", "2024-01-01", "a b c", "-"]
BOMS = [b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE]
ENCODINGS = ["utf-8", "gbk", "latin-1", "utf-16-le", "cp1252"]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Text-like files built from separators, quotes, numbers, NULs, mixed line ends and BOMs, in several
    encodings, sometimes with a long line or raw random bytes."""
    kind = draw(st.sampled_from(["pieces", "pieces", "pieces", "random", "long"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    text = "".join(draw(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=60)))
    if kind == "long":
        text += "x" * draw(st.integers(LINE_CAP - 5, 3 * LINE_CAP)) + draw(st.sampled_from(["", "\n", "\r\n"]))
    encoding = draw(st.sampled_from(ENCODINGS))
    data = text.encode(encoding, "replace")
    return draw(st.sampled_from(BOMS)) + data


def _beir(folder: Path, data: bytes) -> Any:
    (folder / "qrels").mkdir(exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (folder / name).write_bytes(data)
    return read_retrieval(folder)


READERS: dict[str, Callable[[Path], Any]] = {
    "pairs": lambda p: read_pairs(p),
    "pairs-named": lambda p: read_pairs(p, text_a="text", text_b="id", label="label"),
    "pairs-skip": lambda p: read_pairs(p, skip_bad_rows=True, label_map={"0": 0, "1": 1}, binary=True),
    "clicks": lambda p: read_clicks(p, impressions=3),
    "labelled": lambda p: read_labelled(p),
    "labelled-multi": lambda p: read_labelled(p, multi_label=True, skip_bad_rows=True),
    "interactions": lambda p: read_interactions(p, rating_col=3, skip_bad_rows=True),
    "items": lambda p: read_items(p),
    "users": lambda p: read_user_features(p, feature_cols=(1, 2)),
    "corpus": lambda p: list(iter_corpus(p)),
    "corpus-skip": lambda p: list(iter_corpus(p, skip_bad_rows=True)),
    "vectors": lambda p: read_vectors(p),
}
SUFFIXES = {"vectors": [".vec", ".txt"], "corpus": [".jsonl", ".tsv", ".csv", ".txt"],
            "corpus-skip": [".jsonl", ".tsv", ".csv", ".txt"]}


def _result_or_deepsem_error(read: Callable[[], Any], names: tuple[str, ...]) -> None:
    """``read()`` returns, or raises a DeepsemError whose message is one line naming one of the files ``names``.
    Any other exception (UnicodeError, csv.Error, IndexError, RecursionError, MemoryError...) fails the test."""
    try:
        read()
    except DeepsemError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, message
        assert any(name in message for name in names), message


@FUZZ
@given(data=hostile_bytes(), reader=st.sampled_from(sorted(READERS)), pick=st.integers(0, 3))
def test_every_reader_returns_or_raises_a_deepsem_error(data: bytes, reader: str, pick: int) -> None:
    suffixes = SUFFIXES.get(reader, [".tsv", ".csv", ".jsonl", ".tsv.gz"])
    suffix = suffixes[pick % len(suffixes)]
    with scratch() as folder, small_line_cap():
        path = folder / f"f{suffix}"
        path.write_bytes(data)
        _result_or_deepsem_error(lambda: READERS[reader](path), (path.name,))


@FUZZ
@given(data=hostile_bytes())
def test_retrieval_reader_returns_or_raises_a_deepsem_error(data: bytes) -> None:
    with scratch() as folder, small_line_cap():
        _result_or_deepsem_error(lambda: _beir(folder, data), ("corpus.jsonl", "queries.jsonl", "test.tsv"))


@settings(max_examples=15, deadline=3000, derandomize=True, database=None)
@given(data=st.binary(max_size=300), reader=st.sampled_from(["pairs", "clicks", "labelled", "interactions"]))
def test_damaged_compressed_and_parquet_files(data: bytes, reader: str) -> None:
    with scratch() as folder, small_line_cap():
        for suffix in (".tsv.gz", ".tsv.bz2", ".tsv.xz", ".parquet"):
            path = folder / f"f{suffix}"
            path.write_bytes(data)
            _result_or_deepsem_error(lambda p=path: READERS[reader](p), (path.name,))


# -- round trips: rows written the ordinary way come back whole ----------------------------------------------------
SAFE = st.characters(blacklist_categories=("Cs",))  # any character a UTF-8 file can hold
FIELD = st.text(SAFE, min_size=1, max_size=12).filter(lambda s: s.strip() != "")
TSV_FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                    min_size=1, max_size=12).filter(lambda s: s.strip() != "")
LINE_END = st.sampled_from(["\n", "\r\n"])


@ROUND_TRIP
@given(rows=st.lists(st.tuples(FIELD, FIELD, st.sampled_from([0, 1])), min_size=1, max_size=15), bom=st.booleans())
def test_csv_pairs_round_trip(rows: list[tuple[str, str, int]], bom: bool) -> None:
    with scratch() as folder:
        path = folder / "p.csv"
        with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
            csv.writer(fh).writerows(rows)
        pairs = read_pairs(path, binary=True)
    assert list(zip(pairs.text_a, pairs.text_b, pairs.labels.tolist(), strict=True)) == [
        (a.strip(), b.strip(), float(y)) for a, b, y in rows]


@ROUND_TRIP
@given(rows=st.lists(st.tuples(TSV_FIELD, TSV_FIELD, st.sampled_from([0, 1])), min_size=1, max_size=15),
       end=LINE_END, bom=st.booleans())
def test_tsv_pairs_and_clicks_round_trip(rows: list[tuple[str, str, int]], end: str, bom: bool) -> None:
    with scratch() as folder:
        path = folder / "p.tsv"
        path.write_text(("\ufeff" if bom else "") + "".join(f"{a}\t{b}\t{y}{end}" for a, b, y in rows),
                        encoding="utf-8", newline="")
        pairs = read_pairs(path, header=False)
        clicks = read_clicks(path, header=False)
    expected = [(a.strip(), b.strip(), float(y)) for a, b, y in rows]
    assert list(zip(pairs.text_a, pairs.text_b, pairs.labels.tolist(), strict=True)) == expected
    assert clicks.n_rows == len(rows) and clicks.clicks.sum() == sum(y for _, _, y in rows)


@ROUND_TRIP
@given(rows=st.lists(st.tuples(FIELD, FIELD), min_size=1, max_size=15), fmt=st.sampled_from(["csv", "jsonl"]))
def test_labelled_round_trip_with_header(rows: list[tuple[str, str]], fmt: str) -> None:
    with scratch() as folder:
        path = folder / f"l.{fmt}"
        if fmt == "csv":
            with open(path, "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", "label"])
                writer.writerows(rows)
            data = read_labelled(path)  # header detected
        else:
            path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
            data = read_labelled(path, text_col="text", label_col="label")
    assert data.texts == [t.strip() for t, _ in rows]
    assert data.labels == [(y.strip(),) for _, y in rows]


@ROUND_TRIP
@given(docs=st.lists(st.tuples(TSV_FIELD.filter(lambda s: s == s.strip()), FIELD), min_size=1, max_size=15,
                     unique_by=lambda d: d[0]),
       fmt=st.sampled_from(["csv", "jsonl", "tsv"]), bom=st.booleans())
def test_corpus_round_trip(docs: list[tuple[str, str]], fmt: str, bom: bool) -> None:
    if fmt == "tsv":
        docs = [(i, t.replace("\t", " ").replace("\n", " ").replace("\r", " ")) for i, t in docs]
        docs = [(i, t) for i, t in docs if t.strip()]
    with scratch() as folder:
        path = folder / f"c.{fmt}"
        enc = "utf-8-sig" if bom else "utf-8"
        if fmt == "csv":
            with open(path, "w", encoding=enc, newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "text"])
                writer.writerows(docs)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs), encoding=enc)
        else:
            path.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in docs), encoding=enc, newline="")
        got = [(d.id, d.text) for d in iter_corpus(path)]
    if fmt == "tsv":
        got = [(i, t) for i, t in got]
        docs = [(i, t.rstrip("\r")) for i, t in docs]
    assert got == docs


@ROUND_TRIP
@given(rows=st.lists(st.tuples(TSV_FIELD.filter(lambda s: s == s.strip() and "," not in s and '"' not in s),
                               TSV_FIELD.filter(lambda s: s == s.strip() and "," not in s and '"' not in s),
                               st.integers(0, 2**40)), min_size=1, max_size=15))
def test_interactions_round_trip(rows: list[tuple[str, str, int]]) -> None:
    rows = list({(u, i, t): None for u, i, t in rows})  # exact repeats are dropped on purpose
    with scratch() as folder:
        path = folder / "log.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user", "item", "ts"])
            writer.writerows(rows)
        data = read_interactions(path, user_col="user", item_col="item", time_col="ts")
    got = sorted((data.users[u], data.items[i], int(t)) for u, i, t in zip(data.user, data.item, data.time,
                                                                          strict=True))
    assert got == sorted(rows)


@ROUND_TRIP
@given(vectors=st.dictionaries(st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
                                       min_size=1, max_size=8),
                               st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=3),
                               min_size=1, max_size=12),
       header=st.booleans(), bom=st.booleans())
def test_vectors_round_trip(vectors: dict[str, list[float]], header: bool, bom: bool) -> None:
    vectors = {w: v for w, v in vectors.items() if w == w.strip() and len(w.split()) == 1}
    if not vectors:
        return
    with scratch() as folder:
        path = folder / "v.vec"
        text = (f"{len(vectors)} 3\n" if header else "") + "".join(
            f"{w} {' '.join(repr(x) for x in v)}\n" for w, v in vectors.items())
        path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
        words, matrix = read_vectors(path)
    assert words == list(vectors)
    np.testing.assert_array_equal(matrix, np.asarray(list(vectors.values()), dtype=np.float32))
