"""One training loop for every task: AdamW, warm-up + decay, clipping, early stopping, checkpoints, resume.

The loop knows nothing about towers or losses: a task hands it ``step(batch) -> loss``, the batches of
an epoch, and an ``evaluate() -> metrics`` callback. The run directory receives:

- ``checkpoint/`` — model weights (safetensors), optimiser and RNG state, and the loop position, written
  atomically every ``checkpoint_every`` steps and at each evaluation; a killed run resumes from it;
- ``metrics.jsonl`` — one JSON object per evaluation (and per epoch);
- ``training.png`` — training loss and the dev metric per epoch.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from deepsem.config import TrainConfig
from deepsem.fileio import atomic_write, atomic_write_json


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: float, schedule: str, time_fraction: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``.

    ``time_fraction`` (elapsed / time budget) moves the decay along when the budget, not the step count,
    will end training: progress is the larger of the step and the time fractions.
    """
    warm = int(total * warmup)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max((step - warm) / max(1, total - warm), time_fraction))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


@dataclass
class TrainResult:
    best_metric: float | None
    best_step: int | None
    steps: int
    epochs_run: float
    seconds: float
    stopped: str  # "finished", "early-stopping", "time-limit"
    history: list[dict[str, Any]] = field(default_factory=list)


def clip_gradients(
    parameters: Iterable[torch.Tensor], clip_norm: float | None = None, clip_value: float | None = None
) -> float:
    """Clip gradients in place: first each element to ``[-clip_value, clip_value]``, then the global L2
    norm to ``clip_norm``. Returns the global norm before clipping (``inf``/``nan`` if it overflowed).

    Clipping by value bounds every coordinate and so changes the gradient's direction; clipping by norm
    rescales the whole gradient and keeps its direction (Pascanu et al. 2013), which is why it is the default.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if clip_value is not None:
        for g in grads:
            g.clamp_(-clip_value, clip_value)
    if clip_norm is not None:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = (clip_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale)
    return norm


def finish_run(result: TrainResult, info: dict[str, Any], out: Path, run_dir: Path, metric: str, started: float,
               load_best: Callable[[Path], Any]) -> Any:
    """After :meth:`Trainer.fit`: reload the best model saved in ``out`` (``load_best(out)``), add how training
    went to its ``info`` and save it again; write ``run_dir/result.json`` (best dev metric and step, steps, seconds, why
    training stopped). Returns the best model."""
    info["train_seconds"] = round(result.seconds, 1)
    info["stopped"] = result.stopped
    best = load_best(out)
    best.info.update(info)
    best.save(out)
    atomic_write_json(run_dir / "result.json", {
        "best_metric": result.best_metric, "metric": metric, "best_step": result.best_step, "steps": result.steps,
        "seconds": result.seconds, "total_seconds": time.perf_counter() - started, "stopped": result.stopped})
    return best


class Trainer:
    """Runs ``step`` over ``batches`` for ``config.epochs`` epochs.

    Parameters
    ----------
    model: the module whose parameters are trained and checkpointed.
    step: computes the loss of one batch (the trainer calls backward and the optimiser).
    batches: ``batches(epoch, rng)`` yields the batches of an epoch; it must depend only on ``rng``
        so that a resumed run replays the same order.
    steps_per_epoch: number of batches ``batches`` yields.
    evaluate: optional callback returning dev metrics; ``metric`` names the one to maximise.
    on_best: called with the metrics whenever the dev metric improves (e.g. save the model directory).
    batch_size_of: number of examples in a batch, for the examples/s display.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        run_dir: str | Path,
        step: Callable[[Any], Tensor],
        batches: Callable[[int, np.random.Generator], Iterator[Any]],
        steps_per_epoch: int,
        evaluate: Callable[[], dict[str, float]] | None = None,
        metric: str = "accuracy",
        on_best: Callable[[dict[str, float]], None] | None = None,
        batch_size_of: Callable[[Any], int] = len,
        progress: bool = True,
    ) -> None:
        self.model, self.config, self.run_dir = model, config, Path(run_dir)
        self.step_fn, self.batches, self.steps_per_epoch = step, batches, steps_per_epoch
        self.evaluate, self.metric, self.on_best = evaluate, metric, on_best
        self.batch_size_of, self.progress = batch_size_of, progress
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        self.total_steps = config.epochs * steps_per_epoch
        self.state: dict[str, Any] = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "best": None,
                                      "best_step": None, "bad_evals": 0, "seconds": 0.0, "history": []}

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def save_checkpoint(self) -> None:
        ckpt = self.checkpoint_dir
        ckpt.mkdir(parents=True, exist_ok=True)
        atomic_write(ckpt / "model.safetensors", lambda p: save_model(self.model, str(p)))
        extra = {"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        atomic_write(ckpt / "optimizer.pt", lambda p: torch.save(extra, p))
        # trainer_state.json is written last: it is the marker that the checkpoint is complete
        atomic_write_json(ckpt / "trainer_state.json", self.state)

    def load_checkpoint(self) -> bool:
        """Restore from ``checkpoint/`` if it holds a complete checkpoint; return whether it did."""
        ckpt = self.checkpoint_dir
        if not (ckpt / "trainer_state.json").exists():
            return False
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        load_model(self.model, str(ckpt / "model.safetensors"))
        extra = torch.load(ckpt / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        self.state = state
        return True

    # -- the loop --------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.state["history"].append(record)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _run_eval(self, epoch_float: float, train_loss: float) -> bool:
        """Evaluate on dev, keep the best; return True when early stopping says stop."""
        record: dict[str, Any] = {"step": self.state["global_step"], "epoch": round(epoch_float, 3),
                                  "train_loss": round(train_loss, 5), "seconds": round(self.state["seconds"], 1)}
        stop = False
        if self.evaluate is not None:
            was_training = self.model.training
            self.model.eval()
            metrics = self.evaluate()
            self.model.train(was_training)
            record.update({f"dev_{k}": v for k, v in metrics.items()})
            value = metrics[self.metric]
            if self.state["best"] is None or value > self.state["best"]:
                self.state.update(best=value, best_step=self.state["global_step"], bad_evals=0)
                if self.on_best is not None:
                    self.on_best(metrics)
            else:
                self.state["bad_evals"] += 1
                stop = self.state["bad_evals"] >= self.config.patience
        self._log(record)
        return stop

    def fit(self, resume: bool = True) -> TrainResult:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        if resume and self.load_checkpoint():
            print(f"resumed from {self.checkpoint_dir} at step {self.state['global_step']}")
        elif (self.run_dir / "metrics.jsonl").exists():
            (self.run_dir / "metrics.jsonl").unlink()
        self.model.train()
        stopped = "finished"
        start = time.perf_counter() - self.state["seconds"]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.state["global_step"], unit="step", dynamic_ncols=True)
        running, n_loss = 0.0, 0
        epoch_loss, epoch_n = 0.0, 0
        examples, t_examples = 0, time.perf_counter()
        eval_every = cfg.eval_every or self.steps_per_epoch
        done = False
        while self.state["epoch"] < cfg.epochs and not done:
            epoch = self.state["epoch"]
            rng = np.random.default_rng([cfg.seed, epoch])
            for i, batch in enumerate(self.batches(epoch, rng)):
                if i < self.state["step_in_epoch"]:
                    continue  # replaying the order of a resumed epoch
                time_fraction = 0.0
                if cfg.time_schedule and cfg.max_minutes:
                    time_fraction = (time.perf_counter() - start) / (cfg.max_minutes * 60)
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(self.state["global_step"], self.total_steps, cfg.warmup,
                                                     cfg.schedule, time_fraction)
                loss = self.step_fn(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(self.model.parameters(), cfg.clip_norm, cfg.clip_value)
                self.optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {self.state['global_step']}")
                running += value
                n_loss += 1
                epoch_loss += value
                epoch_n += 1
                examples += self.batch_size_of(batch)
                self.state["global_step"] += 1
                self.state["step_in_epoch"] = i + 1
                self.state["seconds"] = time.perf_counter() - start
                if bar is not None:
                    rate = examples / max(1e-9, time.perf_counter() - t_examples)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running / n_loss:.4f}", ex_s=f"{rate:.0f}")
                gs = self.state["global_step"]
                if gs % eval_every == 0 or self.state["step_in_epoch"] == self.steps_per_epoch:
                    if self._run_eval(epoch + self.state["step_in_epoch"] / self.steps_per_epoch,
                                      running / max(1, n_loss)):
                        stopped, done = "early-stopping", True
                    running, n_loss = 0.0, 0
                    self.save_checkpoint()
                elif gs % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if done:
                    break
                if cfg.max_minutes is not None and self.state["seconds"] > cfg.max_minutes * 60:
                    if self.state["step_in_epoch"] != self.steps_per_epoch:
                        self._run_eval(epoch + self.state["step_in_epoch"] / self.steps_per_epoch,
                                       running / max(1, n_loss))
                    stopped, done = "time-limit", True
                    break
            if not done or self.state["step_in_epoch"] == self.steps_per_epoch:
                self.state["epoch"] = epoch + 1
                self.state["step_in_epoch"] = 0
            epoch_loss, epoch_n = 0.0, 0
        if bar is not None:
            bar.close()
        if self.evaluate is None and self.on_best is not None:
            self.on_best({})
        self.state["seconds"] = time.perf_counter() - start
        self.save_checkpoint()
        self.plot()
        return TrainResult(
            best_metric=self.state["best"], best_step=self.state["best_step"], steps=self.state["global_step"],
            epochs_run=self.state["global_step"] / max(1, self.steps_per_epoch), seconds=self.state["seconds"],
            stopped=stopped, history=list(self.state["history"]),
        )

    def plot(self) -> Path | None:
        """Write ``training.png``: training loss and the dev metric against epochs."""
        history = self.state["history"]
        if not history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in history]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="tab:blue")
        key = f"dev_{self.metric}"
        if any(key in r for r in history):
            ax2 = ax.twinx()
            ax2.plot([r["epoch"] for r in history if key in r], [r[key] for r in history if key in r], "s-",
                     color="tab:red", label=f"dev {self.metric}")
            ax2.set_ylabel(f"dev {self.metric}", color="tab:red")
        ax.set_title("deepsem training")
        fig.tight_layout()
        path = self.run_dir / "training.png"
        atomic_write(path, lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        return path
