"""Compatibility: :class:`SemanticModel` moved to :mod:`deepsem.tasks.matching`, :func:`load` to
:mod:`deepsem.tasks` (this name keeps old imports working)."""

from deepsem.tasks import load
from deepsem.tasks.matching import SemanticModel

__all__ = ["SemanticModel", "load"]
