"""`deepsem distill cache` and `deepsem train --teacher / --teacher-vectors` through Typer's test runner: texts ->
cached teacher vectors -> a distilled model; a cross-encoder teacher -> a distilled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_pairs, write_tsv
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.tasks.distill import load_vectors, pair_key, text_key

runner = CliRunner()
TINY = ["--embedding-dim", "12", "--hidden", "12", "--dim", "12", "--batch-size", "32", "--lr", "0.01",
        "--epochs", "1", "--no-progress"]


def test_cache_then_train_on_the_cached_vectors(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", make_pairs(120, 1))
    dev = write_tsv(tmp_path / "dev.tsv", make_pairs(40, 2))
    teacher = tmp_path / "teacher"
    result = runner.invoke(app, ["train", str(train), "--out", str(teacher), *TINY])
    assert result.exit_code == 0, result.output

    texts = tmp_path / "texts.txt"
    lines = [a for a, _, _ in make_pairs(50, 3)]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["distill", "cache", "--teacher", str(teacher), "--texts", str(texts), "--out",
                                 str(cache), "--chunk", "16"])
    assert result.exit_code == 0, result.output
    unique = list(dict.fromkeys(lines))
    assert f"{len(unique)} vectors of 12" in result.output
    lookup, vectors, _ = load_vectors(cache)
    expected = deepsem.load(teacher).encode(unique)
    np.testing.assert_allclose(np.stack([vectors[lookup[text_key(t)]] for t in unique]), expected, atol=1e-6)
    again = runner.invoke(app, ["distill", "cache", "--teacher", str(teacher), "--texts", str(texts), "--out",
                                str(cache), "--chunk", "16"])
    assert again.exit_code == 0 and "0 computed now" in again.output  # finished: nothing recomputed

    out = tmp_path / "student"
    result = runner.invoke(app, ["train", str(train), "--dev", str(dev), "--out", str(out), "--teacher-vectors",
                                 str(cache), "--distill-texts", str(texts), "--vector-weight", "2", *TINY])
    assert result.exit_code == 0, result.output
    assert "teacher vectors:" in result.output and "best dev: accuracy" in result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["distill"]["config"]["vector_weight"] == 2.0 and config["distill"]["extra_texts"]
    assert deepsem.load(out).encode("银行卡").shape == (12,)

    out = tmp_path / "related"  # the relation term alone: no extra texts, no vector term
    result = runner.invoke(app, ["train", str(train), "--out", str(out), "--teacher", str(teacher),
                                 "--vector-weight", "0", "--relation-weight", "1.5", "--relation-temperature", "0.1",
                                 *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["distill"]["config"]["relation_weight"] == 1.5
    assert config["distill"]["config"]["relation_temperature"] == 0.1
    bad = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "x"), "--relation-weight", "1", *TINY])
    assert bad.exit_code != 0 and "'relation_weight' is for an embedding teacher" in bad.output


def test_train_from_a_cross_encoder_teacher(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", make_pairs(100, 1))
    teacher = tmp_path / "rerank"
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(teacher), "--epochs", "1",
                                 "--embedding-dim", "8", "--hidden", "8", "--batch-size", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "student"
    result = runner.invoke(app, ["train", str(train), "--out", str(out), "--teacher", str(teacher),
                                 "--distill-loss", "margin-mse", "--distill-candidates", "2",
                                 "--distill-weight", "0.5", *TINY])
    assert result.exit_code == 0, result.output
    assert "teacher scores:" in result.output
    assert (out / "training" / "teacher_scores.npz").is_file()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["distill"]["config"] == {"score_loss": "margin-mse", "weight": 0.5, "temperature": 1.0,
                                           "candidates": 2, "vector_weight": 1.0, "extra_batch": None}
    bad = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "x"), "--teacher", str(tmp_path), *TINY])
    assert bad.exit_code != 0 and "not a model directory" in bad.output

    out = tmp_path / "pairs"  # both terms: each pair's probability beside each list's order, one cache
    result = runner.invoke(app, ["train", str(train), "--out", str(out), "--teacher", str(teacher),
                                 "--distill-pair-weight", "2", "--distill-candidates", "2", *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["distill"]["config"]["pair_weight"] == 2.0 and config["distill"]["config"]["weight"] == 1.0
    with np.load(out / "training" / "teacher_scores.npz") as saved:  # every labelled pair, and the lists' others
        keys = {row.tobytes() for row in saved["keys"]}
    labelled = {pair_key(a, b) for a, b, _ in make_pairs(100, 1)}
    assert labelled <= keys and len(keys) > len(labelled)
    bad = runner.invoke(app, ["train", str(train), "--out", str(tmp_path / "x"), "--distill-pair-weight", "1",
                              *TINY])
    assert bad.exit_code != 0 and "'pair_weight' is for a cross-encoder teacher" in bad.output


def test_rerank_train_distils_an_embedding_teacher(tmp_path: Path) -> None:
    rows = make_pairs(60, 5)
    lists = [(rows[q * 4][0], rows[q * 4 + j][1], int(j == 0)) for q in range(15) for j in range(4)]
    train = write_tsv(tmp_path / "lists.tsv", lists)
    teacher = tmp_path / "teacher"
    result = runner.invoke(app, ["train", str(train), "--out", str(teacher), *TINY])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ce"
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(out), "--teacher", str(teacher),
                                 "--distill-weight", "2", "--distill-temperature", "0.1", "--embedding-dim", "12",
                                 "--hidden", "12", "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["distill"] == {
        "teacher": str(teacher), "weight": 2.0, "temperature": 0.1}
    assert len(list((out / "training").glob("teacher_vectors-*/vectors.npy"))) == 2
    loaded = deepsem.load(out)  # the directory loads like any re-ranker's, its distill settings recorded beside
    assert loaded.info["distill"]["weight"] == 2.0 and loaded.score([(lists[0][0], lists[0][1])]).shape == (1,)
    one_each = write_tsv(tmp_path / "pairs.tsv", make_pairs(40, 6))  # no candidate lists: one error line
    result = runner.invoke(app, ["rerank", "train", str(one_each), "--out", str(tmp_path / "x"), "--teacher",
                                 str(teacher), "--no-progress"])
    assert result.exit_code != 0 and "candidate lists" in result.output
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(tmp_path / "x"), "--teacher",
                                 str(out), "--teacher", str(teacher), "--no-progress"])  # an ensemble of two kinds
    assert result.exit_code == 2 and "ensemble of cross-encoders" in result.output
    assert not (tmp_path / "x").exists()
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(tmp_path / "x"), "--distill-weight", "3",
                                 "--no-progress"])  # a distillation setting without a teacher would do nothing
    assert result.exit_code != 0 and "need --teacher" in result.output and not (tmp_path / "x").exists()


def test_rerank_train_distils_an_ensemble_of_rerankers(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "pairs.tsv", make_pairs(80, 7))
    small = ["--embedding-dim", "8", "--hidden", "8", "--epochs", "1", "--no-progress"]
    teachers = []
    for seed in ("1", "2"):
        teachers.append(tmp_path / f"teacher{seed}")
        result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(teachers[-1]), "--seed", seed, *small])
        assert result.exit_code == 0, result.output
    out = tmp_path / "student"
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(out), "--teacher", str(teachers[0]),
                                 "--teacher", str(teachers[1]), "--distill-weight", "2", *small])
    assert result.exit_code == 0, result.output
    assert "teacher scores:" in result.output  # one pair set (no candidate lists needed), each teacher's logits
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["distill"] == {
        "teacher": [str(t) for t in teachers], "weight": 2.0, "temperature": 1.0}  # T 1: logits, not cosines
    assert len(list((out / "training").glob("teacher_scores-*.npz"))) == 2
