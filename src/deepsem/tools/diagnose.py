"""Vanishing gradients made visible: back-propagation through time on two synthetic long-range tasks.

A recurrent network learns a dependency between an early input and the loss at the end of the sequence only
if the gradient of that loss still reaches the early hidden states. This module trains small sequence models
with different recurrent cells on tasks built so that the answer depends on an early input, and measures
``||dL/dh_t||`` for every step ``t``: the *total* gradient of the loss with respect to the hidden state at step
``t``, through the whole recurrence (all paths from ``h_t`` to the loss, not only the direct one).

Tasks (generated from a seeded :class:`torch.Generator`, so every cell sees the same data):

* ``"adding"``, the adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015 and
  Arjovsky et al. 2016): input (B, T, 2), column 0 values drawn from U(0, 1), column 1 a marker that is 1 at
  exactly two positions, one drawn uniformly in the first half ``[0, T // 2)`` and one in the second half
  ``[T // 2, T)``; the target is the sum of the two marked values. Regression with the mean squared error.
  Chance is predicting the mean, 1.0, always: MSE = Var(U1 + U2) = 1/6 ≈ 0.167. A model that finds only the
  second (nearer) marker and guesses 0.5 for the first reaches 1/12 ≈ 0.083, which beats chance but is not
  solving the task. **Solved**: eval MSE < 0.05.
* ``"copy"``, copy the first token: T tokens drawn uniformly out of K (one-hot, input (B, T, K)); the target
  is the first token, read from the state after the last one. Classification with cross-entropy; chance
  accuracy 1/K. **Solved**: eval accuracy > 0.9.

A result **beats chance** when it closes at least 10% of the gap between chance and perfect on the eval
batch: adding MSE < 0.9 · 1/6, copy accuracy > 1/K + 0.1 · (1 - 1/K).

Cells (:data:`CELLS`): ``"rnn"`` (``torch.nn.RNN``, tanh), ``"gru"`` (``torch.nn.GRU``), ``"lstm"``,
``"lstm-peephole"`` and ``"lstm-coupled"`` (:class:`deepsem.nn.lstm.LSTM` plain, with peepholes, with coupled
input and forget gates). The model is input -> one recurrent layer -> hidden state after the last step ->
linear head. All cells start alike: every gate's (H, H) recurrent block orthogonal, every gate's (H, E) input
block Xavier-uniform, biases zero, except the LSTM forget bias, 1 (:meth:`LSTM.reset_parameters`).

Gradient norms (:func:`gradient_norms`) come from an unrolled, step-by-step copy of the forward pass that uses
the model's own parameters (torch's documented RNN and GRU equations through ``F.linear``, and
:func:`deepsem.nn.lstm.lstm_cell` for the LSTM variants), with ``retain_grad()`` on every ``h_t``; the tests
check that this pass gives the fused module's output. The loss differentiated is the *sum* of the
per-example losses, so that ``h_t.grad[b]`` is exactly the gradient of example ``b``'s own loss (examples do
not interact), and the number reported for step ``t`` is the mean over the batch of the per-example norms
``||dℓ_b/dh_t[b]||``; it does not depend on the batch size. For the LSTM variants this is the gradient with
respect to ``h_t`` (the cell state ``c_t`` held fixed); the gradient that flows along the cell states is
part of it from step ``t + 1`` on, since ``h_t`` feeds the gates that write ``c_{t+1}``. The pass runs in
float64 by default so that the vanishing norms of the vanilla RNN (1e-20 and below) do not underflow.

Entry points: :func:`train_task` (one cell on one task) and :func:`diagnose_gradients` (several cells, plus
a plot, a markdown table and a JSON)::

    from deepsem.tools.diagnose import diagnose_gradients
    report = diagnose_gradients(["rnn", "gru", "lstm"], task="adding", length=100, steps=1000, threads=1)
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepsem.fileio import atomic_write, atomic_write_text
from deepsem.nn.lstm import LSTM, lstm_cell

__all__ = [
    "CELLS",
    "SOLVED_ACCURACY",
    "SOLVED_MSE",
    "TASKS",
    "Batch",
    "GradientReport",
    "SequenceModel",
    "TaskResult",
    "Unrolled",
    "adding_batch",
    "build_model",
    "chance_level",
    "copy_batch",
    "diagnose_gradients",
    "evaluate",
    "gradient_norms",
    "make_batch",
    "table_markdown",
    "train_task",
    "unroll",
]

CELLS: tuple[str, ...] = ("rnn", "gru", "lstm", "lstm-peephole", "lstm-coupled")
TASKS: tuple[str, ...] = ("adding", "copy")

SOLVED_MSE = 0.05  # adding problem: eval MSE below this is "solved" (chance 1/6, second marker only 1/12)
SOLVED_ACCURACY = 0.9  # copy-first-token: eval accuracy above this is "solved"
BEAT_CHANCE_GAP = 0.1  # "beats chance": closes at least this fraction of the chance -> perfect gap

# Offsets of the seeds of the eval and probe batches from the training seed, so that they are fresh data.
_EVAL_SEED_OFFSET = 1_000_003
_PROBE_SEED_OFFSET = 2_000_003


# ----------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """Inputs (B, T, E) and targets: float (B,) for regression (MSE), integer (B,) for classification."""

    inputs: Tensor
    targets: Tensor


def adding_batch(batch_size: int, length: int, generator: torch.Generator) -> Batch:
    """The adding problem: values U(0, 1) and two markers, one in each half; target = sum of the marked values."""
    if length < 2:
        raise ValueError(f"the adding problem needs length >= 2, got {length}")
    values = torch.rand(batch_size, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, length, (batch_size,), generator=generator)
    rows = torch.arange(batch_size)
    marker = torch.zeros(batch_size, length)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return Batch(torch.stack([values, marker], dim=2), targets)


def copy_batch(batch_size: int, length: int, num_classes: int, generator: torch.Generator) -> Batch:
    """Copy-first-token: ``length`` tokens out of ``num_classes`` (one-hot); target = the first token."""
    if length < 1 or num_classes < 2:
        raise ValueError(f"copy needs length >= 1 and num_classes >= 2, got {length}, {num_classes}")
    tokens = torch.randint(0, num_classes, (batch_size, length), generator=generator)
    return Batch(F.one_hot(tokens, num_classes).float(), tokens[:, 0].clone())


def make_batch(task: str, batch_size: int, length: int, generator: torch.Generator, num_classes: int = 8) -> Batch:
    """A batch of ``task`` (``"adding"`` or ``"copy"``)."""
    if task == "adding":
        return adding_batch(batch_size, length, generator)
    if task == "copy":
        return copy_batch(batch_size, length, num_classes, generator)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def chance_level(task: str, num_classes: int = 8) -> float:
    """The headline metric of always answering the best constant: adding MSE 1/6, copy accuracy 1/K."""
    if task == "adding":
        return 1.0 / 6.0
    if task == "copy":
        return 1.0 / num_classes
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _task_dims(task: str, num_classes: int) -> tuple[int, int]:
    """(input size, output size) of the model for ``task``."""
    if task == "adding":
        return 2, 1
    if task == "copy":
        return num_classes, num_classes
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------


def _weight(module: nn.Module, name: str) -> Tensor:
    """The parameter ``name`` of a recurrent module (typed: ``getattr`` of a Module is ``Tensor | Module``)."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), name
    return value


def _maybe_weight(module: nn.Module, name: str, present: bool) -> Tensor | None:
    return _weight(module, name) if present else None


@torch.no_grad()
def _init_blocks(module: nn.RNNBase, gates: int) -> None:
    """The LSTM's initialisation for torch's RNN/GRU: orthogonal recurrent and Xavier input gate blocks."""
    hidden = module.hidden_size
    w_ih = _weight(module, "weight_ih_l0")
    w_hh = _weight(module, "weight_hh_l0")
    bound = math.sqrt(6.0 / (hidden + w_ih.shape[1]))
    for k in range(gates):
        w_ih[k * hidden : (k + 1) * hidden].uniform_(-bound, bound)
        nn.init.orthogonal_(w_hh[k * hidden : (k + 1) * hidden])
    _weight(module, "bias_ih_l0").zero_()
    _weight(module, "bias_hh_l0").zero_()


class SequenceModel(nn.Module):
    """Input -> one recurrent layer of ``cell`` (batch first) -> hidden state after the last step -> linear."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
        self.cell = cell
        self.hidden_size = hidden_size
        self.recurrent: nn.Module
        if cell == "rnn":
            rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
            _init_blocks(rnn, 1)
            self.recurrent = rnn
        elif cell == "gru":
            gru = nn.GRU(input_size, hidden_size, batch_first=True)
            _init_blocks(gru, 3)
            self.recurrent = gru
        else:
            self.recurrent = LSTM(
                input_size,
                hidden_size,
                batch_first=True,
                peephole=cell == "lstm-peephole",
                coupled=cell == "lstm-coupled",
            )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, T, E) -> (B, output_size), through the fused recurrent module."""
        out, _ = self.recurrent(x)
        return self.head(out[:, -1])


def build_model(cell: str, task: str, hidden: int, num_classes: int = 8, seed: int = 0) -> SequenceModel:
    """A :class:`SequenceModel` for ``task``, initialised from ``seed`` (the global RNG is left untouched)."""
    n_in, n_out = _task_dims(task, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SequenceModel(cell, n_in, hidden, n_out)


def _loss(pred: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """MSE on the single output for float targets, cross-entropy for integer targets."""
    if targets.is_floating_point():
        return F.mse_loss(pred.squeeze(-1), targets.to(pred.dtype), reduction=reduction)
    return F.cross_entropy(pred, targets, reduction=reduction)


# ----------------------------------------------------------------------------------------------------------
# The unrolled pass and the gradient norms
# ----------------------------------------------------------------------------------------------------------


class Unrolled(NamedTuple):
    """Output of the head (B, out) and the hidden states h_0 .. h_{T-1}, each (B, H), of the unrolled pass."""

    output: Tensor
    states: list[Tensor]


def unroll(model: SequenceModel, x: Tensor, retain_grad: bool = False) -> Unrolled:
    """The model's forward pass written one step at a time with its own parameters.

    rnn: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``; gru, torch's equations (gate rows r, z, n)::

        r = σ(W_ir x + b_ir + W_hr h + b_hr),   z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),   h' = (1 - z) * n + z * h

    LSTM variants: :func:`deepsem.nn.lstm.lstm_cell` with the module's weights, peepholes and coupling. The
    initial state is zero, as in the fused forward. With ``retain_grad`` every ``h_t`` keeps its ``.grad``.
    """
    rec = model.recurrent
    batch, steps, _ = x.shape
    h = x.new_zeros(batch, model.hidden_size)
    states: list[Tensor] = []
    if model.cell in ("rnn", "gru"):
        w_hh, b_hh = _weight(rec, "weight_hh_l0"), _weight(rec, "bias_hh_l0")
        # W_ih x_t + b_ih, every t
        projected = F.linear(x, _weight(rec, "weight_ih_l0"), _weight(rec, "bias_ih_l0")).unbind(1)
        for t in range(steps):
            gh = F.linear(h, w_hh, b_hh)
            if model.cell == "rnn":
                h = torch.tanh(projected[t] + gh)
            else:
                i_r, i_z, i_n = projected[t].chunk(3, dim=1)
                h_r, h_z, h_n = gh.chunk(3, dim=1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = (1.0 - z) * n + z * h
            if retain_grad:
                h.retain_grad()
            states.append(h)
    else:
        assert isinstance(rec, LSTM)
        c = x.new_zeros(batch, model.hidden_size)
        peep = rec.peephole
        w_ci = _maybe_weight(rec, "weight_ci_l0", peep)
        w_cf = _maybe_weight(rec, "weight_cf_l0", peep)
        w_co = _maybe_weight(rec, "weight_co_l0", peep)
        for t in range(steps):
            step = lstm_cell(
                x[:, t],
                h,
                c,
                _weight(rec, "weight_ih_l0"),
                _weight(rec, "weight_hh_l0"),
                _weight(rec, "bias_ih_l0"),
                _weight(rec, "bias_hh_l0"),
                w_ci,
                w_cf,
                w_co,
                coupled=rec.coupled,
            )
            h, c = step.h, step.c
            if retain_grad:
                h.retain_grad()
            states.append(h)
    return Unrolled(model.head(h), states)


def gradient_norms(model: SequenceModel, batch: Batch, dtype: torch.dtype | None = torch.float64) -> Tensor:
    """``||dL/dh_t||`` for every step t (T,), through the whole recurrence, averaged over the batch.

    ``L`` is the sum of the per-example losses (MSE for float targets, cross-entropy for integer ones), so
    ``h_t.grad[b]`` is the gradient of example b's own loss; the value for step t is the mean over the batch
    of the per-example norms. The unrolled pass (:func:`unroll`) runs on a copy of the model in ``dtype``
    (float64 by default, so that tiny norms do not underflow; ``None`` keeps the model's dtype). The model's
    own parameters and their ``.grad`` are not touched.
    """
    probe = copy.deepcopy(model)
    if dtype is not None:
        probe = probe.to(dtype)
    probe.eval()
    for p in probe.parameters():
        p.requires_grad_(True)
        p.grad = None
    param = next(probe.parameters())
    x = batch.inputs.to(param.dtype)
    with torch.enable_grad():
        run = unroll(probe, x, retain_grad=True)
        _loss(run.output, batch.targets, reduction="sum").backward()
    norms = []
    for h in run.states:
        grad = h.grad if h.grad is not None else torch.zeros_like(h)
        norms.append(grad.norm(dim=1).mean())
    return torch.stack(norms).detach()


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskResult:
    """One cell trained on one task: final eval numbers and the gradient norms before and after training.

    ``metric`` is ``"mse"`` (adding) or ``"accuracy"`` (copy) and ``score`` its final value on a fresh
    seeded eval batch; ``chance`` is the same metric for the best constant answer. ``grad_norms_init`` and
    ``grad_norms_trained`` are ``||dL/dh_t||`` for t = 0 .. T-1 on a fixed seeded probe batch.
    """

    cell: str
    task: str
    length: int
    hidden: int
    steps: int
    lr: float
    batch_size: int
    seed: int
    metric: str
    score: float
    loss: float
    accuracy: float | None
    chance: float
    beat_chance: bool
    solved: bool
    grad_norms_init: list[float]
    grad_norms_trained: list[float]
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @staticmethod
    def _ratio(norms: Sequence[float]) -> float:
        return norms[0] / norms[-1] if norms[-1] > 0 else math.nan

    @property
    def ratio_init(self) -> float:
        """``||dL/dh_0|| / ||dL/dh_{T-1}||`` at initialisation: how much of the gradient reaches the start."""
        return self._ratio(self.grad_norms_init)

    @property
    def ratio_trained(self) -> float:
        """The same ratio after training."""
        return self._ratio(self.grad_norms_trained)


@torch.no_grad()
def evaluate(model: SequenceModel, batch: Batch) -> tuple[float, float | None]:
    """(mean loss, accuracy) of the fused model on ``batch``; accuracy None for regression."""
    was_training = model.training
    model.eval()
    try:
        pred = model(batch.inputs)
        loss = float(_loss(pred, batch.targets))
        acc = None if batch.targets.is_floating_point() else float((pred.argmax(1) == batch.targets).float().mean())
    finally:
        model.train(was_training)
    return loss, acc


def _judge(task: str, loss: float, acc: float | None, num_classes: int) -> tuple[str, float, bool, bool]:
    """(metric name, score, beats chance, solved) as defined in the module docstring."""
    chance = chance_level(task, num_classes)
    if task == "adding":
        return "mse", loss, loss < (1.0 - BEAT_CHANCE_GAP) * chance, loss < SOLVED_MSE
    assert acc is not None
    return "accuracy", acc, acc > chance + BEAT_CHANCE_GAP * (1.0 - chance), acc > SOLVED_ACCURACY


@contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the duration, the previous value restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_task(
    cell: str,
    task: str = "adding",
    length: int = 100,
    steps: int = 1000,
    hidden: int = 64,
    lr: float = 1e-2,
    batch: int = 64,
    seed: int = 0,
    *,
    clip_norm: float | None = 1.0,
    num_classes: int = 8,
    eval_size: int = 1000,
    probe_size: int = 128,
    threads: int | None = None,
    log_every: int = 50,
) -> TaskResult:
    """Train one ``cell`` on ``task`` for ``steps`` Adam steps of fresh batches of ``batch`` sequences.

    The model is initialised from ``seed`` and the training batches come from a generator seeded with it,
    so every cell sees the same data. Gradients are clipped to norm ``clip_norm`` (None: no clipping). The
    final loss/accuracy are measured on a fresh seeded batch of ``eval_size``; the gradient norms
    (:func:`gradient_norms`) on a fixed seeded probe batch of ``probe_size``, before and after training.
    ``loss_history`` holds the mean training loss of every ``log_every`` steps.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    start = time.perf_counter()
    with _num_threads(threads):
        model = build_model(cell, task, hidden, num_classes, seed)
        probe = make_batch(task, probe_size, length, _seeded(seed + _PROBE_SEED_OFFSET), num_classes)
        norms_init = gradient_norms(model, probe)
        data = _seeded(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        history: list[float] = []
        running, count = 0.0, 0
        for _ in range(steps):
            xb = make_batch(task, batch, length, data, num_classes)
            loss = _loss(model(xb.inputs), xb.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            running += float(loss.detach())
            count += 1
            if count == log_every:
                history.append(running / count)
                running, count = 0.0, 0
        if count:
            history.append(running / count)
        eval_batch = make_batch(task, eval_size, length, _seeded(seed + _EVAL_SEED_OFFSET), num_classes)
        final_loss, acc = evaluate(model, eval_batch)
        norms_trained = gradient_norms(model, probe)
    metric, score, beat, solved = _judge(task, final_loss, acc, num_classes)
    return TaskResult(
        cell=cell,
        task=task,
        length=length,
        hidden=hidden,
        steps=steps,
        lr=lr,
        batch_size=batch,
        seed=seed,
        metric=metric,
        score=score,
        loss=final_loss,
        accuracy=acc,
        chance=chance_level(task, num_classes),
        beat_chance=beat,
        solved=solved,
        grad_norms_init=norms_init.tolist(),
        grad_norms_trained=norms_trained.tolist(),
        loss_history=history,
        seconds=time.perf_counter() - start,
    )


# ----------------------------------------------------------------------------------------------------------
# The report: plot, table, JSON
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientReport:
    """What :func:`diagnose_gradients` measured and wrote."""

    results: list[TaskResult]
    png: Path
    table: Path
    json: Path
    settings: dict[str, Any]
    seconds: float

    def result(self, cell: str) -> TaskResult:
        """The result of ``cell``."""
        for r in self.results:
            if r.cell == cell:
                return r
        raise KeyError(cell)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


def table_markdown(results: Sequence[TaskResult]) -> str:
    """The markdown table: one row per result."""
    head = (
        "| cell | task | T | metric | final | chance | beats chance | solved "
        "| init ‖dL/dh‖ last step | init ‖dL/dh‖ first step | init ratio first/last "
        "| trained ‖dL/dh‖ last step | trained ‖dL/dh‖ first step | trained ratio first/last | seconds |"
    )
    rule = "|" + "---|" * 15
    rows = [head, rule]
    for r in results:
        rows.append(
            f"| {r.cell} | {r.task} | {r.length} | {r.metric} | {r.score:.4f} | {r.chance:.4f} "
            f"| {'yes' if r.beat_chance else 'no'} | {'yes' if r.solved else 'no'} "
            f"| {_fmt(r.grad_norms_init[-1])} | {_fmt(r.grad_norms_init[0])} | {_fmt(r.ratio_init)} "
            f"| {_fmt(r.grad_norms_trained[-1])} | {_fmt(r.grad_norms_trained[0])} | {_fmt(r.ratio_trained)} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(rows) + "\n"


def _shell_call(settings: dict[str, Any]) -> str:
    """A shell command that reruns :func:`diagnose_gradients` with ``settings`` (reprs use single quotes)."""
    args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f'python -c "from deepsem.tools.diagnose import diagnose_gradients; diagnose_gradients({args})"'


def _summary(results: Sequence[TaskResult]) -> str:
    """A paragraph on what the plot shows, with the measured numbers."""
    r0 = results[0]
    solved = [r.cell for r in results if r.solved]
    unsolved = [r.cell for r in results if not r.solved]
    init = ", ".join(f"{r.cell} {_fmt(r.ratio_init)}" for r in results)
    trained = ", ".join(f"{r.cell} {_fmt(r.ratio_trained)}" for r in results)
    return (
        f"The plot shows, for each cell, the norm of the gradient of the loss with respect to the hidden state "
        f"h_t (log scale) against the distance T-1-t of step t from the end of the sequence (T = {r0.length}), "
        f"at initialisation (left) and after {r0.steps} training steps (right). The gradient enters at the "
        f"last step (distance 0) and flows back through the recurrence; a line that falls steeply means that "
        f"early inputs receive (almost) no learning signal. Ratio ||dL/dh_0|| / ||dL/dh_{{T-1}}|| at "
        f"initialisation: {init}; after training: {trained}. "
        f"Solved ({'MSE < ' + str(SOLVED_MSE) if r0.task == 'adding' else 'accuracy > ' + str(SOLVED_ACCURACY)})"
        f": {', '.join(solved) or 'none'}; not solved: {', '.join(unsolved) or 'none'}."
    )


def _plot(results: Sequence[TaskResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, sharey=True)
    panels = (("at initialisation", "grad_norms_init"), ("after training", "grad_norms_trained"))
    tiny = 1e-300
    for ax, (title, attr) in zip(axes, panels, strict=True):
        for r in results:
            norms: list[float] = getattr(r, attr)
            distance = list(range(len(norms) - 1, -1, -1))  # step t is at distance T-1-t from the end
            values = [max(v, tiny) for v in norms]
            label = f"{r.cell} ({r.metric} {r.score:.3f}{', solved' if r.solved else ''})"
            ax.semilogy(distance, values, label=label)
        ax.set_title(title)
        ax.set_xlabel("distance from the end, T-1-t (steps)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    r0 = results[0]
    axes[0].set_ylabel("‖dL/dh_t‖ (mean over the batch)")
    fig.suptitle(f"Back-propagation through time: {r0.task} task, T = {r0.length}, hidden {r0.hidden}")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def diagnose_gradients(
    cells: Sequence[str] = ("rnn", "gru", "lstm"),
    task: str = "adding",
    length: int = 100,
    steps: int = 1000,
    hidden: int = 64,
    batch_size: int = 64,
    lr: float = 1e-2,
    clip_norm: float | None = 1.0,
    seed: int = 0,
    out_dir: Path | str = Path("runs/diagnose"),
    threads: int | None = None,
    progress: bool = False,
    num_classes: int = 8,
    name: str = "gradient_norms",
) -> GradientReport:
    """Train every cell in ``cells`` on ``task`` (:func:`train_task`) and write what the gradients did.

    Writes, atomically, into ``out_dir``: ``{name}.png`` (``||dL/dh_t||`` on a log scale against the
    distance T-1-t from the end, one line per cell, at initialisation and after training), ``{name}.md``
    (a paragraph, the table of :func:`table_markdown` and the Python call that reproduces it) and
    ``{name}.json`` (settings and every result with its norms). ``threads`` sets ``torch.set_num_threads``
    for the run; ``progress`` prints a line per cell to stderr.
    """
    cells = list(cells)
    if not cells:
        raise ValueError("no cells to diagnose")
    for cell in cells:
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected some of {CELLS}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    out = Path(out_dir)
    settings: dict[str, Any] = {
        "cells": cells,
        "task": task,
        "length": length,
        "steps": steps,
        "hidden": hidden,
        "batch_size": batch_size,
        "lr": lr,
        "clip_norm": clip_norm,
        "seed": seed,
        "num_classes": num_classes,
    }
    start = time.perf_counter()
    results: list[TaskResult] = []
    for cell in cells:
        r = train_task(
            cell, task, length, steps, hidden, lr, batch_size, seed,
            clip_norm=clip_norm, num_classes=num_classes, threads=threads,
        )  # fmt: skip
        results.append(r)
        if progress:
            print(
                f"{cell}: {r.metric} {r.score:.4f} (chance {r.chance:.4f}, solved {r.solved}), "
                f"grad ratio first/last init {_fmt(r.ratio_init)} trained {_fmt(r.ratio_trained)}, "
                f"{r.seconds:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    png = _plot(results, out / f"{name}.png")
    seconds = time.perf_counter() - start
    call = _shell_call({**settings, "out_dir": str(out), "threads": threads, "name": name})
    where = f"{threads} thread{'s' if threads != 1 else ''}" if threads is not None else "torch's default threads"
    text = (
        f"# Gradient norms through time: {task}, T = {length}\n\n"
        f"![gradient norms]({png.name})\n\n{_summary(results)}\n\n{table_markdown(results)}\n"
        f"Produced in {seconds:.0f} s ({where}) by:\n\n```sh\n{call}\n```\n"
    )
    table = atomic_write_text(out / f"{name}.md", text)
    payload = {
        "settings": settings,
        "seconds": seconds,
        "results": [{**asdict(r), "ratio_init": r.ratio_init, "ratio_trained": r.ratio_trained} for r in results],
    }
    js = atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return GradientReport(results, png, table, js, settings, seconds)
