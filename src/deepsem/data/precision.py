"""Numeric precision of training and encoding: ``fp32`` (the default) or ``bf16`` mixed precision.

``bf16`` runs the forward pass (and the loss) under ``torch.autocast(device_type, dtype=torch.bfloat16)``: matmuls
and convolutions in bfloat16, reductions and the weights (and the optimiser's state) in float32. It is offered only
where the device computes bf16 natively — a CPU with AVX512-BF16 or AMX (x86) or Arm's bf16 extension, a CUDA GPU
that reports ``torch.cuda.is_bf16_supported``, or MPS with bf16 tensors — since an emulated bf16 is slower than
float32 and gains nothing. :func:`check_precision` says so before any work.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from deepsem.errors import ConfigError

__all__ = ["PRECISIONS", "HasPrecision", "as_float32", "autocast", "bf16_supported", "check_precision"]

#: The precisions deepsem trains and encodes in.
PRECISIONS = ("fp32", "bf16")


def _cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively: torch's own probes on x86 (AVX512-BF16, AMX); elsewhere the ``bf16``
    feature flag of ``/proc/cpuinfo`` (Arm v8.6+). Autocast itself runs on any CPU, emulating what it lacks."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return any(key.strip() in ("flags", "Features") and "bf16" in value.split()
               for key, _, value in (line.partition(":") for line in lines))


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) computes bfloat16 natively."""
    kind = torch.device(device).type
    if kind == "cpu":
        return _cpu_bf16()
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # an older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())
    if kind == "mps":
        if not torch.backends.mps.is_available():
            return False
        try:  # macOS 14 and later
            torch.ones(1, dtype=torch.bfloat16, device="mps")
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def check_precision(precision: str, device: str | torch.device = "cpu") -> None:
    """Raise :class:`ConfigError` when ``precision`` is not one of :data:`PRECISIONS` or ``device`` cannot do it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported(device):
        where = str(device)
        what = ("this CPU has neither AVX512-BF16 nor AMX" if torch.device(device).type == "cpu"
                else f"{where} does not support bfloat16")
        raise ConfigError(f"--precision bf16 on {where}: {what}; use --precision fp32")


@contextmanager
def autocast(precision: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """``torch.autocast`` to bfloat16 on ``device``'s type for ``bf16``; nothing at all for ``fp32`` (so the default
    computes exactly what it did before precisions existed)."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield


def as_float32(vectors: torch.Tensor, normalise: bool) -> torch.Tensor:
    """``vectors`` in float32; with ``normalise`` L2-normalised again in float32 (a bf16 normalisation leaves
    norms up to ~1e-2 off 1, which would show in every cosine)."""
    out = vectors.float()
    if normalise and vectors.dtype != torch.float32:
        out = torch.nn.functional.normalize(out, dim=-1)
    return out




class HasPrecision:
    """Mixin of the task wrappers: ``precision`` (``fp32`` or ``bf16``) their encoding or prediction runs in,
    checked against this machine's CPU when set (the wrappers compute on the CPU)."""

    _precision: str = "fp32"

    @property
    def precision(self) -> str:
        """``fp32`` (the default) or ``bf16``: the precision :meth:`encode` / :meth:`predict` compute in."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        check_precision(value)
        self._precision = value
