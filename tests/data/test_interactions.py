"""data/interactions.py on a tiny written log, against sequences and splits worked out by hand.

(tests/tasks/test_recommendation.py covers the file formats, bad rows and the no-leak property on a synthetic walk;
here: the exact leave-last-out split, ties at its boundary, the rating filter, the MovieLens feature derivations.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from deepsem.data.interactions import Interactions, load_movielens, read_interactions, split_sequences

# user, item, time, rating; by hand, in time order (a tie keeps the file's order):
#   u1: i1 (100), i2 (200), i3 (300), i4 (300), i5 (400)
#   u2: i2 (50), i1 (50), i3 (70)
#   u3: i4 (10), i5 (20, no rating)
LOG = [
    ("u1", "i1", "100", "5"),
    ("u2", "i2", "50", "2"),
    ("u1", "i3", "300", "1"),
    ("u1", "i2", "200", "4"),
    ("u2", "i1", "50", "3"),
    ("u1", "i4", "300", "5"),
    ("u2", "i3", "70", "4"),
    ("u3", "i4", "10", "5"),
    ("u1", "i5", "400", "2"),
    ("u3", "i5", "20", ""),
]


def write_log(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def log(tmp_path: Path) -> Interactions:
    return read_interactions(write_log(tmp_path / "log.tsv", LOG), rating_col=3)


def named(data: Interactions, items: np.ndarray) -> list[str]:
    return [data.items[i] for i in items]


def by_user(data: Interactions, sequences: list[np.ndarray]) -> dict[str, list[str]]:
    return {user: named(data, seq) for user, seq in zip(data.users, sequences, strict=True)}


def test_a_log_reads_as_each_users_items_in_time_order(log: Interactions) -> None:
    assert log.users == ["u1", "u2", "u3"] and log.items == ["i1", "i2", "i3", "i4", "i5"]  # first seen
    assert by_user(log, log.sequences()) == {"u1": ["i1", "i2", "i3", "i4", "i5"], "u2": ["i2", "i1", "i3"],
                                             "u3": ["i4", "i5"]}
    u1 = log.user == 0
    assert log.time[u1].tolist() == [100, 200, 300, 300, 400]
    assert log.line[u1].tolist() == [1, 4, 3, 6, 9]  # each row keeps its line in the file
    assert log.rating[u1].tolist() == [5, 4, 1, 5, 2] and math.isnan(log.rating[-1])
    assert len(log) == 10 and log.duplicates == 0 and not log.skipped


def test_leave_last_out_by_hand(log: Interactions) -> None:
    split = split_sequences(log, n_test=1, n_valid=1)
    assert by_user(log, split.train) == {"u1": ["i1", "i2", "i3"], "u2": ["i2"], "u3": ["i4", "i5"]}
    assert by_user(log, split.valid) == {"u1": ["i4"], "u2": ["i1"], "u3": []}
    assert by_user(log, split.test) == {"u1": ["i5"], "u2": ["i3"], "u3": []}  # u3: too short, training only
    assert [t.tolist() for t in split.test_time] == [[400], [70], []]
    assert [t.tolist() for t in split.valid_time] == [[300], [50], []]
    users, histories, targets = split.examples("test")
    assert users == [0, 1]
    assert [named(log, h) for h in histories] == [["i1", "i2", "i3", "i4"], ["i2", "i1"]]
    assert [named(log, t) for t in targets] == [["i5"], ["i3"]]
    assert [named(log, h) for h in split.examples("valid")[1]] == [["i1", "i2", "i3"], ["i2"]]
    # training counts: u1 i1 i2 i3, u2 i2, u3 i4 i5
    assert split.train_counts().tolist() == [1, 2, 1, 1, 1] and split.n_items == 5


def test_other_split_sizes_by_hand(log: Interactions) -> None:
    two_test = split_sequences(log, n_test=2, n_valid=0)
    assert by_user(log, two_test.train) == {"u1": ["i1", "i2", "i3"], "u2": ["i2"], "u3": ["i4", "i5"]}
    assert by_user(log, two_test.test) == {"u1": ["i4", "i5"], "u2": ["i1", "i3"], "u3": []}
    assert all(len(v) == 0 for v in two_test.valid)
    longer = split_sequences(log, n_test=1, n_valid=1, min_train=2)
    assert by_user(log, longer.train) == {"u1": ["i1", "i2", "i3"], "u2": ["i2", "i1", "i3"], "u3": ["i4", "i5"]}
    assert longer.examples("test")[0] == [0]  # u2 keeps fewer than 2 training items: training only
    with pytest.raises(ValueError, match="min_train"):
        split_sequences(log, min_train=0)
    with pytest.raises(ValueError, match="stage"):
        longer.examples("train")


def test_a_tie_at_the_split_boundary_follows_the_file_order(tmp_path: Path) -> None:
    swapped = list(LOG)
    swapped[2], swapped[5] = swapped[5], swapped[2]  # u1's i3 and i4, both at time 300
    data = read_interactions(write_log(tmp_path / "swapped.tsv", swapped), rating_col=3)
    split = split_sequences(data, n_test=1, n_valid=1)
    assert named(data, split.train[0]) == ["i1", "i2", "i4"] and named(data, split.valid[0]) == ["i3"]


def test_the_rating_filter_by_hand(log: Interactions) -> None:
    kept = log.filter(min_rating=4)
    # ratings >= 4, and u3's unrated i5
    assert by_user(kept, kept.sequences()) == {"u1": ["i1", "i2", "i4"], "u2": ["i3"], "u3": ["i4", "i5"]}
    assert kept.users == log.users and kept.items == log.items  # ids keep their positions
    assert len(kept) == 6 and log.filter(None) is log
    split = split_sequences(kept, n_test=1, n_valid=1)
    assert by_user(kept, split.test) == {"u1": ["i4"], "u2": [], "u3": []}


def test_an_exact_repeat_is_dropped_but_a_repeat_at_another_time_is_kept(tmp_path: Path) -> None:
    rows = [*LOG, ("u2", "i3", "70", "4"), ("u2", "i3", "80", "4")]
    data = read_interactions(write_log(tmp_path / "log.tsv", rows), rating_col=3)
    assert data.duplicates == 1 and len(data) == 11
    assert named(data, data.sequences()[1]) == ["i2", "i1", "i3", "i3"]


def test_movielens_1m_user_features_and_decades(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::300\n1::20::4::100\n2::10::3::200\n", encoding="latin-1")
    (folder / "movies.dat").write_bytes("10::Amélie (2001)::Comedy|Romance\n20::Untitled::Drama\n".encode("latin-1"))
    ages = ["17", "18", "24", "25", "49", "50", "55", "56", "x"]
    (folder / "users.dat").write_text("".join(f"{u}::{'F' if u % 2 else 'M'}::{age}::7::0000\n"
                                              for u, age in enumerate(ages, 1)), encoding="latin-1")
    data = load_movielens(folder)
    assert by_user(data, data.sequences()) == {"1": ["20", "10"], "2": ["10"]}
    assert data.rating.tolist() == [4, 5, 3]
    assert data.item_features is not None and data.user_features is not None
    assert data.item_features.titles == {"10": "Amélie (2001)", "20": "Untitled"}  # Latin-1 read as such
    assert data.item_features.categories == {"10": ["Comedy", "Romance", "decade=2000s"], "20": ["Drama"]}
    bands = ["<18", "18-24", "18-24", "25-34", "45-49", "50-55", "50-55", "56+", "x"]
    assert data.user_features == {str(u): [f"age={band}", f"gender={'F' if u % 2 else 'M'}", "occupation=7"]
                                  for u, band in enumerate(bands, 1)}
