"""Compatibility: the model-directory reader and writer moved to :mod:`deepsem.modeldir`; here the known tasks
default to the task registry's, as they did."""

from pathlib import Path
from typing import Any

from deepsem import modeldir
from deepsem.modeldir import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_HEADER_BYTES,
    WEIGHTS_FILE,
    build_and_load,
    load_weights,
    read_json_file,
    read_weights_header,
)
from deepsem.models import TwoTowerModel
from deepsem.tasks.registry import model_fields
from deepsem.text import Tokenizer

__all__ = ["CONFIG_FILE", "MAX_CONFIG_BYTES", "MAX_HEADER_BYTES", "WEIGHTS_FILE", "build_and_load", "load_model_dir",
           "load_weights", "read_config", "read_json_file", "read_weights_header", "save_model_dir"]


def read_config(directory: str | Path) -> dict[str, Any]:
    return modeldir.read_config(directory, model_fields())


def load_model_dir(directory: str | Path) -> tuple[TwoTowerModel, Tokenizer, dict[str, Any]]:
    return modeldir.load_model_dir(directory, model_fields())


def save_model_dir(directory: str | Path, model: TwoTowerModel, tokenizer: Tokenizer,
                   extra: dict[str, Any] | None = None) -> Path:
    return modeldir.save_model_dir(directory, model, tokenizer, extra, task="two-tower", tasks=model_fields())
