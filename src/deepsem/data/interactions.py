"""Interaction logs (user, item, time[, rating]) and item / user features, and leak-free sequence splits.

Readers
-------
* :func:`read_interactions` — a CSV / TSV / JSON-lines / Parquet log with user, item and timestamp columns
  (rating optional). Timestamps are numbers (e.g. Unix seconds) or ISO-8601 dates.
* :func:`read_items` — item features: a title text and categories (``|``-separated), CSV / TSV / Parquet.
* :func:`load_movielens` — a MovieLens folder as GroupLens ships it: ml-100k (``u.data``, ``u.item`` in
  Latin-1, ``u.user``), ml-1m (``ratings.dat`` / ``movies.dat`` / ``users.dat``, ``::``-separated, Latin-1)
  or ml-latest (``ratings.csv`` / ``movies.csv``, UTF-8).

A malformed row raises :class:`~deepsem.data.DataError` naming the file, line and field, or, with
``skip_bad_rows=True``, is skipped and counted in ``Interactions.skipped``. Rows may come in any order: each
user's interactions are put in time order, and rows with equal timestamps keep their order in the file. An
exact repeat of a (user, item, timestamp) row is dropped and counted (``duplicates``).

:func:`load_interactions` is what the ``deepsem recommend`` commands read: either of the first and third, plus
optional item / user feature files and a rating filter.

Splits
------
:func:`split_sequences` cuts each user's time-ordered sequence into train | validation | test: the last
``n_test`` interactions are the test targets, the ``n_valid`` before them the validation targets, the rest the
training sequence. The history given for a target is only what came before it in time (test history = train
sequence + validation items), never the target or anything after it. Users with too few interactions to keep
``min_train`` training items are used for training only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from deepsem import fileio
from deepsem.data.errors import DataError, DataFileNotFoundError, SkipReport
from deepsem.data.readers import Column, iter_records
from deepsem.fileio import bounded_lines, regular_file

__all__ = [
    "Interactions",
    "ItemFeatures",
    "SequenceSplit",
    "load_interactions",
    "load_movielens",
    "read_interactions",
    "read_items",
    "read_user_features",
    "split_sequences",
]


@dataclass
class ItemFeatures:
    """Per item id: a title (``""`` when unknown) and categories (genres, tags, a decade...)."""

    titles: dict[str, str] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(set(self.titles) | set(self.categories))


@dataclass
class Interactions:
    """An interaction log, rows sorted by (user, time, line in the file).

    ``users`` / ``items``: the string ids; ``user`` / ``item``: int32 positions into them, one per row;
    ``time``: float64 timestamps; ``rating``: float32 (NaN where the log has none); ``line``: the row's line
    in its file (Parquet: row number), kept for error messages.
    """

    users: list[str]
    items: list[str]
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    rating: np.ndarray
    line: np.ndarray
    source: str | None = None
    item_features: ItemFeatures | None = None
    user_features: dict[str, list[str]] | None = None
    skipped: SkipReport = field(default_factory=SkipReport)
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        return (f"Interactions({len(self)} rows, {len(self.users)} users, {len(self.items)} items, "
                f"source={self.source!r})")

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, str, float, float]] | Iterator[tuple[str, str, float, float]],
                  lines: Sequence[int] | None = None, source: str | None = None,
                  skipped: SkipReport | None = None) -> Interactions:
        """Build from ``(user, item, time, rating)`` rows (rating NaN when unknown)."""
        user_index: dict[str, int] = {}
        item_index: dict[str, int] = {}
        u, it, t, r = [], [], [], []
        for user, item, time, rating in rows:
            u.append(user_index.setdefault(str(user), len(user_index)))
            it.append(item_index.setdefault(str(item), len(item_index)))
            t.append(float(time))
            r.append(float(rating))
        line = np.asarray(lines if lines is not None else np.arange(1, len(u) + 1), dtype=np.int64)
        user_a, item_a = np.asarray(u, dtype=np.int32), np.asarray(it, dtype=np.int32)
        time_a, rating_a = np.asarray(t, dtype=np.float64), np.asarray(r, dtype=np.float32)
        order = np.lexsort((line, time_a, user_a))
        user_a, item_a, time_a = user_a[order], item_a[order], time_a[order]
        rating_a, line = rating_a[order], line[order]
        keep = np.ones(len(user_a), dtype=bool)
        if len(user_a) > 1:  # exact repeats of (user, item, time) sit next to each other only if adjacent
            key = np.stack([user_a.astype(np.float64), item_a.astype(np.float64), time_a], axis=1)
            sorted_rows = np.lexsort((key[:, 1], key[:, 2], key[:, 0]))
            same = np.all(key[sorted_rows[1:]] == key[sorted_rows[:-1]], axis=1)
            keep[sorted_rows[1:][same]] = False
        duplicates = int((~keep).sum())
        return cls(users=list(user_index), items=list(item_index), user=user_a[keep], item=item_a[keep],
                   time=time_a[keep], rating=rating_a[keep], line=line[keep], source=source,
                   skipped=skipped or SkipReport(), duplicates=duplicates)

    def sequences(self) -> list[np.ndarray]:
        """Each user's item positions in time order (index = position in ``users``)."""
        bounds = np.searchsorted(self.user, np.arange(len(self.users) + 1))
        return [self.item[bounds[i] : bounds[i + 1]] for i in range(len(self.users))]

    def filter(self, min_rating: float | None = None) -> Interactions:
        """Keep rows rated at least ``min_rating`` (rows without a rating are kept)."""
        if min_rating is None:
            return self
        keep = ~(self.rating < min_rating)
        out = Interactions(self.users, self.items, self.user[keep], self.item[keep], self.time[keep],
                           self.rating[keep], self.line[keep], self.source, self.item_features, self.user_features,
                           self.skipped, self.duplicates)
        return out


def _parse_time(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a timestamp")
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
    elif isinstance(value, datetime):
        return value.timestamp()
    else:
        text = str(value).strip()
        if not text:
            raise ValueError("empty timestamp")
        try:
            number = float(text)
        except ValueError:
            try:
                return datetime.fromisoformat(text).timestamp()
            except ValueError:
                raise ValueError(f"{text!r} is neither a number nor an ISO-8601 date") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite timestamp")
    return number


def _parse_rating(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite rating")
    return number


def _parse_id(value: Any) -> str:
    if value is None:
        raise ValueError("missing id")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise ValueError("empty id")
    return text


def _check_row(path: str, line: int, values: Mapping[str, Any]) -> tuple[str, str, float, float]:
    out: list[Any] = []
    for name, parse in (("user", _parse_id), ("item", _parse_id), ("time", _parse_time),
                        ("rating", _parse_rating)):
        if name == "rating" and name not in values:
            out.append(math.nan)
            continue
        try:
            out.append(parse(values.get(name)))
        except ValueError as exc:
            raise DataError(path, line, name, str(exc)) from None
    return out[0], out[1], out[2], out[3]


def _rows_to_interactions(path: str, records: Iterator[tuple[int, Mapping[str, Any] | DataError]],
                          skip_bad_rows: bool) -> Interactions:
    report = SkipReport()
    rows: list[tuple[str, str, float, float]] = []
    lines: list[int] = []
    for line, values in records:
        try:
            if isinstance(values, DataError):
                raise values
            rows.append(_check_row(path, line, values))
        except DataError as exc:
            if not skip_bad_rows:
                raise
            report.add(exc)
            continue
        lines.append(line)
    if not rows:
        raise DataError(path, None, None, "no interactions in the file"
                        + (f" ({report})" if report.count else ""))
    return Interactions.from_rows(rows, lines, source=path, skipped=report)


def read_interactions(
    path: str | os.PathLike[str],
    *,
    user_col: Column = 0,
    item_col: Column = 1,
    time_col: Column = 2,
    rating_col: Column | None = None,
    fmt: str | None = None,
    header: bool | None = None,
    skip_bad_rows: bool = False,
    encoding: str = "utf-8",
) -> Interactions:
    """Read an interaction log (CSV, TSV, JSON lines or Parquet; see :func:`deepsem.data.iter_records`).

    Columns are positions or header names. Every row needs a user, an item and a timestamp (a number or an
    ISO-8601 date); the rating, when a ``rating_col`` is given, may be empty (NaN).
    """
    spath = os.fspath(path)
    columns: dict[str, Column] = {"user": user_col, "item": item_col, "time": time_col}
    if rating_col is not None:
        columns["rating"] = rating_col
    report = SkipReport()
    records = iter_records(spath, columns, optional=("rating",), fmt=fmt, header=header,
                           skip_bad_rows=skip_bad_rows, report=report, encoding=encoding)
    out = _rows_to_interactions(spath, ((r.line, r.values) for r in records), skip_bad_rows)
    out.skipped.count += report.count
    out.skipped.messages = (report.messages + out.skipped.messages)[: out.skipped.max_messages]
    return out


def _split_lines(path: str, sep: str, encoding: str, n_fields: int, names: Sequence[str]
                 ) -> Iterator[tuple[int, dict[str, str] | DataError]]:
    """Rows of a MovieLens-style file (``u.data`` tabs, ``::`` or ``|``): the first fields by name, and all of
    them, in order, under ``"*"`` (joined by ``sep``)."""
    regular_file(path, "MovieLens file")
    with open(path, "rb") as fh:
        for line_no, raw in bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
            text = raw.decode(encoding, "replace").rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split(sep)
            if len(parts) < n_fields:
                yield line_no, DataError(path, line_no, names[min(len(parts), len(names) - 1)],
                                         f"expected {n_fields} {sep!r}-separated fields, got {len(parts)}")
                continue
            row = dict(zip(names, parts, strict=False))
            row["*"] = text
            yield line_no, row


def read_items(
    path: str | os.PathLike[str],
    *,
    item_col: Column = 0,
    title_col: Column | None = 1,
    categories_col: Column | None = 2,
    category_sep: str = "|",
    fmt: str | None = None,
    header: bool | None = None,
    encoding: str = "utf-8",
) -> ItemFeatures:
    """Item features from a CSV / TSV / Parquet file: an item id, a title and ``category_sep``-separated
    categories (either may be left out with ``None``)."""
    spath = os.fspath(path)
    columns: dict[str, Column] = {"item": item_col}
    if title_col is not None:
        columns["title"] = title_col
    if categories_col is not None:
        columns["categories"] = categories_col
    features = ItemFeatures()
    for rec in iter_records(spath, columns, optional=("title", "categories"), fmt=fmt, header=header,
                            encoding=encoding):
        try:
            item = _parse_id(rec.values.get("item"))
        except ValueError as exc:
            raise DataError(spath, rec.line, "item", str(exc)) from None
        title = rec.values.get("title")
        features.titles[item] = "" if title is None else str(title).strip()
        cats = rec.values.get("categories")
        features.categories[item] = [c.strip() for c in str(cats or "").split(category_sep) if c.strip()]
    return features


def read_user_features(path: str | os.PathLike[str], *, user_col: Column = 0, feature_cols: Sequence[Column] = (1,),
                       fmt: str | None = None, header: bool | None = None, encoding: str = "utf-8"
                       ) -> dict[str, list[str]]:
    """User features as ``name=value`` tokens (e.g. ``gender=F``) from a CSV / TSV / Parquet file."""
    spath = os.fspath(path)
    columns: dict[str, Column] = {"user": user_col}
    names = []
    for i, col in enumerate(feature_cols):
        name = col if isinstance(col, str) else f"f{i}"
        columns[name] = col
        names.append(name)
    out: dict[str, list[str]] = {}
    for rec in iter_records(spath, columns, optional=names, fmt=fmt, header=header, encoding=encoding):
        try:
            user = _parse_id(rec.values.get("user"))
        except ValueError as exc:
            raise DataError(spath, rec.line, "user", str(exc)) from None
        out[user] = [f"{n}={str(rec.values[n]).strip()}" for n in names if rec.values.get(n) not in (None, "")]
    return out


_ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                  "War", "Western")


def _decade(title: str) -> list[str]:
    """``Toy Story (1995)`` -> ``["decade=1990s"]``."""
    text = title.rstrip()
    if len(text) >= 6 and text.endswith(")") and text[-5:-1].isdigit():
        return [f"decade={text[-5:-2]}0s"]
    return []


def _age_band(age: str) -> str:
    try:
        value = int(age)
    except ValueError:
        return f"age={age}"
    for upper, band in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if value < upper:
            return f"age={band}"
    return "age=56+"


def _movielens_users(path: Path, sep: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    """``u.user`` / ``users.dat``: user id -> [age band, gender, occupation] features."""
    users: dict[str, list[str]] = {}
    for _, row in _split_lines(str(path), sep, "latin-1", len(names), names):
        if isinstance(row, DataError):
            raise row
        users[row["user"]] = [_age_band(row["age"]), f"gender={row['gender']}", f"occupation={row['occupation']}"]
    return users


def load_movielens(directory: str | os.PathLike[str], *, skip_bad_rows: bool = False) -> Interactions:
    """A MovieLens folder (ml-100k, ml-1m or ml-latest[-small]) with its item features (title, genres, decade)
    and, where the release has them, user features (gender, age band, occupation). Ratings are kept as they are;
    pass the result through :meth:`Interactions.filter` to keep only high ratings."""
    folder = Path(directory)
    if (folder / "u.data").is_file():
        path = str(folder / "u.data")
        records = _split_lines(path, "\t", "latin-1", 4, ("user", "item", "rating", "time"))
        data = _rows_to_interactions(path, records, skip_bad_rows)
        features = ItemFeatures()
        if (folder / "u.item").is_file():
            item_path = str(folder / "u.item")
            for _, row in _split_lines(item_path, "|", "latin-1", 24, ("item", "title")):
                if isinstance(row, DataError):
                    raise row
                parts = row["*"].split("|")
                title = parts[1].strip()
                features.titles[parts[0]] = title
                flags = parts[5:24]
                features.categories[parts[0]] = [g for g, f in zip(_ML100K_GENRES, flags, strict=True)
                                                 if f.strip() == "1"] + _decade(title)
        data.item_features = features
        if (folder / "u.user").is_file():
            data.user_features = _movielens_users(folder / "u.user", "|", ("user", "age", "gender", "occupation"))
        return data
    if (folder / "ratings.dat").is_file():
        path = str(folder / "ratings.dat")
        records = _split_lines(path, "::", "latin-1", 4, ("user", "item", "rating", "time"))
        data = _rows_to_interactions(path, records, skip_bad_rows)
        features = ItemFeatures()
        if (folder / "movies.dat").is_file():
            for _, row in _split_lines(str(folder / "movies.dat"), "::", "latin-1", 3, ("item", "title", "genres")):
                if isinstance(row, DataError):
                    raise row
                features.titles[row["item"]] = row["title"].strip()
                features.categories[row["item"]] = [g for g in row["genres"].split("|") if g] + _decade(row["title"])
        data.item_features = features
        if (folder / "users.dat").is_file():
            data.user_features = _movielens_users(folder / "users.dat", "::", ("user", "gender", "age", "occupation"))
        return data
    if (folder / "ratings.csv").is_file():
        data = read_interactions(folder / "ratings.csv", user_col="userId", item_col="movieId", time_col="timestamp",
                                 rating_col="rating", header=True, skip_bad_rows=skip_bad_rows)
        if (folder / "movies.csv").is_file():
            features = read_items(folder / "movies.csv", item_col="movieId", title_col="title",
                                  categories_col="genres", header=True)
            for item, title in features.titles.items():
                cats = [c for c in features.categories.get(item, []) if c != "(no genres listed)"]
                features.categories[item] = cats + _decade(title)
            data.item_features = features
        return data
    if not folder.is_dir():
        regular_file(folder, "MovieLens folder")  # missing, a FIFO, a device: says which
        raise DataError(folder, None, None, "is a file; give a MovieLens folder (holding u.data, ratings.dat or "
                        "ratings.csv)")
    raise DataFileNotFoundError(folder, None, None, "not a MovieLens folder (no u.data, ratings.dat or "
                                "ratings.csv)")


def load_interactions(
    source: str | os.PathLike[str],
    *,
    columns: Sequence[Column] = (0, 1, 2),
    rating_col: Column | None = None,
    items: str | os.PathLike[str] | None = None,
    users: str | os.PathLike[str] | None = None,
    min_rating: float | None = None,
    skip_bad_rows: bool = False,
) -> Interactions:
    """The interactions a recommender trains or is evaluated on: a MovieLens folder (:func:`load_movielens`) or a
    log file (:func:`read_interactions` with ``columns`` = user, item, time and an optional ``rating_col``), with
    the item features of ``items`` (:func:`read_items`) and the user features of ``users``
    (:func:`read_user_features`) when given, keeping the rows rated at least ``min_rating``.

    ``columns`` and ``rating_col`` apply to a log file only. The result's ``skipped`` and ``duplicates`` say
    what reading left out.
    """
    if Path(source).is_dir():
        loaded = load_movielens(source, skip_bad_rows=skip_bad_rows)
    else:
        if len(columns) != 3:
            raise ValueError(f"columns: expected user, item, time, got {list(columns)!r}")
        user_col, item_col, time_col = columns
        loaded = read_interactions(source, user_col=user_col, item_col=item_col, time_col=time_col,
                                   rating_col=rating_col, skip_bad_rows=skip_bad_rows)
    if items is not None:
        loaded.item_features = read_items(items)
    if users is not None:
        loaded.user_features = read_user_features(users)
    return loaded.filter(min_rating)


@dataclass
class SequenceSplit:
    """Per-user train sequences and held-out targets (see :func:`split_sequences`). Item values are positions
    in ``items``. ``valid_users`` / ``test_users`` are user positions; ``valid_targets[i]`` belongs to
    ``valid_users[i]`` and its history is ``train[valid_users[i]]``; the test history of a user is its train
    sequence followed by its validation items."""

    users: list[str]
    items: list[str]
    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    train_time: list[np.ndarray]
    valid_time: list[np.ndarray]
    test_time: list[np.ndarray]

    @property
    def n_items(self) -> int:
        return len(self.items)

    def history(self, user: int, stage: str) -> np.ndarray:
        """Everything before ``stage``'s targets ("valid" or "test"), in time order."""
        if stage == "valid":
            return self.train[user]
        if stage == "test":
            return np.concatenate([self.train[user], self.valid[user]])
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def examples(self, stage: str) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """Users with targets at ``stage``, their histories and their targets."""
        targets = self.valid if stage == "valid" else self.test if stage == "test" else None
        if targets is None:
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        users = [u for u in range(len(self.users)) if len(targets[u])]
        return users, [self.history(u, stage) for u in users], [targets[u] for u in users]

    def train_counts(self) -> np.ndarray:
        """How often each item occurs in the training sequences."""
        counts = np.zeros(len(self.items), dtype=np.int64)
        for seq in self.train:
            np.add.at(counts, seq, 1)
        return counts

    def aligned_to(self, catalogue: Sequence[str]) -> tuple[SequenceSplit, int]:
        """This split re-indexed to a model's ``catalogue``, and how many test targets the model does not know.

        Item positions follow ``catalogue``, with one extra item ``"<unknown>"`` after it: interactions with
        items the model never saw are dropped from the training sequences, and validation / test targets among
        them become that item, which is never recommended, so they can only be missed. A split whose items are
        already ``catalogue`` is returned as it is.
        """
        if list(self.items) == list(catalogue):
            return self, 0
        index = {item: i for i, item in enumerate(catalogue)}
        unknown = len(catalogue)  # a position past the catalogue: never recommended
        mapping = np.array([index.get(item, unknown) for item in self.items], dtype=np.int64)

        def remap(seqs: list[np.ndarray], keep_unknown: bool) -> list[np.ndarray]:
            return [mapping[seq] if keep_unknown else mapping[seq][mapping[seq] < unknown] for seq in seqs]

        n_unknown_targets = int(sum((mapping[t] == unknown).sum() for t in self.test))
        aligned = SequenceSplit(self.users, [*list(catalogue), "<unknown>"], remap(self.train, False),
                                remap(self.valid, True), remap(self.test, True), self.train_time, self.valid_time,
                                self.test_time)
        return aligned, n_unknown_targets


def split_sequences(data: Interactions, n_test: int = 1, n_valid: int = 1, min_train: int = 1) -> SequenceSplit:
    """Leave-last-out by time: per user, the last ``n_test`` items are test targets, the ``n_valid`` before them
    validation targets, the rest training (see the module docstring). ``n_valid=0``: no validation split."""
    if n_test < 0 or n_valid < 0 or min_train < 1:
        raise ValueError("n_test and n_valid must be >= 0 and min_train >= 1")
    bounds = np.searchsorted(data.user, np.arange(len(data.users) + 1))
    train, valid, test, t_train, t_valid, t_test = [], [], [], [], [], []
    empty_i, empty_t = np.zeros(0, dtype=np.int32), np.zeros(0)
    for u in range(len(data.users)):
        items = data.item[bounds[u] : bounds[u + 1]]
        times = data.time[bounds[u] : bounds[u + 1]]
        cut_test = len(items) - n_test
        cut_valid = cut_test - n_valid
        if cut_valid < min_train:
            train.append(items)
            t_train.append(times)
            valid.append(empty_i)
            test.append(empty_i)
            t_valid.append(empty_t)
            t_test.append(empty_t)
            continue
        train.append(items[:cut_valid])
        valid.append(items[cut_valid:cut_test])
        test.append(items[cut_test:])
        t_train.append(times[:cut_valid])
        t_valid.append(times[cut_valid:cut_test])
        t_test.append(times[cut_test:])
    return SequenceSplit(list(data.users), list(data.items), train, valid, test, t_train, t_valid, t_test)
