"""Fault injection: every index write (build into a new and an existing directory, add, delete, rebuild; with
and without the lexical part) is SIGKILLed at random points, several per write: at a random step of the write
(the child kills itself there through ``vector_index._fault_hook``) and after a random delay. Afterwards the
index loads and equals exactly its state before or after the write (documents, deleted count, search results),
and the next write succeeds and leaves no leftovers. Also: several writer processes at once lose nothing."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_workers import BASE, EXTRA, OPS, QUERIES, initial, prepare

import deepsem
from deepsem.index import Index
from deepsem.index import vector_index as vi

STEP_KILLS = 1  # kills at a random step of the write, per write (each write has its own seed)
TIMED_KILLS = 1  # kills after a random delay, per write


@pytest.fixture(scope="module")
def ctx() -> Any:
    """Children forked from a server that imported deepsem, torch and faiss but ran nothing (fork-safe, fast)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["index_workers", "faiss"])
    return context


def snapshot(directory: Path) -> tuple[Any, Index | None]:
    """What a user sees of an index: live documents, deleted count, search results (None: no index); and the
    index loaded."""
    try:
        index = Index.load(directory)
    except FileNotFoundError:
        return None, None
    docs = sorted((i, t, tuple(sorted(m.items()))) for batch in index.store.iter_live() for _, i, t, m in batch)
    hits = [[(h.id, round(h.score, 5)) for h in found] for found in index.search(QUERIES, k=5)]
    return (docs, index.store.deleted_count(), hits), index


def leftovers(directory: Path) -> list[str]:
    """Everything but CURRENT, LOCK and the one version CURRENT names."""
    current = Index.current_version(directory)
    return sorted(p.name for p in directory.iterdir() if p.name not in ("CURRENT", "LOCK", current))


@pytest.mark.parametrize("lexical", [False, True], ids=["dense", "lexical"])
@pytest.mark.parametrize("op", OPS)
def test_a_killed_write_leaves_the_old_or_the_new_index(ctx, trained_model_dir, tmp_path, op, lexical):
    model = deepsem.load(trained_model_dir)
    pristine = tmp_path / "pristine"
    initial(op, pristine, model, lexical)
    old = snapshot(pristine)[0]
    reference = tmp_path / "reference"
    if pristine.exists():
        shutil.copytree(pristine, reference)
    steps: list[str] = []
    write = prepare(op, reference, trained_model_dir, lexical)
    vi._fault_hook = steps.append
    try:
        t0 = time.perf_counter()
        write()
        duration = time.perf_counter() - t0
    finally:
        vi._fault_hook = None
    new = snapshot(reference)[0]
    assert new != old and len(steps) >= 5
    rng = np.random.default_rng(zlib.crc32(f"{op}/{lexical}".encode()))
    for trial in range(STEP_KILLS + TIMED_KILLS):
        directory = tmp_path / f"trial{trial}"
        if pristine.exists():
            shutil.copytree(pristine, directory)
        kill_at = int(rng.integers(1, len(steps) + 1)) if trial < STEP_KILLS else None
        started = ctx.Event()
        child = ctx.Process(target=write_and_die_target(), args=(op, str(directory), str(trained_model_dir),
                                                                  lexical, kill_at, started))
        child.start()
        if kill_at is None:
            assert started.wait(60)
            time.sleep(float(rng.uniform(0, duration * 1.5)))
            with contextlib.suppress(ProcessLookupError):  # it may have finished (and been reaped) already
                os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        where = f"killed at step {kill_at} ({steps[kill_at - 1]})" if kill_at else "killed after a delay"
        assert child.exitcode == -signal.SIGKILL or (kill_at is None and child.exitcode == 0), where
        state, index = snapshot(directory)
        assert state in (old, new), where
        # the next write succeeds: the dead writer's lock and work folder are no obstacle, and are cleaned up
        if index is None:
            Index.build(model, BASE, directory, lexical=lexical, lock_timeout=5)
        else:
            index.delete(["d0", "d2"], lock_timeout=5)
        assert leftovers(directory) == [], where


def write_and_die_target() -> Any:
    from index_workers import write_and_die

    return write_and_die


def test_concurrent_writers_lose_nothing(ctx, trained_model_dir, tmp_path):
    directory = tmp_path / "idx"
    Index.build(deepsem.load(trained_model_dir), BASE, directory)
    from index_workers import add_together

    writers = 4
    barrier = ctx.Barrier(writers)
    batches = [[f"w{w}-{j}" for j in range(5)] for w in range(writers)]
    children = [ctx.Process(target=add_together, args=(str(directory), ids, barrier)) for ids in batches]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0] * writers
    index = Index.load(directory)
    ids = sorted(i for batch in index.store.iter_live() for _, i, _, _ in batch)
    assert ids == sorted([d.id for d in BASE] + [i for batch in batches for i in batch])
    rows = sorted(r for batch in index.store.iter_live() for r, _, _, _ in batch)
    assert sorted(index.vectors.ids().tolist()) == rows  # one vector per document
    assert leftovers(directory) == []
    assert EXTRA  # the shared documents module is the one the children use
