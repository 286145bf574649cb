"""The training loop itself, on a toy regression: checkpoints (one unit, no pickle, RNG inside), resume,
fingerprints, early stopping, the time budget, NaN/Inf and the progress bar."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from deepsem.config import TrainConfig
from deepsem.errors import ModelFileError, ResumeMismatchError, TrainingDivergedError
from deepsem.trainer import Trainer, find_checkpoint, read_checkpoint

X = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(Trainer, "plot", lambda self: None)  # matplotlib costs a second a run; not tested here


class Toy(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 1)
        self.dropout = nn.Dropout(0.2)


def make_trainer(run_dir: Path, *, width: int = 4, nan_at: int | None = None, crash_at: int | None = None,
                 metrics: list[float] | None = None, **overrides) -> tuple[Trainer, Toy]:
    """A Trainer whose step draws a random noise term from a checkpointed numpy generator and uses dropout
    (torch RNG), so a resume that lost either RNG ends with other weights."""
    torch.manual_seed(0)
    model = Toy(width)
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 8, "lr": 0.05, "checkpoint_every": 3, "threads": 1,
                         "patience": 100, **overrides})
    rng = np.random.default_rng(5)
    calls = {"n": 0}

    def step(rows: np.ndarray) -> torch.Tensor:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise KeyboardInterrupt  # stands for a kill (the fault-injection tests SIGKILL real processes)
        noise = torch.from_numpy(rng.normal(size=len(rows)).astype(np.float32))
        pred = model.linear(model.dropout(X[rows, :width])).squeeze(-1)
        loss = ((pred - Y[rows] - 0.1 * noise) ** 2).mean()
        if nan_at is not None and calls["n"] >= nan_at:
            loss = loss * float("nan")
        return loss

    evals = iter(metrics or [])
    trainer = Trainer(model, cfg, run_dir, step=step,
                      batches=lambda epoch, r: iter(np.array_split(r.permutation(64), 8)), steps_per_epoch=8,
                      evaluate=(lambda: {"accuracy": next(evals)}) if metrics else None, progress=False,
                      rngs={"noise": rng})
    return trainer, model


def test_a_run_interrupted_anywhere_resumes_to_the_same_weights(tmp_path: Path):
    full, model = make_trainer(tmp_path / "full")
    full.fit()
    for crash in (2, 11, 20):
        run = tmp_path / f"cut{crash}"
        cut, _ = make_trainer(run, crash_at=crash)
        with pytest.raises(KeyboardInterrupt):
            cut.fit()
        again, resumed = make_trainer(run)
        result = again.fit()
        last = max((s for s in range(1, crash) if s % 3 == 0 or s % 8 == 0), default=None)  # checkpoint steps
        assert result.steps == 24 and again.resumed_from == last
        for name, value in model.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[name]), (crash, name)


def test_checkpoint_holds_no_pickle_and_restores_the_optimizer(tmp_path: Path):
    trainer, _ = make_trainer(tmp_path)
    trainer.fit()
    ckpt = tmp_path / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                       "trainer_state.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("checkpoint.")]  # no leftovers
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    assert tensors["torch_rng"].dtype == torch.uint8
    doc = json.loads((ckpt / "trainer_state.json").read_text())
    assert doc["global_step"] == 24 and doc["numpy_rngs"]["noise"]["bit_generator"] == "PCG64"
    restored, _ = make_trainer(tmp_path)
    assert restored.load_checkpoint()
    want, got = trainer.optimizer.state_dict(), restored.optimizer.state_dict()
    assert want["param_groups"] == [{**g, "betas": tuple(g["betas"])} for g in got["param_groups"]]
    for index, values in want["state"].items():
        for key, value in values.items():
            assert torch.equal(value, got["state"][index][key])


def test_other_settings_or_shapes_are_not_resumed(tmp_path: Path):
    make_trainer(tmp_path)[0].fit()
    with pytest.raises(ResumeMismatchError, match=r"training\.lr 0\.05 -> 0\.1.*--no-resume.*--out"):
        make_trainer(tmp_path, lr=0.1)[0].fit()
    with pytest.raises(ResumeMismatchError, match=r"linear\.weight \[1, 4\] -> \[1, 3\].*--no-resume"):
        make_trainer(tmp_path, width=3)[0].fit()
    # settings that only bound the run may change
    assert make_trainer(tmp_path, max_minutes=60.0, checkpoint_every=5)[0].fit().steps == 24
    # resume=False starts over: the old checkpoint is not read
    trainer, _ = make_trainer(tmp_path, lr=0.1)
    assert trainer.fit(resume=False).steps == 24 and trainer.resumed_from is None


def test_an_old_format_checkpoint_is_refused_clearly(tmp_path: Path):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 10, "epoch": 1, "step_in_epoch": 2}))
    (ckpt / "optimizer.pt").write_bytes(b"\x80\x04not read")
    with pytest.raises(ResumeMismatchError, match=r"earlier deepsem.*--no-resume"):
        make_trainer(tmp_path)[0].fit()
    assert make_trainer(tmp_path)[0].fit(resume=False).steps == 24
    assert not (tmp_path / "checkpoint" / "optimizer.pt").exists()


def test_a_damaged_checkpoint_is_never_read(tmp_path: Path):
    make_trainer(tmp_path, epochs=1)[0].fit()
    good = tmp_path / "checkpoint"
    shutil.copytree(good, tmp_path / "checkpoint.old-keep")  # as a kill between the two renames leaves it
    data = bytearray((good / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (good / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        read_checkpoint(good)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old-keep"
    shutil.rmtree(tmp_path / "checkpoint.old-keep")
    half = tmp_path / "checkpoint.tmp-half"  # half-written: no trainer_state.json yet
    half.mkdir()
    shutil.copy(good / "model.safetensors", half)
    with pytest.raises(ModelFileError, match=r"damaged.*--no-resume"):
        find_checkpoint(tmp_path)
    with pytest.raises(ModelFileError):
        make_trainer(tmp_path, epochs=1)[0].fit()


def test_early_stopping_and_the_time_budget(tmp_path: Path):
    trainer, _ = make_trainer(tmp_path / "a", eval_every=2, patience=2, metrics=[0.5, 0.7, 0.6, 0.65, 0.9])
    result = trainer.fit()
    assert result.stopped == "early-stopping" and result.steps == 8
    assert result.best_metric == 0.7 and result.best_step == 4
    trainer, _ = make_trainer(tmp_path / "b", max_minutes=1e-12)
    result = trainer.fit()
    assert result.stopped == "time-limit" and result.steps == 1


def test_nan_stops_before_the_optimizer_step_and_says_where(tmp_path: Path):
    trainer, model = make_trainer(tmp_path, nan_at=8)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 8: the loss became nan; the checkpoint "
                                                    r"\(step 6\) holds finite weights.*--lr.*--clip-norm"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    # run again: it resumes from the checkpoint at step 6 into the same NaN, and says so
    again, _ = make_trainer(tmp_path, nan_at=1)
    with pytest.raises(TrainingDivergedError, match=r"resumed from the checkpoint at step 6 and diverged again at "
                                                    r"step 7.*--no-resume"):
        again.fit()


def test_infinite_gradients_stop_training(tmp_path: Path):
    torch.manual_seed(0)
    model = Toy()

    def step(rows: np.ndarray) -> torch.Tensor:  # finite loss (0), infinite gradient (d sqrt(x) at 0)
        return torch.sqrt(model.linear.weight.sum() * 0).sum()

    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=8), tmp_path, step=step,
                      batches=lambda e, r: iter([np.arange(8)]), steps_per_epoch=1, progress=False)
    with pytest.raises(TrainingDivergedError, match="step 1: the gradient norm became"):
        trainer.fit()


def test_progress_bar_only_on_a_terminal(tmp_path: Path, capsys, monkeypatch):
    def run(name: str, progress: bool | None) -> str:
        trainer, _ = make_trainer(tmp_path / name, epochs=1)
        trainer.progress = progress
        trainer.fit()
        return capsys.readouterr().err

    assert run("auto", None) == ""  # stderr is not a terminal here
    assert "8/8" in run("forced", True)
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert "8/8" in run("tty", None)


@pytest.mark.parametrize(("key", "value"), [("epoch", "one"), ("global_step", -5), ("seconds", float("inf")),
                                            ("best_step", True), ("history", {})])
def test_a_crafted_loop_state_is_refused_naming_the_field(tmp_path: Path, key: str, value: object):
    """trainer_state.json carries the checksums of the other files, not its own: its fields are checked by type."""
    from deepsem.errors import ModelFileError
    from deepsem.trainer import CHECKPOINT_FORMAT, read_checkpoint

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    state = {"format": CHECKPOINT_FORMAT, "global_step": 3, "epoch": 0, "step_in_epoch": 3,
             "bad_evals": 0, "seconds": 1.5, "best": None, "best_step": None, "history": [], key: value}
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ModelFileError, match=f"field '{key}'"):
        read_checkpoint(folder)


# -- the trainer with a loss module: collate, device, rank ---------------------------------------------------
REAL_PLOT = Trainer.plot  # taken before the autouse fixture stubs it out


class ToyLoss(nn.Module):
    """A regression objective that owns its model, as the task losses do; dropout draws torch RNG."""

    def __init__(self, model: Toy) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = self.model.linear(self.model.dropout(batch["x"])).squeeze(-1)
        return ((pred - batch["y"] - 0.1 * batch["noise"]) ** 2).mean()


def make_loss_trainer(run_dir: Path, *, device: str | None = None, dropout: float = 0.2, crash_at: int | None = None,
                      metrics: list[float] | None = None, **kwargs) -> tuple[Trainer, Toy]:
    """The :func:`make_trainer` run in the new form: a loss module, a collate that draws from a checkpointed
    numpy generator, batches of row numbers."""
    torch.manual_seed(0)
    model = Toy()
    model.dropout.p = dropout
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, checkpoint_every=3, threads=1, patience=100,
                      eval_every=kwargs.pop("eval_every", None), max_minutes=kwargs.pop("max_minutes", None))
    rng = np.random.default_rng(5)
    calls = {"n": 0}

    def collate(rows: np.ndarray) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise KeyboardInterrupt
        return {"x": X[rows], "y": Y[rows], "noise": torch.from_numpy(rng.normal(size=len(rows)).astype(np.float32))}

    evals = iter(metrics or [])
    trainer = Trainer(ToyLoss(model), cfg, run_dir, batches=lambda epoch, r: iter(np.array_split(r.permutation(64), 8)),
                      steps_per_epoch=8, collate=collate, progress=False, rngs={"noise": rng}, device=device,
                      evaluate=(lambda: {"accuracy": next(evals)}) if metrics else None, **kwargs)
    return trainer, model


def test_a_loss_module_trains_what_the_step_function_trained(tmp_path: Path):
    """The same run written as ``step(batch)`` and as a loss module with a collate ends with the same weights."""
    old, old_model = make_trainer(tmp_path / "step")
    old.fit()
    new, new_model = make_loss_trainer(tmp_path / "loss", device="cpu")
    assert new.device == torch.device("cpu") and new.model is new_model
    new.fit()
    for name, value in old_model.state_dict().items():
        assert torch.equal(value, new_model.state_dict()[name]), name
    # the checkpoint holds the model under its own names (as before losses owned models)
    assert set(load_file(str(tmp_path / "loss" / "checkpoint" / "model.safetensors"))) == {"linear.weight",
                                                                                          "linear.bias"}


def test_a_loss_module_run_interrupted_resumes_to_the_same_weights(tmp_path: Path):
    full, model = make_loss_trainer(tmp_path / "full")
    full.fit()
    cut, _ = make_loss_trainer(tmp_path / "cut", crash_at=11)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    again, resumed = make_loss_trainer(tmp_path / "cut")
    assert again.fit().steps == 24 and again.resumed_from == 9
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_loss_module_run_stops_early_and_on_the_time_budget(tmp_path: Path):
    trainer, _ = make_loss_trainer(tmp_path / "a", eval_every=2, metrics=[0.5, 0.7, 0.6, 0.65, 0.9])
    trainer.config.patience = 2
    result = trainer.fit()
    assert (result.stopped, result.steps, result.best_metric, result.best_step) == ("early-stopping", 8, 0.7, 4)
    trainer, _ = make_loss_trainer(tmp_path / "b", max_minutes=1e-12)
    result = trainer.fit()
    assert result.stopped == "time-limit" and result.steps == 1


def test_only_rank_0_writes(tmp_path: Path):
    """A rank other than 0 trains, evaluates and stops like rank 0, and writes nothing: no checkpoint, metrics,
    plot or model directory (``on_best``)."""
    saved: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    results = {}
    for rank in (1, 0):
        run = tmp_path / f"rank{rank}"
        trainer, _ = make_loss_trainer(run, metrics=[0.5, 0.7, 0.6], eval_every=8, rank=rank, world_size=2,
                                       on_best=saved[rank].append)
        trainer.plot = REAL_PLOT.__get__(trainer)  # the real plot: rank 0 writes training.png
        results[rank] = trainer.fit()
    assert not (tmp_path / "rank1").exists() and saved[1] == []
    assert {p.name for p in (tmp_path / "rank0").iterdir()} == {"checkpoint", "metrics.jsonl", "training.png"}
    assert saved[0] == [{"accuracy": 0.5}, {"accuracy": 0.7}]
    def untimed(result):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]

    assert untimed(results[0]) == untimed(results[1]) and len(results[1].history) == 3
    assert (results[1].best_metric, results[1].steps) == (0.7, 24)
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        make_loss_trainer(tmp_path / "bad", rank=2, world_size=2)


def test_under_a_process_group_the_loss_is_wrapped_in_ddp_and_trains_the_same(tmp_path: Path):
    import torch.distributed as dist

    plain, plain_model = make_loss_trainer(tmp_path / "plain")
    plain.fit()
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'store'}")
    try:
        wrapped, model = make_loss_trainer(tmp_path / "ddp")
        assert isinstance(wrapped.forward, nn.parallel.DistributedDataParallel)
        assert (wrapped.rank, wrapped.world_size) == (0, 1)
        wrapped.fit()
    finally:
        dist.destroy_process_group()
    for name, value in plain_model.state_dict().items():
        assert torch.allclose(value, model.state_dict()[name], atol=1e-6), name


@pytest.mark.gpu
def test_training_on_cuda_gives_what_the_cpu_gives(tmp_path: Path):
    """Without dropout (CUDA draws other random numbers) a run on the GPU ends where the CPU run ends; its
    checkpoint resumes and the model is back on the device after each evaluation."""
    cpu, cpu_model = make_loss_trainer(tmp_path / "cpu", dropout=0.0, metrics=[0.5, 0.6, 0.7])
    cpu.fit()
    gpu, gpu_model = make_loss_trainer(tmp_path / "gpu", device="cuda", dropout=0.0, metrics=[0.5, 0.6, 0.7])
    result = gpu.fit()
    assert result.steps == 24 and next(gpu_model.parameters()).device.type == "cuda"
    for name, value in cpu_model.state_dict().items():
        assert torch.allclose(value, gpu_model.state_dict()[name].cpu(), atol=1e-4), name
    again, _ = make_loss_trainer(tmp_path / "gpu", device="cuda", dropout=0.0)
    assert again.load_checkpoint() and again.state["global_step"] == 24


def test_max_steps_stops_the_run_and_the_schedule_decays_over_it(tmp_path: Path):
    """A step budget is the run's length: it stops at that step, with the linear schedule at its end (as in a run of
    that many steps), not part way down the schedule of all the epochs."""
    trainer, _ = make_trainer(tmp_path / "budget", epochs=5, max_steps=4, warmup=0.0)
    result = trainer.fit()
    assert (result.steps, result.stopped, trainer.total_steps) == (4, "max-steps", 4)
    last_lr = trainer.optimizer.param_groups[0]["lr"]  # set for the 4th step: 1/4 of the way above zero
    assert last_lr == pytest.approx(0.05 * 1 / 4)
    full, _ = make_trainer(tmp_path / "epochs", epochs=5, warmup=0.0)
    assert full.total_steps == 40
