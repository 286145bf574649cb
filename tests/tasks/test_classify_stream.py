"""``deepsem classify train DIR``: labelled texts streamed from shards, against the in-memory reader on the same rows
(labels, counts, vocabulary, class weights), end to end through the CLI, multi-label, resume, per-rank parts, errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TOPICS, Killed, killed_at_step
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.data.errors import DataError
from deepsem.data.stream import LabelledStream, find_shards, rank_part
from deepsem.errors import ResumeMismatchError
from deepsem.tasks.classification import compute_class_weights, read_labelled, train_classifier
from deepsem.text import build_tokenizer

NAMES = ["bank", "weather", "train", "hospital"]
CHARS = [TOPICS[0], TOPICS[4], TOPICS[5], TOPICS[9]]
TINY_TOWER = {"embedding_dim": 16, "hidden_size": 16, "output_dim": 16}
TRAINING = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 5, "threads": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_rows(n: int, seed: int, multi: bool = False) -> list[tuple[str, str]]:
    """Texts of one topic's characters labelled with the topic (multi: a second topic's characters and label
    appended to every third text, the labels joined by '|')."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randrange(len(NAMES))
        text, label = "".join(rng.choice(CHARS[k]) for _ in range(rng.randint(3, 6))), NAMES[k]
        if multi and i % 3 == 0:
            j = (k + 1) % len(NAMES)
            text, label = text + "".join(rng.choice(CHARS[j]) for _ in range(3)), f"{label}|{NAMES[j]}"
        rows.append((text, label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def shard_dir(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """Two Parquet shards (columns text, label) and a TSV shard of ``rows``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        part = rows[k::3]
        if k < 2:
            pq.write_table(pa.table({"text": [r[0] for r in part], "label": [r[1] for r in part]}),
                           folder / f"part-{k}.parquet")
        else:
            write_tsv(folder / f"part-{k}.tsv", part)
    return folder


def in_shard_order(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [r for k in range(3) for r in rows[k::3]]


def test_classify_train_streams_parquet_and_tsv_shards_through_the_cli(tmp_path: Path):
    rows = make_rows(600, 1)
    shards = shard_dir(tmp_path / "shards", rows)
    dev = write_tsv(tmp_path / "dev.tsv", make_rows(120, 2))
    out = tmp_path / "m"
    result = CliRunner().invoke(app, [
        "classify", "train", str(shards), "--out", str(out), "--dev", str(dev), "--epochs", "3",
        "--batch-size", "32", "--embedding-dim", "16", "--hidden", "16", "--dim", "16", "--lr", "0.01",
        "--threads", "1", "--shuffle-buffer", "128", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 labels; stopped: finished after 57 steps" in result.output  # 3 epochs of ceil(600 / 32) = 19
    config = json.loads((out / "config.json").read_text())
    assert config["train_shards"] == 3 and config["train_examples"] == 600
    assert config["label_counts"] == dict(Counter(y for _, y in rows))
    assert config["dev_metrics"]["accuracy"] > 0.9  # it learnt the topics from the stream
    result = CliRunner().invoke(app, ["classify", "evaluate", "--model", str(out), str(dev)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("multi", [False, True])
def test_labels_counts_vocabulary_and_weights_from_the_stream_equal_the_in_memory_ones(tmp_path: Path, multi: bool):
    rows = make_rows(90, 3, multi)
    shards = shard_dir(tmp_path / "shards", rows)
    whole = read_labelled(write_tsv(tmp_path / "all.tsv", in_shard_order(rows)), multi_label=multi, label_sep="|")
    stream = LabelledStream(find_shards(shards), multi_label=multi, label_sep="|")
    tok = build_tokenizer("char", stream.scan())
    reference = build_tokenizer("char", whole.texts)
    assert tok.config() == reference.config()
    assert stream.labels == whole.label_set() and stream.examples == len(whole)
    assert stream.label_counts == Counter(y for row in whole.labels for y in row)
    # a vocabulary of the first 10 rows, while the labels still come from every row
    sampled = LabelledStream(find_shards(shards), multi_label=multi, label_sep="|")
    assert list(sampled.scan(10)) == whole.texts[:10]
    assert sampled.labels == whole.label_set() and sampled.label_counts == stream.label_counts
    # balanced class weights from the counts equal those of the in-memory targets
    from deepsem.tasks.classification import _stream_class_weights, _targets

    targets = _targets(whole, whole.label_set(), multi)
    np.testing.assert_allclose(
        _stream_class_weights(stream.label_counts, stream.examples, stream.labels, "balanced", multi),
        compute_class_weights(targets, whole.label_set(), "balanced", multi))
    # one epoch's batches hold every row once, with the targets of its labels
    steps = stream.steps_per_epoch(8)
    seen = []
    for batch in stream.batches(0, batch_size=8, seed=5, steps=steps, shuffle_buffer=24):
        for text, target in zip(batch.texts, batch.targets, strict=True):
            names = [stream.labels[j] for j in np.flatnonzero(target)] if multi else [stream.labels[int(target)]]
            seen.append((text, tuple(sorted(names))))
    assert sorted(seen) == sorted((t, tuple(sorted(y))) for t, y in zip(whole.texts, whole.labels, strict=True))


def test_rank_parts_are_disjoint_and_make_the_whole(tmp_path: Path):
    rows = make_rows(90, 4)
    stream = LabelledStream(find_shards(shard_dir(tmp_path / "shards", rows)))
    for world in (2, 4):  # by shard (3 shards, 2 ranks), by row (3 shards, 4 ranks)
        parts = [[t for t, _ in stream.rows(rank_part(3, r, world)[0], r, world, rank_part(3, r, world)[1])]
                 for r in range(world)]
        assert sorted(t for part in parts for t in part) == sorted(t for t, _ in rows)


def _classify_rank(rank: int, port: int, data: str, out: str, seen: str) -> None:
    """One process of ``torchrun --nproc-per-node 2 -m deepsem classify train DIR``: records the texts it trains on."""
    import os

    from deepsem.data import stream
    from deepsem.tasks import classification

    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    real = stream.LabelledStream._cut
    batches: list[list[str]] = []

    def recording(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            batches.append(batch.texts)
            yield batch

    real_pad = classification._pad
    sizes: list[int] = []

    def counting(ids, *args):  # the collate pads each batch the trainer takes: one call per step
        sizes.append(len(ids))
        return real_pad(ids, *args)

    stream.LabelledStream._cut = recording  # type: ignore[method-assign]
    classification._pad = counting  # type: ignore[assignment]
    train_classifier(data, out, tower=TINY_TOWER, training={**TRAINING, "epochs": 1, "batch_size": 16},
                     progress=False, shuffle_buffer=64)
    Path(seen, f"rank{rank}.json").write_text(json.dumps({"cut": batches, "taken": sizes}))


def test_two_gloo_ranks_stream_disjoint_parts_for_the_same_number_of_steps(tmp_path: Path):
    import socket

    import torch.multiprocessing as mp

    rows = list({t: (t, y) for t, y in make_rows(400, 9)}.values())[:150]  # distinct texts: parts told apart
    assert len(rows) == 150
    shards = shard_dir(tmp_path / "shards", rows)  # 3 shards of 50: rank 0 reads shards 0 and 2, rank 1 shard 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_classify_rank, args=(port, str(shards), str(tmp_path / "m"), str(tmp_path)), nprocs=2, join=True)
    stream = LabelledStream(find_shards(shards))
    steps = stream.steps_per_epoch(8, world=2)
    assert steps == 7  # min(ceil(100 / 8), ceil(50 / 8)): every rank runs the smaller part's count
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(s["taken"]) for s in seen] == [steps, steps]  # local batches of 16 // 2 texts
    assert all(n <= 8 for s in seen for n in s["taken"]) and sum(seen[0]["taken"]) == 7 * 8
    parts = []
    for rank in range(2):
        own = {t for t, _ in stream.rows(rank_part(3, rank, 2)[0])}
        parts.append({t for b in seen[rank]["cut"] for t in b})
        assert parts[rank] <= own
    assert not parts[0] & parts[1]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["train_examples"] == 150 and config["label_counts"] == dict(Counter(y for _, y in rows))


def test_multi_label_shards_train_with_ngrams_and_max_steps(tmp_path: Path):
    rows = make_rows(300, 5, multi=True)
    shards = shard_dir(tmp_path / "shards", rows)
    clf, result = train_classifier(str(shards / "part-*"), tmp_path / "m", multi_label=True, label_sep="|",
                                   tower=TINY_TOWER,
                                   training={**TRAINING, "max_steps": 7}, ngram_buckets=64, class_weights="balanced",
                                   progress=False, shuffle_buffer=64, vocab_sample=3)
    assert result.steps == 7 and result.stopped == "max-steps"
    assert clf.multi_label and clf.labels == sorted(NAMES)
    assert clf.info["label_counts"] == dict(Counter(y for _, ys in rows for y in ys.split("|")))
    assert clf.predict_proba("银行").shape == (4,)
    # the vocabulary of the first 3 rows (in shard order) only
    first = build_tokenizer("char", [t for t, _ in in_shard_order(rows)[:3]])
    assert clf.tokenizer.config() == first.config()
    assert clf.tokenizer.vocab_size < build_tokenizer("char", [t for t, _ in rows]).vocab_size


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "training" / "checkpoint" / "model.safetensors"))


def test_a_killed_streamed_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path: Path):
    shards = shard_dir(tmp_path / "shards", make_rows(300, 6))  # 10 batches an epoch
    kw = {"tower": TINY_TOWER, "training": TRAINING, "progress": False, "shuffle_buffer": 96,
          "ngram_buckets": 32, "text_col": "text", "label_col": "label"}
    _, unbroken = train_classifier(str(shards / "*.parquet"), tmp_path / "a", **kw)
    assert unbroken.steps == 2 * 7  # 200 rows in the two Parquet shards: ceil(200 / 32) = 7 an epoch

    with pytest.raises(Killed), killed_at_step(12):  # mid second epoch, after the checkpoint at step 10
        train_classifier(str(shards / "*.parquet"), tmp_path / "b", **kw)
    state = json.loads((tmp_path / "b" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    clf, resumed = train_classifier(str(shards / "*.parquet"), tmp_path / "b", **kw)
    assert resumed.steps == 14 and clf.labels == sorted(NAMES)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # other shards: not the run the checkpoint holds
    pq.write_table(pa.table({"text": ["银行卡", "天气"], "label": ["bank", "weather"]}), shards / "part-9.parquet")
    with pytest.raises(ResumeMismatchError, match="training data differs"):
        train_classifier(str(shards / "*.parquet"), tmp_path / "b", **kw)


def test_streaming_errors_name_the_file_line_and_field_or_are_skipped_and_counted(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["classify", "train", str(tmp_path / "none-*.tsv"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "matches no file" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["classify", "train", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "no readable shards" in result.output
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tsv(shards / "a.tsv", make_rows(40, 7))
    write_tsv(shards / "b.tsv", make_rows(40, 8))
    with (shards / "b.tsv").open("a") as fh:
        fh.write("\tbank\n")  # line 41: an empty text
    small = ["--epochs", "1", "--hidden", "8", "--embedding-dim", "8", "--dim", "8", "--no-progress"]
    result = runner.invoke(app, ["classify", "train", str(shards), "--out", str(tmp_path / "m2"), *small])
    assert result.exit_code != 0 and "b.tsv, line 41, field 'text'" in result.output
    result = runner.invoke(app, ["classify", "train", str(shards), "--out", str(tmp_path / "m3"), *small,
                                 "--skip-bad-rows"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad row" in result.output
    assert json.loads((tmp_path / "m3" / "config.json").read_text())["train_examples"] == 80
    # a dev label the shards never hold; a single class
    dev = write_tsv(tmp_path / "dev.tsv", [("银行", "bank"), ("火星", "mars")])
    with pytest.raises(DataError, match="unknown label 'mars'"):
        train_classifier(shards, tmp_path / "m4", dev, tower=TINY_TOWER, training=TRAINING, progress=False,
                         skip_bad_rows=True)
    one = tmp_path / "one"
    one.mkdir()
    write_tsv(one / "a.tsv", [("银行", "bank"), ("银行卡", "bank")])
    with pytest.raises(DataError, match="at least two classes"):
        train_classifier(one, tmp_path / "m5", tower=TINY_TOWER, training=TRAINING, progress=False)
