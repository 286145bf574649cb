"""The setup every task shares (``deepsem.trainer.run_training``): on a rank other than 0 a whole task run trains
and writes nothing, neither the run directory (tokenizer, checkpoint, metrics, result) nor the model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import deepsem
from deepsem import trainer as trainer_module

ROWS = [("银行卡余额查询", "bank"), ("账户余额多少", "bank"), ("明天会下雨吗", "weather"), ("今天天气晴朗", "weather")]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("".join(f"{t}\t{y}\n" for t, y in ROWS * 5), encoding="utf-8")
    dev.write_text("".join(f"{t}\t{y}\n" for t, y in ROWS), encoding="utf-8")
    return train, dev


def _train(files: tuple[Path, Path], out: Path) -> deepsem.Classifier:
    clf, result = deepsem.train_classifier(
        files[0], out, files[1], tower={"encoder": "gru", "embedding_dim": 8, "hidden_size": 8, "output_dim": 8},
        training={"epochs": 2, "batch_size": 8, "lr": 1e-2, "threads": 1}, progress=False, device="cpu")
    assert result.steps == 6
    return clf


def test_rank_1_trains_a_task_and_writes_nothing(files: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trainer_module.Trainer, "plot", lambda self: None)  # a second per run; not under test
    rank0 = _train(files, tmp_path / "rank0")
    assert {p.name for p in (tmp_path / "rank0").iterdir()} >= {"config.json", "model.safetensors", "training"}
    assert {p.name for p in (tmp_path / "rank0" / "training").iterdir()} >= {"tokenizer", "checkpoint",
                                                                            "metrics.jsonl", "result.json"}
    monkeypatch.setattr(trainer_module, "distributed_rank", lambda: (1, 2))
    rank1 = _train(files, tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()
    # the same run: rank 1 ends with the weights rank 0 checkpointed last, on the CPU
    from safetensors.torch import load_file

    last = load_file(str(tmp_path / "rank0" / "training" / "checkpoint" / "model.safetensors"))
    state = rank1.model.state_dict()
    assert set(last) <= set(state) and all(torch.equal(last[k], state[k]) for k in last)
    assert rank0.labels == rank1.labels and next(rank1.model.parameters()).device == torch.device("cpu")
