"""Compatibility: recommendation moved to :mod:`deepsem.tasks.recommendation` (this name keeps old imports
working, e.g. ``deepsem.recommend.load_movielens``)."""

from deepsem.tasks.recommendation import *  # noqa: F403
from deepsem.tasks.recommendation import __all__  # noqa: F401
