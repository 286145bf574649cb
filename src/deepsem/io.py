"""The model directory: ``config.json`` + tokenizer files + ``model.safetensors``. Never a pickle.

``config.json`` is validated (known task, strict model config, sane sizes) before any tensor is
allocated; the weights are read with safetensors, whose format holds only tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights
from torch import nn

from deepsem import __version__
from deepsem.config import ConfigError, ModelConfig
from deepsem.fileio import atomic_write, atomic_write_json
from deepsem.models import TwoTowerModel
from deepsem.text import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TASKS = ("two-tower", "classifier", "recommender")
#: The config.json field holding the model configuration of each task.
MODEL_FIELDS = {"two-tower": "model", "classifier": "classifier", "recommender": "recommender"}


def save_model_dir(
    directory: str | Path, model: TwoTowerModel, tokenizer: Tokenizer, extra: dict[str, Any] | None = None
) -> Path:
    """Write the model directory; each file atomically, ``config.json`` last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)
    atomic_write(directory / WEIGHTS_FILE, lambda p: _save_weights(model, str(p)))
    config = {"deepsem_version": __version__, "task": "two-tower", "model": model.config.to_dict()}
    config.update(extra or {})
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a deepsem model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    if config.get("task") not in TASKS:
        raise ConfigError(f"{path}: field 'task' is {config.get('task')!r}; expected one of {', '.join(TASKS)}")
    if MODEL_FIELDS[config["task"]] not in config:
        raise ConfigError(f"{path}: field {MODEL_FIELDS[config['task']]!r} is missing")
    return config


def read_task_config(directory: str | Path, task: str, noun: str) -> dict[str, Any]:
    """:func:`read_config` of a directory that must hold a ``task`` model (``noun`` names it in the error)."""
    config = read_config(directory)
    if config["task"] != task:
        raise ConfigError(f"{Path(directory) / CONFIG_FILE}: a {config['task']} model, not {noun}; load it with "
                          "deepsem.load")
    return config


def load_model_dir(directory: str | Path) -> tuple[TwoTowerModel, Tokenizer, dict[str, Any]]:
    """Rebuild the model from ``config.json``, load its weights and tokenizer."""
    directory = Path(directory)
    config = read_task_config(directory, "two-tower", "a two-tower model")
    model_config = ModelConfig.from_dict(config["model"], where=f"{directory / CONFIG_FILE}: model")
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size != model_config.tower.vocab_size:
        raise ConfigError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{model_config.tower.vocab_size}"
        )
    model = TwoTowerModel(model_config)
    load_weights(model, directory)
    model.eval()
    return model, tokenizer, config


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Read ``directory/model.safetensors`` into ``model`` (built from ``config.json``): every tensor must be
    there, with the shape the config gives it, and nothing else."""
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        missing, unexpected = _load_weights(model, str(weights), strict=False)
    except RuntimeError as exc:  # a tensor's shape differs from what config.json describes
        raise ConfigError(f"{weights}: weights do not match config.json: {str(exc).splitlines()[-1].strip()}"
                          ) from None
    if missing or unexpected:
        raise ConfigError(f"{weights}: weights do not match config.json (missing {missing}, unexpected {unexpected})")
