"""End to end on a tiny synthetic set: train, save, load, encode, evaluate, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAINING, make_pairs, write_tsv

import deepsem
from deepsem.tasks.matching import TextPairs, evaluate_translation


def test_training_learns_and_saves_a_model_directory(trained_model_dir: Path, pair_files):
    files = sorted(p.name for p in trained_model_dir.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    run = trained_model_dir / "training"
    assert (run / "training.png").read_bytes()[:4] == b"\x89PNG"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all("dev_accuracy" in r for r in log)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    model = deepsem.load(trained_model_dir)
    assert model.threshold is not None
    config = json.loads((trained_model_dir / "config.json").read_text())
    assert config["dev_metrics"]["accuracy"] == max(r["dev_accuracy"] for r in log)
    # the task is easy: well above chance on held-out pairs
    rows = make_pairs(200, 99)
    pairs = TextPairs([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], np.float32))
    metrics = deepsem.evaluate_pairs(model, pairs, threshold=model.threshold)
    assert metrics["accuracy"] > 0.85 and metrics["roc_auc"] > 0.9


def test_encode_is_normalised_and_consistent(trained_model_dir: Path):
    model = deepsem.load(trained_model_dir)
    texts = ["银行卡余额", "天气晴朗", "银行卡余额", "手机号码电话"]
    v = model.encode(texts, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (4, model.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    np.testing.assert_allclose(model.encode("天气晴朗"), v[1], atol=1e-6)  # alone == in a padded batch
    assert model.similarity("银行卡余额", "账户余额") > model.similarity("银行卡余额", "天气晴朗")
    np.testing.assert_allclose(model.similarity(texts[:2], texts[2:]), (v[:2] * v[2:]).sum(1), atol=1e-6)
    with pytest.raises(ValueError):
        model.similarity(["a"], ["b", "c"])
    assert model.encode([]).shape == (0, model.dim)


def test_loaded_model_equals_saved_one(trained_model_dir: Path, tmp_path: Path):
    model = deepsem.load(trained_model_dir)
    model.save(tmp_path / "copy")
    again = deepsem.load(tmp_path / "copy")
    texts = ["还款逾期利息", "火车站"]
    np.testing.assert_array_equal(model.encode(texts), again.encode(texts))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "training" / "checkpoint" / "model.safetensors"))


@pytest.mark.parametrize("loss,negatives", [("softmax", "both"), ("hinge", "in-batch"), ("pointwise", "in-batch"),
                                            ("pointwise+softmax", "labelled"), ("softmax", "labelled"),
                                            ("cosent", "in-batch"), ("cosent+softmax", "both")])
def test_every_loss_trains(tmp_path: Path, pair_files, loss, negatives):
    training = {**TINY_TRAINING, "epochs": 1, "loss": loss, "negatives": negatives, "num_negatives": 2}
    _, result = deepsem.train(pair_files[0], tmp_path / "m", pair_files[1], model=TINY_MODEL,
                                  training=training, progress=False)
    assert result.steps == 38 and result.best_metric is not None and result.best_metric > 0.6


def test_cosent_refuses_pairs_of_one_label(tmp_path: Path):
    data = tmp_path / "clicks.tsv"
    data.write_text("".join(f"查询{i}\t文档{i}\t1\n" for i in range(40)), encoding="utf-8")  # every label 1
    with pytest.raises(ValueError, match=r"clicks\.tsv: loss 'cosent' ranks the labelled pairs.*--loss softmax"):
        deepsem.train(data, tmp_path / "m", model=TINY_MODEL, training={**TINY_TRAINING, "loss": "cosent"},
                      progress=False)
    assert not (tmp_path / "m").exists()
    docs = tmp_path / "docs.txt"  # a bare corpus: its pairs are all positives
    docs.write_text("".join(f"第{i}篇文档。它讲第{i}件事。还有第{i}个细节。\n" for i in range(40)), encoding="utf-8")
    with pytest.raises(ValueError, match="loss 'cosent\\+softmax' ranks the labelled pairs"):
        deepsem.train(None, tmp_path / "m", corpus=docs, model=TINY_MODEL,
                      training={**TINY_TRAINING, "loss": "cosent+softmax"}, progress=False)


def test_runs_are_repeatable_and_a_killed_run_resumes(tmp_path: Path, pair_files, monkeypatch):
    training = {**TINY_TRAINING, "epochs": 2, "checkpoint_every": 10}
    deepsem.train(pair_files[0], tmp_path / "a", pair_files[1], model=TINY_MODEL, training=training, progress=False)
    deepsem.train(pair_files[0], tmp_path / "b", pair_files[1], model=TINY_MODEL, training=training, progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # kill a run at step 25 (after the checkpoint at step 20), then start it again: it resumes there
    from deepsem import trainer as train_module

    calls = {"n": 0}

    class Killed(Exception):
        pass

    real_step = train_module.Trainer.fit

    def counting_fit(self, resume=True):
        step = self.forward

        def wrapped(batch):
            calls["n"] += 1
            if calls["n"] == 25:
                raise Killed
            return step(batch)

        self.forward = wrapped
        return real_step(self, resume)

    monkeypatch.setattr(train_module.Trainer, "fit", counting_fit)
    with pytest.raises(Killed):
        deepsem.train(pair_files[0], tmp_path / "c", pair_files[1], model=TINY_MODEL, training=training,
                      progress=False)
    state = json.loads((tmp_path / "c" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 20
    monkeypatch.setattr(train_module.Trainer, "fit", real_step)
    _, result = deepsem.train(pair_files[0], tmp_path / "c", pair_files[1], model=TINY_MODEL, training=training,
                              progress=False)
    assert result.steps == 76
    wc = _weights(tmp_path / "c")
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_positive_only_pairs_use_retrieval_dev_metric(tmp_path: Path):
    rows = [r for r in make_pairs(600, 5) if r[2] == 1]
    train = TextPairs([r[0] for r in rows], [r[1] for r in rows])
    dev_rows = [r for r in make_pairs(100, 6) if r[2] == 1]
    dev = TextPairs([r[0] for r in dev_rows], [r[1] for r in dev_rows])
    training = {**TINY_TRAINING, "loss": "softmax", "epochs": 2}
    model, result = deepsem.train(train, tmp_path / "m", dev, model=TINY_MODEL, training=training, progress=False)
    assert set(model.info["dev_metrics"]) >= {"mrr@10", "recall@1"}
    assert evaluate_translation(model, dev)["mrr@10"] == pytest.approx(result.best_metric)


def test_time_limit_stops_training(tmp_path: Path, pair_files):
    training = {**TINY_TRAINING, "epochs": 50, "max_minutes": 0.002}
    _, result = deepsem.train(pair_files[0], tmp_path / "m", pair_files[1], model=TINY_MODEL, training=training,
                              progress=False)
    assert result.stopped == "time-limit" and result.steps < 50 * 38


def test_bad_row_is_reported_with_file_and_line(tmp_path: Path):
    path = write_tsv(tmp_path / "bad.tsv", make_pairs(20, 3))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("只有一列\n")
    with pytest.raises(ValueError) as info:
        deepsem.train(path, tmp_path / "m", model=TINY_MODEL, training=TINY_TRAINING, progress=False)
    assert "bad.tsv" in str(info.value) and "line 21" in str(info.value)
    model, _ = deepsem.train(path, tmp_path / "m", model=TINY_MODEL, training={**TINY_TRAINING, "epochs": 1},
                             skip_bad_rows=True, progress=False)
    assert model.info["train_pairs"] == 20


def test_lr_schedule_follows_steps_or_time():
    from deepsem.trainer import lr_factor

    assert lr_factor(0, 100, 0.1, "linear") == pytest.approx(0.1)  # warm-up
    assert lr_factor(9, 100, 0.1, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(55, 100, 0.1, "constant") == 1.0
    # a time budget that runs out first drives the decay: 80% of the time gone -> 20% of the rate left
    assert lr_factor(20, 100, 0.1, "linear", time_fraction=0.8) == pytest.approx(0.2)
    assert lr_factor(95, 100, 0.1, "linear", time_fraction=0.1) == pytest.approx(1 - 85 / 90)


def test_click_logs_train_as_dssm_does(tmp_path: Path):
    from deepsem.data.readers import read_clicks
    from deepsem.tasks.matching import clicks_to_pairs

    rows = make_pairs(400, 8)
    log = tmp_path / "clicks.tsv"
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("query\tdoc\tclicks\tshown\n")
        for a, b, y in rows:
            fh.write(f"{a}\t{b}\t{y * 2}\t3\n")
        fh.write(f"{rows[0][0]}\t{rows[0][1]}\t1\t1\n")  # the same pair again: summed
    parsed = read_clicks(log, query="query", doc="doc", clicks="clicks", impressions="shown")
    pairs = clicks_to_pairs(parsed)
    assert pairs.labels is not None and len(pairs.text_a) == len(parsed.queries)
    assert pairs.labels.sum() == sum(1 for a, b, y in rows if y == 1) + (rows[0][2] == 0)
    model, result = deepsem.train(log, tmp_path / "m", columns=("query", "doc", "clicks"), clicks=True,
                                  impressions="shown", model=TINY_MODEL, training={**TINY_TRAINING, "epochs": 1},
                                  progress=False)
    assert model.info["train_pairs"] == len(pairs.text_a) and result.steps > 0
    # no impressions: every aggregated pair with a click is a positive, and there are no labels
    only_clicks = clicks_to_pairs(read_clicks(log, query="query", doc="doc", clicks="clicks"))
    assert only_clicks.labels is None and len(only_clicks.text_a) == int(pairs.labels.sum())


class _FixedScores:
    """Stands in for a SemanticModel: similarity returns given scores, in pair order."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.asarray(scores, np.float32)

    def similarity(self, a, b):
        return self.scores


def test_evaluate_ranking_worked_example():
    # q1: the positive is ranked 2nd of 3; q2: positives at ranks 2 and 3; q3: no positive -> left out
    pairs = deepsem.TextPairs(["q1", "q1", "q1", "q2", "q2", "q2", "q3", "q3"],
                              ["a", "b", "c", "d", "e", "f", "g", "h"],
                              np.array([0, 1, 0, 1, 1, 0, 0, 0], np.float32))
    m = deepsem.evaluate_ranking(_FixedScores([0.9, 0.8, 0.1, 0.3, 0.2, 0.5, 0.7, 0.6]), pairs)
    assert m["queries"] == 2
    assert m["mrr"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx((0.5 + (1 / 2 + 2 / 3) / 2) / 2)
    ndcg_q1 = 1 / np.log2(3)
    ndcg_q2 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@3"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)


def test_dev_metric_picks_the_model_by_ranking(tmp_path: Path, pair_files):
    model, result = deepsem.train(pair_files[0], tmp_path / "m", pair_files[1], model=TINY_MODEL,
                                  training={**TINY_TRAINING, "epochs": 2}, dev_metric="map", progress=False)
    assert {"map", "mrr", "ndcg@3", "accuracy"} <= set(model.info["dev_metrics"])
    assert result.best_metric == pytest.approx(model.info["dev_metrics"]["map"])
    with pytest.raises(ValueError, match="dev_metric"):
        deepsem.train(pair_files[0], tmp_path / "m2", pair_files[1], model=TINY_MODEL, training=TINY_TRAINING,
                      dev_metric="bleu", progress=False)


def test_labelled_negatives_come_from_the_same_query():
    from deepsem.data.batches import PairSet, TextTable
    from deepsem.tasks.matching import labelled_negatives, sample_negatives
    from deepsem.text import build_tokenizer

    a = ["q1", "q1", "q1", "q2", "q2", "q3"]
    b = ["right1", "wrong1a", "wrong1b", "right2", "wrong2", "right3"]
    y = [1, 0, 0, 1, 0, 1]
    table = TextTable(build_tokenizer("char", a + b))
    pairs = PairSet.from_texts(table, a, b, y)
    own = labelled_negatives(pairs)
    row = {t: int(table.add([t])[0]) for t in set(a + b)}
    assert {q: sorted(v.tolist()) for q, v in own.items()} == {
        row["q1"]: sorted([row["wrong1a"], row["wrong1b"]]), row["q2"]: [row["wrong2"]]}
    rng = np.random.default_rng(0)
    pool = np.array([row["right1"], row["right2"], row["right3"]])
    queries = np.array([row["q1"], row["q2"], row["q3"]])
    for _ in range(20):
        sampled = sample_negatives(queries, 3, rng, pool, own)
        assert sampled.shape == (3, 3)
        assert set(sampled[0].tolist()) <= {row["wrong1a"], row["wrong1b"]}
        assert set(sampled[1].tolist()) == {row["wrong2"]}  # fewer than k: repeated
        assert set(sampled[2].tolist()) <= set(pool.tolist())  # none of its own: random documents


def test_length_buckets_cover_every_pair_once_and_cut_padding():
    from deepsem.data.batches import PairSet, TextTable
    from deepsem.text import build_tokenizer

    rng = np.random.default_rng(0)
    a = ["字" * int(n) for n in rng.integers(1, 60, 3000)]
    b = ["词" * int(n) + str(i) for i, n in enumerate(rng.integers(1, 30, 3000))]
    table = TextTable(build_tokenizer("char", a + b))
    pairs = PairSet.from_texts(table, a, b, np.ones(3000))
    lengths = pairs.lengths()
    encoded_b = table.tokenizer.encode_batch(b)
    assert lengths.tolist() == [max(len(x), len(y)) for x, y in zip(a, encoded_b, strict=True)]

    def padded_steps(batches):
        return sum(int(lengths[idx].max()) * len(idx) for idx in batches)

    bucketed = list(pairs.batches(64, np.random.default_rng(1), by_length=True))
    shuffled = list(pairs.batches(64, np.random.default_rng(1)))
    assert len(bucketed) == len(shuffled) == 47
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(3000))  # every pair once
    assert padded_steps(bucketed) < 0.6 * padded_steps(shuffled)
    again = list(pairs.batches(64, np.random.default_rng(1), by_length=True))
    assert all(np.array_equal(x, y) for x, y in zip(bucketed, again, strict=True))  # repeatable from the rng
    # batches come in shuffled order, not sorted by length
    assert not np.all(np.diff([lengths[idx].max() for idx in bucketed]) >= 0)


def test_a_run_with_other_data_or_settings_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from deepsem.errors import ResumeMismatchError
    from deepsem.trainer import Trainer

    monkeypatch.setattr(Trainer, "plot", lambda self: None)  # a second per run; not under test

    training = {**TINY_TRAINING, "epochs": 1}
    data, other = write_tsv(tmp_path / "a.tsv", make_pairs(64, 5)), write_tsv(tmp_path / "b.tsv", make_pairs(64, 6))
    out = tmp_path / "m"
    deepsem.train(data, out, model=TINY_MODEL, training=training, progress=False)
    saved = {p.name: p.read_bytes() for p in (out / "model.safetensors", out / "tokenizer.json")}
    with pytest.raises(ResumeMismatchError, match=r"training data differs.*--no-resume.*new --out"):
        deepsem.train(other, out, model=TINY_MODEL, training=training, progress=False)
    bigger = {"tower": {**TINY_MODEL["tower"], "hidden_size": 32}}
    with pytest.raises(ResumeMismatchError, match=r"model\.tower\.hidden_size 24 -> 32"):
        deepsem.train(data, out, model=bigger, training=training, progress=False)
    with pytest.raises(ResumeMismatchError, match=r'tokenizer\.name "char" -> "word"'):
        deepsem.train(data, out, tokenizer="word", model=TINY_MODEL, training=training, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"training\.lr 0\.01 -> 0\.02"):
        deepsem.train(data, out, model=TINY_MODEL, training={**training, "lr": 0.02}, progress=False)
    assert saved == {p.name: p.read_bytes() for p in (out / "model.safetensors", out / "tokenizer.json")}
    # the same data and settings resume (a longer time budget is allowed)
    capsys.readouterr()
    deepsem.train(data, out, model=TINY_MODEL, training={**training, "max_minutes": 30.0}, progress=False)
    assert "resumed from" in capsys.readouterr().out
    # resume=False starts over with the new data and tokenizer: nothing of the old run is reused
    _, result = deepsem.train(other, out, tokenizer="word", model=TINY_MODEL, training=training, resume=False,
                                  progress=False)
    assert result.steps == 2 and json.loads((out / "tokenizer.json").read_text())["config"]["name"] == "word"
    assert json.loads((out / "training" / "tokenizer" / "tokenizer.json").read_text())["config"]["name"] == "word"
    assert "resumed" not in capsys.readouterr().out
