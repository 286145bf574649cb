"""The `deepsem` command, driven through Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_pairs, write_tsv
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app

runner = CliRunner()
TINY = ["--embedding-dim", "16", "--hidden", "24", "--dim", "16", "--batch-size", "32", "--lr", "0.01",
        "--no-progress"]


def test_help_explains_every_option():
    for command in ("train", "evaluate", "encode", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--encoder", "--loss", "--negatives", "--tokenizer", "--max-minutes", "--skip-bad-rows"):
        assert option in out


def test_train_evaluate_encode(tmp_path: Path, pair_files):
    out = tmp_path / "m"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(out), "--dev", str(pair_files[1]),
                                 "--epochs", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert "best dev: accuracy" in result.output

    result = runner.invoke(app, ["evaluate", "--model", str(out), str(pair_files[1]), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert {"accuracy", "f1", "roc_auc", "spearman", "threshold"} <= set(metrics)
    saved = json.loads((out / "config.json").read_text())["dev_metrics"]
    assert metrics["accuracy"] == saved["accuracy"]  # the dev threshold travels with the model

    texts = tmp_path / "texts.txt"
    texts.write_text("银行卡余额\n天气晴朗\n", encoding="utf-8")
    result = runner.invoke(app, ["encode", "--model", str(out), str(texts), "--out", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "v.npy")
    np.testing.assert_allclose(vectors, deepsem.load(out).encode(["银行卡余额", "天气晴朗"]), atol=1e-6)

    result = runner.invoke(app, ["encode", "--model", str(out), "--out", str(tmp_path / "s.npy")],
                           input="手机号码\n")
    assert result.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (1, 16)


def test_bad_input_is_a_clear_error(tmp_path: Path):
    bad = write_tsv(tmp_path / "bad.tsv", make_pairs(10, 1))
    with open(bad, "a", encoding="utf-8") as fh:
        fh.write("甲\t乙\tmaybe\n")
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "m"), *TINY])
    assert result.exit_code == 2
    assert "bad.tsv" in result.output and "line 11" in result.output and "label" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "m"), "--skip-bad-rows",
                                 "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    assert "skipped 1" in result.output

    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "nothing"), str(bad)])
    assert result.exit_code == 2 and "not a deepsem model directory" in result.output
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "m"), "--columns", "0,1"])
    assert result.exit_code != 0 and "three comma-separated columns" in result.output
