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
