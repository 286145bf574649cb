"""``deepsem train --loss cosent|cosent+softmax [--cosent-scale S]``: the loss and its scale reach the training
settings, and a scale that is not a number > 0 is refused in one line before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from training_commands import fake_train, training_input
from typer.testing import CliRunner

from deepsem.cli import app

runner = CliRunner()


@pytest.mark.parametrize(("options", "loss", "scale"), [([], "pointwise+softmax", None),
                                                        (["--loss", "cosent"], "cosent", None),
                                                        (["--loss", "cosent+softmax", "--cosent-scale", "12.5"],
                                                         "cosent+softmax", 12.5)])
def test_the_loss_and_its_scale_reach_the_training_settings(options: list[str], loss: str, scale: float | None,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("deepsem.tasks.matching.train", fake_train(calls))
    result = runner.invoke(app, ["train", str(training_input(tmp_path)), "--out", str(tmp_path / "out"),
                                 "--no-progress", *options])
    assert result.exit_code == 0, result.output
    training = calls[0]["training"]
    assert (training.loss, training.cosent_scale) == (loss, scale)


@pytest.mark.parametrize("given", ["0", "-3", "nan", "inf"])
def test_a_scale_that_is_not_above_zero_is_one_error_line(given: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("deepsem.tasks.matching.train", fake_train(calls))
    result = runner.invoke(app, ["train", str(training_input(tmp_path)), "--out", str(tmp_path / "o"),
                                 "--loss", "cosent", "--cosent-scale", given])
    assert result.exit_code == 2 and not calls
    assert "--cosent-scale" in result.output, result.output
