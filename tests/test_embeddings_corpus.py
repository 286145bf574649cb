"""``deepsem.embeddings.TextCorpus``: the texts of files (whole lines or tab-separated columns), re-iterable, with
errors naming file and line; and ``deepsem embeddings train`` reading its corpus through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepsem.data.errors import DataError
from deepsem.embeddings import TextCorpus


def files(tmp_path: Path) -> list[Path]:
    first = tmp_path / "a.tsv"
    first.write_text("我们\t去医院\t1\nhello world\tbye\t0\n", encoding="utf-8")
    second = tmp_path / "b.txt"
    second.write_text("one line\n\nlast\tcolumn", encoding="utf-8")
    return [first, second]


def test_whole_lines_of_every_file_in_order(tmp_path: Path) -> None:
    corpus = TextCorpus(files(tmp_path))
    expected = ["我们\t去医院\t1", "hello world\tbye\t0", "one line", "", "last\tcolumn"]
    assert list(corpus) == expected
    assert list(corpus) == expected  # read again: re-iterable, as gensim needs


def test_chosen_columns_one_text_each(tmp_path: Path) -> None:
    first = files(tmp_path)[0]
    assert list(TextCorpus([first], columns=[1, 0])) == ["去医院", "我们", "bye", "hello world"]


def test_a_missing_column_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"b\.txt, line 1: no column 1 \(1 fields\)"):
        list(TextCorpus(files(tmp_path), columns=[1]))


def test_text_that_is_not_utf8_names_its_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine\n", encoding="utf-8")
    bad.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match="not UTF-8 text") as info:
        list(TextCorpus([good, bad]))
    assert info.value.path == str(bad)


def test_cli_trains_on_the_columns(tmp_path: Path) -> None:
    pytest.importorskip("gensim")
    from typer.testing import CliRunner

    from deepsem.cli import app
    from deepsem.embeddings import read_vectors

    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"我们{i % 3}\t医院\t1\n" for i in range(30)), encoding="utf-8")
    out = tmp_path / "v.vec"
    result = CliRunner().invoke(app, ["embeddings", "train", str(data), "--out", str(out), "--column", "1",
                                      "--dim", "4", "--min-count", "1", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    words, _ = read_vectors(out)
    assert set(words) == {"医", "院"}  # the characters of column 1 only
