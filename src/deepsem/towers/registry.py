"""The tower registry: every tower kind by name, with what the rest of deepsem must know about it.

Each tower module calls :func:`register` for the names it provides; :mod:`deepsem.config` (validation, defaults,
size bounds), the model builders and the CLI's choices all read :data:`TOWERS`, so a name is written once. Tower
modules only read a config's attributes, so they import :class:`~deepsem.config.TowerConfig` for typing alone and
the registry can be imported by ``deepsem.config`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from deepsem.config import TowerConfig

#: ``(what sizes it, elements)`` of each weight matrix of a model, an estimate made before anything is allocated.
TensorSizes = list[tuple[str, int]]


@dataclass(frozen=True)
class TowerSpec:
    """One tower kind: how to build it and what deepsem must know before building it.

    ``tokenizer``: the tokenizer whose output it reads (``"trigram"`` for dssm and cnn), or None for any.
    ``hidden_size`` / ``num_layers``: the defaults of a config that leaves them ``None``. ``sizes(config,
    prefix)``: its weight matrices for the size bounds of :mod:`deepsem.config`. ``gates``: gate blocks of a
    recurrent cell (rows of its weight matrices per hidden unit); None for a tower that is not recurrent.
    """

    name: str
    summary: str
    build: Callable[[TowerConfig], nn.Module]
    sizes: Callable[[TowerConfig, str], TensorSizes]
    hidden_size: int
    num_layers: int
    tokenizer: str | None = None
    gates: int | None = None

    @property
    def recurrent(self) -> bool:
        return self.gates is not None


#: name -> spec, in registration order (the order of every list of choices).
TOWERS: dict[str, TowerSpec] = {}


def register(spec: TowerSpec) -> TowerSpec:
    """Add ``spec`` to :data:`TOWERS`; a name can be registered once."""
    if spec.name in TOWERS:
        raise ValueError(f"tower {spec.name!r} is already registered")
    TOWERS[spec.name] = spec
    return spec


def widths(config: TowerConfig) -> tuple[int, int]:
    """``hidden_size`` and ``num_layers`` of ``config``, which :class:`~deepsem.config.TowerConfig` fills in."""
    assert config.hidden_size is not None and config.num_layers is not None, "TowerConfig fills them in"
    return config.hidden_size, config.num_layers


def tower_table() -> str:
    """The registered towers as a reStructuredText table (name, what it is, tokenizer it needs)."""
    rows = [(f"``{s.name}``", s.summary, f"``{s.tokenizer}``" if s.tokenizer else "any") for s in TOWERS.values()]
    widths = [max(len(r[i]) for r in [("``encoder``", "tower", "tokenizer"), *rows]) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [("``encoder``", "tower", "tokenizer"), *rows]]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])
