"""Run the exported towers with onnxruntime inside deepsem: the ``backend="onnx"`` of :func:`deepsem.load`.

A model loaded with ``backend="onnx"`` keeps its PyTorch network (for saving, training further and its
configuration) but answers through onnxruntime sessions: either files written by ``deepsem export`` (checked to
have been exported from these very weights) or graphs exported in memory when it loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepsem.deploy.export import OPTIONAL_PARTS, onnx_models, part_names, part_path, weights_digest
from deepsem.errors import ConfigError, ModelFileError

if TYPE_CHECKING:
    import onnxruntime

#: The backends a model can answer through.
BACKENDS = ("torch", "onnx")


class OnnxRunner:
    """One onnxruntime session on the CPU, as many threads as torch uses (``torch.get_num_threads()``).

    ``spinning=False``: its threads sleep as soon as a run ends instead of spinning for the next one. Each session
    has threads of its own (onnxruntime's Python binding has no pool shared between sessions), so a model that runs
    several sessions one after another (the re-ranker with its document cache) would have one session's spinning
    threads slow the next one's run down, twice as slow on 2 cores (bench/RESULTS.md)."""

    def __init__(self, model: bytes | str | os.PathLike[str], threads: int | None = None,
                 spinning: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the onnx extra is part of the test set-up
            raise ConfigError("the onnx backend needs onnxruntime: pip install 'deepsem[onnx]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else os.fspath(model)
        try:
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(
                source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            where = "" if isinstance(model, bytes) else f"{model}: "
            raise ModelFileError(f"{where}not an ONNX model onnxruntime can run ({exc})") from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})


def runners(held: Any, path: str | os.PathLike[str] | None = None, spinning: bool = True) -> dict[str, OnnxRunner]:
    """Sessions for every part of ``held`` (a loaded model): from the files ``deepsem export`` wrote at ``path``
    (each checked to come from these very weights; an optional part not there is left out), or exported in memory
    when ``path`` is None."""
    if path is None:
        return {part: OnnxRunner(m.SerializeToString(), spinning=spinning) for part, m in onnx_models(held).items()}
    net = getattr(held, "model", held)
    parts, digest, out = part_names(net), weights_digest(net), Path(path)
    found: dict[str, OnnxRunner] = {}
    for part in parts:
        file = part_path(out, part, parts[0])
        if part in OPTIONAL_PARTS and not file.exists() and not file.is_symlink():
            continue  # an export of an earlier deepsem: the model answers without that part
        if not file.is_file():
            raise ModelFileError(f"{file}: no such ONNX file (write it with deepsem export)")
        runner = found[part] = OnnxRunner(file, spinning=spinning)
        if runner.metadata.get("deepsem.part") != part:
            raise ModelFileError(f"{file}: holds part {runner.metadata.get('deepsem.part')!r}, expected {part!r}")
        if runner.metadata.get("deepsem.weights_sha256") != digest:
            raise ModelFileError(f"{file}: was exported from other weights than this model's (metadata "
                                 "deepsem.weights_sha256 differs): export it again")
    return found


def padded_batches(ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]]:
    """``(rows, ids (b, T) int64, lengths (b,) int64)`` batches of ``ids`` sorted by length (shortest first),
    right-padded with 0 to each batch's longest; ``rows`` are the positions in ``ids``."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch_lengths = lengths[rows]
        batch = np.zeros((len(rows), int(batch_lengths.max())), dtype=np.int64)
        for i, r in enumerate(rows):
            batch[i, : batch_lengths[i]] = ids[r]
        yield rows, batch, batch_lengths


def run_batches(runner: OnnxRunner, ids: Sequence[Sequence[int]], batch_size: int, width: int,
                output: int = 0) -> np.ndarray:
    """Output ``output`` ``(N, width)`` float32 of a text graph over token ids ``ids``, batched by length."""
    out = np.zeros((len(ids), width), np.float32)
    for rows, batch, lengths in padded_batches(ids, batch_size):
        out[rows] = runner.run({"input_ids": batch, "lengths": lengths})[output]
    return out


class Backend:
    """What a task's model class needs to answer through onnxruntime: :meth:`use_backend` and :attr:`backend`.

    The PyTorch network stays the model (saving and further training use it); after changing its weights, call
    :meth:`use_backend` again, since the sessions hold a copy of the weights they were exported with.
    """

    _onnx: dict[str, OnnxRunner] | None = None
    _onnx_file: str | os.PathLike[str] | None = None
    #: Whether the sessions' threads spin between runs (:class:`OnnxRunner`): off for a model that runs several.
    _onnx_spinning = True

    @property
    def backend_options(self) -> dict[str, Any]:
        """The keywords of :func:`deepsem.load` that give a model answering as this one (for reloading)."""
        return {"backend": self.backend, "onnx": self._onnx_file, "precision": getattr(self, "precision", "fp32")}

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnx"``: what answers :meth:`encode` / ``predict`` / ``recommend``."""
        return "torch" if self._onnx is None else "onnx"

    def use_backend(self, backend: str = "torch", onnx: str | os.PathLike[str] | None = None) -> Any:
        """Answer through ``backend``: ``"onnx"`` runs the files ``deepsem export`` wrote at ``onnx`` (checked to
        come from these weights), or graphs exported in memory when ``onnx`` is None; returns ``self``."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "torch" and onnx is not None:
            raise ValueError("an ONNX file needs backend='onnx'")
        self._onnx = runners(self, onnx, self._onnx_spinning) if backend == "onnx" else None
        self._onnx_file = onnx
        return self
