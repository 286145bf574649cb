"""Every train_X takes ``(data, out[, dev], *, ...)``; the old keyword names still work, as deprecated aliases that
make the very same call."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import deepsem
from deepsem.tasks import classification, matching, recommendation


class Stop(Exception):
    """Raised by the stand-in data reader: the call got as far as reading its data."""


def _recorded(monkeypatch: pytest.MonkeyPatch, module: Any, reader: str, call: Any) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        if len(seen) == 2:  # training and dev data read: enough
            raise Stop
        return real(*args, **kwargs)

    real = getattr(module, reader)
    monkeypatch.setattr(module, reader, record)
    with pytest.raises(Stop):
        call()
    monkeypatch.undo()
    return seen


def test_the_three_train_functions_take_data_out_dev_in_that_order():
    for function in (matching.train, classification.train_classifier, recommendation.train_recommender):
        params = list(inspect.signature(function).parameters.values())
        assert [p.name for p in params[:2]] == ["data", "out"], function.__name__
        assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name not in ("data", "out", "dev"))
    assert deepsem.train is matching.train and deepsem.train_classifier is classification.train_classifier


def test_train_accepts_train_data_and_dev_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
    for path in (train, dev):
        path.write_text("a\tb\t1\nc\td\t0\n", encoding="utf-8")
    new = _recorded(monkeypatch, matching, "as_pairs", lambda: deepsem.train(train, tmp_path / "m", dev))
    with pytest.warns(DeprecationWarning) as caught:
        old = _recorded(monkeypatch, matching, "as_pairs",
                        lambda: deepsem.train(train_data=train, out=tmp_path / "m", dev_data=dev))
    assert sorted(str(w.message) for w in caught) == ["train(): argument 'dev_data' is now called 'dev'",
                                                      "train(): argument 'train_data' is now called 'data'"]
    assert new == old and new[0][0][0] == train and new[1][0][0] == dev
    with pytest.raises(TypeError, match="both 'data' and its old name 'train_data'"):
        deepsem.train(train, tmp_path / "m", train_data=train)
    with pytest.raises(TypeError, match="missing required argument: 'data'"):
        deepsem.train(out=tmp_path / "m")


def test_train_classifier_accepts_train(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
    for path in (train, dev):
        path.write_text("text one\tx\ntext two\ty\n", encoding="utf-8")
    new = _recorded(monkeypatch, classification, "as_labelled",
                    lambda: deepsem.train_classifier(train, tmp_path / "m", dev))
    with pytest.warns(DeprecationWarning, match="'train' is now called 'data'"):
        old = _recorded(monkeypatch, classification, "as_labelled",
                        lambda: deepsem.train_classifier(train=train, out=tmp_path / "m", dev=dev))
    assert new == old and new[0][0][0] == train and new[1][0][0] == dev
    with pytest.raises(TypeError, match="both 'data' and its old name 'train'"):
        deepsem.train_classifier(train, tmp_path / "m", train=train)
