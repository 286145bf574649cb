"""Pickle payloads: files that run ``touch MARKER`` when unpickled. The harness plants them where deepsem reads
model, index and checkpoint files; the marker file must never appear."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class Touch:
    """Unpickling this object calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))


def pickle_bytes(marker: Path) -> bytes:
    """A plain pickle (protocol 2) holding the payload inside a dict, as an optimizer state would be."""
    return pickle.dumps({"optimizer": Touch(marker), "torch_rng": None}, protocol=2)


def write_torch_payload(path: Path, marker: Path) -> None:
    """A file in torch.save's zip format whose pickle runs the payload (what ``torch.load(weights_only=False)``
    would execute)."""
    import torch

    torch.save({"optimizer": Touch(marker), "torch_rng": torch.zeros(1)}, path)
