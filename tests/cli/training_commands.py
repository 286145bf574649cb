"""What the CLI tests of the training commands share: the commands, one input every one accepts, a fake trainer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: command, the library function it calls (module, name)
COMMANDS = [
    (["train"], "deepsem.tasks.matching", "train"),
    (["classify", "train"], "deepsem.tasks.classification", "train_classifier"),
    (["recommend", "train"], "deepsem.tasks.recommendation", "train_recommender"),
]


def training_input(tmp_path: Path) -> Path:
    """One file every training command accepts: three tab-separated columns (text, text / label, number)."""
    data = tmp_path / "data.tsv"
    data.write_text("".join(f"u{i % 3}\tthing {i}\t{i}\n" for i in range(12)), encoding="utf-8")
    return data


def fake_train(calls: list[dict[str, Any]]) -> Any:
    """A stand-in for a ``train_X`` that records its keyword arguments and returns what the command prints."""
    def fake(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        calls.append(kwargs)
        model = SimpleNamespace(info={}, labels=["a", "b"])
        return model, SimpleNamespace(stopped="epochs", steps=1, seconds=0.0)

    return fake
