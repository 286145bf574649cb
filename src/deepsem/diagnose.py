"""Compatibility: the gradient diagnostics moved to :mod:`deepsem.tools.diagnose` (old imports keep working)."""

from deepsem.tools.diagnose import *  # noqa: F403
from deepsem.tools.diagnose import __all__  # noqa: F401
