"""`deepsem negatives mine` and `deepsem train --negatives hard` through Typer's test runner: model -> file -> run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_pairs, write_tsv
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.data.hard_negatives import MiningSettings, read_hard_negatives
from deepsem.index.negatives import mine_hard_negatives

runner = CliRunner()
TINY = ["--embedding-dim", "8", "--hidden", "8", "--dim", "8", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Training pairs and a two-tower model trained on them for a few steps."""
    d = tmp_path_factory.mktemp("negatives")
    train = write_tsv(d / "train.tsv", make_pairs(64, 1))
    deepsem.train(train, d / "model", model={"tower": {"embedding_dim": 8, "hidden_size": 8, "output_dim": 8}},
                  training={"batch_size": 16, "max_steps": 2}, progress=False)
    return train, d / "model"


def test_mine_then_train_with_the_file(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    train, model = tiny
    out = tmp_path / "neg.jsonl"
    result = runner.invoke(app, ["negatives", "mine", str(train), "--model", str(model), "--out", str(out),
                                 "--per-query", "3", "--depth", "12", "--skip-top", "1", "--margin", "0",
                                 "--source", "both"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "of 32 queries" in result.output
    mined = read_hard_negatives(out)
    settings = MiningSettings(per_query=3, depth=12, skip_top=1, margin=0.0)
    assert mined.settings == settings and mined.source == "both" and mined.model == str(model)
    assert mined.rows == mine_hard_negatives(train, model, source="both", settings=settings).rows
    assert any(r.negatives for r in mined.rows)

    run = tmp_path / "hard"
    result = runner.invoke(app, ["train", str(train), "--out", str(run), "--negatives", "hard", "--hard-negatives",
                                 str(out), "--num-negatives", "2", "--max-steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert "training queries have mined negatives" in result.output
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["negatives"] == "hard" and config["training"]["num_negatives"] == 2


def test_the_group_is_registered() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "negatives" in result.output
    result = runner.invoke(app, ["negatives", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "mine" in result.output


def test_mistakes_are_one_error_line(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    train, model = tiny
    result = runner.invoke(app, ["negatives", "mine", str(train), "--model", str(model), "--out",
                                 str(tmp_path / "n.jsonl"), "--depth", "3", "--skip-top", "3"])
    assert result.exit_code == 2 and "must be above --skip-top" in result.output
    result = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "m"), "--negatives", "hard", *TINY])
    assert result.exit_code == 2 and "needs hard_negatives" in result.output
    result = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "m"), "--remine-every", "1", *TINY])
    assert result.exit_code == 2 and "needs negatives='hard'" in result.output
    assert not (tmp_path / "n.jsonl").exists()
