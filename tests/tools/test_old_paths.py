"""The tools' old module paths keep working (``deepsem.demo``, ``deepsem.diagnose``, as bench/ and users import)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("old, new", [("deepsem.demo", "deepsem.tools.demo"),
                                      ("deepsem.diagnose", "deepsem.tools.diagnose")])
def test_old_path_exports_the_same_objects(old: str, new: str) -> None:
    before, after = importlib.import_module(old), importlib.import_module(new)
    assert before.__all__ == after.__all__ and after.__all__
    for name in after.__all__:
        assert getattr(before, name) is getattr(after, name), name
