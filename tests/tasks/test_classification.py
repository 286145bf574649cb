"""Text classification: training with recurrent and cnn towers, metrics against scikit-learn, class weights,
the model directory, bad input, the CLI and /classify."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOPICS
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.config import ClassifierConfig, ConfigError, TowerConfig
from deepsem.data.errors import DataError
from deepsem.models.classifier import TextClassifier
from deepsem.serve import Limits, create_app
from deepsem.tasks.classification import (
    Classifier,
    LabelledTexts,
    classification_loss,
    classification_metrics,
    compute_class_weights,
    evaluate_classifier,
    read_labelled,
    train_classifier,
)
from deepsem.tasks.matching import SemanticModel

runner = CliRunner()
NAMES = ["bank", "weather", "train", "hospital"]
CHARS = [TOPICS[0], TOPICS[4], TOPICS[5], TOPICS[9]]
TINY_TOWER = {"embedding_dim": 16, "hidden_size": 16, "output_dim": 16}
TINY_TRAINING = {"epochs": 4, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 1000}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when another process holds that core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randrange(len(NAMES))
        rows.append(("".join(rng.choice(CHARS[k]) for _ in range(rng.randint(3, 6))), NAMES[k]))
    return rows


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cls")
    return write_rows(d / "train.tsv", make_rows(320, 1)), write_rows(d / "dev.tsv", make_rows(100, 2))


@pytest.fixture(scope="module")
def lstm_clf(files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    out = tmp_path_factory.mktemp("lstm") / "m"
    clf, result = train_classifier(files[0], out, files[1], tower=TINY_TOWER, training=TINY_TRAINING,
                                   progress=False)
    assert result.best_metric is not None
    return clf


def test_recurrent_tower_learns_topics(lstm_clf: Classifier, files: tuple[Path, Path]):
    metrics = evaluate_classifier(lstm_clf, files[1])
    assert metrics["accuracy"] > 0.9, metrics
    assert lstm_clf.labels == sorted(NAMES) and not lstm_clf.multi_label
    assert lstm_clf.info["dev_metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert metrics["examples"] == 100 and sum(r["support"] for r in metrics["per_class"].values()) == 100


def test_cnn_tower_learns_topics(files: tuple[Path, Path], tmp_path: Path):
    clf, _ = train_classifier(files[0], tmp_path / "cnn", files[1], tokenizer="trigram",
                              tower={"encoder": "cnn", "hidden_size": 32, "output_dim": 16},
                              training=TINY_TRAINING, progress=False)
    assert evaluate_classifier(clf, files[1])["accuracy"] > 0.9
    with pytest.raises(ValueError, match="trigram"):
        train_classifier(files[0], tmp_path / "bad", tokenizer="char", tower={"encoder": "cnn"}, progress=False)


def test_multi_label(tmp_path: Path):
    rng = random.Random(3)

    def rows(n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            picked = sorted(rng.sample(range(len(NAMES)), rng.choice((1, 2))))
            text = "".join(rng.choice(CHARS[k]) for k in picked for _ in range(3))
            out.append(("".join(rng.sample(text, len(text))), "|".join(NAMES[k] for k in picked)))
        return out

    train, dev = write_rows(tmp_path / "train.tsv", rows(400)), write_rows(tmp_path / "dev.tsv", rows(100))
    clf, _ = train_classifier(train, tmp_path / "m", dev, multi_label=True, label_sep="|",
                              tower={**TINY_TOWER, "encoder": "gru", "pooling": "max"},
                              training={**TINY_TRAINING, "epochs": 5}, progress=False)
    assert clf.multi_label and sorted(clf.labels) == sorted(NAMES)
    metrics = evaluate_classifier(clf, dev)  # the label separator travels with the model
    assert metrics["micro_f1"] > 0.85, metrics
    assert "confusion" not in metrics
    probs = clf.predict_proba(["银行卡余额天气下雨"])
    assert probs.shape == (1, 4) and not np.isclose(probs.sum(), 1.0)  # independent sigmoids
    decided = clf.predict_labels(["银行卡余额天气下雨"])[0]
    assert set(decided) == {"bank", "weather"}
    assert {y for y, _ in clf.predict("银行卡余额天气下雨", k=None, threshold=clf.threshold)} == set(decided)


def test_class_weights_change_the_loss_as_by_hand(files: tuple[Path, Path], tmp_path: Path):
    labels = ["a", "b", "c"]
    targets = np.array([0, 0, 0, 0, 1, 1, 2])
    w = compute_class_weights(targets, labels, "balanced")
    np.testing.assert_allclose(w, [7 / (3 * 4), 7 / (3 * 2), 7 / (3 * 1)], rtol=1e-6)
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    logp = logits.log_softmax(-1)[torch.arange(7), torch.from_numpy(targets)].numpy()
    by_hand = -(w[targets] * logp).sum() / w[targets].sum()
    got = classification_loss(logits, torch.from_numpy(targets), weights=torch.from_numpy(w))
    assert float(got) == pytest.approx(by_hand, rel=1e-5)
    plain = classification_loss(logits, torch.from_numpy(targets))
    assert float(plain) == pytest.approx(-logp.mean(), rel=1e-5) and float(plain) != pytest.approx(by_hand)

    np.testing.assert_allclose(compute_class_weights(targets, labels, {"c": 5}), [1, 1, 5])
    with pytest.raises(ValueError, match="not a training label"):
        compute_class_weights(targets, labels, {"zzz": 2.0})
    with pytest.raises(ValueError, match="positive"):
        compute_class_weights(targets, labels, {"a": -1})

    # multi-label: the weights are each label's pos_weight; balanced = negatives / positives
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], np.float32)
    pw = compute_class_weights(y, ["x", "y"], "balanced", multi_label=True)
    np.testing.assert_allclose(pw, [1 / 3, 3 / 1], rtol=1e-6)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    p = torch.sigmoid(z).numpy()
    terms = -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))
    got = classification_loss(z, torch.from_numpy(y), multi_label=True, weights=torch.from_numpy(pw))
    assert float(got) == pytest.approx(terms.mean(), rel=1e-5)

    # train_classifier uses them and records them with the model
    small = write_rows(tmp_path / "small.tsv", [r for r in make_rows(80, 5) if r[1] != "train"] + [("火车站", "train")])
    clf, _ = train_classifier(small, tmp_path / "w", class_weights="balanced", tower=TINY_TOWER,
                              training={**TINY_TRAINING, "epochs": 1}, progress=False)
    counts = clf.info["label_counts"]
    n = sum(counts.values())
    assert clf.info["class_weights"]["train"] == pytest.approx(n / (4 * counts["train"]), rel=1e-5)


def test_metrics_match_sklearn_on_a_worked_example():
    metrics_mod = pytest.importorskip("sklearn.metrics")
    labels = ["a", "b", "c", "d"]
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])
    y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1, 1, 2])  # "d" is never predicted
    probs = np.full((len(y_true), 4), 0.1)
    probs[np.arange(len(y_true)), y_pred] = 0.7
    got = classification_metrics(y_true, probs, labels)
    assert got["accuracy"] == pytest.approx(metrics_mod.accuracy_score(y_true, y_pred))
    for average in ("macro", "micro", "weighted"):
        want = metrics_mod.f1_score(y_true, y_pred, average=average, zero_division=0)
        assert got[f"{average}_f1"] == pytest.approx(want), average
    assert got["macro_precision"] == pytest.approx(
        metrics_mod.precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert got["macro_recall"] == pytest.approx(metrics_mod.recall_score(y_true, y_pred, average="macro"))
    p, r, f, s = metrics_mod.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate(labels):
        row = got["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert got["confusion"]["matrix"] == metrics_mod.confusion_matrix(y_true, y_pred).tolist()
    assert got["log_loss"] == pytest.approx(metrics_mod.log_loss(y_true, probs, labels=[0, 1, 2, 3]))
    pairs = [(m["true"], m["predicted"], m["count"]) for m in got["most_confused"]]
    assert pairs == [("c", "b", 2), ("a", "b", 1), ("b", "c", 1), ("c", "a", 1), ("d", "c", 1)]

    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6], [0.7, 0.3, 0.1], [0.2, 0.1, 0.9]])
    got = classification_metrics(truth, scores, ["x", "y", "z"], multi_label=True)
    pred = (scores >= 0.5).astype(int)
    for average in ("macro", "micro"):
        assert got[f"{average}_f1"] == pytest.approx(metrics_mod.f1_score(truth, pred, average=average))
    assert got["accuracy"] == pytest.approx(metrics_mod.accuracy_score(truth, pred))
    assert got["hamming_loss"] == pytest.approx(metrics_mod.hamming_loss(truth, pred))


def test_predict_top_k_and_probabilities(lstm_clf: Classifier):
    texts = ["银行卡余额", "下雨晴朗天气", "火车", "医生看病医院", "余额"]
    probs = lstm_clf.predict_proba(texts)
    assert probs.shape == (5, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(lstm_clf.predict_proba(texts, batch_size=2), probs, atol=1e-5)  # batching
    top = lstm_clf.predict(texts, k=3)
    for row, p in zip(top, probs, strict=True):
        assert len(row) == 3 and [q for _, q in row] == sorted((q for _, q in row), reverse=True)
        assert row[0][1] == pytest.approx(p.max()) and row[0][0] == lstm_clf.labels[int(p.argmax())]
    all_labels = lstm_clf.predict(texts[0], k=10)
    assert len(all_labels) == 4 and sum(q for _, q in all_labels) == pytest.approx(1.0, abs=1e-5)
    assert [row[0][0] for row in lstm_clf.predict(texts)] == lstm_clf.predict_labels(texts)
    assert lstm_clf.predict([]) == []
    with pytest.raises(ValueError, match="k must be"):
        lstm_clf.predict(texts, k=0)


def test_save_load_round_trip_and_dispatch(lstm_clf: Classifier, tmp_path: Path):
    out = lstm_clf.save(tmp_path / "copy")
    assert {p.name for p in out.iterdir()} >= {"config.json", "tokenizer.json", "model.safetensors"}
    assert not [p for p in out.iterdir() if p.suffix in (".pt", ".pkl", ".bin")]
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "classifier" and config["labels"] == lstm_clf.labels
    assert ClassifierConfig.from_dict(config["classifier"]).num_labels == 4
    loaded = deepsem.load(out)
    assert isinstance(loaded, Classifier)
    texts = ["银行卡余额", "火车站"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), lstm_clf.predict_proba(texts))
    assert loaded.labels == lstm_clf.labels and loaded.info["label_sep"] == ","

    with pytest.raises(ConfigError, match="not a two-tower model"):
        SemanticModel.load(out)
    config["labels"] = ["a", "a", "b", "c"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'labels'"):
        Classifier.load(out)
    del config["classifier"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'classifier' is missing"):
        deepsem.load(out)
    (tmp_path / "tt").mkdir()
    (tmp_path / "tt" / "config.json").write_text(json.dumps({"task": "two-tower", "model": {}}))
    with pytest.raises(ConfigError, match="not a classifier"):
        Classifier.load(tmp_path / "tt")


def test_text_classifier_module_shapes():
    net = TextClassifier(ClassifierConfig(tower=TowerConfig(vocab_size=10, **TINY_TOWER), num_labels=3))
    logits = net(torch.tensor([[2, 3, 4], [5, 0, 0]]), torch.tensor([3, 1]))
    assert logits.shape == (2, 3)
    with pytest.raises(ConfigError, match="num_labels"):
        ClassifierConfig.from_dict({"num_labels": 1})
    with pytest.raises(ConfigError, match="unknown field"):
        ClassifierConfig.from_dict({"labels": 3})


def test_ngram_bag_is_padding_invariant_and_learns(files: tuple[Path, Path], tmp_path: Path):
    config = ClassifierConfig(tower=TowerConfig(vocab_size=10, **TINY_TOWER), num_labels=3, ngram_buckets=50,
                              ngram_order=3, ngram_dim=4)
    net = TextClassifier(config).eval()
    ids, lengths = torch.tensor([[2, 3, 4, 5], [5, 6, 0, 0]]), torch.tensor([4, 2])
    rows, mask = net.ngram_ids(ids, lengths)
    assert rows.shape == (2, 4 + 3 + 2) and mask[1].tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert int(rows[:, 4:].min()) >= 10 and int(rows.max()) < 60  # n-grams live after the token rows
    torch.testing.assert_close(net(ids, lengths)[1], net(ids[1:, :2], lengths[1:])[0])
    # the bag is the plain mean of the looked-up rows inside each text (value and gradient)
    table = net.ngrams.weight
    by_hand = torch.stack([table[rows[b][mask[b]]].mean(0) for b in range(2)])
    torch.testing.assert_close(net.ngram_vector(ids, lengths), by_hand)
    (grad_bag,) = torch.autograd.grad(net.ngram_vector(ids, lengths).square().sum(), table)
    (grad_hand,) = torch.autograd.grad(torch.stack([table[rows[b][mask[b]]].mean(0) for b in range(2)]).square().sum(),
                                       table)
    torch.testing.assert_close(grad_bag, grad_hand)
    clf, _ = train_classifier(files[0], tmp_path / "ng", files[1], tower={**TINY_TOWER, "encoder": "gru"},
                              training=TINY_TRAINING, ngram_buckets=2000, progress=False)
    assert clf.model.ngrams is not None and evaluate_classifier(clf, files[1])["accuracy"] > 0.9
    again = Classifier.load(tmp_path / "ng")
    np.testing.assert_array_equal(again.predict_proba(["银行卡余额"]), clf.predict_proba(["银行卡余额"]))


def test_bad_input_names_file_and_line(files: tuple[Path, Path], tmp_path: Path):
    dev = write_rows(tmp_path / "dev.tsv", [("银行卡", "bank"), ("天气", "weather"), ("股票", "stocks")])
    with pytest.raises(DataError, match=r"dev\.tsv, line 3, field 'label': unknown label 'stocks'"):
        train_classifier(files[0], tmp_path / "m", dev, progress=False)
    assert len(read_labelled(dev, labels=NAMES, skip_bad_rows=True).skipped.messages) == 1

    empty = tmp_path / "empty.tsv"
    empty.write_text("银行卡\tbank\n  \tweather\n天气\tweather\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.tsv, line 2, field 'text': empty text"):
        read_labelled(empty)
    read = read_labelled(empty, skip_bad_rows=True)
    assert len(read) == 2 and read.skipped.count == 1 and read.lines == [1, 3]

    one = write_rows(tmp_path / "one.tsv", [("银行卡", "bank"), ("余额", "bank")])
    with pytest.raises(DataError, match=r"one\.tsv.*'label'.*at least two classes"):
        train_classifier(one, tmp_path / "m", progress=False)

    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("银行卡\tbank\n".encode() + "caf\xe9\tweather\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.tsv, line 2, field 'text': undecodable bytes"):
        read_labelled(latin1)
    assert read_labelled(latin1, skip_bad_rows=True).skipped.count == 1

    csv_file = tmp_path / "named.csv"
    csv_file.write_text("label,text\nbank,银行卡\n,天气\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"named\.csv, line 3, field 'label': empty label"):
        read_labelled(csv_file, text_col="text", label_col="label")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"t": "银行卡", "y": 3}\n{"t": "天气", "y": ["a", "b"]}\n', encoding="utf-8")
    assert read_labelled(jsonl, text_col="t", label_col="y", multi_label=True).labels == [("3",), ("a", "b")]
    with pytest.raises(DataError, match=r"line 2.*multi_label=True"):
        read_labelled(jsonl, text_col="t", label_col="y")
    texts = LabelledTexts(["银行卡", "股票"], ["bank", "stocks"], source="mem")
    with pytest.raises(DataError, match="mem, line 2, field 'label': unknown label 'stocks'"):
        train_classifier(files[0], tmp_path / "m", texts, progress=False)


def test_cli_train_evaluate_predict(files: tuple[Path, Path], tmp_path: Path):
    out = tmp_path / "m"
    csv_train = tmp_path / "train.csv"
    csv_train.write_text("label,text\n" + "".join(f"{y},{t}\n" for t, y in make_rows(200, 7)), encoding="utf-8")
    result = runner.invoke(app, ["classify", "train", str(csv_train), "--out", str(out), "--dev", str(files[1]),
                                 "--text-col", "text", "--label-col", "label", "--encoder", "gru",
                                 "--embedding-dim", "16", "--hidden", "16", "--dim", "16", "--epochs", "2",
                                 "--batch-size", "32", "--lr", "0.01", "--class-weights", "balanced",
                                 "--no-progress"])
    assert result.exit_code != 0 and "no column 'text'" in result.output  # the dev file has no header
    dev_csv = tmp_path / "dev.csv"
    dev_csv.write_text("label,text\n" + "".join(f"{y},{t}\n" for t, y in make_rows(60, 8)), encoding="utf-8")
    args = ["classify", "train", str(csv_train), "--out", str(out), "--dev", str(dev_csv), "--text-col", "text",
            "--label-col", "label", "--encoder", "gru", "--embedding-dim", "16", "--hidden", "16", "--dim", "16",
            "--epochs", "2", "--batch-size", "32", "--lr", "0.01", "--class-weights", "balanced", "--no-progress",
            "--ngram-buckets", "1000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best dev: accuracy" in result.output
    assert json.loads((out / "config.json").read_text())["classifier"]["ngram_buckets"] == 1000

    png = tmp_path / "confusion.png"
    result = runner.invoke(app, ["classify", "evaluate", "--model", str(out), str(files[1]), "--json",
                                 "--confusion", str(png)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert {"accuracy", "macro_f1", "micro_f1", "per_class", "confusion", "most_confused"} <= set(metrics)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["classify", "evaluate", "--model", str(out), str(files[1])])
    assert result.exit_code == 0 and "macro_f1" in result.output and "support" in result.output

    texts = tmp_path / "texts.txt"
    texts.write_text("银行卡余额\n天气晴朗\n", encoding="utf-8")
    clf = deepsem.load(out)
    assert isinstance(clf, Classifier)
    result = runner.invoke(app, ["classify", "predict", "--model", str(out), str(texts), "-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().split("\n")
    want = clf.predict(["银行卡余额", "天气晴朗"], k=2)
    assert [line.split("\t")[::2] for line in lines] == [[y for y, _ in row] for row in want]
    result = runner.invoke(app, ["classify", "predict", "--model", str(out), "--json"], input="火车站\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["predictions"][0]["label"] == clf.predict("火车站")[0][0]
    result = runner.invoke(app, ["classify", "predict", "--model", str(out)], input="火车站\n \n")
    assert result.exit_code == 2 and "stdin, line 2: empty text" in result.output


def test_classify_endpoint(lstm_clf: Classifier, tmp_path: Path, served_app):
    with TestClient(create_app(classifier=lstm_clf, limits=Limits(max_chars=20, max_texts=3, max_k=5))) as client:
        r = client.post("/classify", json={"texts": ["银行卡余额", "医院看病"], "k": 2})
        assert r.status_code == 200, r.text
        want = lstm_clf.predict(["银行卡余额", "医院看病"], k=2)
        got = r.json()["predictions"]
        assert [[p["label"] for p in row] for row in got] == [[y for y, _ in row] for row in want]
        np.testing.assert_allclose([[p["prob"] for p in row] for row in got], [[q for _, q in row] for row in want],
                                   atol=1e-6)
        for body, status, message in [({"texts": ["a"] * 4}, 422, "the limit is 3"),
                                      ({"texts": ["a"], "k": 0}, 422, "k must be between 1 and 5"),
                                      ({"texts": [" "]}, 422, "text 0 is empty"),
                                      ({"texts": ["x" * 21]}, 422, "has 21 characters"),
                                      ({"texts": []}, 422, "no texts given")]:
            r = client.post("/classify", json=body)
            assert r.status_code == status and message in r.text, r.text
        assert client.post("/embed", json={"texts": ["a"]}).status_code == 404
        assert client.get("/healthz").json() == {"status": "ok"}

    saved = lstm_clf.save(tmp_path / "served")
    result, served = served_app(["serve", "--model", str(saved)])
    assert result.exit_code == 0, result.output
    with TestClient(served) as client:
        r = client.post("/classify", json={"texts": ["火车站"]})
        assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == lstm_clf.predict("火车站")[0][0]
        assert client.get("/healthz").status_code == 200


def test_a_run_with_other_data_or_settings_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from deepsem.errors import ResumeMismatchError
    from deepsem.trainer import Trainer

    monkeypatch.setattr(Trainer, "plot", lambda self: None)  # a second per run; not under test

    training = {**TINY_TRAINING, "epochs": 1}
    data, other = write_rows(tmp_path / "a.tsv", make_rows(64, 1)), write_rows(tmp_path / "b.tsv", make_rows(64, 2))
    train_classifier(data, tmp_path / "m", tower=TINY_TOWER, training=training, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"training data differs.*--no-resume"):
        train_classifier(other, tmp_path / "m", tower=TINY_TOWER, training=training, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"tower\.hidden_size 16 -> 24"):
        train_classifier(data, tmp_path / "m", tower={**TINY_TOWER, "hidden_size": 24}, training=training,
                         progress=False)
    _, result = train_classifier(other, tmp_path / "m", tower={**TINY_TOWER, "hidden_size": 24}, training=training,
                                 resume=False, progress=False)
    assert result.steps == 2
