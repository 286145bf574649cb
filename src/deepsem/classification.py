"""Compatibility: classification moved to :mod:`deepsem.tasks.classification` (this name keeps old imports
working)."""

from deepsem.tasks.classification import *  # noqa: F403
from deepsem.tasks.classification import __all__  # noqa: F401
