"""Towers: text ids -> a fixed-size vector. One module per tower family."""

from deepsem.towers.recurrent import RecurrentTower, build_tower

__all__ = ["RecurrentTower", "build_tower"]
