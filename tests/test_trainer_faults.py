"""Fault injection: training processes SIGKILLed at seeded random points resume to exactly the weights of an
uninterrupted run, random negatives included, and never read a half-written checkpoint.

Each run is a child of a fork server that imported deepsem once (a fresh interpreter per run would spend most
of the test importing torch). A child kills itself with SIGKILL (no cleanup, no ``finally``) at the chosen
point: in the middle of a training step, or before/inside one of the file operations of a checkpoint write
(a torn write leaves a truncated file, as a kill during ``write`` would).
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_pairs, write_tsv
from safetensors.torch import load_file

from deepsem.errors import DeepsemError
from deepsem.trainer import find_checkpoint, read_checkpoint

MODEL = {"tower": {"embedding_dim": 8, "hidden_size": 8, "output_dim": 8}}
TRAINING = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "checkpoint_every": 2, "threads": 1,
            "loss": "softmax", "negatives": "random", "num_negatives": 2}
STEPS = 12  # 48 pairs, batches of 8, 2 epochs
WRITE_OPS = ("save_model", "save_file", "fsync_path", "atomic_write_json", "rename")


def _train(data: str, out: str, kill: dict[str, Any] | None) -> None:
    """Runs in a fork-server child: train, SIGKILLing this process at ``kill`` (see the module docstring)."""
    import os
    import signal

    import deepsem
    from deepsem import trainer as tm

    tm.Trainer.plot = lambda self: None  # matplotlib would cost a second per run; not under test
    counter = {"n": 0, "inside": False}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if kill and "step" in kill:
        real_clip = tm.clip_gradients

        def clip(*args: Any, **kwargs: Any) -> float:  # after backward, before the optimiser step
            counter["n"] += 1
            if counter["n"] == kill["step"]:
                die()
            return real_clip(*args, **kwargs)

        tm.clip_gradients = clip
    if kill and "op" in kill:
        real_save = tm.Trainer.save_checkpoint

        def save(self: Any) -> None:
            counter["inside"] = True
            try:
                real_save(self)
            finally:
                counter["inside"] = False

        tm.Trainer.save_checkpoint = save

        def hook(module: Any, name: str) -> None:
            real = getattr(module, name)

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                if counter["inside"]:
                    counter["n"] += 1
                    if counter["n"] == kill["op"]:
                        if kill.get("torn") and name in ("save_model", "save_file"):
                            real(*args, **kwargs)
                            path = str(args[1])
                            os.truncate(path, os.path.getsize(path) // 2)
                        die()
                return real(*args, **kwargs)

            setattr(module, name, wrapped)

        for name in WRITE_OPS[:-1]:
            hook(tm, name)
        hook(os, "rename")
    deepsem.train(Path(data) / "train.tsv", out, Path(data) / "dev.tsv", model=MODEL, training=TRAINING,
                  progress=False)


@pytest.fixture(scope="module")
def server():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["deepsem", "deepsem.tasks.matching", "torch._dynamo"])  # AdamW imports dynamo: seconds
    return ctx


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    write_tsv(d / "train.tsv", make_pairs(48, 11))
    write_tsv(d / "dev.tsv", make_pairs(16, 12))
    return d


def run(server: Any, data: Path, out: Path, kill: dict[str, Any] | None = None) -> int | None:
    proc = server.Process(target=_train, args=(str(data), str(out), kill))
    proc.start()
    proc.join(120)
    if proc.exitcode is None:
        proc.kill()
        pytest.fail(f"training child hung ({kill})")
    return proc.exitcode


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {"checkpoint": load_file(str(out / "training" / "checkpoint" / "model.safetensors")),
            "best model": load_file(str(out / "model.safetensors"))}


@pytest.fixture(scope="module")
def reference(server: Any, data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("reference") / "m"
    assert run(server, data, out) == 0
    assert read_checkpoint(out / "training" / "checkpoint")["global_step"] == STEPS
    return weights(out)


def assert_same(reference: dict[str, dict[str, torch.Tensor]], out: Path, why: str) -> None:
    got = weights(out)
    for kind, tensors in reference.items():
        assert tensors.keys() == got[kind].keys()
        for name, value in tensors.items():
            assert torch.equal(value, got[kind][name]), f"{why}: {kind} {name} differs from the uninterrupted run"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_in_a_training_step_resumes_to_the_same_weights(server, data, reference, tmp_path, seed):
    step = random.Random(seed).randint(3, STEPS)  # after the first checkpoint (step 2)
    out = tmp_path / "m"
    assert run(server, data, out, {"step": step}) == -9
    folder = find_checkpoint(out / "training")
    assert folder is not None and read_checkpoint(folder)["global_step"] < step
    assert run(server, data, out) == 0
    assert_same(reference, out, f"killed in step {step}")


# The operations of a checkpoint write, counted over the run: the first checkpoint (step 2) has 8 (save_model,
# save_file, fsync x2, trainer_state.json, fsync of the folder, rename into place, fsync of the run folder), later
# ones 9 (the previous checkpoint is renamed away first). So 9/10: the 2nd checkpoint's weights/optimiser file
# torn; 13: its state file not yet written; 16: between the two renames (no checkpoint/ at all); 19: the 3rd
# checkpoint's optimiser file torn; and one seeded random point.
KILLS = [{"op": 9, "torn": True}, {"op": 10, "torn": True}, {"op": 13}, {"op": 16}, {"op": 19, "torn": True},
         {"op": random.Random(7).randint(1, 40), "torn": True}]


@pytest.mark.parametrize("kill", KILLS, ids=[f"op{k['op']}{'-torn' if k.get('torn') else ''}" for k in KILLS])
def test_killed_inside_a_checkpoint_write_never_reads_it_half_written(server, data, reference, tmp_path, kill):
    out = tmp_path / "m"
    assert run(server, data, out, kill) == -9
    run_dir = out / "training"
    try:
        folder = find_checkpoint(run_dir)
    except DeepsemError as exc:  # pragma: no cover - the point of the test
        pytest.fail(f"{kill}: no usable checkpoint after the kill: {exc}")
    if folder is not None:
        read_checkpoint(folder)  # complete and verified
    # what the kill left half-done (a torn file, a folder without its state) is never what a resume reads
    half_written = []
    for leftover in run_dir.glob("checkpoint.tmp-*"):
        try:
            read_checkpoint(leftover)
        except DeepsemError:
            half_written.append(leftover)
    assert folder not in half_written
    if kill.get("torn") and kill["op"] in (9, 10, 19):
        assert half_written, "the torn write left no half-written folder"
    if kill["op"] == 16:  # between the renames: the complete new checkpoint is taken from its temporary name
        assert not (run_dir / "checkpoint").exists() and folder is not None and folder.name.startswith(
            "checkpoint.tmp-") and read_checkpoint(folder)["global_step"] == 4
    assert run(server, data, out) == 0
    assert_same(reference, out, f"killed at checkpoint operation {kill}")
    assert not list(run_dir.glob("checkpoint.*-*"))  # leftovers cleaned up by the next checkpoint
