"""``--device`` on the three training commands: it reaches the library's train function, a device torch cannot
use here is one ``error:`` line with exit code 2 before any data is read, and ``--device cpu`` trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from training_commands import COMMANDS, fake_train, training_input
from typer.testing import CliRunner

from deepsem.cli import app

runner = CliRunner()

@pytest.mark.parametrize(("command", "module", "name"), COMMANDS)
@pytest.mark.parametrize("given", [None, "cpu"])
def test_device_reaches_the_library(command: list[str], module: str, name: str, given: str | None,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    args = [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(app, args + (["--device", given] if given else []))
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["device"] == "cpu"


def test_device_names_reach_the_library_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("deepsem.tasks.matching.train", fake_train(calls))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = runner.invoke(app, ["train", str(training_input(tmp_path)), "--out", str(tmp_path / "o"), "--device",
                                 "cuda:1"])
    assert result.exit_code == 0, result.output
    assert calls[0]["device"] == "cuda:1"


@pytest.mark.parametrize(("command", "module", "name"), COMMANDS)
@pytest.mark.parametrize(("device", "says"), [("cuda", "CUDA is not available"), ("gpu", "not a device torch knows"),
                                              ("cpu:x", "not a device torch knows"), ("meta", "cpu, cuda or mps")])
def test_unusable_device_is_one_error_line_before_any_data_is_read(
        command: list[str], module: str, name: str, device: str, says: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    if command[0] == "recommend":  # the recommender's data is read by the CLI: make reading it fail loudly
        monkeypatch.setattr("deepsem.data.interactions.read_interactions",
                            lambda *a, **k: pytest.fail("data read before the device was checked"))
    args = [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "out"), "--device", device]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--device" in lines[0] and says in lines[0]
    assert calls == [] and not (tmp_path / "out").exists()


def test_cuda_index_past_the_devices_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, ["train", str(training_input(tmp_path)), "--out", str(tmp_path / "o"), "--device",
                                 "cuda:1"])
    assert result.exit_code == 2 and "1 CUDA devices" in result.output


def test_device_cpu_trains(pair_files: tuple[Path, Path], tmp_path: Path) -> None:
    train, _ = pair_files
    out = tmp_path / "model"
    result = runner.invoke(app, ["train", str(train), "--out", str(out), "--device", "cpu", "--epochs", "1",
                                 "--encoder", "gru", "--hidden", "8", "--dim", "8", "--embedding-dim", "8",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and "model directory" in result.output
