import json
import shutil
from pathlib import Path

import pytest

import deepsem
from deepsem.config import ConfigError
from deepsem.errors import ModelFileError


@pytest.fixture
def copy_dir(trained_model_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m"
    shutil.copytree(trained_model_dir, out, ignore=shutil.ignore_patterns("training"))
    return out


def edit_config(directory: Path, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_not_a_model_directory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not a deepsem model directory"):
        deepsem.load(tmp_path)


def test_corrupt_config_names_file_and_field(copy_dir: Path):
    edit_config(copy_dir, lambda c: c["model"]["tower"].update(hidden_size=-3))
    with pytest.raises(ConfigError, match=r"config.json.*'hidden_size' must be > 0"):
        deepsem.load(copy_dir)


def test_unknown_task_and_bad_json(copy_dir: Path):
    edit_config(copy_dir, lambda c: c.update(task="pickle"))
    with pytest.raises(ConfigError, match="'task'"):
        deepsem.load(copy_dir)
    (copy_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepsem.load(copy_dir)


def test_weights_must_match_the_config(copy_dir: Path):
    edit_config(copy_dir, lambda c: c["model"]["tower"].update(encoder="lstm"))  # no peephole weights expected
    with pytest.raises(ModelFileError, match=r"do not match config\.json.*tower\.rnn\.weight_c"):
        deepsem.load(copy_dir)


def test_tokenizer_size_must_match(copy_dir: Path):
    edit_config(copy_dir, lambda c: c["model"]["tower"].update(vocab_size=7))
    with pytest.raises(ConfigError, match="tokenizer has"):
        deepsem.load(copy_dir)


def test_missing_weights(copy_dir: Path):
    (copy_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        deepsem.load(copy_dir)


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path):
    import os

    from deepsem.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o644  # not the 0600 of the temporary file
        os.umask(0o077)
        assert atomic_write_text(tmp_path / "b.txt", "y").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary file left
