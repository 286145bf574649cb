"""Models that put towers to work: two-tower matching (more tasks reuse the same towers)."""

from deepsem.models.two_tower import TwoTowerModel

__all__ = ["TwoTowerModel"]
