"""The CUDA path, as the gloo tests check the CPU one (test_trainer_ddp.py): ``deepsem train --device cuda`` on one
GPU, and two nccl ranks (one GPU each) training what one GPU trains on the same global batches. Marked ``gpu``:
skipped without CUDA; the two-rank test also needs two GPUs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_pairs, write_tsv
from safetensors.torch import load_file
from typer.testing import CliRunner

import deepsem

MODEL = {"tower": {"embedding_dim": 16, "hidden_size": 12, "output_dim": 16, "dropout": 0.0,
                   "embedding_dropout": 0.0}}
TRAINING = {"epochs": 1, "batch_size": 16, "lr": 1e-2, "loss": "softmax", "negatives": "in-batch", "threads": 1}


@pytest.mark.gpu
def test_the_train_command_trains_on_one_gpu(tmp_path: Path) -> None:
    from deepsem.cli import app

    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 3))
    dev = write_tsv(tmp_path / "dev.tsv", make_pairs(32, 4))
    out = tmp_path / "m"
    result = CliRunner().invoke(app, ["train", str(data), "--dev", str(dev), "--out", str(out), "--epochs", "2",
                                      "--embedding-dim", "8", "--hidden", "8", "--dim", "8", "--batch-size", "16",
                                      "--no-progress", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert "stopped: finished after 8 steps" in result.output
    # the checkpoint holds the GPU's random state only when the run trained there
    assert "cuda_rng" in load_file(str(out / "training" / "checkpoint" / "optimizer.safetensors"))
    vector = deepsem.load(out).encode("银行卡")
    assert vector.shape == (8,) and np.isfinite(vector).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nccl_rank(rank: int, port: int, data: str, out: str) -> None:
    """One process of ``torchrun --nproc-per-node 2 -m deepsem train --device cuda``: GPU ``LOCAL_RANK`` each."""
    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    backends: list[Any] = []
    init = torch.distributed.init_process_group

    def recording(*args: Any, **kwargs: Any) -> None:
        backends.append(args[0] if args else kwargs.get("backend"))
        init(*args, **kwargs)

    with mock.patch.object(torch.distributed, "init_process_group", recording):
        deepsem.train(data, out, model=MODEL, training=TRAINING, progress=False, device="cuda")
    Path(out, f"rank{rank}.json").write_text(json.dumps({"backends": backends, "device": torch.cuda.current_device()}),
                                             encoding="utf-8")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (torch.cuda.device_count() < 2)")
def test_two_nccl_ranks_train_what_one_gpu_trains_on_the_same_global_batches(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 3))
    context = mp.spawn(_nccl_rank, args=(_free_port(), str(data), str(tmp_path / "ddp")), nprocs=2, join=False)
    for process in context.processes:  # not a hang: both end
        process.join(300)
    assert [p.exitcode for p in context.processes] == [0, 0]
    seen = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen == [{"backends": ["nccl"], "device": 0}, {"backends": ["nccl"], "device": 1}]
    deepsem.train(data, tmp_path / "one", model=MODEL, training=TRAINING, progress=False, device="cuda")
    ddp = load_file(str(tmp_path / "ddp" / "training" / "checkpoint" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "training" / "checkpoint" / "model.safetensors"))
    assert ddp.keys() == one.keys()
    # as the gloo test (sums in another order, amplified by Adam's normalisation on near-zero gradients), plus
    # CUDA's non-deterministic kernels (the embedding's backward adds with atomics): 1e-3
    for name, value in one.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-3, atol=1e-3, msg=name)
    curves = [[json.loads(line)["train_loss"] for line in (tmp_path / run / "training" / "metrics.jsonl")
               .read_text().splitlines()] for run in ("ddp", "one")]
    assert curves[0] and len(curves[0]) == len(curves[1])
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-3)
    assert deepsem.load(tmp_path / "ddp").encode("银行卡").shape == (16,)
