"""Compatibility: text matching moved to :mod:`deepsem.tasks.matching` (this name keeps old imports working)."""

from deepsem.tasks.matching import *  # noqa: F403
from deepsem.tasks.matching import __all__  # noqa: F401
