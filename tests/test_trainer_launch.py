"""A multi-process launch whose environment cannot start a process group (WORLD_SIZE > 1 without torchrun's RANK,
MASTER_ADDR, MASTER_PORT) is refused before anything is written: each process would otherwise take itself for rank 0
and write the same files. (A complete launch trains: see test_trainer_ddp.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_MODEL, make_pairs, write_tsv

import deepsem
from deepsem.errors import ConfigError
from deepsem.trainer import distributed_rank


@pytest.mark.parametrize(("world", "expected"), [(None, (0, 1)), ("1", (0, 1)), ("", (0, 1))])
def test_one_process_is_rank_0_of_1(monkeypatch: pytest.MonkeyPatch, world: str | None,
                                    expected: tuple[int, int]) -> None:
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert distributed_rank() == expected


def test_several_processes_without_a_process_group_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        distributed_rank()
    data = write_tsv(tmp_path / "pairs.tsv", make_pairs(64, 1))
    with pytest.raises(ConfigError, match="RANK, MASTER_ADDR, MASTER_PORT are missing"):
        deepsem.train(data, tmp_path / "out", model=TINY_MODEL, training={"epochs": 1}, progress=False)
    assert not (tmp_path / "out").exists()
