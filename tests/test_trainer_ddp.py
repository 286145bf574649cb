"""Distributed training through the trainer: each rank's part of a global batch, per-rank seeds, the process group
started from a launcher's environment, and a two-process gloo run that ends where one process ends."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_pairs, write_tsv
from safetensors.torch import load_file

from deepsem.config import TrainConfig
from deepsem.errors import ConfigError
from deepsem.trainer import init_distributed, rank_seed, run_fingerprint, shard

MODEL = {"tower": {"embedding_dim": 16, "hidden_size": 12, "output_dim": 16, "dropout": 0.0,
                   "embedding_dropout": 0.0}}
TRAINING = {"epochs": 1, "batch_size": 16, "lr": 1e-2, "loss": "softmax", "negatives": "in-batch", "threads": 1}


@pytest.mark.parametrize(("n", "world"), [(7, 2), (16, 2), (10, 3), (2, 3)])
def test_ranks_take_disjoint_contiguous_parts_of_the_global_batch(n: int, world: int) -> None:
    batch = np.arange(100, 100 + n)
    parts = [shard(batch, r, world) for r in range(world)]
    for part, expected in zip(parts, np.array_split(batch, world), strict=True):  # numpy's split as the reference
        assert np.array_equal(part, expected)
    assert np.array_equal(np.concatenate(parts), batch)
    assert shard(batch, 0, 1) is batch
    with pytest.raises(TypeError, match="splits each batch by rows"):
        shard({"x": batch}, 0, 2)


def test_seeds_differ_per_rank_and_rank_0_keeps_the_base_seed() -> None:
    seeds = [rank_seed(42, r) for r in range(4)]
    assert seeds[0] == 42 and len(set(seeds)) == 4
    assert seeds == [rank_seed(42, r) for r in range(4)]
    assert rank_seed(43, 1) != seeds[1]


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR, MASTER_PORT are missing"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is missing"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK=2 is not a rank"),
    ({"WORLD_SIZE": "two"}, "not a number"),
])
def test_an_inconsistent_launch_environment_is_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                       message: str) -> None:
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        init_distributed()


@pytest.mark.parametrize(("gpus", "local"), [(1, "1"), (0, "0"), (2, "x")])
def test_a_process_without_a_gpu_of_its_own_is_refused_before_the_group_starts(
        monkeypatch: pytest.MonkeyPatch, gpus: int, local: str) -> None:
    """``torchrun --nproc-per-node 2 ... --device cuda`` on a one-GPU machine: rank 1 would ask for GPU 1 (seen on an
    H200, bench/results/cuda_h200.log); refused with the count, not a CUDA 'invalid device ordinal'."""
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": local, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    started: list[object] = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: started.append(a))
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: started.append(a))
    with pytest.raises(ConfigError, match=f"LOCAL_RANK={local}\\) has no GPU of its own, this machine has {gpus}"):
        init_distributed("cuda")
    assert started == []


def test_two_processes_on_one_gpu_are_told_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """NCCL refuses two ranks on one GPU at the first collective (seen on an H200: 'Duplicate GPU detected'); the
    run says what that means, as a ConfigError, and still destroys its process group."""
    import deepsem.trainer as trainer

    nccl = ("NCCL error in: NCCLUtils.cpp:93, invalid usage, NCCL version 2.28.9 ncclInvalidUsage: Last error: "
            "Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 60")
    destroyed: list[bool] = []

    def failing(*args: object) -> None:
        raise torch.distributed.DistBackendError(nccl)

    monkeypatch.setattr(trainer, "init_distributed", lambda device=None: True)
    monkeypatch.setattr(trainer, "check_world_size", lambda config: None)
    monkeypatch.setattr(trainer, "_run_training", failing)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a: destroyed.append(True))
    with pytest.raises(ConfigError, match="two of them share one GPU") as caught:
        trainer.run_training(TrainConfig(), tmp_path / "m", {}, lambda tok: None, device="cuda")
    assert isinstance(caught.value.__cause__, torch.distributed.DistBackendError)
    assert destroyed == [True]


def test_a_failed_run_lets_go_of_its_trainer_before_the_group_is_destroyed(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """A rank refused at its start (tests/test_trainer_ddp_stops.py, "apart") once hung: its exception's frames kept
    DDP's reducer, the group's last owner after destroy_process_group, whose destructor then deadlocked in gloo.
    Now what the failed run held is gone when the group is destroyed, and the error still reaches the caller."""
    import weakref

    import deepsem.trainer as trainer

    class Held:
        pass

    refs: list[weakref.ref[Held]] = []
    alive_at_destroy: list[bool] = []

    def failing(*args: object) -> None:
        held = Held()  # what the trainer's frames hold (DDP, its reducer, the group)
        refs.append(weakref.ref(held))
        try:
            raise RuntimeError("gloo: inner")
        except RuntimeError as inner:
            raise ConfigError("the processes start at different steps") from inner

    monkeypatch.setattr(trainer, "init_distributed", lambda device=None: True)
    monkeypatch.setattr(trainer, "check_world_size", lambda config: None)
    monkeypatch.setattr(trainer, "_run_training", failing)
    monkeypatch.setattr(torch.distributed, "destroy_process_group",
                        lambda *a: alive_at_destroy.append(refs[0]() is not None))
    with pytest.raises(ConfigError, match="start at different steps") as caught:
        trainer.run_training(TrainConfig(), tmp_path / "m", {}, lambda tok: None)
    assert alive_at_destroy == [False]
    assert str(caught.value.__cause__) == "gloo: inner"


def test_releasing_a_failed_run_clears_the_frames_of_its_causes_too() -> None:
    import weakref

    from deepsem.trainer import _release_failed_run

    class Held:
        pass

    def inner(refs: list[weakref.ref[Held]]) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        raise KeyError("inner")

    refs: list[weakref.ref[Held]] = []
    try:
        try:
            inner(refs)
        except KeyError as cause:
            raise ValueError("outer") from cause
    except ValueError as outer:
        error = outer
    assert refs[0]() is not None  # the cause's traceback holds the frame that holds it
    _release_failed_run(error)
    assert refs[0]() is None
    _release_failed_run(None)  # a run that ended: nothing to clear


def test_one_process_starts_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() is False
    assert not torch.distributed.is_initialized()


def test_the_gather_flag_enters_the_fingerprint_only_when_off() -> None:
    """Checkpoints written before the flag existed (gathering is the default) still resume."""
    default = run_fingerprint(TrainConfig())["training"]
    assert "gather_negatives" not in default
    assert run_fingerprint(TrainConfig(gather_negatives=False))["training"] == {**default, "gather_negatives": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, data: str, out: str, training: dict | None = None) -> None:
    """One process of a ``torchrun --nproc-per-node 2 -m deepsem train`` launch: the launcher's environment, then
    the plain Python API (which starts and destroys the group)."""
    import deepsem

    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    deepsem.train(data, out, model=MODEL, training=training or TRAINING, progress=False)
    assert not torch.distributed.is_initialized()


def test_two_gloo_ranks_train_what_one_process_trains_on_the_same_global_batches(tmp_path: Path) -> None:
    import deepsem

    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 3))
    mp.spawn(_rank, args=(_free_port(), str(data), str(tmp_path / "ddp")), nprocs=2, join=True)
    torch.set_num_threads(1)
    deepsem.train(data, tmp_path / "one", model=MODEL, training=TRAINING, progress=False)
    ddp = load_file(str(tmp_path / "ddp" / "training" / "checkpoint" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "training" / "checkpoint" / "model.safetensors"))
    assert ddp.keys() == one.keys()
    moved = 0
    # 4 AdamW steps of lr 1e-2: float32 sums in another order (the rank split) differ by ~1e-7, which Adam's
    # normalisation turns into up to ~3e-5 on weights whose gradients are near 0; 1e-4 is 1% of one step
    for name, value in one.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-4, msg=name)
        moved += 0 if name.startswith("log_gamma") else 1
    assert moved and deepsem.load(tmp_path / "ddp").encode("银行卡").shape == (16,)
    # the logged training loss is the global batch's (all-reduced over the ranks), not rank 0's share of it
    curves = [[json.loads(line)["train_loss"] for line in (tmp_path / run / "training" / "metrics.jsonl")
               .read_text().splitlines() if "train_loss" in json.loads(line)] for run in ("ddp", "one")]
    assert curves[0] and len(curves[0]) == len(curves[1])
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)


def test_two_gloo_ranks_keep_the_weight_average_one_process_keeps(tmp_path: Path) -> None:
    """With ``ema_decay`` every rank averages the same (all-reduced) weights: the model directory rank 0 saves, the
    average, is the one-process run's."""
    import deepsem

    training = {**TRAINING, "epochs": 2, "ema_decay": 0.9}
    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 3))
    mp.spawn(_rank, args=(_free_port(), str(data), str(tmp_path / "ddp"), training), nprocs=2, join=True)
    torch.set_num_threads(1)
    deepsem.train(data, tmp_path / "one", model=MODEL, training=training, progress=False)
    ddp, one = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("ddp", "one"))
    raw = load_file(str(tmp_path / "one" / "training" / "checkpoint" / "model.safetensors"))
    assert ddp.keys() == one.keys() and one.keys() <= raw.keys()
    for name, value in one.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-4, msg=name)
    assert any(not torch.allclose(one[name], raw[name], atol=1e-4) for name in one)  # the average, not the raw


def _dying_rank(rank: int, port: int, data: str, out: str) -> None:
    """Rank 1 dies in its second step; rank 0 writes what ended its run."""
    import traceback

    import deepsem
    from deepsem.losses import matching

    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    if rank == 1:
        forward, calls = matching.MatchingLoss.forward, [0]

        def dying(self: matching.MatchingLoss, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            calls[0] += 1
            if calls[0] == 2:
                os._exit(3)
            return forward(self, batch)

        matching.MatchingLoss.forward = dying  # type: ignore[method-assign]
    try:
        deepsem.train(data, out, model=MODEL, training=TRAINING, progress=False)
    except RuntimeError:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rank0-error.txt").write_text(traceback.format_exc(), encoding="utf-8")


def test_a_killed_rank_ends_the_run_with_a_clear_message(tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 3))
    context = mp.spawn(_dying_rank, args=(_free_port(), str(data), str(tmp_path / "run")), nprocs=2, join=False)
    for process in context.processes:  # not a hang: both end (the bound is far above the seconds it takes)
        process.join(120)
    assert [p.exitcode for p in context.processes] == [0, 3]
    message = (tmp_path / "run" / "rank0-error.txt").read_text(encoding="utf-8")
    assert "deepsem: rank 0 of 2 stopped: a collective failed" in message


def test_the_cli_flag_reaches_the_run(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from deepsem.cli import app

    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(32, 4))
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "m"), "--epochs", "1",
                                      "--embedding-dim", "8", "--hidden", "8", "--dim", "8", "--batch-size", "16",
                                      "--threads", "1", "--no-progress", "--no-gather-negatives"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["gather_negatives"] is False
