"""Towers: text ids ``(B, T)`` and lengths -> a fixed-size vector. One module per tower family.

Each module registers its tower names in :data:`TOWERS` (see :mod:`deepsem.towers.registry`); a new tower is a
new module here, imported below. ``deepsem towers``-style listings come from :func:`tower_table`:

{table}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

# registration order is the order of every list of choices: the recurrent towers (the default first), dssm, cnn
from deepsem.towers.recurrent import RECURRENT_ENCODERS, RecurrentTower  # isort: split

from deepsem.towers.dssm import DSSMTower  # isort: split

from deepsem.towers.cnn import CNNTower
from deepsem.towers.registry import TOWERS, TowerSpec, register, tower_table

if TYPE_CHECKING:
    from deepsem.config import TowerConfig

__doc__ = (__doc__ or "").format(table=tower_table())

#: Towers that read the ``trigram`` tokenizer's output (letter trigrams with word separators).
TRIGRAM_ENCODERS = tuple(name for name, spec in TOWERS.items() if spec.tokenizer == "trigram")


def build_tower(config: TowerConfig) -> nn.Module:
    """The tower named by ``config.encoder`` (an allow-list, never an import string)."""
    spec = TOWERS.get(config.encoder)
    if spec is None:
        raise ValueError(f"unknown encoder {config.encoder!r}")
    return spec.build(config)


def default_tokenizer(encoder: str, otherwise: str = "char") -> str:
    """The tokenizer a model with this tower uses when none is named: the one it needs, else ``otherwise``."""
    spec = TOWERS.get(encoder)
    return spec.tokenizer if spec is not None and spec.tokenizer else otherwise


__all__ = ["RECURRENT_ENCODERS", "TOWERS", "TRIGRAM_ENCODERS", "CNNTower", "DSSMTower", "RecurrentTower", "TowerSpec",
           "build_tower", "default_tokenizer", "register", "tower_table"]
