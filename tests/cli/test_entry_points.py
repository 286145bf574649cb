"""Every way of starting the command reaches every command group, and the CLI's choices are the registries'."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer

from deepsem.cli import app, main
from deepsem.config import RECURRENT_ENCODERS
from deepsem.text import TOKENIZERS
from deepsem.towers import TOWERS

SRC = Path(__file__).resolve().parents[2] / "src"
#: The command groups and their commands, as the README documents them.
GROUPS = {
    "index": ["build", "add", "delete", "rebuild", "stats"],
    "classify": ["train", "evaluate", "predict"],
    "embeddings": ["train"],
    "diagnose": ["gradients"],
    "recommend": ["train", "evaluate", "predict", "item2vec", "serve"],
    "rerank": ["train", "evaluate", "predict"],
    "negatives": ["mine"],
    "distill": ["cache"],
}
TOP = ["train", "evaluate", "encode", "search", "serve", "demo"]


def commands_listed(output: str, names: list[str]) -> bool:
    """Whether every name starts a line of the help's command table."""
    firsts = {line.strip(" │|").split(" ")[0] for line in output.splitlines()}
    return set(names) <= firsts


def run_help(start, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The help that ``start()`` prints for ``args``, which must exit with 0."""
    with pytest.raises(SystemExit) as exited:
        start(args)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "No such command" not in out
    return out


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", ["deepsem", "deepsem.cli"])
@pytest.mark.parametrize("group", [None, *GROUPS])
def test_python_m_help_of_every_group(module: str, group: str | None, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # runpy runs the module as `python -m` does: `python -m deepsem.cli recommend --help` once answered
    # "No such command 'recommend'" (main() ran before the recommend group was added)
    def start(args: list[str]) -> None:
        monkeypatch.setattr(sys, "argv", [module, *args])
        runpy.run_module(module, run_name="__main__", alter_sys=True)

    out = run_help(start, [group, "--help"] if group else ["--help"], capsys)
    assert commands_listed(out, GROUPS[group] if group else TOP + list(GROUPS))


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_console_script_help_of_every_group(group: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    # the `deepsem` script's target, as pyproject.toml declares it
    scripts = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    target = EntryPoint("deepsem", scripts["deepsem"], "console_scripts").load()
    out = run_help(target, [group, "--help"] if group else ["--help"], capsys)
    assert commands_listed(out, GROUPS[group] if group else TOP + list(GROUPS))


@pytest.mark.parametrize("start", [["-m", "deepsem"], ["-m", "deepsem.cli"], ["deepsem"]])
def test_a_real_process_reaches_the_last_group(start: list[str]) -> None:
    if start == ["deepsem"]:
        script = shutil.which("deepsem", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("no deepsem script beside this interpreter")
        command = [script]
    else:
        command = [sys.executable, *start]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    done = subprocess.run([*command, "recommend", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert commands_listed(done.stdout, GROUPS["recommend"])


def option_choices(path: list[str], option: str) -> list[str]:
    """The choices the CLI offers for ``option`` of the command at ``path``."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    param = next(p for p in command.params if option in p.opts)
    described = getattr(param, "type_descriptor", None)  # typer's own parameter types; click's Choice otherwise
    values = described.choices if described is not None else param.type.choices
    return [str(getattr(value, "value", value)) for value in values]


@pytest.mark.parametrize("path", [["train"], ["classify", "train"]])
def test_encoder_choices_are_the_tower_registry(path: list[str]) -> None:
    assert option_choices(path, "--encoder") == list(TOWERS)


def test_recommender_encoder_choices_are_the_recurrent_towers() -> None:
    choices = option_choices(["recommend", "train"], "--encoder")
    assert choices == [name for name, spec in TOWERS.items() if spec.recurrent]
    assert sorted(choices) == sorted(RECURRENT_ENCODERS)


@pytest.mark.parametrize("path", [["train"], ["classify", "train"], ["embeddings", "train"]])
def test_tokenizer_choices_are_the_tokenizer_registry(path: list[str]) -> None:
    assert option_choices(path, "--tokenizer") == list(TOKENIZERS)


def test_main_is_the_console_entry_point() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
