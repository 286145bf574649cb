"""Compatibility: the demo moved to :mod:`deepsem.tools.demo` (this name keeps old imports working)."""

from deepsem.tools.demo import *  # noqa: F403
from deepsem.tools.demo import __all__  # noqa: F401
