"""Property: any damage to a model directory ends in a loaded model or a DeepsemError, in bounded time and memory.

Each example copies one of the fixtures of tests/fixtures/model_dirs_v1 and damages it one way: a config.json field
set to a random JSON value or a huge size, the weights file truncated, bit-flipped or holding a tensor of another
shape, a JSON file replaced by deeply nested or random JSON, a file deleted, tokenizer.json or items.json damaged,
items.faiss damaged. Loading must never raise anything but a DeepsemError (never RecursionError, MemoryError,
KeyError, TypeError, RuntimeError, SafetensorError...), and a model that loads must answer.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import deepsem
from deepsem.errors import DeepsemError
from deepsem.tasks.classification import Classifier
from deepsem.tasks.matching import SemanticModel
from deepsem.tasks.recommendation import Recommender

FIXTURES = Path(__file__).parent / "fixtures" / "model_dirs_v1"
KINDS = ("two_tower", "classifier", "recommender")
JSON_FILES = {"two_tower": ("config.json", "tokenizer.json"), "classifier": ("config.json", "tokenizer.json"),
              "recommender": ("config.json", "tokenizer.json", "items.json")}
#: Peak memory a damaged directory may add to the process (ru_maxrss is in KiB on Linux).
MEMORY_SLACK_KIB = 300 * 1024

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
    | st.sampled_from([0, -1, 10**6, 10**9, 10**12, 10**30, 2**63]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
huge_sizes = st.sampled_from([10**k for k in range(3, 13)] + [2**31, 2**31 - 1, 2**63, 4000, 65_536])


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of nested JSON objects (list items by index too)."""
    out = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))[:8]
    else:
        return out
    for key, item in items:
        out.append((*prefix, key))
        out.extend(_paths(item, (*prefix, key)))
    return out


def _set(document: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def _damage_json(data: st.DataObject, path: Path, huge: bool) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    paths = _paths(document)
    target = paths[data.draw(st.integers(0, len(paths) - 1), label="field")]
    if huge:
        sizes = [p for p in paths if isinstance(p[-1], str) and (p[-1].startswith(("n_", "num_")) or p[-1].endswith(
            ("_size", "_dim", "_buckets", "_layers", "history", "max_length")))]
        target = sizes[data.draw(st.integers(0, len(sizes) - 1), label="size field")] if sizes else target
    _set(document, target, data.draw(huge_sizes if huge else json_values, label="value"))
    path.write_text(json.dumps(document), encoding="utf-8")


def _damage_bytes(data: st.DataObject, path: Path) -> None:
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "zero", "append"]), label="bytes")
    if how == "truncate":
        del raw[data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut"):]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64), label="tail")
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] = 0 if how == "zero" else raw[at] ^ (1 << data.draw(st.integers(0, 7), label="bit"))
    path.write_bytes(bytes(raw))


def _reshape_tensor(data: st.DataObject, path: Path) -> None:
    weights = load_file(path)
    names = sorted(weights)
    name = names[data.draw(st.integers(0, len(names) - 1), label="tensor")]
    tensor = weights[name]
    how = data.draw(st.sampled_from(["transpose", "flat", "grow", "dtype", "nan", "drop", "rename"]), label="reshape")
    if how == "transpose" and tensor.ndim == 2:
        weights[name] = tensor.t().contiguous()
    elif how == "flat":
        weights[name] = tensor.reshape(-1).contiguous()
    elif how == "grow":
        weights[name] = torch.zeros(*(d + 1 for d in tensor.shape)) if tensor.ndim else torch.zeros(2)
    elif how == "dtype":
        weights[name] = tensor.to(data.draw(st.sampled_from([torch.float16, torch.float64, torch.int64])))
    elif how == "nan":
        weights[name] = torch.full_like(tensor, float(data.draw(st.sampled_from(["nan", "inf", "-inf"]))))
    elif how == "drop":
        del weights[name]
    else:
        weights[name + "x"] = weights.pop(name)
    save_file(weights, path)


def _use(model: Any) -> None:
    """A loaded model must answer (damage that loads must not break it later)."""
    if isinstance(model, SemanticModel):
        model.encode(["怎么还款", "hello"])
    elif isinstance(model, Classifier):
        model.predict_proba(["怎么还款", "hello"])
    elif isinstance(model, Recommender):
        model.recommend(["i0", "i3"], k=3)
        model.recommend(["nope"], k=3)


@pytest.fixture(scope="module")
def baseline_rss() -> int:
    for kind in KINDS:  # imports, caches and one model of each kind are in memory before measuring
        _use(deepsem.load(FIXTURES / kind))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@settings(max_examples=150, derandomize=True, deadline=5000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_directory_loads_or_raises_a_deepsem_error(data: st.DataObject, baseline_rss: int):
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    damage = data.draw(st.sampled_from(["field", "size", "weights-bytes", "weights-tensor", "nested", "random-json",
                                        "missing", "json-bytes", "faiss"]), label="damage")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(shutil.copytree(FIXTURES / kind, Path(tmp) / kind))
        json_file = directory / data.draw(st.sampled_from(JSON_FILES[kind]), label="file")
        if damage in ("field", "size"):
            _damage_json(data, json_file, huge=damage == "size")
        elif damage == "weights-bytes":
            _damage_bytes(data, directory / "model.safetensors")
        elif damage == "weights-tensor":
            _reshape_tensor(data, directory / "model.safetensors")
        elif damage == "nested":
            depth = data.draw(st.sampled_from([65, 1000, 100_000]), label="depth")
            opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]), label="brackets")
            json_file.write_text(opener * depth + "1" + closer * depth)
        elif damage == "random-json":
            json_file.write_text(json.dumps(data.draw(json_values, label="document")))
        elif damage == "missing":
            names = sorted(p.name for p in directory.iterdir())
            (directory / data.draw(st.sampled_from(names), label="deleted")).unlink()
        elif damage == "json-bytes":
            _damage_bytes(data, json_file)
        else:  # faiss: the recommender's index; the other kinds have none, their weights take the damage
            _damage_bytes(data, directory / ("items.faiss" if kind == "recommender" else "model.safetensors"))
        try:
            model = deepsem.load(directory)
        except DeepsemError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) < 2000, message
            assert "Traceback" not in message
        else:
            _use(model)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_rss < MEMORY_SLACK_KIB


@pytest.fixture(scope="module")
def subword_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepsem.text import build_tokenizer

    directory = tmp_path_factory.mktemp("subword")
    build_tokenizer("subword", ["hello world", "我爱北京天安门", "good day"] * 10, max_size=50).save(directory)
    return directory


@settings(max_examples=60, derandomize=True, deadline=5000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_subword_tokenizer_loads_or_raises_a_deepsem_error(data: st.DataObject, subword_dir: Path):
    from deepsem.text import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(shutil.copytree(subword_dir, Path(tmp) / "tok"))
        path = directory / data.draw(st.sampled_from(["tokenizer.json", "hf_tokenizer.json"]), label="file")
        how = data.draw(st.sampled_from(["field", "bytes", "random-json", "nested"]), label="damage")
        if how == "field":
            _damage_json(data, path, huge=False)
        elif how == "bytes":
            _damage_bytes(data, path)
        elif how == "random-json":
            path.write_text(json.dumps(data.draw(json_values, label="document")))
        else:
            path.write_text("[" * 100_000)
        try:
            tokenizer = load_tokenizer(directory)
        except DeepsemError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            tokenizer.encode_batch(["hello world", "我爱北京"])
