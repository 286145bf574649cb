"""fileio.atomic_write_npy: the array round-trips through np.load without pickle; object arrays are refused and
leave no file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepsem.fileio import atomic_write_npy


def test_npy_round_trip(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = atomic_write_npy(tmp_path / "v.npy", array)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), array)


def test_object_arrays_are_refused_and_nothing_is_left(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write_npy(tmp_path / "v.npy", np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []
