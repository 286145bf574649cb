"""The task registry: every task is registered with the same shape, and deepsem.load dispatches through it.

The reference for names and fields is the model directories the pre-redesign code wrote
(tests/fixtures/model_dirs_v1): their config.json files name each task and the field holding its model.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import deepsem
from deepsem.errors import ConfigError
from deepsem.tasks import TASKS, Task, register

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model_dirs_v1"
# fixture folder -> the class a user gets back (the public names of the package root)
WRAPPERS = {"two_tower": deepsem.SemanticModel, "classifier": deepsem.Classifier, "recommender": deepsem.Recommender}


def config_of(folder: str) -> dict[str, Any]:
    return json.loads((FIXTURES / folder / "config.json").read_text(encoding="utf-8"))


def test_every_model_directory_kind_has_its_task() -> None:
    written = {config_of(folder)["task"]: folder for folder in WRAPPERS}
    assert set(TASKS) == set(written) | {"rerank"}  # one task per kind of directory (rerank came after v1)
    for name, folder in written.items():
        task = TASKS[name]
        assert task.name == name
        assert task.model_field in config_of(folder)  # the field the old code wrote the model under
        assert task.model_field != "task" and task.wrapper is WRAPPERS[folder]
    assert len({t.model_field for t in TASKS.values()}) == len(TASKS)


@pytest.mark.parametrize("name", ["two-tower", "classifier", "recommender", "rerank"])
def test_every_task_has_the_same_shape(name: str) -> None:
    task = TASKS[name]
    for method in ("load", "save"):
        assert callable(getattr(task.wrapper, method, None)), f"{task.wrapper.__name__}.{method}"
    assert isinstance(inspect.getattr_static(task.wrapper, "load"), classmethod | staticmethod)
    assert callable(task.train) and callable(task.evaluate)
    train = list(inspect.signature(task.train).parameters.values())
    assert train[1].name == "out"  # train_X(data, out, ...)
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in train[:2])
    assert task.cli_group and task.summary


@pytest.mark.parametrize("folder", sorted(WRAPPERS))
def test_load_gives_each_fixture_its_wrapper(folder: str) -> None:
    model = deepsem.load(FIXTURES / folder)
    assert type(model) is WRAPPERS[folder]
    assert type(deepsem.tasks.load(str(FIXTURES / folder))) is WRAPPERS[folder]


@pytest.mark.parametrize("folder", sorted(WRAPPERS))
def test_load_dispatches_through_the_registry(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Path] = []

    class Stub:
        @classmethod
        def load(cls, directory: str | Path) -> Stub:
            loaded.append(Path(directory))
            return cls()

    name = config_of(folder)["task"]
    monkeypatch.setitem(TASKS, name, dataclasses.replace(TASKS[name], wrapper=Stub))
    assert isinstance(deepsem.load(FIXTURES / folder), Stub)
    assert loaded == [FIXTURES / folder]


@pytest.mark.parametrize(("task", "named"), [("ranker", "'task'"), (None, "'task'"), (7, "'task'"),
                                             ("classifier", "'classifier'")])
def test_an_unknown_task_or_a_missing_model_field_is_a_config_error(tmp_path: Path, task: Any, named: str) -> None:
    directory = tmp_path / "model"
    shutil.copytree(FIXTURES / "two_tower", directory)
    config = config_of("two_tower")
    if task is None:
        del config["task"]
    else:
        config["task"] = task
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConfigError, match=named) as err:
        deepsem.load(directory)
    assert "config.json" in str(err.value)
    if named == "'task'":
        assert all(known in str(err.value) for known in TASKS)  # the message lists what is known


def test_a_name_is_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deepsem.tasks.registry.TASKS", dict(TASKS))  # restored after the test
    from deepsem.tasks import registry

    first = TASKS["classifier"]
    assert register(first) is first  # the same task again (a module imported twice) is fine
    with pytest.raises(ValueError, match="'classifier' is already registered"):
        register(dataclasses.replace(first, summary="another"))
    assert registry.TASKS["classifier"] is first
    new = Task(name="echo", model_field="echo", wrapper=object, train=print, evaluate=print, cli_group="echo",
               summary="a test task")
    assert register(new) is new and registry.TASKS["echo"] is new
    assert registry.model_fields()["echo"] == "echo"
    assert "echo" not in TASKS  # the package's registry was not touched
