"""One training loop for every task: AdamW, warm-up + decay, clipping, early stopping, checkpoints, resume.

The loop knows nothing about towers or losses: a task hands it a loss module (an ``nn.Module`` that owns the model
and returns the loss of a batch from ``forward(batch)``, see :mod:`deepsem.losses`), the batches of an epoch, a
``collate`` function that turns a batch's rows into tensors, and an ``evaluate() -> metrics`` callback. The
trainer moves the module and each batch to its ``device``, wraps the module in ``DistributedDataParallel`` when a
process group is initialised, and only rank 0 writes. :func:`run_training` is the setup every task shares (settings,
threads, resume check, tokenizer, seed, trainer, saving the best model, the run's result). The run directory
receives (from rank 0 only):

- ``checkpoint/`` — model weights, optimiser state and the weight average (safetensors), RNG states, the loop
  position and the run's fingerprint (``trainer_state.json``), written every ``checkpoint_every`` steps and at each
  evaluation as one unit (see :meth:`Trainer.save_checkpoint`); a killed run resumes from it, a run with other
  data or settings refuses to (see :func:`check_resume`). Nothing in it is ever unpickled;
- ``metrics.jsonl`` — one JSON object per evaluation (and per epoch);
- ``training.png`` — training loss and the dev metric per epoch.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from deepsem.config import TrainConfig
from deepsem.data.precision import autocast, check_precision
from deepsem.errors import ConfigError, ModelFileError, ResumeMismatchError, TrainingDivergedError
from deepsem.fileio import atomic_write, atomic_write_json, fsync_path, read_json, sha256_file
from deepsem.text import Tokenizer, build_tokenizer, load_tokenizer

#: Version of the checkpoint layout; a ``trainer_state.json`` without it was written by deepsem before
#: checkpoints carried a fingerprint, and is not resumed (nothing says whether it matches the run asked for).
CHECKPOINT_FORMAT = 2
#: Training settings a resumed run may change: they bound or show the run, they do not change what it computes
#: (``patience`` only decides when to stop, on the same evaluations). Every other setting must match.
RESUMABLE_SETTINGS = frozenset({"max_minutes", "threads", "patience", "checkpoint_every"})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` (dropout, sampling): the base seed on rank 0, so one process trains as before;
    another, repeatable one on each other rank."""
    return seed if rank == 0 else (seed + 1_000_003 * rank) % 2**63


def shard(batch: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s contiguous part of a global batch (an array, tensor or list of rows): ``len(batch)`` split in
    ``world_size`` parts whose sizes differ by at most one, the first ranks taking the larger ones."""
    if world_size == 1:
        return batch
    if not isinstance(batch, np.ndarray | Tensor | list | tuple):
        raise TypeError(f"a distributed run splits each batch by rows; got a {type(batch).__name__}")
    n = len(batch)
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return batch[start : start + base + (rank < extra)]


#: How long a collective waits for the other ranks before the run fails (a killed rank ends the run, not a hang).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)


def init_distributed(device: str | torch.device | None = None) -> bool:
    """Start the process group a launcher (``torchrun``) describes in the environment (``WORLD_SIZE`` > 1, ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``): gloo on the CPU, nccl on CUDA (each process on GPU ``LOCAL_RANK``). True when
    this call started it (the caller destroys it at the end); False for one process or a group already started.
    An incomplete or inconsistent environment is a :class:`ConfigError`, raised before anything is written."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    world = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not world.isdigit():
        raise ConfigError(f"WORLD_SIZE={world!r} is not a number of processes")
    if int(world) <= 1:
        return False
    env = {k: os.environ.get(k, "").strip() for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")}
    missing = [k for k, v in env.items() if not v]
    if missing or not torch.distributed.is_available():
        raise ConfigError(f"launched as {world} processes (WORLD_SIZE={world}) but {', '.join(missing) or 'torch'}"
                          f"{' is' if len(missing) == 1 else ' are'} missing to start the process group: launch with "
                          "torchrun (which sets RANK, MASTER_ADDR and MASTER_PORT), or with one process")
    if not env["RANK"].isdigit() or int(env["RANK"]) >= int(world):
        raise ConfigError(f"RANK={env['RANK']} is not a rank of a world of {world} processes (WORLD_SIZE)")
    cuda = torch.device(device if device is not None else "cpu").type == "cuda"
    if cuda:
        local = os.environ.get("LOCAL_RANK", "0").strip() or "0"
        gpus = torch.cuda.device_count()
        if not local.isdigit() or int(local) >= gpus:
            raise ConfigError(f"--device cuda under {world} processes: this process (RANK={env['RANK']}, "
                              f"LOCAL_RANK={local}) has no GPU of its own, this machine has {gpus} "
                              f"(torch.cuda.device_count()); nccl runs one process per GPU, so start at most {gpus} "
                              f"per machine (torchrun --nproc-per-node {max(gpus, 1)}), or train on the CPU (gloo)")
        torch.cuda.set_device(int(local))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=int(env["RANK"]), world_size=int(world),
                                         timeout=PROCESS_GROUP_TIMEOUT)
    return True


def launched_world_size() -> int:
    """The number of processes this one trains with: the process group's size once started, else the launcher's
    ``WORLD_SIZE`` (1 when unset or unreadable: :func:`init_distributed` reports that)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    world = os.environ.get("WORLD_SIZE", "1").strip()
    return int(world) if world.isdigit() and int(world) > 0 else 1


def check_world_size(config: TrainConfig, world_size: int | None = None) -> None:
    """Every rank needs at least one row of each global batch: a batch size below the number of processes
    (default :func:`launched_world_size`) is a :class:`ConfigError`, raised before any data is read."""
    world = launched_world_size() if world_size is None else world_size
    if world > 1 and config.batch_size < world:
        raise ConfigError(f"batch size {config.batch_size} (--batch-size, the global batch) is smaller than the "
                          f"{world} processes training it (WORLD_SIZE={world}): each process needs at least one row "
                          f"of every batch; use a batch size of {world} or more, or fewer processes")


def clock() -> float:
    """Seconds on the monotonic clock the training loop's time budget runs on (each process reads its own)."""
    return time.perf_counter()


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


# -- fingerprints: what a checkpoint was trained on ------------------------------------------------------
def data_fingerprint(*parts: Any) -> str:
    """sha256 (hex) over loaded training data: lists of texts, lists of lists, numpy arrays, ``None``.

    Cheap enough for every run (100k pairs: a few MB hashed, well under a second); it changes when any
    text, label or their order changes."""
    h = hashlib.sha256()
    for part in parts:
        h.update(b"\x1e")
        _hash_into(h, part)
    return h.hexdigest()


def _hash_into(h: Any, part: Any) -> None:
    if part is None:
        h.update(b"N")
    elif isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        h.update(f"A{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(part, torch.Tensor):
        _hash_into(h, part.detach().cpu().numpy())
    elif isinstance(part, list | tuple) and part and all(isinstance(x, np.ndarray) for x in part):
        h.update(f"L{len(part)}".encode())
        for x in part:
            _hash_into(h, x)
    else:
        h.update(b"J")
        h.update(json.dumps(part, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))


def run_fingerprint(config: TrainConfig, **parts: Any) -> dict[str, Any]:
    """What a run depends on: the training settings (less :data:`RESUMABLE_SETTINGS`) and ``parts`` (the task's
    data hashes, tokenizer, model settings...). JSON-serialisable; stored in every checkpoint."""
    training = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_SETTINGS}
    if training.get("precision") == "fp32":  # the default, as every run before the field: their checkpoints resume
        del training["precision"]
    if training.get("gather_negatives") is True:  # likewise
        del training["gather_negatives"]
    return json.loads(json.dumps({"training": training, **parts}, sort_keys=True, default=str))


def tokenizer_fingerprint(tokenizer: Any, options: dict[str, Any] | None) -> dict[str, Any]:
    """The tokenizer settings a run depends on: a name and options (learnt from the data), or a given
    tokenizer's config and vocabulary size."""
    if isinstance(tokenizer, str):
        return {"name": tokenizer, "options": dict(options or {})}
    return {"given": tokenizer.config(), "vocab_size": tokenizer.vocab_size}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Readable differences, e.g. ``["training data differs", "model.tower.hidden_size 128 -> 256"]``."""
    old, new = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if a == b:
            continue
        top = key.split(".")[0]
        if top.endswith("data"):  # content hashes: the values say nothing to a user
            what = f"{top} differs"
            if what not in diffs:
                diffs.append(what)
        else:
            diffs.append(f"{key} {json.dumps(a, ensure_ascii=False)} -> {json.dumps(b, ensure_ascii=False)}")
    return diffs


WAYS_OUT = "pass --no-resume (resume=False) to start over in it, or give a new --out"


# -- checkpoints: one unit, switched by renaming a complete folder -----------------------------------------
_TMP_PREFIX = "checkpoint.tmp-"
_OLD_PREFIX = "checkpoint.old-"


def _check_loop_state(path: Path, doc: dict[str, Any]) -> None:
    """The loop position of a checkpoint: counters are non-negative integers, times and scores finite numbers
    (a hand-edited or crafted state fails here, naming the field, not deep inside the loop)."""
    def bad(key: str, what: str) -> ModelFileError:
        return ModelFileError(f"{path}: field {key!r} is {doc.get(key)!r}, expected {what}; the checkpoint is "
                              "damaged")

    for key in ("global_step", "epoch", "step_in_epoch", "bad_evals"):
        value = doc.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(key, "a non-negative integer")
    for key, optional in (("seconds", False), ("best", True)):
        value = doc.get(key)
        if value is None and optional:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise bad(key, "a finite number")
    step = doc.get("best_step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise bad("best_step", "null or a non-negative integer")
    if not isinstance(doc.get("history"), list):
        raise bad("history", "a list")


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """The verified ``trainer_state.json`` of a checkpoint folder: written by this format, and every file it
    lists has the sha256 it records. Raises :class:`ModelFileError` (damaged) or :class:`ResumeMismatchError`
    (an old-format checkpoint, which has no fingerprint)."""
    doc = read_json(folder / "trainer_state.json", ModelFileError)
    if not isinstance(doc, dict):
        raise ModelFileError(f"{folder / 'trainer_state.json'}: not a checkpoint state (expected an object)")
    if doc.get("format") != CHECKPOINT_FORMAT:
        if "format" not in doc:
            raise ResumeMismatchError(
                f"{folder}: checkpoint written by an earlier deepsem without a record of its data and settings, "
                f"so it cannot be checked against this run and is not resumed; {WAYS_OUT}")
        raise ModelFileError(f"{folder}: checkpoint format {doc.get('format')!r}, this deepsem reads "
                             f"{CHECKPOINT_FORMAT}")
    _check_loop_state(folder / "trainer_state.json", doc)
    files = doc.get("files")
    if not isinstance(files, dict) or not {"model.safetensors", "optimizer.safetensors"} <= set(files):
        raise ModelFileError(f"{folder / 'trainer_state.json'}: no file list; the checkpoint is damaged")
    for name, digest in files.items():
        path = folder / str(name)
        if "/" in str(name) or not path.is_file():
            raise ModelFileError(f"{folder}: checkpoint file {name!r} is missing; the checkpoint is damaged")
        if sha256_file(path) != digest:
            raise ModelFileError(f"{path}: content differs from the checkpoint's record (sha256); "
                                 "the checkpoint is damaged")
    return doc


def find_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder a resumed run reads, or None if the run has none.

    ``checkpoint/`` when it verifies; a run killed while switching to a new checkpoint may have left the
    complete new one (``checkpoint.tmp-*``) or the previous one (``checkpoint.old-*``) instead: the verified one
    of the highest step is taken. Half-written folders are never read. A ``checkpoint/`` that fails its check
    with no verified alternative raises :class:`ModelFileError`; an old-format one :class:`ResumeMismatchError`.
    """
    run_dir = Path(run_dir)
    main = run_dir / "checkpoint"
    problem: Exception | None = None
    if (main / "trainer_state.json").exists():
        try:
            read_checkpoint(main)
            return main
        except ModelFileError as exc:
            problem = exc
    best: tuple[int, Path] | None = None
    if run_dir.is_dir():
        for folder in run_dir.iterdir():
            if not folder.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) or not folder.is_dir():
                continue
            try:
                doc = read_checkpoint(folder)
            except (ModelFileError, ResumeMismatchError):
                continue  # half-written or damaged: never read
            step = doc.get("global_step")
            if isinstance(step, int) and (best is None or step > best[0]):
                best = (step, folder)
    if best is not None:
        return best[1]
    if problem is not None:
        raise ModelFileError(f"{problem}; no earlier checkpoint to fall back on: {WAYS_OUT}")
    return None


def discard_run(run_dir: str | os.PathLike[str], tokenizer: bool = True) -> None:
    """Remove what an earlier run left in ``run_dir``: its checkpoints, metrics, result (and its tokenizer),
    so a run that starts over never reads them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for folder in run_dir.iterdir():
        if folder.name == "checkpoint" or folder.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
    for name in ("metrics.jsonl", "result.json"):
        (run_dir / name).unlink(missing_ok=True)
    if tokenizer and (run_dir / "tokenizer").is_dir():
        shutil.rmtree(run_dir / "tokenizer")


def check_resume(run_dir: str | os.PathLike[str], fingerprint: dict[str, Any], resume: bool, *,
                 discard: bool = True) -> bool:
    """Before a task builds anything from ``run_dir``: True when it holds a checkpoint of this very run
    (same ``fingerprint``) to resume. With ``resume`` False the earlier run's files are removed first (unless
    ``discard`` is False: a process other than rank 0 never touches the run directory).
    A checkpoint of another run raises :class:`ResumeMismatchError` saying what differs."""
    run_dir = Path(run_dir)
    if not resume:
        if discard:
            discard_run(run_dir)
        return False
    folder = find_checkpoint(run_dir)
    if folder is None:
        return False
    saved = read_checkpoint(folder).get("fingerprint")
    _compare_fingerprints(folder, saved, fingerprint)
    return True


def _compare_fingerprints(folder: Path, saved: Any, current: dict[str, Any]) -> None:
    if not isinstance(saved, dict):
        raise ResumeMismatchError(f"{folder}: checkpoint without a record of its data and settings; {WAYS_OUT}")
    diffs = fingerprint_differences(saved, current)
    if diffs:
        raise ResumeMismatchError(f"{folder.parent}: holds an earlier run that differs from this one "
                                  f"({'; '.join(diffs)}); {WAYS_OUT}")


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


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from ``torch.distributed`` when a process group is initialised,
    else ``(0, 1)``. A launcher's ``WORLD_SIZE`` above 1 without a process group (:func:`run_training` starts one,
    see :func:`init_distributed`) is a :class:`ConfigError`: every process would take itself for rank 0, train alone
    and write the same run and model directories."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    world = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if world.isdigit() and int(world) > 1:
        raise ConfigError(f"launched as {world} processes (WORLD_SIZE={world}) but no torch.distributed process "
                          "group is initialised: initialise it (deepsem.trainer.init_distributed) before calling "
                          "the Python API, or launch one process")
    return 0, 1


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (in dicts, lists, tuples) moved to ``device``; other values as they are."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


#: what ``AveragedModel`` calls to average (its ``multi_avg_fn``)
_AverageFn = Callable[[tuple[Tensor, ...] | list[Tensor], tuple[Tensor, ...] | list[Tensor], Tensor | int], None]


def ema_update(decay: float) -> _AverageFn:
    """``AveragedModel``'s ``multi_avg_fn`` for an exponential moving average whose decay warms up as
    ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates (timm's ``ModelEmaV2`` warm-up): the first steps' weights,
    far from the trained ones, fade within tens of steps however close to 1 ``decay`` is. After ``t`` updates the
    average spans roughly the last ``t / 9`` steps, at most about ``1 / (1 - decay)``."""

    def update(averaged: tuple[Tensor, ...] | list[Tensor], current: tuple[Tensor, ...] | list[Tensor],
               num_averaged: Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (a step count, say) follow the model
            torch._foreach_copy_(averaged, current)
            return
        t = int(num_averaged)
        d = min(decay, (1 + t) / (10 + t))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


class Trainer:
    """Runs ``loss`` over ``batches`` for ``config.epochs`` epochs.

    With ``config.ema_decay`` the trainer keeps an exponential moving average of the model's weights (Polyak
    averaging; :func:`ema_update`), updated after every optimiser step: ``evaluate`` and ``on_best`` see the
    averaged weights, so the dev metric, early stopping and the saved model are the average's, while training goes
    on from the raw weights. The checkpoint holds both, so a resumed run continues the same average.

    Parameters
    ----------
    loss: the objective, an ``nn.Module`` whose ``forward(batch)`` returns the loss (see :mod:`deepsem.losses`);
        its parameters are trained. When a ``step`` function is given instead (the older form), ``loss`` is just
        the module trained and ``step(batch)`` computes the loss.
    step: optional: computes the loss of one batch itself (the trainer calls backward and the optimiser).
    batches: ``batches(epoch, rng)`` yields the batches of an epoch (e.g. arrays of row numbers); it must depend
        only on ``rng`` so that a resumed run replays the same order.
    steps_per_epoch: number of batches ``batches`` yields.
    collate: turns a batch of ``batches`` into what ``loss`` takes (tensors); None: the batch as it is.
    evaluate: optional callback returning dev metrics; ``metric`` names the one to maximise.
    on_best: called with the metrics whenever the dev metric improves (e.g. save the model directory); rank 0 only.
    batch_size_of: number of examples in a batch (before ``collate``), for the examples/s display.
    progress: show a progress bar; None (the default): only when stderr is a terminal, so a run logging to
        a file writes no per-step lines. Rank 0 alone shows it.
    fingerprint: what the run depends on (see :func:`run_fingerprint`); stored in each checkpoint, and a
        checkpoint with another one is not resumed. Default: the training settings.
    rngs: numpy generators the collate or step draws from (e.g. random negatives); saved in each checkpoint and
        restored on resume, so a resumed run draws what the uninterrupted one would have.
    model: the module checkpointed; default ``loss.model`` when the loss owns one (the checkpoint then holds the
        model's weights under the model's own names), else ``loss``.
    device: where the module and each batch go (``"cpu"``, ``"cuda"``, ``"cuda:1"``...). Evaluation and
        ``on_best`` see the model on the CPU, where the task wrappers compute.
    rank, world_size: this process's place in a distributed run (default: :func:`distributed_rank`). Every rank
        builds the same global batches (``config.batch_size`` is the global batch size) and, under a process group,
        takes its contiguous part (:func:`shard`), dropout and ``rngs`` seeded per rank (:func:`rank_seed`). Only
        rank 0 writes checkpoints, ``metrics.jsonl``, ``training.png`` and calls ``on_best``. With an initialised
        process group the loss is wrapped in ``DistributedDataParallel``, and every decision is taken once for all
        ranks, so none waits for a collective the others left: the loss and the time budget in each step's
        all-reduce, the dev metrics (rank 0 evaluates) broadcast for early stopping. A batch with fewer rows than
        ranks (``config.batch_size`` below the world size is a :class:`ConfigError`; an epoch's short last batch)
        is dropped under a process group, keeping its place as a step that trains nothing. Global steps count
        global batches at any world size, so a run resumes from its checkpoint with another number of processes
        and continues with the same batches; sampled negatives (``rngs``) and dropout of ranks above 0 are then
        seeded from the base seed, the rank and the step the run resumes at.
    """

    def __init__(
        self,
        loss: nn.Module,
        config: TrainConfig,
        run_dir: str | Path,
        step: Callable[[Any], Tensor] | None = None,
        batches: Callable[[int, np.random.Generator], Iterator[Any]] | None = None,
        steps_per_epoch: int = 0,
        evaluate: Callable[[], dict[str, float]] | None = None,
        metric: str = "accuracy",
        on_best: Callable[[dict[str, float]], None] | None = None,
        batch_size_of: Callable[[Any], int] = len,
        progress: bool | None = None,
        fingerprint: dict[str, Any] | None = None,
        rngs: dict[str, np.random.Generator] | None = None,
        *,
        collate: Callable[[Any], Any] | None = None,
        model: nn.Module | None = None,
        device: str | torch.device | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        per_rank_batches: bool = False,
    ) -> None:
        if batches is None:
            raise TypeError("Trainer needs batches(epoch, rng)")
        owned = getattr(loss, "model", None)
        self.loss = loss
        self.model = model if model is not None else owned if isinstance(owned, nn.Module) else loss
        self.config, self.run_dir = config, Path(run_dir)
        self.step_fn, self.batches, self.steps_per_epoch, self.collate = step, batches, steps_per_epoch, collate
        self.per_rank_batches = per_rank_batches  # batches(...) already yields this rank's own: never shard them
        self.evaluate, self.metric, self.on_best = evaluate, metric, on_best
        self.batch_size_of, self.progress = batch_size_of, progress
        self.fingerprint = fingerprint if fingerprint is not None else run_fingerprint(config)
        self.rngs = dict(rngs or {})
        default_rank, default_world = distributed_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside a world of {self.world_size} processes")
        self.device = torch.device(device if device is not None else "cpu")
        check_precision(config.precision, self.device)
        self.loss.to(self.device)
        self.model.to(self.device)
        self.forward: Callable[[Any], Tensor] = step if step is not None else self.loss
        #: each rank trains on its part of every batch: with a process group of this world size (a ``rank`` and
        #: ``world_size`` given without one only decide who writes, each process then taking whole batches)
        self.sharded = (self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
                        and torch.distributed.get_world_size() == self.world_size)
        if self.sharded:
            check_world_size(config, self.world_size)
            if step is not None:  # nothing would average the ranks' gradients: their weights would drift apart
                raise ValueError("a step function does not train under a process group (its gradients are not "
                                 "averaged across the ranks): pass the loss module, whose forward(batch) returns the "
                                 "loss, and the trainer wraps it in DistributedDataParallel")
        if step is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
            # a batch may leave a parameter out (gamma under the hinge loss, the bias without a pointwise term)
            self.forward = nn.parallel.DistributedDataParallel(self.loss, device_ids=ids,
                                                               find_unused_parameters=True)
        self.resumed_from: int | None = None
        self.saved_step: int | None = None  # step of the checkpoint on disk, once this run wrote or read one
        named = list(self.loss.named_parameters()) if step is None else list(self.model.named_parameters())
        decay = [p for n, p in named if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in named if p.requires_grad and p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        #: the run's length: the learning-rate schedule decays over it (``max_steps`` shortens it, as a budget does)
        self.total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        #: the weight average (``config.ema_decay``), a copy of the model on its device; None: off
        self.ema: AveragedModel | None = None
        if config.ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=ema_update(config.ema_decay), use_buffers=True)
        self.state: dict[str, Any] = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "best": None,
                                      "best_step": None, "bad_evals": 0, "seconds": 0.0, "history": []}

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def _optimizer_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The optimiser's state as safetensors tensors and JSON (no pickle): per-parameter tensors
        (AdamW: ``exp_avg``, ``exp_avg_sq``, ``step``) under ``optimizer.<index>.<name>``, the rest as JSON."""
        sd = self.optimizer.state_dict()
        tensors: dict[str, Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in sd["state"].items():
            for name, value in values.items():
                if isinstance(value, Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        meta = {"param_groups": sd["param_groups"], "scalars": scalars}
        return tensors, json.loads(json.dumps(meta))

    def save_checkpoint(self) -> None:
        """Write the checkpoint as one unit: a new folder ``checkpoint.tmp-*`` gets the weights, the optimiser
        and RNG tensors (safetensors) and, last, ``trainer_state.json`` (loop position, RNG and optimiser
        settings, fingerprint, sha256 of each file); every file and the folder are fsynced; then the folder
        replaces ``checkpoint/`` by two renames. A kill at any point leaves a complete checkpoint that
        :func:`find_checkpoint` finds (the old one, or the new one): never a mix of the two. Rank 0 only."""
        if not self.writes:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.run_dir))
        try:
            tmp.chmod(0o777 & ~_umask())
            save_model(self.model, str(tmp / "model.safetensors"))
            tensors, optimizer_meta = self._optimizer_parts()
            if self.ema is not None:
                for key, value in self.ema.state_dict().items():
                    tensors[f"ema.{key}"] = value.detach().cpu().contiguous().clone()
            tensors["torch_rng"] = torch.get_rng_state()
            if self.device.type == "cuda":
                tensors["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            files = {}
            for name in ("model.safetensors", "optimizer.safetensors"):
                fsync_path(tmp / name)
                files[name] = sha256_file(tmp / name)
            doc = {**self.state, "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                   "optimizer": optimizer_meta, "files": files,
                   "numpy_rngs": {k: rng.bit_generator.state for k, rng in self.rngs.items()}}
            # written last, inside the new folder: a folder without it is half-written and never read
            atomic_write_json(tmp / "trainer_state.json", doc)
            fsync_path(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        target = self.checkpoint_dir
        if target.exists():  # a kill between these renames leaves both complete folders: the newer is taken
            os.rename(target, self.run_dir / (_OLD_PREFIX + tmp.name[len(_TMP_PREFIX):]))
        os.rename(tmp, target)
        fsync_path(self.run_dir)
        self.saved_step = int(self.state["global_step"])
        for folder in self.run_dir.iterdir():  # the previous checkpoint and leftovers of killed runs
            if folder.name.startswith((_TMP_PREFIX, _OLD_PREFIX)) and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    def load_checkpoint(self) -> bool:
        """Restore from the run's checkpoint (see :func:`find_checkpoint`) if it has one; return whether it
        did. A checkpoint of another run (fingerprint, parameter shapes) raises :class:`ResumeMismatchError`."""
        folder = find_checkpoint(self.run_dir)
        if folder is None:
            return False
        doc = read_checkpoint(folder)
        _compare_fingerprints(folder, doc.get("fingerprint"), self.fingerprint)
        model_file = folder / "model.safetensors"
        shapes = {k: list(v.shape) for k, v in self.model.state_dict().items()}
        with safe_open(str(model_file), "pt") as fh:
            saved = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        diffs = [f"parameter {k} {saved[k]} -> {shapes[k]}" for k in sorted(saved) if k in shapes
                 and saved[k] != shapes[k]]
        if diffs:
            raise ResumeMismatchError(f"{self.run_dir}: holds an earlier run with another model "
                                      f"({'; '.join(diffs[:3])}); {WAYS_OUT}")
        try:
            load_model(self.model, str(model_file))
            tensors = load_file(str(folder / "optimizer.safetensors"))
            meta = doc["optimizer"]
            state: dict[int, dict[str, Any]] = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            for index, values in meta.get("scalars", {}).items():
                state.setdefault(int(index), {}).update(values)
            groups = meta["param_groups"]
            for group in groups:
                if isinstance(group.get("betas"), list):
                    group["betas"] = tuple(group["betas"])
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
            if self.ema is not None:
                self.ema.load_state_dict({key[len("ema."):]: value for key, value in tensors.items()
                                          if key.startswith("ema.")})
            torch.set_rng_state(tensors["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in tensors:
                torch.cuda.set_rng_state(tensors["cuda_rng"], self.device)
            for name, rng_state in doc.get("numpy_rngs", {}).items():
                if name in self.rngs:
                    self.rngs[name].bit_generator.state = rng_state
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelFileError(f"{folder}: checkpoint does not fit this model or optimiser "
                                 f"({str(exc).splitlines()[0][:200]}); {WAYS_OUT}") from None
        self.state = {k: doc[k] for k in self.state if k in doc}
        self.resumed_from = self.saved_step = int(self.state["global_step"])
        return True

    def _diverged(self, what: str) -> TrainingDivergedError:
        step = self.state["global_step"] + 1
        cfg = self.config
        advice = (f"lower the learning rate (--lr, now {cfg.lr:g}) or clip the gradients "
                  f"(--clip-norm, now {cfg.clip_norm or 'off'}; --clip-value, now {cfg.clip_value or 'off'})")
        if self.resumed_from is not None:
            return TrainingDivergedError(
                f"{self.run_dir}: resumed from the checkpoint at step {self.resumed_from} and diverged again at "
                f"step {step}: {what}; resuming leads to the same result: start over with --no-resume and "
                f"{advice.replace('lower the learning rate', 'a lower learning rate')}")
        saved = ("no checkpoint was written yet" if self.saved_step is None else
                 f"the checkpoint (step {self.saved_step}) holds finite weights")
        return TrainingDivergedError(f"{self.run_dir}: training diverged at step {step}: {what}; {saved}; {advice}")

    # -- the loop --------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        self.state["history"].append(record)
        if not self.writes:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _check_same_start(self) -> None:
        """Every rank starts at the step rank 0 starts at (one all-gather before the first step). A rank that found
        no checkpoint where rank 0 resumed (a run directory that is not on a filesystem every node reads) would
        train other weights and other steps: a :class:`ConfigError` on every rank instead, naming each one's step."""
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        mine = torch.tensor([int(self.state["global_step"])], dtype=torch.int64, device=device)
        steps = [torch.zeros_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(steps, mine)
        starts = [int(step) for step in steps]
        if len(set(starts)) > 1:
            raise ConfigError(f"{self.run_dir}: the processes start at different steps ("
                              + ", ".join(f"rank {r}: step {s}" for r, s in enumerate(starts))
                              + "): each must read the run's checkpoint, so the run directory (--out) must be one "
                                "that every node reads (a shared filesystem)")

    def _agree(self, loss: Tensor, elapsed: float) -> tuple[float, float, bool]:
        """What every rank must judge alike after a step's forward, agreed in the one all-reduce each step makes
        anyway (no extra collective): the global batch's loss (each rank holds its share), the elapsed seconds
        (rank 0's clock: the schedule's time fraction, so every rank sets the same learning rate) and whether the
        time budget is spent (by any rank's clock: then all stop after this step). One process: its own loss and
        clock. Any other stop that a rank would judge from its own state belongs here, as one more vote."""
        limit = self.config.max_minutes
        vote = limit is not None and elapsed > limit * 60
        if not self.sharded:
            return float(loss.detach()), elapsed, vote
        packet = torch.stack([loss.detach().reshape(()).to(torch.float64),
                              torch.tensor(float(vote), dtype=torch.float64, device=loss.device),
                              torch.tensor(elapsed if self.rank == 0 else 0.0, dtype=torch.float64,
                                           device=loss.device)])
        torch.distributed.all_reduce(packet)  # rank r holds its share of the global loss (W/N per row)
        total, votes, seconds = packet.tolist()
        return total / self.world_size, seconds, votes > 0

    def _run_eval(self, epoch_float: float, train_loss: float) -> bool:
        """Evaluate on dev, keep the best; return True when early stopping says stop.

        Under a process group rank 0 alone evaluates (the others wait at the broadcast: an evaluation must end
        within :data:`PROCESS_GROUP_TIMEOUT`) and broadcasts the metrics: every rank then holds the same best and
        count of evaluations without improvement, and takes the same decision at the same step."""
        record: dict[str, Any] = {"step": self.state["global_step"], "epoch": round(epoch_float, 3),
                                  "train_loss": round(train_loss, 5), "seconds": round(self.state["seconds"], 1)}
        stop = False
        if self.evaluate is not None:
            evaluates = self.writes or not self.sharded
            on_cpu: AbstractContextManager[None] = self._on_cpu() if evaluates else nullcontext()
            averaged: AbstractContextManager[None] = self._averaged() if evaluates else nullcontext()
            with on_cpu, averaged:
                metrics: dict[str, float] | None = None
                if evaluates:
                    was_training = self.model.training
                    self.model.eval()
                    metrics = self.evaluate()
                    self.model.train(was_training)
                if self.sharded:
                    box = [metrics]
                    torch.distributed.broadcast_object_list(box, src=0)
                    metrics = box[0]
                assert metrics is not None
                record.update({f"dev_{k}": v for k, v in metrics.items()})
                value = metrics[self.metric]
                if self.state["best"] is None or value > self.state["best"]:
                    self.state.update(best=value, best_step=self.state["global_step"], bad_evals=0)
                    if self.on_best is not None and self.writes:
                        self.on_best(metrics)
                else:
                    self.state["bad_evals"] += 1
                    stop = self.state["bad_evals"] >= self.config.patience
        self._log(record)
        return stop

    @contextmanager
    def _averaged(self) -> Iterator[None]:
        """The weight average in the model inside (nothing changes without one), the raw weights back after."""
        if self.ema is None or int(self.ema.n_averaged) == 0:
            yield
            return
        raw = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    @contextmanager
    def _on_cpu(self) -> Iterator[None]:
        """The model on the CPU inside (evaluation and saving go through the task wrappers, which compute there),
        back on the training device after; the optimiser keeps its parameters (moved in place)."""
        if self.device.type == "cpu":
            yield
            return
        self.loss.to("cpu")
        try:
            yield
        finally:
            self.loss.to(self.device)

    def fit(self, resume: bool = True) -> TrainResult:
        """Train (resuming from the run's checkpoint when ``resume`` and it has one) and return how it went."""
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(rank_seed(cfg.seed, self.rank if self.sharded else 0))
        if resume and self.load_checkpoint():
            if self.writes:  # rank 0 reports for all
                print(f"resumed from {self.checkpoint_dir} at step {self.state['global_step']}")
        elif resume and self.writes:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        elif self.writes:
            discard_run(self.run_dir, tokenizer=False)
        if self.sharded:
            self._check_same_start()
        if self.sharded and self.rank > 0:  # own sampled negatives: from the base seed, the rank, the step it starts
            for i, name in enumerate(sorted(self.rngs)):
                fresh = np.random.default_rng([cfg.seed, self.rank, i, self.state["global_step"]])
                self.rngs[name].bit_generator.state = fresh.bit_generator.state
            if self.resumed_from is not None:  # the checkpoint holds rank 0's torch RNG: this rank's own dropout
                torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.rank, self.resumed_from])
                                      .generate_state(1, np.uint64)[0]) % 2**63)
        self.loss.train()
        stopped = "finished"
        start = clock() - self.state["seconds"]
        bar = None
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if show and self.writes:  # one bar for the run: rank 0's
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
                # under a process group a batch with fewer rows than ranks (an epoch's short last batch) would leave
                # a rank without a row: it is dropped but keeps its place, a step that trains nothing, on every rank
                # alike, so steps, the schedule and resume positions are the same at any world size
                time_up = False
                # (batches a stream made per rank are this rank's own already: never split nor dropped here)
                if self.per_rank_batches or not (self.sharded and self.batch_size_of(batch) < self.world_size):
                    if self.sharded and not self.per_rank_batches:
                        batch = shard(batch, self.rank, self.world_size)
                    examples += self.batch_size_of(batch)
                    if self.collate is not None:
                        batch = self.collate(batch)
                    with autocast(cfg.precision, self.device):  # fp32: no autocast at all
                        loss = self.forward(to_device(batch, self.device))
                    value, elapsed, time_up = self._agree(loss, clock() - start)
                    if not math.isfinite(value):  # checked before the optimiser step: the weights stay finite
                        raise self._diverged(f"the loss became {value}")
                    time_fraction = elapsed / (cfg.max_minutes * 60) if cfg.time_schedule and cfg.max_minutes else 0.0
                    for group in self.optimizer.param_groups:
                        group["lr"] = cfg.lr * lr_factor(self.state["global_step"], self.total_steps, cfg.warmup,
                                                         cfg.schedule, time_fraction)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    # DDP hands every rank the same averaged gradients, so the norm, and this verdict, agree
                    norm = clip_gradients(self.optimized_parameters(), cfg.clip_norm, cfg.clip_value)
                    if not math.isfinite(norm):
                        raise self._diverged(f"the gradient norm became {norm} (loss {value:.6g})")
                    self.optimizer.step()
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                    running += value
                    n_loss += 1
                    epoch_loss += value
                    epoch_n += 1
                self.state["global_step"] += 1
                self.state["step_in_epoch"] = i + 1
                self.state["seconds"] = clock() - start
                if bar is not None:
                    rate = examples / max(1e-9, time.perf_counter() - t_examples)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running / max(1, n_loss):.4f}", ex_s=f"{rate:.0f}")
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
                if cfg.max_steps is not None and gs >= cfg.max_steps:  # the step budget: the same step on every rank
                    if self.state["step_in_epoch"] != self.steps_per_epoch and gs % eval_every:
                        self._run_eval(epoch + self.state["step_in_epoch"] / self.steps_per_epoch,
                                       running / max(1, n_loss))
                    stopped, done = "max-steps", True
                    break
                if time_up:  # agreed by every rank in this step's all-reduce: all stop here, at the same step
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
        if self.evaluate is None and self.on_best is not None and self.writes:
            with self._on_cpu(), self._averaged():
                self.on_best({})
        self.state["seconds"] = clock() - start
        self.save_checkpoint()
        if self.writes:
            self.plot()
        return TrainResult(
            best_metric=self.state["best"], best_step=self.state["best_step"], steps=self.state["global_step"],
            epochs_run=self.state["global_step"] / max(1, self.steps_per_epoch), seconds=self.state["seconds"],
            stopped=stopped, history=list(self.state["history"]),
        )

    def optimized_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters trained (whose gradients are clipped), in the module's order."""
        return self.loss.parameters() if self.step_fn is None else self.model.parameters()

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


# -- the setup every task shares ----------------------------------------------------------------------------
def training_config(training: TrainConfig | dict[str, Any] | None,
                    defaults: dict[str, Any] | None = None) -> TrainConfig:
    """The run's :class:`TrainConfig`: as given, or read from a dict over the task's ``defaults``; checked against
    the number of processes launched (:func:`check_world_size`)."""
    config = (training if isinstance(training, TrainConfig)
              else TrainConfig.from_dict({**(defaults or {}), **(training or {})}, "training"))
    check_world_size(config)  # every task reads its settings here, before its data: a launch that cannot work ends
    return config


def renamed_argument(function: str, new: str, value: Any, old: str, old_value: Any) -> Any:
    """The value of an argument that was renamed from ``old`` to ``new``: the old name still works (with a
    :class:`DeprecationWarning`); giving both, or neither, is a ``TypeError`` as for any argument."""
    if old_value is None:
        if value is None:
            raise TypeError(f"{function}() missing required argument: {new!r}")
        return value
    if value is not None:
        raise TypeError(f"{function}() got both {new!r} and its old name {old!r}")
    import warnings

    warnings.warn(f"{function}(): argument {old!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
    return old_value


@dataclass
class TrainingPlan:
    """What a task builds once its tokenizer is known and the seed is set: :func:`run_training` runs it.

    ``wrapper`` is the task's user-facing model (``.info``, ``.save(out)``, and its class's ``load`` reloads it);
    ``record_best(metrics)`` updates it (and ``info``) when the dev metric improves, before it is saved to ``out``
    (the saving itself is rank 0's); the other fields go to :class:`Trainer`.
    """

    wrapper: Any
    loss: nn.Module
    batches: Callable[[int, np.random.Generator], Iterator[Any]]
    steps_per_epoch: int
    metric: str
    info: dict[str, Any]
    record_best: Callable[[dict[str, float]], None]
    collate: Callable[[Any], Any] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    rngs: dict[str, np.random.Generator] = field(default_factory=dict)
    #: ``batches`` yields each rank's own local batches (a stream reading the rank's part of the shards): the
    #: trainer does not split them again; every rank must yield ``steps_per_epoch`` of them
    per_rank_batches: bool = False


def run_training(
    config: TrainConfig,
    out: str | os.PathLike[str],
    fingerprint: dict[str, Any],
    build: Callable[[Any], TrainingPlan],
    *,
    run_dir: str | os.PathLike[str] | None = None,
    tokenizer: str | Tokenizer | None = None,
    tokenizer_options: dict[str, Any] | None = None,
    texts: Callable[[], Iterable[str]] | None = None,
    resume: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    started: float | None = None,
) -> tuple[Any, TrainResult]:
    """The part of training every task shares, done once here.

    Threads; the run directory (default ``out/training``); the resume check against ``fingerprint``; the
    tokenizer — a name is learnt from ``texts()`` and saved in the run directory, or reused from there when the run
    resumes; a given tokenizer is used as is; ``None``: the task has none — then ``build(tokenizer)`` after seeding
    torch, the :class:`Trainer` with the plan, the best model saved to ``out`` on each improvement, and
    :func:`finish_run`. Rank 0 alone writes; another rank returns its model as trained, unsaved. Launched by
    ``torchrun`` with several processes, it starts the process group first (:func:`init_distributed`) and destroys
    it at the end; each rank then trains on its part of every global batch of ``config.batch_size`` rows.
    """
    started = time.perf_counter() if started is None else started
    if config.threads:
        torch.set_num_threads(config.threads)
    group = init_distributed(device)  # under torchrun: the process group, destroyed when the run ends
    try:
        check_world_size(config)
        return _run_training(config, Path(out), fingerprint, build, run_dir, tokenizer, tokenizer_options, texts,
                             resume, progress, device, started)
    except RuntimeError as error:  # gloo/nccl report a lost peer as a RuntimeError: say what it means here
        if group and "Duplicate GPU detected" in str(error):  # NCCL's refusal of two ranks on one GPU
            raise ConfigError(f"--device cuda under {torch.distributed.get_world_size()} processes: two of them "
                              "share one GPU, and nccl runs one process per GPU (NCCL: 'Duplicate GPU detected'); "
                              "give each process its own LOCAL_RANK on each machine (torchrun does) and start at "
                              "most torch.cuda.device_count() per machine") from error
        if group:
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            error.add_note(f"deepsem: rank {rank} of {world} stopped: a collective failed, most likely because "
                           "another rank stopped or crashed (its own log says why); the run can resume from its "
                           "last checkpoint")
        raise
    finally:
        if group:
            _release_failed_run(sys.exc_info()[1])
            torch.distributed.destroy_process_group()


def _release_failed_run(error: BaseException | None) -> None:
    """Drop what a failed run still holds before its process group is destroyed. The frames of ``error``'s traceback
    (and of its causes) keep the trainer alive, and with it DDP's reducer, which holds the group: freed after
    ``destroy_process_group``, the reducer would be the group's last owner, and gloo's destructor joins its worker
    thread while holding the GIL, a deadlock when that thread still has a tensor to release (seen: a rank refused
    at its start hung in ``~ProcessGroupGloo``). Cleared here, the reducer goes first, as after a run that ends."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    gc.collect()


def _run_training(config: TrainConfig, out: Path, fingerprint: dict[str, Any], build: Callable[[Any], TrainingPlan],
                  run_dir: str | os.PathLike[str] | None, tokenizer: str | Tokenizer | None,
                  tokenizer_options: dict[str, Any] | None, texts: Callable[[], Iterable[str]] | None, resume: bool,
                  progress: bool | None, device: str | torch.device | None,
                  started: float) -> tuple[Any, TrainResult]:
    """:func:`run_training` once the process group (if any) is started."""
    run_dir = Path(run_dir) if run_dir is not None else out / "training"
    rank, world_size = distributed_rank()
    writes = rank == 0
    resuming = check_resume(run_dir, fingerprint, resume, discard=writes)
    tok: Any = tokenizer
    if isinstance(tokenizer, str):
        if resuming and (run_dir / "tokenizer" / "tokenizer.json").exists():
            tok = load_tokenizer(run_dir / "tokenizer")
        else:
            if texts is None:
                raise TypeError("a tokenizer given by name needs the training texts to learn it from")
            tok = build_tokenizer(tokenizer, iter(texts()), **(tokenizer_options or {}))
            if writes:
                tok.save(run_dir / "tokenizer")
    torch.manual_seed(config.seed)
    plan = build(tok)

    def on_best(metrics: dict[str, float]) -> None:
        plan.record_best(metrics)
        plan.wrapper.save(out)

    trainer = Trainer(plan.loss, config, run_dir, batches=plan.batches, steps_per_epoch=plan.steps_per_epoch,
                      collate=plan.collate, evaluate=plan.evaluate, metric=plan.metric, on_best=on_best,
                      progress=progress, fingerprint=fingerprint, rngs=plan.rngs, device=device, rank=rank,
                      world_size=world_size, per_rank_batches=plan.per_rank_batches)
    result = trainer.fit(resume=resume)
    if not writes:
        plan.loss.to("cpu")
        return plan.wrapper, result
    return finish_run(result, plan.info, out, run_dir, plan.metric, started, type(plan.wrapper).load), result
