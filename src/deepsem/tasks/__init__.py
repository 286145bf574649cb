"""Tasks: what a trained model does for its user, one module per task, each of the same shape.

==================  ================  ========================================================================
task (config.json)  module            the model a user holds; train / evaluate
==================  ================  ========================================================================
``two-tower``       matching          :class:`SemanticModel`; :func:`train`, :func:`evaluate_pairs` (ranking, retrieval)
``classifier``      classification    :class:`Classifier`; :func:`train_classifier`, :func:`evaluate_classifier`
``recommender``     recommendation    :class:`Recommender`; :func:`train_recommender`, :func:`evaluate_recommender`
``rerank``          rerank            :class:`CrossEncoder`; :func:`train_rerank`, :func:`evaluate_rerank`
==================  ================  ========================================================================

Every ``train_X`` takes ``(data, out, dev=None, *, ...)`` (the recommender validates on the leave-last-out part of
its own log, so it has no ``dev``), builds the model, and hands the loop to :func:`deepsem.trainer.fit`. A new task
is a module here that ends with ``register(Task(...))`` and is imported below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepsem.data.precision import check_precision
from deepsem.deploy.runtime import BACKENDS
from deepsem.modeldir import read_config

# registration order is the order tasks are listed in messages
from deepsem.tasks import matching  # isort: split

from deepsem.tasks import classification  # isort: split

from deepsem.tasks import recommendation  # isort: split

from deepsem.tasks import rerank  # isort: split

from deepsem.tasks.registry import TASKS, Task, model_fields, register

__all__ = ["TASKS", "Task", "classification", "load", "matching", "recommendation", "register", "rerank"]


def load(directory: str | Path, precision: str = "fp32", *, backend: str = "torch",
         onnx: str | Path | None = None) -> Any:
    """Load any model directory deepsem wrote: ``config.json``'s ``task`` picks the :class:`Task` whose wrapper
    loads it (a :class:`~deepsem.tasks.matching.SemanticModel`, :class:`~deepsem.tasks.classification.Classifier`,
    :class:`~deepsem.tasks.recommendation.Recommender` or :class:`~deepsem.tasks.rerank.CrossEncoder`).

    ``precision`` ``bf16``: it encodes / predicts under bf16 autocast (:mod:`deepsem.data.precision`; refused on a
    CPU without native bf16, before anything is read). ``backend="onnx"`` answers through onnxruntime (the ``onnx``
    extra, fp32; int8 with an int8 file): the files ``deepsem export`` wrote at ``onnx`` (checked to come from these
    weights), or the towers exported in memory when ``onnx`` is None."""
    if backend not in BACKENDS:  # before anything is read
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_precision(precision)
    if backend == "onnx" and precision != "fp32":
        raise ValueError(f"precision {precision!r} is for the torch backend; onnx runs fp32 (or an int8 file)")
    loaded = TASKS[read_config(directory, model_fields())["task"]].load(directory)
    loaded.precision = precision
    return loaded.use_backend(backend, onnx) if backend != "torch" or onnx is not None else loaded
