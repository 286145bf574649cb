"""The weight average (``TrainConfig.ema_decay``): checked against an average computed by hand from the raw run's
weights after every step, through evaluation, the saved model, and a kill and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from deepsem.config import TrainConfig
from deepsem.errors import ConfigError, ResumeMismatchError
from deepsem.trainer import Trainer, run_fingerprint

X = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
W_TRUE = torch.tensor([1.0, -2.0, 0.5, 3.0])
Y = X @ W_TRUE


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(Trainer, "plot", lambda self: None)


class Toy(nn.Module):
    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        # float running statistics and an integer step count: buffers
        self.norm = nn.BatchNorm1d(1) if norm else nn.Identity()


class ToyLoss(nn.Module):
    def __init__(self, model: Toy, noise: float) -> None:
        super().__init__()
        self.model, self.noise = model, noise

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = self.model.norm(self.model.linear(batch["x"])).squeeze(-1)
        return ((pred - batch["y"] - self.noise * batch["noise"]) ** 2).mean()


def make(run_dir: Path, *, ema: float | None, crash_at: int | None = None, noise: float = 0.1,
         lr: float = 0.05, epochs: int = 3, norm: bool = True, seed: int = 5,
         seen: list[dict[str, torch.Tensor]] | None = None,
         saved: list[dict[str, torch.Tensor]] | None = None) -> tuple[Trainer, Toy]:
    """A loss-module run of 8 steps an epoch with a dev evaluation every 4 steps. ``seen`` receives the weights
    ``evaluate`` sees, ``saved`` the weights ``on_best`` sees (the task would save them)."""
    torch.manual_seed(0)
    model = Toy(norm)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=lr, checkpoint_every=3, threads=1, patience=100, eval_every=4,
                      warmup=0.0, schedule="constant", ema_decay=ema)
    rng = np.random.default_rng(seed)
    calls = {"n": 0}

    def collate(rows: np.ndarray) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise KeyboardInterrupt  # stands for a kill
        return {"x": X[rows], "y": Y[rows], "noise": torch.from_numpy(rng.normal(size=len(rows)).astype(np.float32))}

    def evaluate() -> dict[str, float]:
        if seen is not None:
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"accuracy": float(len(seen or []))}  # always improves: on_best runs at every evaluation

    def on_best(metrics: dict[str, float]) -> None:
        if saved is not None:
            saved.append({k: v.clone() for k, v in model.state_dict().items()})

    trainer = Trainer(ToyLoss(model, noise), cfg, run_dir,
                      batches=lambda epoch, r: iter(np.array_split(r.permutation(64), 8)), steps_per_epoch=8,
                      collate=collate, progress=False, rngs={"noise": rng}, evaluate=evaluate, on_best=on_best)
    return trainer, model


def raw_trajectory(run_dir: Path, **kwargs) -> tuple[list[dict[str, torch.Tensor]], Toy]:
    """The raw weights after each optimiser step of a run without an average (read in the next step's collate)."""
    trainer, model = make(run_dir, ema=None, **kwargs)
    steps: list[dict[str, torch.Tensor]] = []
    collate = trainer.collate
    assert collate is not None

    def recording(rows):
        if trainer.state["global_step"] > 0:
            steps.append({k: v.clone() for k, v in model.state_dict().items()})
        return collate(rows)

    trainer.collate = recording
    trainer.fit()
    steps.append({k: v.clone() for k, v in model.state_dict().items()})
    return steps, model


def ema_by_hand(steps: list[dict[str, torch.Tensor]], decay: float) -> list[dict[str, torch.Tensor]]:
    """The average after each step: the first step's weights, then ``a = d a + (1 - d) w`` with the decay warmed up
    as ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates; integer buffers are the model's own."""
    out = [{k: v.double() if v.is_floating_point() else v for k, v in steps[0].items()}]
    for t, weights in enumerate(steps[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        out.append({k: d * out[-1][k] + (1 - d) * v.double() if v.is_floating_point() else v
                    for k, v in weights.items()})
    return out


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=1e-6) for k in a)


def test_evaluation_and_the_saved_model_see_the_average_computed_by_hand(tmp_path: Path):
    steps, raw_model = raw_trajectory(tmp_path / "raw")
    want = ema_by_hand(steps, 0.9)
    seen: list[dict[str, torch.Tensor]] = []
    saved: list[dict[str, torch.Tensor]] = []
    trainer, model = make(tmp_path / "ema", ema=0.9, seen=seen, saved=saved)
    trainer.fit()
    assert len(seen) == len(saved) == 6  # steps 4, 8, ..., 24
    for i, (s, o) in enumerate(zip(seen, saved, strict=True)):
        assert close(s, want[4 * (i + 1) - 1]), i
        assert close(o, want[4 * (i + 1) - 1]), i
    assert not close(seen[-1], steps[-1])  # the average is not the raw weights
    # training went on from the raw weights: the model ends as the run without an average ends
    assert close(model.state_dict(), raw_model.state_dict())
    # the checkpoint holds the raw weights and the average
    ckpt = tmp_path / "ema" / "checkpoint"
    assert close(load_file(str(ckpt / "model.safetensors")), steps[-1])
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    assert int(tensors["ema.n_averaged"]) == 24
    assert close({k[len("ema.module."):]: v for k, v in tensors.items() if k.startswith("ema.module.")}, want[-1])


def test_a_killed_run_resumes_the_same_average(tmp_path: Path):
    full_seen: list[dict[str, torch.Tensor]] = []
    full, _ = make(tmp_path / "full", ema=0.95, seen=full_seen)
    full.fit()
    for crash in (7, 14):
        run = tmp_path / f"cut{crash}"
        cut, _ = make(run, ema=0.95, crash_at=crash)
        with pytest.raises(KeyboardInterrupt):
            cut.fit()
        seen: list[dict[str, torch.Tensor]] = []
        again, _ = make(run, ema=0.95, seen=seen)
        assert again.fit().steps == 24 and again.resumed_from is not None
        assert close(seen[-1], full_seen[-1]), crash  # the last evaluation saw the same average


def test_a_checkpoint_of_a_run_without_the_average_is_not_resumed_with_one(tmp_path: Path):
    """The decay is part of the run's settings (its fingerprint): switching the average on, or changing its decay,
    is a new run, refused naming the setting; runs without it keep the fingerprint they had."""
    assert "ema_decay" not in TrainConfig().to_dict()
    assert run_fingerprint(TrainConfig(ema_decay=0.99)) != run_fingerprint(TrainConfig())
    for before, after in ((None, 0.9), (0.9, 0.99)):
        run = tmp_path / str(before)
        cut, _ = make(run, ema=before, crash_at=7)
        with pytest.raises(KeyboardInterrupt):
            cut.fit()
        again, _ = make(run, ema=after)
        with pytest.raises(ResumeMismatchError, match="ema_decay"):
            again.fit()


def test_the_average_lands_nearer_the_optimum_under_noisy_steps(tmp_path: Path):
    """What the average is for: with noisy labels and a constant, large learning rate the raw weights keep jumping
    around the optimum; their average sits nearer it. Over 8 runs (one ends by chance near the optimum), the
    average's squared error is under 0.7 of the raw weights' (measured: 0.45)."""
    raw = average = 0.0
    for seed in range(8):
        trainer, model = make(tmp_path / str(seed), ema=0.95, noise=2.0, lr=0.2, epochs=12, norm=False, seed=seed)
        trainer.fit()
        assert trainer.ema is not None
        raw += float((model.linear.weight.detach().squeeze() - W_TRUE).norm() ** 2)
        average += float((trainer.ema.module.linear.weight.detach().squeeze() - W_TRUE).norm() ** 2)
    assert average < 0.7 * raw, (average, raw)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_a_decay_outside_zero_to_one_is_refused(decay: float):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": decay}, "training")
