"""Compatibility: the model-directory reader and writer moved to :mod:`deepsem.modeldir`."""

from deepsem.modeldir import *  # noqa: F403
from deepsem.modeldir import build_and_load, load_model_dir, read_config, read_weights_header, save_model_dir

__all__ = ["build_and_load", "load_model_dir", "read_config", "read_weights_header", "save_model_dir"]
