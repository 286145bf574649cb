"""``--ema-decay`` (the weight average): it reaches the training settings of every training command, a decay outside
(0, 1) is refused in one line, and the model directory a run writes holds the average, not the raw weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_pairs, write_tsv
from safetensors.torch import load_file
from training_commands import COMMANDS, fake_train, training_input
from typer.testing import CliRunner

from deepsem.cli import app

runner = CliRunner()
ALL = [*COMMANDS, (["rerank", "train"], "deepsem.tasks.rerank", "train_rerank")]


def _decay_of(training: Any) -> float | None:
    return training.get("ema_decay") if isinstance(training, dict) else training.ema_decay


@pytest.mark.parametrize(("command", "module", "name"), ALL)
@pytest.mark.parametrize("given", [None, "0.99"])
def test_the_decay_reaches_the_training_settings(command: list[str], module: str, name: str, given: str | None,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    args = [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(app, args + (["--ema-decay", given] if given else []))
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and _decay_of(calls[0]["training"]) == (float(given) if given else None)


@pytest.mark.parametrize(("command", "module", "name"), ALL)
@pytest.mark.parametrize("given", ["0", "1", "1.5", "-0.1", "nan"])
def test_a_decay_outside_zero_to_one_is_one_error_line(command: list[str], module: str, name: str, given: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(f"{module}.{name}", fake_train(calls))
    result = runner.invoke(app, [*command, str(training_input(tmp_path)), "--out", str(tmp_path / "o"),
                                 "--ema-decay", given])
    assert result.exit_code == 2 and not calls
    assert "--ema-decay" in result.output and "between 0 and 1" in result.output, result.output


def _pairs(tmp_path: Path) -> Path:
    return write_tsv(tmp_path / "train.tsv", make_pairs(96, 4))


def _labelled(tmp_path: Path) -> Path:
    path = tmp_path / "labelled.tsv"
    path.write_text("".join(f"{a}\t{label}\n" for a, _, label in make_pairs(96, 4)), encoding="utf-8")
    return path


def _log(tmp_path: Path) -> Path:
    path = tmp_path / "log.tsv"
    path.write_text("".join(f"u{u}\ti{(u + k) % 6}\t{k}\n" for u in range(24) for k in range(4)), encoding="utf-8")
    return path


TINY = ["--embedding-dim", "12", "--hidden", "12", "--no-progress"]
PAIRS = [*TINY, "--batch-size", "32", "--lr", "0.01", "--epochs", "2"]  # 96 pairs / 32, 2 epochs: 6 steps
RUNS = [(["rerank", "train"], _pairs, PAIRS, 6), (["train"], _pairs, PAIRS, 6),
        (["classify", "train"], _labelled, PAIRS, 6),
        # one epoch: the validation split, which picks the best epoch, has one to pick (48 windows / 8: 6 steps)
        (["recommend", "train"], _log, [*TINY, "--dim", "8", "--no-item-features", "--batch-size", "8", "--epochs",
                                        "1"], None)]


@pytest.mark.parametrize(("command", "data", "options", "steps"), RUNS)
def test_the_model_directory_holds_the_average(command: list[str], data: Any, options: list[str], steps: int | None,
                                               tmp_path: Path) -> None:
    """Without a dev set (the recommender: one epoch) the model saved at the end is the average the checkpoint
    holds, not the raw weights; the decay is recorded with the model's training settings."""
    out = tmp_path / "m"
    result = runner.invoke(app, [*command, str(data(tmp_path)), "--out", str(out), "--ema-decay", "0.9", *options])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["ema_decay"] == 0.9
    saved = load_file(str(out / "model.safetensors"))
    ckpt = out / "training" / "checkpoint"
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    average = {k[len("ema.module."):]: v for k, v in tensors.items() if k.startswith("ema.module.")}
    raw = load_file(str(ckpt / "model.safetensors"))
    if steps is not None:
        assert int(tensors["ema.n_averaged"]) == steps
    assert raw.keys() <= average.keys()  # (the average keeps both names of a tensor shared by the two towers)
    names = [k for k in average if k in saved and average[k].is_floating_point()]
    assert names  # the model directory names its tensors as the trained module does
    for k in names:
        torch.testing.assert_close(saved[k], average[k])
    assert any(not torch.equal(saved[k], raw[k]) for k in names)
