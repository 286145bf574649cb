"""`deepsem rerank train | evaluate | predict` through Typer's test runner: the round trip file -> model -> scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_pairs, write_tsv
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app

runner = CliRunner()
TINY = ["--embedding-dim", "12", "--hidden", "12", "--batch-size", "32", "--lr", "0.01", "--no-progress"]


def test_train_evaluate_predict_round_trip(tmp_path: Path) -> None:
    train, dev = write_tsv(tmp_path / "train.tsv", make_pairs(160, 1)), write_tsv(tmp_path / "dev.tsv",
                                                                                   make_pairs(60, 2))
    out = tmp_path / "m"
    result = runner.invoke(app, ["rerank", "train", str(train), "--dev", str(dev), "--out", str(out),
                                 "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    assert "best dev: accuracy" in result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["task"] == "rerank" and config["cross_encoder"]["hidden_size"] == 12

    result = runner.invoke(app, ["rerank", "evaluate", "--model", str(out), str(dev), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert {"accuracy", "f1", "roc_auc"} <= set(metrics)
    assert metrics["accuracy"] == config["dev_metrics"]["accuracy"]  # the dev threshold travels with the model

    rows = make_pairs(5, 3)
    pairs_file = tmp_path / "pairs.tsv"
    pairs_file.write_text("".join(f"{a}\t{b}\n" for a, b, _ in rows), encoding="utf-8")
    result = runner.invoke(app, ["rerank", "predict", "--model", str(out), str(pairs_file)])
    assert result.exit_code == 0, result.output
    printed = np.asarray([float(x) for x in result.output.split()])
    expected = deepsem.load(out).score([(a, b) for a, b, _ in rows])
    np.testing.assert_allclose(printed, expected, atol=1e-6)

    result = runner.invoke(app, ["rerank", "predict", "--model", str(out)], input=f"{rows[0][0]}\t{rows[0][1]}\n")
    assert result.exit_code == 0 and float(result.output) == round(float(expected[0]), 6)
    result = runner.invoke(app, ["rerank", "predict", "--model", str(out)], input="only one field\n")
    assert result.exit_code == 2 and "stdin, line 1: expected query<TAB>document" in result.output


def test_evaluate_reports_ranking_metrics_of_candidate_lists(tmp_path: Path) -> None:
    lists = tmp_path / "lists.tsv"
    rows = [(a, b, y) for a, _, _ in make_pairs(6, 4) for b, _, y in make_pairs(4, 5)]
    write_tsv(lists, rows)
    train = write_tsv(tmp_path / "train.tsv", make_pairs(64, 1))
    out = tmp_path / "m"
    assert runner.invoke(app, ["rerank", "train", str(train), "--out", str(out), "--epochs", "1", *TINY]
                         ).exit_code == 0
    result = runner.invoke(app, ["rerank", "evaluate", "--model", str(out), str(lists)])
    assert result.exit_code == 0, result.output
    for key in ("accuracy", "roc_auc", "map", "mrr", "ndcg@10", "queries"):
        assert key in result.output


def test_a_model_of_another_task_is_refused(tmp_path: Path) -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1" / "classifier"
    pairs = tmp_path / "p.tsv"
    pairs.write_text("a\tb\n", encoding="utf-8")
    result = runner.invoke(app, ["rerank", "predict", "--model", str(fixture), str(pairs)])
    assert result.exit_code == 2 and "not a cross-encoder" in result.output


def test_help_lists_the_commands_and_options() -> None:
    result = runner.invoke(app, ["rerank", "--help"])
    assert result.exit_code == 0 and all(c in result.output for c in ("train", "evaluate", "predict"))
    out = runner.invoke(app, ["rerank", "train", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--dev", "--encoder", "--hidden", "--num-negatives", "--max-minutes", "--dev-metric"):
        assert option in out


def test_commands_that_need_vectors_refuse_a_cross_encoder_in_one_line(tmp_path: Path) -> None:
    """encode and serve --model need a model that makes vectors: a re-ranker makes none (it exports: see
    tests/deploy/test_onnx_reranker.py)."""
    train = write_tsv(tmp_path / "train.tsv", make_pairs(40, 4))
    out = tmp_path / "m"
    assert runner.invoke(app, ["rerank", "train", str(train), "--out", str(out), "--epochs", "1", *TINY]).exit_code == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("a b\n", encoding="utf-8")
    for args in (["encode", "--model", str(out), "--out", str(tmp_path / "v.npy"), str(texts)],
                 ["serve", "--model", str(out)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "a cross-encoder (rerank) model" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "v.npy").exists()


def test_exact_match_is_a_training_option_saved_with_the_model(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", make_pairs(96, 4))
    out = tmp_path / "flags"
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(out), "--epochs", "1", "--exact-match",
                                 *TINY])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["cross_encoder"]["exact_match"] is True
    loaded = deepsem.load(out)
    assert loaded.model.projection[0].in_features == 8 * 12 + 1  # the flag feeds the projection
    score = loaded.score([("银行卡", "银行卡余额")])
    assert score.shape == (1,) and 0.0 < float(score[0]) < 1.0


def test_the_schedule_reaches_the_training_settings(tmp_path: Path, monkeypatch) -> None:
    """``--schedule constant`` (with ``--ema-decay``: the recipe measured best for a narrow re-ranker) reaches the
    run's settings; an unknown schedule is one ``error:`` line naming the choices."""
    from training_commands import fake_train

    calls: list[dict] = []
    monkeypatch.setattr("deepsem.tasks.rerank.train_rerank", fake_train(calls))
    train = write_tsv(tmp_path / "train.tsv", make_pairs(16, 4))
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(tmp_path / "m"), "--schedule",
                                 "constant", "--ema-decay", "0.999", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (calls[0]["training"].schedule, calls[0]["training"].ema_decay) == ("constant", 0.999)
    result = runner.invoke(app, ["rerank", "train", str(train), "--out", str(tmp_path / "m"), "--schedule", "steps"])
    assert result.exit_code == 2 and not calls[1:]
    assert result.output.strip() == ("error: training: field 'schedule' is 'steps'; expected one of linear, cosine, "
                                     "constant"), result.output
