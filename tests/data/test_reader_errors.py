"""Issue 13, data readers: headers, byte-order marks, unbalanced CSV quotes, non-0/1 pair labels, files that are
not regular files or not line-based, and error messages a user can act on."""

from __future__ import annotations

import csv
import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from deepsem import fileio
from deepsem.data import DataError, read_clicks, read_pairs, read_retrieval
from deepsem.data.errors import DataFileNotFoundError
from deepsem.data.interactions import load_movielens, read_interactions, read_items, read_user_features
from deepsem.embeddings import load_vectors, read_vectors
from deepsem.errors import DeepsemError
from deepsem.fileio import bounded_lines, utf8_lines
from deepsem.tasks.classification import read_labelled
from deepsem.tasks.matching import as_pairs

BOM = "\ufeff"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- 1. a header line of a labelled-text file ----------------------------------------------------------------------
def test_labelled_header_is_detected_not_read_as_a_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "train.tsv", "text\tlabel\ngood film\tpos\nbad film\tneg\nfine\tpos\n")
    data = read_labelled(path)
    assert data.texts == ["good film", "bad film", "fine"]
    assert data.label_set() == ["neg", "pos"]  # not "label"
    assert data.lines == [2, 3, 4]
    # header=False keeps the old reading; header=True skips a line that does not look like a header
    assert read_labelled(path, header=False).label_set() == ["label", "neg", "pos"]
    plain = write(tmp_path / "plain.tsv", "good film\tpos\nbad film\tneg\n")
    assert read_labelled(plain).texts == ["good film", "bad film"]
    assert read_labelled(plain, header=True).texts == ["bad film"]
    csv_path = write(tmp_path / "train.csv", "Sentence,Label\n\"a, b\",x\nc,y\n")
    assert read_labelled(csv_path).texts == ["a, b", "c"]
    # an ambiguous first line (only one field looks like a column name) is taken as a header, with a warning
    ambiguous = write(tmp_path / "amb.tsv", "review\tpos\nbad film\tneg\n")
    with caplog.at_level(logging.WARNING, logger="deepsem.data.readers"):
        assert read_labelled(ambiguous).texts == ["bad film"]
    assert "reading line 1 ('review', 'pos') as a header" in caplog.text and "header=False" in caplog.text


def test_labelled_header_only_file_and_two_header_like_lines(tmp_path: Path) -> None:
    assert len(read_labelled(write(tmp_path / "h.tsv", "text\tlabel\n"))) == 0
    # a data set whose labels happen to be "label": two header-like lines -> the first is data
    twice = write(tmp_path / "t.tsv", "x\tlabel\ny\tlabel\n")
    assert read_labelled(twice).texts == ["x", "y"]


# -- 2. a UTF-8 byte-order mark ------------------------------------------------------------------------------------
def test_bom_is_dropped_by_every_reader(tmp_path: Path) -> None:
    pairs = write(tmp_path / "p.tsv", BOM + "text_a\ttext_b\tlabel\na\tb\t1\n")
    assert read_pairs(pairs, text_a="text_a", text_b="text_b", label="label").text_a == ["a"]
    clicks = write(tmp_path / "c.csv", BOM + "q,d,n\nq1,d1,2\n")
    assert read_clicks(clicks, query="q", doc="d", clicks="n").queries == ["q1"]
    labelled = write(tmp_path / "l.jsonl", BOM + '{"text": "t", "label": "y"}\n')
    assert read_labelled(labelled, text_col="text", label_col="label").texts == ["t"]
    log = write(tmp_path / "i.tsv", BOM + "user\titem\tts\nu1\ti1\t5\n")
    assert read_interactions(log, user_col="user", item_col="item", time_col="ts").users == ["u1"]
    items = write(tmp_path / "items.csv", BOM + "id,title,genres\n7,T,a|b\n")
    assert read_items(items, item_col="id", title_col="title", categories_col="genres").titles == {"7": "T"}
    users = write(tmp_path / "u.tsv", BOM + "uid\tg\nu1\tF\n")
    assert read_user_features(users, user_col="uid", feature_cols=["g"]) == {"u1": ["g=F"]}
    vectors = write(tmp_path / "v.vec", BOM + "2 2\na 1 2\nb 3 4\n")
    words, matrix = read_vectors(vectors)
    assert words == ["a", "b"] and matrix.tolist() == [[1, 2], [3, 4]]
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write(beir / "corpus.jsonl", BOM + '{"_id": "d1", "text": "doc"}\n')
    write(beir / "queries.jsonl", BOM + '{"_id": "q1", "text": "query"}\n')
    write(beir / "qrels" / "test.tsv", BOM + "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    rs = read_retrieval(beir)
    assert rs.qrels == {"q1": {"d1": 1}} and rs.corpus == {"d1": "doc"}
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "ratings.dat").write_bytes(fileio.UTF8_BOM + b"1::10::5::100\n")
    assert load_movielens(ml).users == ["1"]


# -- 3. an unbalanced CSV quote ------------------------------------------------------------------------------------
def _rows(n: int) -> str:
    return "".join(f"q{i},d{i},1\n" for i in range(n))


@pytest.mark.parametrize("tail", ["", 'z,"closed late",1\n'])
def test_unterminated_csv_quote_names_the_line_it_opened(tmp_path: Path, tail: str) -> None:
    path = write(tmp_path / "p.csv", "a,b,1\n" + 'x,"y,0\n' + _rows(250) + tail)
    with pytest.raises(DataError, match=r"p\.csv, line 2: a quoted field opened on this line"):
        read_pairs(path)
    with pytest.raises(DataError, match="line 2"):  # not skippable: every later row would be wrong
        read_pairs(path, skip_bad_rows=True)
    for reader in (lambda p: read_clicks(p), lambda p: read_interactions(p), lambda p: read_labelled(p)):
        with pytest.raises(DataError, match="line 2: a quoted field"):
            reader(path)


def test_quote_open_at_the_last_line_and_legitimate_multiline_fields(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="line 2: a quoted field opened on this line runs to the end of the file"):
        read_pairs(write(tmp_path / "e.csv", 'a,b,1\nx,y,"0'))
    rows = [["a", "two\nlines", "1"], ["b", 'say "hi"\r\nthen\nmore', "0"], ["c", "d", "1"]]
    path = tmp_path / "ok.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    pairs = read_pairs(path)
    assert [list(r) for r in zip(pairs.text_a, pairs.text_b, strict=True)] == [r[:2] for r in rows]
    assert pairs.labels.tolist() == [1, 0, 1]


# -- 4. pair labels other than 0/1 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["2", "-1", "0.5"])
def test_training_pairs_refuse_labels_other_than_0_1(tmp_path: Path, label: str) -> None:
    path = write(tmp_path / "train.tsv", f"a\tb\t1\nc\td\t{label}\ne\tf\t0\n")
    with pytest.raises(DataError, match=rf"train\.tsv, line 2, field 'label': '{label}' is not 0 or 1; .*label_map"):
        as_pairs(path, binary=True)
    with pytest.raises(DataError, match="is not 0 or 1"):
        read_pairs(path, binary=True)
    assert len(read_pairs(path, binary=True, skip_bad_rows=True)) == 2


def test_label_map_results_are_checked_and_graded_labels_kept_for_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "sts.tsv", "a\tb\t0\nc\td\t1\ne\tf\t2\n")
    graded = {"0": 0, "1": 0, "2": 1}
    assert as_pairs(path, label_map=graded, binary=True).labels.tolist() == [0, 0, 1]
    with pytest.raises(DataError, match=r"line 3, field 'label': '2' \(mapped to 2\) is not 0 or 1"):
        as_pairs(path, label_map={"0": 0, "1": 1, "2": 2}, binary=True)
    capsys.readouterr()
    kept = as_pairs(path)  # evaluation: graded labels as they are (Spearman), with one line saying so
    assert kept.labels.tolist() == [0, 1, 2]
    err = capsys.readouterr().err
    assert "graded labels (0, 1, 2)" in err and err.count("\n") == 1
    as_pairs(write(tmp_path / "bin.tsv", "a\tb\t0\nc\td\t1\n"))
    assert capsys.readouterr().err == ""


# -- 5. non-regular files and endless lines -----------------------------------------------------------------------
def _readers(path: Path) -> list:
    return [
        lambda: read_pairs(path, fmt="tsv"),
        lambda: read_clicks(path, fmt="tsv"),
        lambda: read_labelled(path, fmt="tsv"),
        lambda: read_interactions(path, fmt="tsv"),
        lambda: read_items(path, fmt="tsv"),
        lambda: read_user_features(path, fmt="tsv"),
        lambda: read_retrieval(corpus_path=path, queries_path=path, qrels_path=path),
        lambda: read_vectors(path),
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_a_fifo_is_refused_by_every_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    for read in _readers(fifo):
        with pytest.raises(DataError, match=r"pipe\.tsv: is a FIFO \(named pipe\), not a regular"):
            read()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused_by_every_reader() -> None:
    for read in _readers(Path("/dev/zero")):
        with pytest.raises(DataError, match=r"zero: is a device"):
            read()


def test_missing_files_and_directories_are_data_errors(tmp_path: Path) -> None:
    for read in _readers(tmp_path / "absent.tsv"):
        with pytest.raises(DataFileNotFoundError, match=r"absent\.tsv: (data|word-vector) file not found") as info:
            read()
        assert isinstance(info.value, FileNotFoundError)  # code that caught it before still does
    for read in _readers(tmp_path):
        with pytest.raises(DataError, match=r"is a directory; give a"):
            read()
    with pytest.raises(DataError, match=r"ml\.txt: is a file; give a MovieLens folder"):
        load_movielens(write(tmp_path / "ml.txt", "x"))
    with pytest.raises(DataError, match="is a file; give a BEIR folder"):
        read_retrieval(write(tmp_path / "beir.txt", "x"))


def test_line_length_is_capped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fileio, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.tsv"
    path.write_bytes(b"a\tb\t1\n" + b"x" * 5000 + b"\tb\t1\n")
    for read in _readers(path)[:-2]:
        with pytest.raises(DataError, match=r"long\.tsv, line 2: line longer than 1,000 bytes"):
            read()
    vec = tmp_path / "long.vec"
    vec.write_bytes(b"a 1\n" + b"b" + b" 1" * 3000 + b"\n")
    with pytest.raises(DataError, match=r"long\.vec, line 2: line longer than 1,000 bytes"):
        read_vectors(vec)
    path.write_bytes(b"a\tb\t1\n" + b"x" * 997 + b"\tbb\r\n")  # exactly at the cap: fine
    assert read_pairs(path, label=None).text_a[-1] == "x" * 997


def test_bounded_lines_never_reads_past_the_cap() -> None:
    class Endless:
        """Like /dev/zero: readline() without a size would never return."""

        def readline(self, size: int = -1) -> bytes:
            assert 0 < size <= 101
            return b"\0" * size

    with pytest.raises(DataError, match=r"endless, line 1: line longer than 100 bytes"):
        list(bounded_lines(Endless(), "endless", 100))  # type: ignore[arg-type]


def test_damaged_compressed_file_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "p.tsv.gz"
    data = gzip.compress(b"a\tb\t1\n" * 1000)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"p\.tsv\.gz, line \d+: cannot read: .*truncated"):
        read_pairs(path)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(DataError, match="cannot read"):
        read_pairs(path)


def test_garbage_parquet_is_a_data_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"p\.parquet: cannot read the Parquet file"):
        read_pairs(path)


def test_deeply_nested_json_line_is_a_bad_row_not_a_recursion_error(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '["a", "b", 1]\n' + "[" * 200_000 + "\n" + '["c", "d", 0]\n')
    with pytest.raises(DataError, match=r"p\.jsonl, line 2: invalid JSON \(nested too deeply\)"):
        read_pairs(path)
    assert read_pairs(path, skip_bad_rows=True).text_a == ["a", "c"]


# -- 6. error positions in the file, not in a read buffer ---------------------------------------------------------
def test_undecodable_byte_is_named_by_line_and_position_in_that_line(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(("好" * 5000 + "\n").encode() * 3 + b"ab\xffc\n")
    with open(path, "rb") as fh, pytest.raises(DataError, match=r"t\.txt, line 4: not UTF-8 text \(byte 3 of"):
        list(utf8_lines(fh, path))
    seen: list[int] = []
    with open(path, "rb") as fh, pytest.raises(DataError):
        seen.extend(n for n, _ in utf8_lines(fh, path))
    assert seen == [1, 2, 3]
    vec = tmp_path / "v.vec"
    vec.write_bytes(b"a 1 2\n" * 3000 + b"b\xff 1 2\n")
    with pytest.raises(DataError, match=r"v\.vec, line 3001: not UTF-8 text \(invalid start byte at byte 2 of the"):
        read_vectors(vec)


# -- 7. NaN / Inf in word vectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "why"), [("nan", "'nan'"), ("-inf", "'-inf'"), ("1e39", "too large for float32")])
def test_non_finite_vectors_name_line_and_word(tmp_path: Path, value: str, why: str) -> None:
    path = write(tmp_path / "w.vec", f"3 2\n北京 0.1 0.2\n上海 0.3 {value}\n广州 1 2\n")
    with pytest.raises(DataError, match=rf"w\.vec, line 3: value 2 of token '上海' is not finite: .*{why}"):
        read_vectors(path)
    assert isinstance(DataError("x", 1, None, "y"), DeepsemError)
    skipped = load_vectors(path, on_error="skip")
    assert skipped.words == ["北京", "广州"] and skipped.bad_lines == 1
    assert np.isfinite(skipped.matrix).all()


def test_cr_only_line_ends_are_named_not_read_as_one_line(tmp_path: Path):
    """A file whose lines end in CR alone (old Mac) would be one endless line: every reader says so at line 1,
    while CRLF files and a stray CR inside a later line's text still read."""
    rows = [f"问题{i}\t回答{i}\t{i % 2}" for i in range(40)]
    cr = tmp_path / "cr.tsv"
    cr.write_bytes("\r".join(rows).encode() + b"\r")
    for read in (lambda p: read_pairs(p), lambda p: read_labelled(p, text_col=0, label_col=2)):
        with pytest.raises(DataError, match=r"cr\.tsv, line 1: carriage returns \(CR\) alone"):
            read(cr)
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    assert len(read_pairs(crlf).text_a) == 40
    stray = tmp_path / "stray.tsv"
    stray.write_bytes(("\n".join(rows[:2]) + "\n甲\r乙\t丙\t1\n").encode())
    assert read_pairs(stray).text_a[2] == "甲\r乙"


def test_empty_training_file_names_the_file(tmp_path: Path):
    from deepsem.tasks.matching import train

    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.tsv: no training pairs"):
        train(empty, tmp_path / "out", training={"epochs": 1}, progress=False)
