"""Pair evaluation with the threshold chosen on dev pairs (``threshold_on`` / ``evaluate_pairs(dev=...)``), against
scores and accuracies worked out by hand, and ``deepsem evaluate --dev`` giving the library's numbers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepsem.cli import app
from deepsem.data.pairs import TextPairs, as_pairs
from deepsem.tasks import load
from deepsem.tasks.matching import evaluate_pairs, threshold_on

#: the similarity of each pair, chosen by hand
SCORES = {("d", "1"): 0.1, ("d", "2"): 0.4, ("d", "3"): 0.6, ("d", "4"): 0.9,
          ("t", "1"): 0.45, ("t", "2"): 0.55, ("t", "3"): 0.7, ("t", "4"): 0.2}
DEV = TextPairs(["d"] * 4, ["1", "2", "3", "4"], np.array([0, 0, 1, 1]))
TEST = TextPairs(["t"] * 4, ["1", "2", "3", "4"], np.array([1, 0, 1, 0]))


class Scores:
    """A text encoder whose similarities are the table above."""

    def encode(self, texts: Sequence[str], batch_size: int = 512, side: str = "query") -> np.ndarray:
        raise NotImplementedError

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return np.array([SCORES[(x, y)] for x, y in zip(a, b, strict=True)])


def test_threshold_on_dev_by_hand() -> None:
    # dev: negatives at 0.1, 0.4, positives at 0.6, 0.9: only the midpoint 0.5 separates them all
    assert threshold_on(Scores(), DEV) == pytest.approx(0.5)


def test_evaluate_pairs_with_dev_scores_test_at_the_dev_threshold() -> None:
    metrics = evaluate_pairs(Scores(), TEST, dev=DEV)
    # test at 0.5: predicted [-, +, +, -] against [+, -, +, -]: 2 of 4 right; tp 1, fp 1, fn 1 -> F1 0.5
    assert metrics["threshold"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5) and metrics["f1"] == pytest.approx(0.5)
    # chosen on the test pairs themselves: 0.2 < t <= 0.45 gets 3 of 4 right ([+, +, +, -]), none gets 4
    own = evaluate_pairs(Scores(), TEST)
    assert own["accuracy"] == pytest.approx(0.75)
    assert evaluate_pairs(Scores(), TEST, threshold=0.1)["accuracy"] == pytest.approx(0.5)  # all positive


def test_dev_pairs_must_be_labelled_and_not_given_with_a_threshold() -> None:
    with pytest.raises(ValueError, match="labelled dev pairs"):
        threshold_on(Scores(), TextPairs(["d"], ["1"]))
    with pytest.raises(ValueError, match="not both"):
        evaluate_pairs(Scores(), TEST, threshold=0.5, dev=DEV)


def test_cli_evaluate_dev_is_the_library_with_dev(pair_files: tuple[Path, Path], trained_model_dir: Path) -> None:
    train, dev = pair_files
    runner = CliRunner()
    model = load(trained_model_dir)
    test_pairs, dev_pairs = as_pairs(train, (0, 1, 2)), as_pairs(dev, (0, 1, 2))
    dev_scores = model.similarity(dev_pairs.text_a, dev_pairs.text_b)
    assert dev_pairs.labels is not None and test_pairs.labels is not None
    chosen = threshold_on(model, dev_pairs)
    # the chosen threshold is the most accurate on dev of every cut between dev scores
    accuracy = lambda t: float(np.mean((dev_scores >= t) == (dev_pairs.labels == 1)))  # noqa: E731
    assert accuracy(chosen) == max(accuracy(t) for t in [*dev_scores, dev_scores.max() + 1])
    expected = evaluate_pairs(model, test_pairs, threshold=chosen)
    for extra in ([], ["--threshold", "0.99"]):  # --dev wins over --threshold
        result = runner.invoke(app, ["evaluate", "--model", str(trained_model_dir), str(train), "--dev", str(dev),
                                     "--json", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == pytest.approx(expected)
    result = runner.invoke(app, ["evaluate", "--model", str(trained_model_dir), str(train), "--json"])
    assert json.loads(result.output)["threshold"] == pytest.approx(model.threshold)  # the model's own
