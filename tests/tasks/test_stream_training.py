"""``deepsem train DIR``: training streamed from shards, end to end (CLI and Python), resume, budgets and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_MODEL, Killed, killed_at_step, make_pairs, write_tsv
from typer.testing import CliRunner

import deepsem
from deepsem.cli import app
from deepsem.config import TrainConfig
from deepsem.errors import ConfigError

TRAINING = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "checkpoint_every": 5, "threads": 1}


def _shard_dir(folder: Path, n: int = 300, seed: int = 1) -> Path:
    """Two Parquet shards and a TSV shard of the synthetic topic pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = make_pairs(n, seed)
    for k in range(3):
        part = rows[k::3]
        if k < 2:
            pq.write_table(pa.table({"text_a": [r[0] for r in part], "text_b": [r[1] for r in part],
                                     "label": [r[2] for r in part]}), folder / f"part-{k}.parquet")
        else:
            write_tsv(folder / f"part-{k}.tsv", part)
    return folder


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "training" / "checkpoint" / "model.safetensors"))


def test_deepsem_train_on_a_folder_of_parquet_and_tsv_shards(tmp_path: Path, pair_files):
    shards = _shard_dir(tmp_path / "shards", 600)
    out = tmp_path / "m"
    result = CliRunner().invoke(app, [
        "train", str(shards), "--out", str(out), "--dev", str(pair_files[1]), "--epochs", "3", "--batch-size", "32",
        "--embedding-dim", "16", "--hidden", "24", "--dim", "16", "--lr", "0.01", "--threads", "1",
        "--shuffle-buffer", "128", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "stopped: finished after 57 steps" in result.output  # 3 epochs of ceil(600 / 32) = 19 batches
    model = deepsem.load(out)
    config = json.loads((out / "config.json").read_text())
    assert config["train_shards"] == 3 and config["train_pairs"] == 600
    assert config["dev_metrics"]["accuracy"] > 0.8  # it learnt the topics from the stream
    assert model.similarity("银行卡余额", "账户余额") > model.similarity("银行卡余额", "天气晴朗")


def test_a_killed_streamed_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path: Path):
    shards = _shard_dir(tmp_path / "shards", 300)  # 10 batches an epoch
    kw = {"model": TINY_MODEL, "training": {**TRAINING, "negatives": "both", "num_negatives": 2},
          "progress": False, "shuffle_buffer": 96}
    _, unbroken = deepsem.train(str(shards / "*"), tmp_path / "a", **kw)
    assert unbroken.steps == 20

    with pytest.raises(Killed), killed_at_step(13):  # mid second epoch, after the checkpoint at step 10
        deepsem.train(str(shards / "*"), tmp_path / "b", **kw)
    state = json.loads((tmp_path / "b" / "training" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    _, resumed = deepsem.train(str(shards / "*"), tmp_path / "b", **kw)
    assert resumed.steps == 20
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_max_steps_stops_a_run(tmp_path: Path):
    shards = _shard_dir(tmp_path / "shards", 300)
    _, result = deepsem.train(shards, tmp_path / "m", model=TINY_MODEL, training={**TRAINING, "max_steps": 7},
                              progress=False)
    assert result.steps == 7 and result.stopped == "max-steps"


def test_max_steps_validates_and_stays_out_of_old_configs():
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(max_steps=0).validate()
    assert "max_steps" not in TrainConfig().to_dict()  # fingerprints and saved configs of earlier runs unchanged
    assert TrainConfig.from_dict({"max_steps": 5}).to_dict()["max_steps"] == 5


def test_a_streamed_run_with_changed_shards_is_not_resumed(tmp_path: Path):
    shards = _shard_dir(tmp_path / "shards", 150)
    kw = {"model": TINY_MODEL, "training": {**TRAINING, "epochs": 1}, "progress": False}
    deepsem.train(shards, tmp_path / "m", **kw)
    write_tsv(shards / "part-2.tsv", make_pairs(50, 9))
    with pytest.raises(deepsem.errors.ResumeMismatchError, match="training data differs"):
        deepsem.train(shards, tmp_path / "m", **kw)


def test_streaming_errors_are_one_clear_line(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "nothing-*.parquet"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "matches no file" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "no readable shards" in result.output
    shards = _shard_dir(tmp_path / "shards", 60)
    with pytest.raises(ValueError, match="labelled"):
        deepsem.train(shards, tmp_path / "m", model=TINY_MODEL, training={**TRAINING, "negatives": "labelled"},
                      progress=False)
    with pytest.raises(ValueError, match=r"loss 'cosent' ranks the labelled pairs.*shards have no label"):
        deepsem.train(shards, tmp_path / "m", columns=("text_a", "text_b", None), model=TINY_MODEL,
                      training={**TRAINING, "loss": "cosent"}, progress=False)
    with (shards / "part-2.tsv").open("a") as fh:
        fh.write("好\t坏\tabc\n")
    result = runner.invoke(app, ["train", str(shards), "--out", str(tmp_path / "m2"), "--epochs", "1",
                                 "--hidden", "8", "--embedding-dim", "8", "--dim", "8", "--no-progress"])
    assert result.exit_code != 0 and "part-2.tsv, line 21, field 'label'" in result.output
    result = runner.invoke(app, ["train", str(shards), "--out", str(tmp_path / "m3"), "--epochs", "1",
                                 "--hidden", "8", "--embedding-dim", "8", "--dim", "8", "--no-progress",
                                 "--skip-bad-rows"])
    assert result.exit_code == 0 and "skipped 1 bad row" in result.output


def _stream_rank(rank: int, port: int, data: str, out: str, seen: str) -> None:
    """One process of ``torchrun --nproc-per-node 2 -m deepsem train DIR``: records the pairs it trains on."""
    import os

    from deepsem.data import stream

    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    real = stream.StreamCollate.__call__
    batches: list[list[list[str]]] = []

    def recording(self, batch):
        batches.append([list(pair) for pair in zip(batch.text_a, batch.text_b, strict=True)])
        return real(self, batch)

    stream.StreamCollate.__call__ = recording  # type: ignore[method-assign]
    deepsem.train(data, out, model=TINY_MODEL, training={**TRAINING, "epochs": 1, "batch_size": 16},
                  progress=False, shuffle_buffer=64)
    Path(seen, f"rank{rank}.json").write_text(json.dumps(batches))


def test_two_gloo_ranks_stream_disjoint_parts_for_the_same_number_of_steps(tmp_path: Path):
    import socket

    import torch.multiprocessing as mp

    from deepsem.data.stream import PairStream, find_shards, rank_part

    shards = _shard_dir(tmp_path / "shards", 150)  # 3 shards of 50: rank 0 reads shards 0 and 2, rank 1 shard 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_stream_rank, args=(port, str(shards), str(tmp_path / "m"), str(tmp_path)), nprocs=2, join=True)
    stream = PairStream(find_shards(shards))
    steps = stream.steps_per_epoch(8, world=2)
    assert steps == 7  # min(ceil(100 / 8), ceil(50 / 8)): every rank runs the smaller part's count
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(b) for b in seen] == [steps, steps] and all(len(batch) == 8 for b in seen for batch in b[:-1])
    for rank in range(2):
        own = {(a, b) for a, b, _ in stream.rows(*rank_part(3, rank, 2)[:1], rank, 2)}
        assert {(a, b) for batch in seen[rank] for a, b in batch} <= own
    assert deepsem.load(tmp_path / "m").encode("银行卡").shape == (16,)
