"""The redesign changed no result: every task's deterministic training recipe (tests/fixtures/training_recipes.py)
gives what it gave with the code before it (tests/fixtures/training_v1/expected.json, written by
make_training_v1.py): the same loss and dev-metric history, the same vectors, probabilities and
recommendations."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURES = Path(__file__).parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from training_recipes import run_all  # noqa: E402


def _close(got: Any, want: Any, where: str, tol: float = 2e-4) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            _close(got[key], want[key], f"{where}.{key}", tol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]", tol)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=tol), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    threads = torch.get_num_threads()
    try:
        return run_all(tmp_path_factory.mktemp("recipes"))
    finally:
        torch.set_num_threads(threads)


EXPECTED = json.loads((FIXTURES / "training_v1" / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_same_results_as_before_the_redesign(results: dict[str, Any], recipe: str) -> None:
    _close(results[recipe], EXPECTED[recipe], recipe)
