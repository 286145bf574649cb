"""``load_interactions`` (what the recommend commands read) and ``SequenceSplit.aligned_to`` (a split re-indexed to
a model's catalogue), each checked against results written out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepsem.data.errors import DataError
from deepsem.data.interactions import Interactions, SequenceSplit, load_interactions

#: user, item, time, rating; rows out of time order, one exact repeat, one malformed time
LOG = "user\titem\tts\tstars\nb\tx\t5\t1\na\tx\t3\t5\na\ty\t1\t2\nb\tz\t2\t4\na\ty\t1\t2\na\tz\tsoon\t3\n"


def sequences(data: Interactions) -> dict[str, list[str]]:
    return {data.users[u]: [data.items[i] for i in seq] for u, seq in enumerate(data.sequences())}


def test_a_log_file_by_column_names_with_a_rating_filter(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text(LOG, encoding="utf-8")
    data = load_interactions(log, columns=("user", "item", "ts"), rating_col="stars", skip_bad_rows=True)
    assert sequences(data) == {"b": ["z", "x"], "a": ["y", "x"]}
    assert data.skipped.count == 1 and data.duplicates == 1
    kept = load_interactions(log, columns=("user", "item", "ts"), rating_col="stars", skip_bad_rows=True,
                             min_rating=4)
    assert sequences(kept) == {"b": ["z"], "a": ["x"]}
    assert kept.skipped.count == 1 and kept.duplicates == 1  # what reading left out survives the filter
    with pytest.raises(DataError, match="line 7"):
        load_interactions(log, columns=("user", "item", "ts"))


def test_positions_and_feature_files(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("10\tu1\ti1\n5\tu1\ti2\n7\tu2\ti1\n", encoding="utf-8")
    items = tmp_path / "items.tsv"
    items.write_text("i1\tFirst film\tdrama|comedy\ni2\tSecond\t\n", encoding="utf-8")
    users = tmp_path / "users.tsv"
    users.write_text("u1\tgender=F\n", encoding="utf-8")
    data = load_interactions(log, columns=(1, 2, 0), items=items, users=users)
    assert sequences(data) == {"u1": ["i2", "i1"], "u2": ["i1"]}
    assert data.item_features is not None and data.item_features.titles == {"i1": "First film", "i2": "Second"}
    assert data.item_features.categories["i1"] == ["drama", "comedy"]
    assert data.user_features is not None and list(data.user_features) == ["u1"]
    assert load_interactions(log, columns=(1, 2, 0)).item_features is None


def test_a_movielens_folder_ignores_the_log_columns(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t10\t5\t300\n1\t20\t2\t100\n2\t10\t3\t200\n", encoding="latin-1")
    data = load_interactions(folder, columns=("no", "such", "columns"), min_rating=3)
    assert sequences(data) == {"1": ["10"], "2": ["10"]}


def test_columns_must_be_three(tmp_path: Path) -> None:
    log = tmp_path / "log.tsv"
    log.write_text("u\ti\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="user, item, time"):
        load_interactions(log, columns=(0, 1))


def split(items: list[str], train: list[list[int]], valid: list[list[int]], test: list[list[int]]) -> SequenceSplit:
    def arrays(seqs: list[list[int]]) -> list[np.ndarray]:
        return [np.array(s, dtype=np.int32) for s in seqs]

    times = [np.arange(len(s), dtype=np.float64) for s in train]
    return SequenceSplit(["u", "v"], items, arrays(train), arrays(valid), arrays(test), times, times, times)


def test_aligned_to_a_catalogue_by_hand() -> None:
    # split items: a=0 b=1 c=2 d=3; the model knows d, a, b (in that order); c is new
    original = split(["a", "b", "c", "d"], train=[[0, 2, 1], [3, 2]], valid=[[2], [0]], test=[[3], [2]])
    aligned, unknown = original.aligned_to(["d", "a", "b"])
    assert aligned.items == ["d", "a", "b", "<unknown>"]
    assert [s.tolist() for s in aligned.train] == [[1, 2], [0]]  # c dropped from the histories
    assert [s.tolist() for s in aligned.valid] == [[3], [1]]  # c as a target: the never-recommended item
    assert [s.tolist() for s in aligned.test] == [[0], [3]]
    assert unknown == 1  # one test target is c
    assert aligned.users == original.users and aligned.train_time is original.train_time
    assert [aligned.items[i] for i in aligned.history(0, "test")] == ["a", "b", "<unknown>"]


def test_aligned_to_its_own_items_is_the_same_split() -> None:
    original = split(["a", "b"], train=[[0], [1]], valid=[[1], []], test=[[0], [0]])
    aligned, unknown = original.aligned_to(["a", "b"])
    assert aligned is original and unknown == 0
    reordered, unknown = original.aligned_to(["b", "a"])
    assert reordered.items == ["b", "a", "<unknown>"] and unknown == 0
    assert [s.tolist() for s in reordered.test] == [[1], [1]]
