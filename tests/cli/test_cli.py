"""The `deepsem` command, driven through Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
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
                                 "--epochs", "2", "--no-length-buckets", *TINY])
    assert result.exit_code == 0, result.output
    assert "best dev: accuracy" in result.output
    info = json.loads((out / "config.json").read_text())
    assert info["training"]["length_buckets"] is False  # the option reached the run (on by default)

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


def test_train_any_tower_from_the_command_line(tmp_path: Path, pair_files):
    # cnn picks the trigram tokenizer by itself; clipping by value and the uniform init are options
    out = tmp_path / "cnn"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(out), "--dev", str(pair_files[1]),
                                 "--epochs", "1", "--encoder", "cnn", "--clip-value", "0.5", *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["tower"]["encoder"] == "cnn" and config["model"]["tower"]["hidden_size"] == 24
    assert config["training"]["clip_value"] == 0.5
    assert json.loads((out / "tokenizer.json").read_text())["config"]["name"] == "trigram"

    out = tmp_path / "dssm"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(out), "--epochs", "1",
                                 "--encoder", "dssm", "--no-progress", "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    tower = json.loads((out / "config.json").read_text())["model"]["tower"]
    assert (tower["hidden_size"], tower["num_layers"]) == (300, 2)  # the paper's 300 -> 300 -> 128

    out = tmp_path / "gru"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(out), "--epochs", "1", "--encoder",
                                 "gru", "--no-orthogonal-init", *TINY])
    assert result.exit_code == 0, result.output
    tower = json.loads((out / "config.json").read_text())["model"]["tower"]
    assert tower["encoder"] == "gru" and tower["orthogonal_init"] is False

    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(tmp_path / "bad"), "--encoder", "dssm",
                                 "--tokenizer", "char", *TINY])
    assert result.exit_code == 2 and "tokenizer 'trigram'" in result.output


def test_embeddings_train_then_pretrained_frozen_embeddings(tmp_path: Path, pair_files):
    from deepsem.embeddings import read_vectors

    vec = tmp_path / "chars.vec"
    result = runner.invoke(app, ["embeddings", "train", str(pair_files[0]), "--out", str(vec), "--column", "0",
                                 "--column", "1", "--tokenizer", "char", "--dim", "16", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    words, matrix = read_vectors(vec)
    assert matrix.shape == (len(words), 16) and "银" in words

    out = tmp_path / "m"
    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(out), "--epochs", "1",
                                 "--pretrained", str(vec), "--freeze-embeddings", *TINY])
    assert result.exit_code == 0, result.output
    assert "pretrained vectors:" in result.output
    model = deepsem.load(out)
    assert model.info["pretrained"]["frozen"] and model.info["pretrained"]["found"] >= len(words) - 1
    table = model.model.query_tower.embedding.weight.detach()
    row = table[model.tokenizer.token_to_id("银")]
    source = torch.from_numpy(matrix[words.index("银")])
    # frozen: after training the row still points exactly along the pretrained vector
    assert torch.nn.functional.cosine_similarity(row, source, dim=0) > 0.9999

    result = runner.invoke(app, ["train", str(pair_files[0]), "--out", str(tmp_path / "x"), "--encoder", "dssm",
                                 "--pretrained", str(vec), *TINY])
    assert result.exit_code == 2 and "no token embedding" in result.output


def test_diagnose_gradients_writes_plot_and_table(tmp_path: Path):
    result = runner.invoke(app, ["diagnose", "gradients", "--out", str(tmp_path), "--cell", "rnn", "--cell",
                                 "lstm", "--length", "12", "--steps", "5", "--hidden", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gradient_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "gradient_norms.md").read_text()
    assert "| rnn | adding | 12 |" in table and "| lstm | adding | 12 |" in table
    result = runner.invoke(app, ["diagnose", "gradients", "--out", str(tmp_path), "--cell", "transformer"])
    assert result.exit_code == 2 and "unknown cell" in result.output


def test_embeddings_train_bad_input_is_a_clear_error(tmp_path: Path):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("银行卡\t余额\n还款\n", encoding="utf-8")
    result = runner.invoke(app, ["embeddings", "train", str(corpus), "--out", str(tmp_path / "v.vec"),
                                 "--column", "1"])
    assert result.exit_code == 2 and f"{corpus}, line 2: no column 1" in result.output
    result = runner.invoke(app, ["embeddings", "train", str(tmp_path / "missing.txt"),
                                 "--out", str(tmp_path / "v.vec")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["embeddings", "train", str(corpus), "--out", str(tmp_path / "v.vec"),
                                 "--tokenizer", "trigram"])
    assert result.exit_code == 2 and "char or word tokens" in result.output
    assert not (tmp_path / "v.vec").exists()
