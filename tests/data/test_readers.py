"""Readers for pairs, click logs and BEIR retrieval sets: formats, columns, bad rows, streaming."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepsem.data import (
    DataError,
    PairRow,
    SkipReport,
    detect_format,
    iter_pairs,
    iter_records,
    read_clicks,
    read_pairs,
    read_retrieval,
)

ROWS = [
    ("我的银行卡丢了", "银行卡丢失怎么办", 1),
    ("他说“明天还款”", '密码"忘了"', 0),  # quotes of both kinds must survive TSV reading
    ("怎么提高额度", "额度可以提升吗", 1),
]


def write_tsv(path: Path, rows, header: str | None = None) -> Path:
    lines = [header] if header else []
    lines += ["\t".join(str(x) for x in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def expect(pairs, rows=ROWS) -> None:
    assert pairs.text_a == [r[0] for r in rows]
    assert pairs.text_b == [r[1] for r in rows]
    assert pairs.labels.dtype == np.float32
    assert pairs.labels.tolist() == [float(r[2]) for r in rows]


# -- formats and columns ---------------------------------------------------------------------------


def test_tsv_numbered_columns(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "train.tsv", ROWS)
    pairs = read_pairs(path)
    expect(pairs)
    assert pairs.source == os.fspath(path)
    assert pairs.skipped.count == 0
    assert len(pairs) == 3
    assert next(iter(pairs)) == (ROWS[0][0], ROWS[0][1], 1.0)


def test_tsv_named_columns_and_reordered(tmp_path: Path) -> None:
    rows = [(i, y, b, a) for i, (a, b, y) in enumerate(ROWS)]
    path = write_tsv(tmp_path / "dev.tsv", rows, header="id\tlabel\tsentence2\tsentence1")
    pairs = read_pairs(path, text_a="sentence1", text_b="sentence2", label="label")
    expect(pairs)


def test_tsv_header_autodetect_with_numbered_columns(tmp_path: Path) -> None:
    # PAWS-X style: a header line, but columns given by position -> the header is recognised
    rows = [(i, a, b, y) for i, (a, b, y) in enumerate(ROWS)]
    path = write_tsv(tmp_path / "paws.tsv", rows, header="id\tsentence1\tsentence2\tlabel")
    expect(read_pairs(path, text_a=1, text_b=2, label=3))
    # without a header the first row is data
    expect(read_pairs(write_tsv(tmp_path / "plain.tsv", ROWS)))
    # header=True forces skipping the first line; header=False with numbered columns keeps it (bad label)
    assert len(read_pairs(write_tsv(tmp_path / "h.tsv", ROWS), header=True)) == 2
    with pytest.raises(DataError, match=r"paws\.tsv, line 1, field 'label'"):
        read_pairs(path, text_a=1, text_b=2, label=3, header=False)
    # a header line is only taken as one when the next line's label is a number
    two_bad = write_tsv(tmp_path / "two_bad.tsv", [("a", "b", "x"), ("c", "d", "y")])
    with pytest.raises(DataError, match=r"two_bad\.tsv, line 1, field 'label': 'x' is not a number"):
        read_pairs(two_bad)
    # names need a header
    with pytest.raises(ValueError, match="header"):
        read_pairs(path, text_a="sentence1", text_b="sentence2", label="label", header=False)


def test_tsv_unknown_column_name_is_a_file_error(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "dev.tsv", ROWS, header="a\tb\tlabel")
    with pytest.raises(DataError, match=r"line 1, field 'text_a' \(column 'query'\): no column 'query'"):
        read_pairs(path, text_a="query", text_b="b", label="label", skip_bad_rows=True)


def test_tsv_crlf_bom_blank_lines_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "win.tsv"
    data = "\ufeff" + "\r\n".join(f" {a} \t{b}\t{y}" for a, b, y in ROWS) + "\r\n\r\n"
    path.write_bytes(data.replace("\r\n\r\n", "\r\n\r\n\r\n").encode("utf-8"))
    expect(read_pairs(path))  # BOM dropped, text stripped, CR stripped, blank lines ignored


def test_csv_named_and_numbered_with_quoting(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text(
        'q,d,y\n"第一, 带逗号","多\n行",1\n"他说""好""",普通,0\n',
        encoding="utf-8",
    )
    want = [("第一, 带逗号", "多\n行", 1), ('他说"好"', "普通", 0)]
    expect(read_pairs(path, text_a="q", text_b="d", label="y"), want)
    expect(read_pairs(path), want)  # numbered columns: 'y' is not a number -> header detected
    # a bad row after a multi-line row is reported with its own starting line (line 5)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("甲,乙,abc\n")
    with pytest.raises(DataError, match=r"pairs\.csv, line 5, field 'label': 'abc' is not a number"):
        read_pairs(path)


def test_jsonl_named_and_numbered(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for a, b, y in ROWS:
            fh.write(json.dumps({"sentence1": a, "sentence2": b, "label": y}, ensure_ascii=False) + "\n")
        fh.write("\n")  # a blank line is fine
    expect(read_pairs(path, text_a="sentence1", text_b="sentence2", label="label"))
    expect(read_pairs(path))  # numbered: position in the object's key order
    arrays = tmp_path / "arrays.json"
    arrays.write_text("\n".join(json.dumps(list(r), ensure_ascii=False) for r in ROWS), encoding="utf-8")
    expect(read_pairs(arrays))
    # string labels are numbers too
    strings = tmp_path / "s.jsonl"
    strings.write_text('{"a": "x", "b": "y", "l": "3.5"}\n', encoding="utf-8")
    assert read_pairs(strings, text_a="a", text_b="b", label="l").labels.tolist() == [3.5]


def test_parquet_named_and_numbered(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "id": list(range(len(ROWS))),
            "query": [r[0] for r in ROWS],
            "title": [r[1] for r in ROWS],
            "label": [r[2] for r in ROWS],
        }
    )
    pq.write_table(table, path, row_group_size=2)  # two row groups
    expect(read_pairs(path, text_a="query", text_b="title", label="label"))
    expect(read_pairs(path, text_a=1, text_b=2, label=3))
    with pytest.raises(DataError, match=r"no column 'nope'"):
        read_pairs(path, text_a="nope", text_b="title", label="label")


def test_parquet_bad_row_names_row_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"a": ["x", "y", None], "b": ["p", "", "r"], "y": [1.0, 0.0, 1.0]}), path)
    with pytest.raises(DataError, match=r"bad\.parquet, row 2, field 'text_b' \(column 'b'\): empty text"):
        read_pairs(path, text_a="a", text_b="b", label="y")
    report = SkipReport()
    rows = list(iter_pairs(path, text_a="a", text_b="b", label="y", skip_bad_rows=True, report=report))
    assert [r.line for r in rows] == [1]
    assert report.count == 2
    assert "row 3, field 'text_a' (column 'a'): missing value" in report.messages[1]


def test_explicit_format_and_compression(tmp_path: Path) -> None:
    path = tmp_path / "data.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(f"{a}\t{b}\t{y}\n" for a, b, y in ROWS))
    expect(read_pairs(path, fmt="tsv"))
    compressed = tmp_path / "data.tsv.gz"
    compressed.write_bytes(path.read_bytes())
    expect(read_pairs(compressed))
    assert detect_format("x/a.TXT") == "tsv"
    assert detect_format("a.json") == "jsonl"
    assert detect_format("a.parquet") == "parquet"
    assert detect_format("a.anything", "csv") == "csv"
    with pytest.raises(ValueError, match="fmt="):
        detect_format("a.xlsx")


# -- labels --------------------------------------------------------------------------------------------


def test_graded_label_map(tmp_path: Path) -> None:
    path = write_tsv(
        tmp_path / "qbqtc.tsv", [("q", "t0", 0), ("q", "t1", 1), ("q", "t2", 2), ("q", "t3", "2.0")]
    )
    # dict keyed by numbers matches "2" and "2.0"; keyed by strings matches the raw text
    assert read_pairs(path, label_map={0: 0, 1: 0, 2: 1}).labels.tolist() == [0, 0, 1, 1]
    assert read_pairs(path, label_map=lambda v: float(v) >= 1).labels.tolist() == [0, 1, 1, 1]
    with pytest.raises(DataError, match=r"line 4, field 'label': '2.0' is not in label_map"):
        read_pairs(path, label_map={"0": 0, "1": 1, "2": 1})


def test_label_map_none_drops_rows_and_text_labels(tmp_path: Path) -> None:
    path = tmp_path / "nli.jsonl"
    rows = [("a", "b", "entailment"), ("c", "d", "neutral"), ("e", "f", "contradiction"), ("g", "h", "-")]
    path.write_text(
        "".join(json.dumps({"p": a, "h": b, "g": y}) + "\n" for a, b, y in rows), encoding="utf-8"
    )
    report = SkipReport()
    mapping = {"entailment": 1, "contradiction": 0, "neutral": None, "-": None}
    got = list(iter_pairs(path, text_a="p", text_b="h", label="g", label_map=mapping, report=report))
    assert [(r.text_a, r.label, r.line) for r in got] == [("a", 1.0, 1), ("e", 0.0, 3)]
    assert report.count == 0 and report.filtered == 2
    assert "2 rows dropped by label_map" in str(report)


def test_unlabelled_positives(tmp_path: Path) -> None:
    path = tmp_path / "cmn.txt"
    path.write_text("Hi.\t嗨。\tCC-BY 2.0 (France) Attribution\nRun!\t你用跑的。\tx\n", encoding="utf-8")
    pairs = read_pairs(path, label=None)
    assert pairs.text_a == ["Hi.", "Run!"]
    assert pairs.labels.tolist() == [1.0, 1.0]


def test_iter_records_generic(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "news.txt", [("标题一", 3), ("标题二", 7)])
    recs = list(iter_records(path, {"text": 0, "label": 1, "extra": 5}, optional=["extra"]))
    assert recs[1].line == 2
    assert recs[1].values == {"text": "标题二", "label": "7", "extra": None}


# -- click logs ----------------------------------------------------------------------------------------


def test_click_aggregation(tmp_path: Path) -> None:
    path = write_tsv(
        tmp_path / "clicks.tsv",
        [
            ("信用卡", "信用卡申请", 2, 10),
            ("贷款", "贷款利率", 1, 5),
            ("信用卡", "信用卡申请", 3, 4),
            ("信用卡", "信用卡还款", 0, 7),
        ],
        header="query\ttitle\tclicks\timpressions",
    )
    log = read_clicks(path, query="query", doc="title", clicks="clicks", impressions="impressions")
    assert log.queries == ["信用卡", "贷款", "信用卡"]
    assert log.docs == ["信用卡申请", "贷款利率", "信用卡还款"]
    assert log.clicks.tolist() == [5.0, 1.0, 0.0]
    assert log.impressions is not None and log.impressions.tolist() == [14.0, 5.0, 7.0]
    assert log.n_rows == 4 and len(log) == 3
    np.testing.assert_allclose(log.ctr, [5 / 14, 1 / 5, 0.0])
    # numbered columns: the header is recognised because 'clicks' is not a number
    same = read_clicks(path, impressions=3)
    assert same.clicks.tolist() == [5.0, 1.0, 0.0]


def test_click_rows_without_counts(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "log.tsv", [("q1", "d1"), ("q2", "d1"), ("q1", "d1"), ("q1", "d2")])
    log = read_clicks(path, clicks=None)
    assert list(zip(log.queries, log.docs, log.clicks.tolist(), strict=True)) == [
        ("q1", "d1", 2.0),
        ("q2", "d1", 1.0),
        ("q1", "d2", 1.0),
    ]
    assert log.impressions is None
    with pytest.raises(ValueError, match="no impressions"):
        _ = log.ctr


def test_click_bad_counts(tmp_path: Path) -> None:
    path = write_tsv(tmp_path / "log.tsv", [("q", "d", 5, 3), ("q", "d", -1, 3), ("q", "d", 1, 2)])
    with pytest.raises(DataError, match=r"log\.tsv, line 1, field 'clicks': 5 clicks exceed 3 impressions"):
        read_clicks(path, impressions=3)
    log = read_clicks(path, impressions=3, skip_bad_rows=True)
    assert log.clicks.tolist() == [1.0] and log.skipped.count == 2
    assert "line 2, field 'clicks': '-1' is negative" in log.skipped.messages[1]


# -- retrieval sets ------------------------------------------------------------------------------------


def write_beir(root: Path) -> Path:
    root.mkdir()
    (root / "qrels").mkdir()
    corpus = [
        {"_id": "d1", "title": "Aspirin", "text": "reduces fever."},
        {"_id": "d2", "title": "", "text": "No title here."},
        {"_id": 3, "text": "Integer id, no title key."},
    ]
    queries = [
        {"_id": "q1", "text": "what reduces fever"},
        {"_id": "q2", "text": "titles"},
        {"_id": "q3", "text": "x"},
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t3\t0\nq2\td2\t1\n")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td1\t1\n")
    return root


def test_beir_layout(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "toy")
    rs = read_retrieval(root)
    assert rs.corpus == {
        "d1": "Aspirin reduces fever.",
        "d2": "No title here.",
        "3": "Integer id, no title key.",
    }
    assert rs.queries == {"q1": "what reduces fever", "q2": "titles"}  # only the judged ones
    assert rs.qrels == {"q1": {"d1": 2, "3": 0}, "q2": {"d2": 1}}
    assert "3 docs, 2 queries" in repr(rs)
    train = read_retrieval(root, split="train")
    assert train.queries == {"q3": "x"} and train.qrels == {"q3": {"d1": 1}}
    # explicit paths, no directory
    explicit = read_retrieval(
        corpus_path=root / "corpus.jsonl",
        queries_path=root / "queries.jsonl",
        qrels_path=root / "qrels" / "train.tsv",
    )
    assert explicit.qrels == train.qrels


def test_beir_query_without_text(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "toy")
    with open(root / "qrels" / "test.tsv", "a") as fh:
        fh.write("q9\td1\t1\n")
    with pytest.raises(
        DataError, match=r"test\.tsv, line 5, field 'query-id': query 'q9' is not in queries\.jsonl"
    ):
        read_retrieval(root)
    rs = read_retrieval(root, skip_bad_rows=True)
    assert set(rs.qrels) == {"q1", "q2"} and rs.skipped.count == 1


def test_beir_bad_rows(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "toy")
    with open(root / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "d4", "title": "", "text": "  "}\n{"_id": "d5", "text": "ok"\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 4, field 'text': empty text"):
        read_retrieval(root)
    rs = read_retrieval(root, skip_bad_rows=True)
    assert set(rs.corpus) == {"d1", "d2", "3"}
    assert rs.skipped.count == 2
    assert "line 5: invalid JSON" in rs.skipped.messages[1]


def test_real_scifact_if_present() -> None:
    root = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "scifact"
    if not root.is_dir():
        pytest.skip("shared scifact data not available")
    rs = read_retrieval(root)
    assert (len(rs.corpus), len(rs.queries), sum(map(len, rs.qrels.values()))) == (5183, 300, 339)


# -- malformed rows --------------------------------------------------------------------------------------

BAD_ROWS = {
    # name: (file name, content bytes, line, field, message fragment, kwargs)
    "missing column": ("bq.tsv", b"a\tb\t1\nc\td\n", 2, "label", "missing (the row has 2 fields)", {}),
    "bad label": ("bq.tsv", b"a\tb\t1\nc\td\t1\ne\tf\tabc\n", 3, "label", "'abc' is not a number", {}),
    "nan label": ("bq.tsv", b"a\tb\tnan\n", 1, "label", "not a finite number", {}),
    "empty text": ("bq.tsv", b"a\tb\t1\n\t\t0\n", 2, "text_a", "empty text", {}),
    "empty text_b": ("bq.tsv", b"a\tb\t1\nc\t  \t0\n", 2, "text_b", "empty text", {}),
    "undecodable": ("bq.tsv", b"a\tb\t1\nc\t\xff\xfe\t0\ne\tf\t1\n", 2, "text_b", "undecodable bytes", {}),
    "csv missing": ("p.csv", b'a,b,1\n"c\nd",e\n', 2, "label", "missing", {}),
    "csv undecodable": ("p.csv", b'a,b,1\nc,"\xff\n\xfe",0\n', 2, "text_b", "undecodable bytes", {}),
    "bad json": ("p.jsonl", b'{"a": "x", "b": "y", "l": 1}\n{"a": "x", "b": \n', 2, None, "invalid JSON", {}),
    "json missing key": ("p.jsonl", b'{"a": "x", "l": 1}\n', 1, "text_b", "missing", {}),
    "json not text": ("p.jsonl", b'{"a": "x", "b": [1], "l": 1}\n', 1, "text_b", "expected text", {}),
    "json undecodable": ("p.jsonl", b'{"a": "x", "b": "\xff\xfe", "l": 1}\n', 1, "text_b", "undecodable", {}),
    "json undecodable outside text": (
        "p.jsonl",
        b'{"a": "x"\xff, "b": "y", "l": 1}\n',
        1,
        None,
        "undecodable",
        {},
    ),
    "label_map miss": (
        "g.tsv",
        b"a\tb\t0\nc\td\t7\n",
        2,
        "label",
        "'7' is not in label_map",
        {"label_map": {0: 0}},
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_malformed_rows_name_file_line_and_field(tmp_path: Path, case: str) -> None:
    name, content, line, field, fragment, kwargs = BAD_ROWS[case]
    path = tmp_path / name
    path.write_bytes(content)
    columns = {"text_a": "a", "text_b": "b", "label": "l"} if name.endswith("jsonl") else {}
    with pytest.raises(DataError) as info:
        read_pairs(path, **columns, **kwargs)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError)
    assert f"{tmp_path.name}/{name}" in message
    assert f"line {line}" in message
    assert (err.line, err.field) == (line, field)
    if field is not None:
        assert f"field '{field}'" in message
    assert fragment in message
    # the same file with skip_bad_rows: the bad row is skipped and counted
    pairs = read_pairs(path, **columns, **kwargs, skip_bad_rows=True)
    assert pairs.skipped.count == 1
    assert pairs.skipped.messages == [message]
    assert str(pairs.skipped) == f"skipped 1 bad row (first: {message})"


def test_undecodable_bytes_error_shows_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_bytes(b"a\tb\t1\n" * 16 + b"\xff\xfe\tb\t1\n" + b"a\tb\t0\n")
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert str(info.value) == (
        f"{tmp_path.name}/train.tsv, line 17, field 'text_a': "
        "undecodable bytes b'\\xff\\xfe' (not valid utf-8)"
    )
    # a column that is not read may hold anything
    other = tmp_path / "extra.tsv"
    other.write_bytes(b"a\tb\t1\t\xff\n")
    assert len(read_pairs(other)) == 1


def test_other_encodings(tmp_path: Path) -> None:
    path = tmp_path / "gbk.tsv"
    path.write_bytes("银行\t还款\t1\n".encode("gbk"))
    assert read_pairs(path, encoding="gbk").text_a == ["银行"]
    with pytest.raises(DataError, match="line 1, field 'text_a': undecodable"):
        read_pairs(path)
    with pytest.raises(ValueError, match="ASCII-compatible"):
        read_pairs(path, encoding="utf-16")


def test_skip_report_keeps_first_five_messages(tmp_path: Path) -> None:
    lines = ["a\tb\t1"] + [f"x{i}\ty\tbad{i}" for i in range(8)] + ["c\td\t0", "e\t\t1"]
    path = tmp_path / "many.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = read_pairs(path, skip_bad_rows=True)
    assert pairs.text_a == ["a", "c"]
    report = pairs.skipped
    assert report.count == 9
    assert len(report.messages) == 5
    assert report.messages[0].endswith("line 2, field 'label': 'bad0' is not a number")
    summary = str(report)
    assert summary.startswith("skipped 9 bad rows (first: ")
    assert "line 2" in summary and "\n" not in summary


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "absent.tsv")
    with pytest.raises(TypeError):
        read_pairs(write_tsv(tmp_path / "a.tsv", ROWS), text_a=1.5)  # type: ignore[arg-type]


# -- streaming -------------------------------------------------------------------------------------------


def test_rows_come_out_before_a_later_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "big.tsv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("第一\t第二\t1\n")
        fh.write("x\ty\t0\n" * 50_000)
        fh.write("x\ty\tbroken\n")
    it = iter_pairs(path)
    first = next(it)
    assert first == PairRow("第一", "第二", 1.0, 1)
    with pytest.raises(DataError, match="line 50002"):
        for _ in it:
            pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocks forever (issue 13): the readers refuse it before opening it."""
    fifo = tmp_path / "stream.tsv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"stream.tsv: is a FIFO"):
        list(iter_pairs(fifo))


def test_parquet_streams_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepsem.data.readers as readers

    monkeypatch.setattr(readers, "_PARQUET_BATCH_ROWS", 10)
    n = 1000
    path = tmp_path / "big.parquet"
    labels = ["1"] * (n - 1) + ["oops"]
    pq.write_table(pa.table({"a": ["x"] * n, "b": ["y"] * n, "y": labels}), path, row_group_size=100)
    it = iter_pairs(path, text_a="a", text_b="b", label="y")
    assert next(it).line == 1
    with pytest.raises(DataError, match=r"row 1000, field 'label' \(column 'y'\): 'oops' is not a number"):
        list(it)
