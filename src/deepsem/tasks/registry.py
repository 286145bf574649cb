"""The task registry: one :class:`Task` per kind of model directory, keyed by ``config.json``'s ``task`` field.

A task module registers itself at import (``register(Task(...))`` at its end); :func:`deepsem.load` and the
model-directory reader look tasks up here, so nothing below the tasks names one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Task:
    """What deepsem knows of a task.

    ``name``: the value of ``config.json``'s ``task`` field; ``model_field``: the ``config.json`` field holding the
    model configuration; ``wrapper``: the class a user holds (``load(directory)``, ``save(directory)``);
    ``train`` / ``evaluate``: the task's ``train_X(data, out, dev, ...)`` and ``evaluate_X(model, data, ...)``;
    ``cli_group``: the ``deepsem`` command group that runs it.
    """

    name: str
    model_field: str
    wrapper: type
    train: Callable[..., Any]
    evaluate: Callable[..., Any]
    cli_group: str
    summary: str

    def load(self, directory: str | Path) -> Any:
        return self.wrapper.load(directory)  # type: ignore[attr-defined]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` (a name already taken by another task is an error)."""
    if task.name in TASKS and TASKS[task.name] is not task:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def model_fields() -> dict[str, str]:
    """``{task name: config.json field of its model configuration}`` of every registered task."""
    return {name: task.model_field for name, task in TASKS.items()}
