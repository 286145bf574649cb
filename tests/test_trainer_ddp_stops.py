"""Distributed runs decide together: the time budget, early stopping and the learning rate's time fraction are agreed
by every rank (no rank waits for a collective the others left), a batch with fewer rows than ranks is refused or
dropped alike on every rank, and a run resumes from its checkpoint with another number of processes.

Two gloo ranks run every scenario in one spawn (the imports are paid once: each scenario takes a few seconds), with
a short process-group timeout, so a rank left waiting fails the test in seconds instead of hanging it."""

from __future__ import annotations

import json
import os
import random
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_pairs, write_tsv
from safetensors.torch import load_file, save_model
from typer.testing import CliRunner

import deepsem
from deepsem.errors import ConfigError

MODEL = {"tower": {"embedding_dim": 16, "hidden_size": 12, "output_dim": 16, "dropout": 0.0,
                   "embedding_dropout": 0.0}}
#: in-batch negatives only: nothing is sampled, so a rank's reseeded generator cannot change what is trained
TRAINING = {"epochs": 3, "batch_size": 16, "lr": 1e-2, "loss": "softmax", "negatives": "in-batch", "threads": 1,
            "checkpoint_every": 1000, "time_schedule": False}
JUMP_AT = 5  # the forward pass after which a clock jumps past the budget: the run stops after step 5
STEPS = 12  # 64 pairs in batches of 16, 3 epochs


def _free_port(_rng: random.Random = random.Random()) -> int:
    """A free port below Linux's ephemeral range (32768-60999): the ports are all chosen before the scenarios run,
    and a port the OS hands out (port 0) may meanwhile become the local end of an earlier scenario's connection,
    leaving a later rank 0 unable to start its store while rank 1 waits on it."""
    while True:
        port = _rng.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@contextmanager
def _clock_jumps_after(forwards: int) -> Iterator[list[int]]:
    """This process's training clock jumps a million seconds ahead once ``forwards`` forward passes ran (a
    budget of 60 minutes is then spent by this clock alone). Yields the forward count."""
    from deepsem import trainer
    from deepsem.losses import matching

    calls = [0]
    forward = matching.MatchingLoss.forward

    def counting(self: matching.MatchingLoss, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls[0] += 1
        return forward(self, batch)

    real = trainer.clock
    with mock.patch.object(matching.MatchingLoss, "forward", counting), \
            mock.patch.object(trainer, "clock", lambda: real() + (1e6 if calls[0] >= forwards else 0.0)):
        yield calls


def _final_weights(model: Any, path: Path) -> None:
    save_model(model.model, str(path))


# -- the scenarios, run by each of two ranks ---------------------------------------------------------------------
def _clocks_disagree(rank: int, root: Path) -> dict[str, Any]:
    """Only rank 1's clock passes the budget, after step 5."""
    from deepsem import trainer

    norms: list[float] = []
    clip = trainer.clip_gradients

    def recording(*args: Any, **kwargs: Any) -> float:
        norms.append(clip(*args, **kwargs))
        return norms[-1]

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(trainer, "clip_gradients", recording))
        if rank == 1:
            stack.enter_context(_clock_jumps_after(JUMP_AT))
        model, result = deepsem.train(root / "pairs.tsv", root / "clocks", model=MODEL,
                                      training={**TRAINING, "max_minutes": 60.0, "time_schedule": True},
                                      progress=False)
    _final_weights(model, root / "clocks" / f"final-rank{rank}.safetensors")
    return {"steps": result.steps, "stopped": result.stopped, "norms": norms}


def _verdicts_disagree(rank: int, root: Path) -> dict[str, Any]:
    """Rank 0's dev metric falls after the first evaluation (patience 2: stop at the third, step 6); rank 1's own
    evaluation, were it asked, would rise for ever."""
    from deepsem.tasks import matching

    metrics = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1]) if rank == 0 else iter(np.linspace(0.1, 0.9, 6))
    asked = [0]

    def evaluate(*args: Any, **kwargs: Any) -> dict[str, float]:
        asked[0] += 1
        return {"accuracy": float(next(metrics))}

    with mock.patch.object(matching, "evaluate_pairs", evaluate):
        _, result = deepsem.train(root / "pairs.tsv", root / "early", root / "dev.tsv", model=MODEL,
                                  training={**TRAINING, "eval_every": 2, "patience": 2}, progress=False)
    return {"steps": result.steps, "stopped": result.stopped, "asked": asked[0],
            "dev": [r["dev_accuracy"] for r in result.history], "best_step": result.best_step}


def _short_batch(rank: int, root: Path) -> dict[str, Any]:
    """33 pairs in batches of 16: each epoch holds one batch of a single pair, fewer rows than ranks."""
    model, result = deepsem.train(root / "pairs33.tsv", root / "short", model=MODEL,
                                  training={**TRAINING, "epochs": 2}, progress=False)
    _final_weights(model, root / "short" / f"final-rank{rank}.safetensors")
    return {"steps": result.steps, "stopped": result.stopped}


def _two_ranks_then_one(rank: int, root: Path) -> dict[str, Any]:
    """The first part of a run that one process finishes: stopped by rank 1's clock after step 5."""
    with ExitStack() as stack:
        if rank == 1:
            stack.enter_context(_clock_jumps_after(JUMP_AT))
        _, result = deepsem.train(root / "pairs.tsv", root / "two-then-one", model=MODEL,
                                  training={**TRAINING, "max_minutes": 60.0}, progress=False)
    return {"steps": result.steps, "stopped": result.stopped}


def _apart(rank: int, root: Path) -> dict[str, Any]:
    """Rank 0 finds the checkpoint of the run one process started (see the fixture); rank 1, as on a node that
    does not share the run directory, finds none (it is told not to resume)."""
    try:
        deepsem.train(root / "pairs.tsv", root / "one-then-two", model=MODEL, training=TRAINING, progress=False,
                      resume=rank == 0)
    except ConfigError as error:
        return {"refused": str(error)}
    return {"refused": None}


def _one_then_two_ranks(rank: int, root: Path) -> dict[str, Any]:
    """The rest of a run one process started (see the fixture): resumed by two ranks."""
    _, result = deepsem.train(root / "pairs.tsv", root / "one-then-two", model=MODEL, training=TRAINING,
                              progress=False)
    return {"steps": result.steps, "stopped": result.stopped}


def _step_function(rank: int, root: Path) -> dict[str, Any]:
    """The older Trainer form (a step function computing the loss) under a process group of two."""
    from deepsem.config import TrainConfig
    from deepsem.trainer import PROCESS_GROUP_TIMEOUT, Trainer

    # the scenarios' timeout (set in _ranks), not torch's 30-minute default: a rank left waiting fails the test soon
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        model = torch.nn.Linear(2, 1)
        Trainer(model, TrainConfig(batch_size=4), root / "step", step=lambda batch: model(batch).sum(),
                batches=lambda epoch, rng: iter([]), steps_per_epoch=1)
    except ValueError as error:
        return {"refused": str(error)}
    finally:
        torch.distributed.destroy_process_group()
    return {"refused": None}


SCENARIOS: dict[str, Callable[[int, Path], dict[str, Any]]] = {
    "clocks": _clocks_disagree, "early": _verdicts_disagree, "short": _short_batch,
    "two-then-one": _two_ranks_then_one, "apart": _apart, "one-then-two": _one_then_two_ranks,
    "step-function": _step_function,
}


def _ranks(rank: int, ports: list[int], root: str) -> None:
    """One process of a two-process launch (torchrun's environment), running every scenario in turn; each writes
    what it saw, or its traceback, to ``root/<scenario>-rank<r>.json``."""
    from deepsem import trainer

    torch.set_num_threads(1)
    trainer.PROCESS_GROUP_TIMEOUT = timedelta(seconds=30)  # a rank left waiting fails in seconds, not ten minutes
    for port, (name, scenario) in zip(ports, SCENARIOS.items(), strict=True):
        os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        try:
            seen = scenario(rank, Path(root))
        except Exception:  # reported to the test, which fails on it
            seen = {"error": traceback.format_exc()}
        Path(root, f"{name}-rank{rank}.json").write_text(json.dumps(seen), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every scenario's files: the two-rank parts in one spawn, the one-process parts here around it."""
    root = tmp_path_factory.mktemp("ddp-stops")
    write_tsv(root / "pairs.tsv", make_pairs(64, 3))
    write_tsv(root / "dev.tsv", make_pairs(32, 4))
    write_tsv(root / "pairs33.tsv", make_pairs(33, 5))
    torch.set_num_threads(1)
    deepsem.train(root / "pairs.tsv", root / "unbroken", model=MODEL, training=TRAINING, progress=False)
    with _clock_jumps_after(JUMP_AT):  # one process for 5 steps; two ranks go on from its checkpoint
        deepsem.train(root / "pairs.tsv", root / "one-then-two", model=MODEL,
                      training={**TRAINING, "max_minutes": 60.0}, progress=False)
    context = mp.spawn(_ranks, args=([_free_port() for _ in SCENARIOS], str(root)), nprocs=2, join=False)
    for process in context.processes:  # not a hang: both end (far above the seconds it takes)
        process.join(300)
    assert [p.exitcode for p in context.processes] == [0, 0]
    deepsem.train(root / "pairs.tsv", root / "two-then-one", model=MODEL, training=TRAINING, progress=False)
    return root


def _seen(root: Path, name: str) -> list[dict[str, Any]]:
    seen = [json.loads((root / f"{name}-rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for rank, doc in enumerate(seen):
        assert "error" not in doc, f"rank {rank}: {doc['error']}"
    return seen


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "training" / "checkpoint" / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tolerance: float) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=tolerance, atol=tolerance, msg=name)


def test_a_time_budget_passed_on_one_rank_stops_every_rank_at_the_same_step(runs: Path) -> None:
    seen = _seen(runs, "clocks")
    assert [s["stopped"] for s in seen] == ["time-limit", "time-limit"]
    assert [s["steps"] for s in seen] == [JUMP_AT, JUMP_AT]
    assert json.loads((runs / "clocks" / "training" / "result.json").read_text())["steps"] == JUMP_AT
    # DDP hands both ranks the same averaged gradients: the same norms, so the divergence check agrees too
    assert len(seen[0]["norms"]) == JUMP_AT and seen[0]["norms"] == seen[1]["norms"]
    # rank 1's clock is a million seconds ahead, yet it set rank 0's learning rate (the schedule follows the time
    # budget): both ranks hold the same weights, bit for bit
    _assert_same_weights(load_file(str(runs / "clocks" / "final-rank0.safetensors")),
                         load_file(str(runs / "clocks" / "final-rank1.safetensors")), 0.0)


def test_rank_0s_dev_metrics_decide_early_stopping_for_every_rank(runs: Path) -> None:
    seen = _seen(runs, "early")
    assert [s["stopped"] for s in seen] == ["early-stopping", "early-stopping"]
    assert [s["steps"] for s in seen] == [6, 6] and [s["best_step"] for s in seen] == [2, 2]
    assert seen[0]["dev"] == seen[1]["dev"] == [0.9, 0.5, 0.4]
    assert [s["asked"] for s in seen] == [3, 0]  # rank 0 evaluates for both


def test_a_batch_with_fewer_rows_than_ranks_is_dropped_keeping_its_place(runs: Path) -> None:
    seen = _seen(runs, "short")
    # 3 batches an epoch (16, 16 and 1 pairs): 3 steps each, the 1-pair one training nothing
    assert [s["steps"] for s in seen] == [6, 6] and [s["stopped"] for s in seen] == ["finished", "finished"]
    run = runs / "short" / "training"
    adam = load_file(str(run / "checkpoint" / "optimizer.safetensors"))
    assert {float(v) for k, v in adam.items() if k.endswith(".step")} == {4.0}  # optimiser steps: 2 an epoch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6] and all(np.isfinite(r["train_loss"]) for r in records)
    _assert_same_weights(_checkpoint(runs / "short"), load_file(str(runs / "short" / "final-rank1.safetensors")),
                         0.0)


# 12 AdamW steps of lr 1e-2, 5 or 7 of them split over two ranks: float32 sums in another order differ by ~1e-7,
# which Adam's normalisation turns into up to ~3e-5 on weights whose gradients are near 0 (see test_trainer_ddp)
RESUME_TOLERANCE = 1e-4


@pytest.mark.parametrize("run", ["two-then-one", "one-then-two"])
def test_a_run_resumes_with_another_number_of_processes(runs: Path, run: str) -> None:
    seen = _seen(runs, run)
    if run == "two-then-one":  # two ranks stopped after step 5 (their checkpoint), then one process went on
        assert [s["steps"] for s in seen] == [JUMP_AT, JUMP_AT]
    else:  # one process stopped after step 5, then two ranks went on to the end
        assert [s["steps"] for s in seen] == [STEPS, STEPS] and [s["stopped"] for s in seen] == ["finished"] * 2
    result = json.loads((runs / run / "training" / "result.json").read_text())
    assert result["steps"] == STEPS and result["stopped"] == "finished"
    # resumed, not started over (which would discard metrics.jsonl): the first part's records, then the second's
    records = [json.loads(line) for line in (runs / run / "training" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, JUMP_AT, 8, 12]
    unbroken = _checkpoint(runs / "unbroken")
    _assert_same_weights(unbroken, _checkpoint(runs / run), RESUME_TOLERANCE)
    # not a tolerance that anything meets: the 7 steps after step 5 moved the weights by far more
    at_5 = load_file(str(runs / "clocks" / "final-rank0.safetensors"))
    assert max(float((value - at_5[name]).abs().max()) for name, value in unbroken.items()) > 100 * RESUME_TOLERANCE


def test_ranks_that_would_start_at_different_steps_are_refused_on_every_rank(runs: Path) -> None:
    seen = _seen(runs, "apart")
    for doc in seen:
        assert doc["refused"] is not None and "rank 0: step 5, rank 1: step 0" in doc["refused"]
        assert "every node reads" in doc["refused"]


def test_a_step_function_is_refused_under_a_process_group(runs: Path) -> None:
    """Nothing would average its gradients across the ranks (only the loss module is wrapped in DDP)."""
    for doc in _seen(runs, "step-function"):
        assert doc["refused"] is not None and "gradients are not averaged" in doc["refused"]


# -- a batch size below the number of processes ------------------------------------------------------------------
def _missing(tmp_path: Path) -> Path:
    return tmp_path / "never-read.tsv"


@pytest.mark.parametrize("task", ["train", "train_classifier", "train_recommender"])
def test_a_batch_smaller_than_the_world_is_refused_before_any_data_is_read(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path, task: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    function = getattr(deepsem, task)
    with pytest.raises(ConfigError, match=r"batch size 3 .* smaller than the 4 processes .*WORLD_SIZE=4"):
        function(_missing(tmp_path), tmp_path / "out", training={"batch_size": 3})
    assert not (tmp_path / "out").exists()


def test_the_cli_names_both_numbers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deepsem.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    data = tmp_path / "pairs.tsv"
    data.write_bytes(b"\xff\xfe not a pairs file\n")  # read first, it would fail as bad data instead
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "m"), "--batch-size", "1"])
    assert result.exit_code == 2, result.output
    assert "batch size 1 (--batch-size, the global batch) is smaller than the 2 processes" in result.output
    assert not (tmp_path / "m").exists()


def test_a_batch_as_large_as_the_world_is_accepted() -> None:
    from deepsem.config import TrainConfig
    from deepsem.trainer import check_world_size

    check_world_size(TrainConfig(batch_size=2), 2)
    check_world_size(TrainConfig(batch_size=1), 1)
    with pytest.raises(ConfigError, match="batch size 1 "):
        check_world_size(TrainConfig(batch_size=1), 2)
