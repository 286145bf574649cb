"""The import-linter contracts in pyproject.toml: the tree keeps them, and a forbidden import breaks them.

The second half copies src/deepsem to a temporary folder, adds one import that crosses a layer, and runs the same
contracts on the copy: each must name the offending import, so a contract that checks nothing would fail here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "deepsem"
CONFIG = ROOT / "pyproject.toml"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` with the project's contracts on the ``deepsem`` package found under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", LINT, "--config", str(CONFIG), "--no-cache"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=120)


def layers_contract() -> dict[str, object]:
    contracts = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["id"] == "layers")


def layer_names(layer: str) -> list[str]:
    return [name.strip().strip("()") for name in layer.replace(":", "|").split("|")]


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


def test_every_module_of_the_package_has_a_layer_or_is_a_shim() -> None:
    contract = layers_contract()
    placed = [name for layer in contract["layers"] for name in layer_names(layer)]  # type: ignore[attr-defined]
    assert len(placed) == len(set(placed))
    shims = set(contract["exhaustive_ignores"])  # type: ignore[call-overload]
    children = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    children |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert children - shims <= set(placed), "a module outside every layer"
    assert not shims & set(placed)
    assert contract["exhaustive"] is True


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package to break (no resources or caches: the contracts read only the sources)."""
    shutil.copytree(PACKAGE, tmp_path / "deepsem", ignore=shutil.ignore_patterns("__pycache__", "resources"))
    return tmp_path


@pytest.mark.parametrize(("module", "line", "named"), [
    # a lower layer importing a higher one
    ("nn/lstm.py", "import deepsem.tasks", "deepsem.nn.lstm -> deepsem.tasks"),
    ("text/vocab.py", "from deepsem.data import readers", "deepsem.text.vocab -> deepsem.data.readers"),
    ("models/two_tower.py", "import deepsem.index", "deepsem.models.two_tower -> deepsem.index"),
    ("tasks/registry.py", "from deepsem.serve import app", "deepsem.tasks.registry -> deepsem.serve.app"),
    ("fileio.py", "import deepsem.metrics", "deepsem.fileio -> deepsem.metrics"),
    # independent siblings of one layer
    ("trainer.py", "import deepsem.evaluation", "deepsem.trainer -> deepsem.evaluation"),
    ("vectorstore/exact.py", "import deepsem.metrics", "deepsem.vectorstore.exact -> deepsem.metrics"),
    # config reads the tower registry: a tower importing config at run time would be a circle
    ("towers/recurrent.py", "import deepsem.config", "deepsem.towers.recurrent -> deepsem.config"),
    # towers see no data code (a layer below them, but not theirs to import)
    ("towers/recurrent.py", "import deepsem.data.batches", "deepsem.towers.recurrent -> deepsem.data.batches"),
    # models see no data or text code, evaluation no model code (both layers below allow it)
    ("models/classifier.py", "import deepsem.data.batches", "deepsem.models.classifier -> deepsem.data.batches"),
    ("evaluation/pairs.py", "from deepsem.text import vocab", "deepsem.evaluation.pairs -> deepsem.text.vocab"),
    # the index reaches a task only through the registry package
    ("index/store.py", "from deepsem.tasks import classification",
     "deepsem.index.store -> deepsem.tasks.classification"),
    # nothing imports the package root, not even through a shim-free path at the bottom
    ("errors.py", "import deepsem", "deepsem.errors -> deepsem "),
    ("serve/guard.py", "from deepsem import __version__", "deepsem.serve.guard -> deepsem "),
])
def test_a_forbidden_import_is_caught(tree: Path, module: str, line: str, named: str) -> None:
    path = tree / "deepsem" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # crosses a layer\n", encoding="utf-8")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert named in result.stdout, result.stdout


def test_a_module_outside_every_layer_is_caught(tree: Path) -> None:
    (tree / "deepsem" / "newthing.py").write_text('"""A module nobody placed in a layer."""\n', encoding="utf-8")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "deepsem.newthing" in result.stdout, result.stdout


def test_an_import_under_type_checking_is_allowed(tree: Path) -> None:
    path = tree / "deepsem" / "nn" / "lstm.py"
    path.write_text(path.read_text(encoding="utf-8") + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                    "    import deepsem.tasks  # annotations only\n", encoding="utf-8")
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout
