"""Issue 13, corpus files for ``deepsem index``: byte-order marks, unbalanced CSV quotes, non-regular files, endless
lines, and error positions in the file rather than in a read buffer."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from deepsem import fileio
from deepsem.data.errors import DataError, DataFileNotFoundError
from deepsem.index import iter_corpus

BOM = "\ufeff"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.tsv", BOM + "id\ttext\tlang\nd1\t你好\tzh\nd2\thello\ten\n"),
        ("c.csv", BOM + "id,text,lang\r\nd1,你好,zh\r\nd2,hello,en\r\n"),
        ("c.jsonl", BOM + '{"id": "d1", "text": "你好", "lang": "zh"}\n{"id": "d2", "text": "hello", "lang": "en"}\n'),
    ],
)
def test_bom_does_not_hide_the_id_column(tmp_path: Path, name: str, text: str) -> None:
    docs = list(iter_corpus(write(tmp_path / name, text)))
    expected = [("d1", "你好", {"lang": "zh"}), ("d2", "hello", {"lang": "en"})]
    assert [(d.id, d.text, d.metadata) for d in docs] == expected


def test_bom_is_not_part_of_the_first_plain_text_document(tmp_path: Path) -> None:
    docs = list(iter_corpus(write(tmp_path / "c.txt", BOM + "第一\n第二\n")))
    assert [(d.id, d.text) for d in docs] == [("1", "第一"), ("2", "第二")]


def test_unterminated_csv_quote_is_an_error_naming_its_line(tmp_path: Path) -> None:
    rows = "".join(f"d{i},text {i}\n" for i in range(250))
    path = write(tmp_path / "c.csv", 'id,text\nd0,"fine, quoted\nover two lines"\nbad,"oops\n' + rows)
    with pytest.raises(DataError, match=r"c\.csv, line 4: a quoted field opened on this line"):
        list(iter_corpus(path))
    with pytest.raises(DataError, match="line 4"):
        list(iter_corpus(path, skip_bad_rows=True))
    short = write(tmp_path / "s.csv", 'id,text\nd0,ok\nd1,"never closed\nd2,x\n')
    with pytest.raises(DataError, match=r"s\.csv, line 3: a quoted field opened on this line runs to the end"):
        list(iter_corpus(short))


def test_csv_round_trip_keeps_every_document(tmp_path: Path) -> None:
    rows = [["a", 'say "hi"'], ["b", "two\nlines"], ["c", "comma, inside"], ["d", "tab\tinside"]]
    path = tmp_path / "c.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows(rows)
    assert [[d.id, d.text] for d in iter_corpus(path)] == rows


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
@pytest.mark.parametrize("suffix", [".jsonl", ".tsv", ".csv", ".txt"])
def test_fifo_device_directory_missing_are_refused(tmp_path: Path, suffix: str) -> None:
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"is a FIFO \(named pipe\), not a regular corpus file"):
        iter_corpus(fifo)  # refused at once, before any document is asked for
    with pytest.raises(DataError, match="is a directory; give a corpus file"):
        iter_corpus(tmp_path)
    with pytest.raises(DataFileNotFoundError, match="corpus file not found"):
        iter_corpus(tmp_path / f"absent{suffix}")
    if os.path.exists("/dev/zero"):
        with pytest.raises(DataError, match="is a device"):
            iter_corpus("/dev/zero")


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv", ".csv", ".txt"])
def test_line_length_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    monkeypatch.setattr(fileio, "MAX_LINE_BYTES", 500)
    path = tmp_path / f"c{suffix}"
    first = {".jsonl": '{"id": "a", "text": "x"}', ".tsv": "id\ttext", ".csv": "id,text", ".txt": "x"}[suffix]
    path.write_bytes(first.encode() + b"\n" + b"y" * 2000 + b"\n")
    with pytest.raises(DataError, match=rf"c{suffix}, line 2: line longer than 500 bytes"):
        list(iter_corpus(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv", ".csv", ".txt"])
def test_undecodable_bytes_are_named_by_line_not_buffer_offset(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    head = {".jsonl": "", ".tsv": "id\ttext\n", ".csv": "id,text\n", ".txt": ""}[suffix]
    good = {".jsonl": '{{"id": "{i}", "text": "{t}"}}\n', ".tsv": "{i}\t{t}\n", ".csv": "{i},{t}\n", ".txt": "{t}\n"}
    body = "".join(good[suffix].format(i=i, t="文本" * 40) for i in range(200))  # far past an 8 KiB read buffer
    bad = {".jsonl": b'{"id": "z", "text": "\xff"}\n', ".tsv": b"z\t\xff\n", ".csv": b"z,\xff\n", ".txt": b"\xff\n"}
    path.write_bytes((head + body).encode() + bad[suffix])
    line = 201 + (1 if head else 0)
    with pytest.raises(DataError, match=rf"c{suffix}, line {line}, field '\w+': not UTF-8") as info:
        list(iter_corpus(path))
    assert "position" not in str(info.value)
    assert len(list(iter_corpus(path, skip_bad_rows=True))) == 200


def test_jsonl_errors_give_the_column_in_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", json.dumps({"id": "a", "text": "x"}) + '\n{"id": "b", "text": }\n')
    with pytest.raises(DataError, match=r"line 2, field 'json': not a JSON object: Expecting value at column 21"):
        list(iter_corpus(path))
    deep = write(tmp_path / "d.jsonl", "[" * 100_000 + "\n")
    with pytest.raises(DataError, match="line 1"):
        list(iter_corpus(deep))
