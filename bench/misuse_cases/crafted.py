"""Crafted model, tokenizer, checkpoint and index files: each a mutation of a copy of a valid directory.

Every mutator takes the copied directory (and a marker path for payloads) and changes one thing. The lists
below are (case name, the file the error must name, mutator).
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .payload import pickle_bytes, write_torch_payload

Mutator = Callable[[Path, Path], None]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def set_json(file: str, keys: tuple[str, ...], value: Any) -> Mutator:
    """Set ``keys`` (a path into the JSON object) to ``value``; a value of ``...`` deletes the key."""

    def mutate(d: Path, marker: Path) -> None:
        path = d / file
        data = json.loads(path.read_text(encoding="utf-8"))
        node = data
        for k in keys[:-1]:
            node = node[k]
        if value is ...:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        path.write_text(json.dumps(data), encoding="utf-8")

    return mutate


def write_bytes(file: str, content: bytes) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        (d / file).write_bytes(content)

    return mutate


def truncate(file: str, fraction: float) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        data = (d / file).read_bytes()
        (d / file).write_bytes(data[: int(len(data) * fraction)])

    return mutate


def remove(file: str) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        (d / file).unlink()

    return mutate


def make_dir(file: str) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        (d / file).unlink()
        (d / file).mkdir()
        (d / file / "inside.txt").write_text("x")

    return mutate


def garbage(file: str, size: int = 4096) -> Mutator:
    return write_bytes(file, random.Random(7).randbytes(size))


def pickle_payload(file: str) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        (d / file).write_bytes(pickle_bytes(marker))

    return mutate


def torch_payload(file: str) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        write_torch_payload(d / file, marker)

    return mutate


# -- safetensors ---------------------------------------------------------------------------------------------
def _read_st(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_st(path: Path, header: dict[str, Any], data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def st_fill(file: str, value: float, only_first: bool = False) -> Mutator:
    """Overwrite float32 tensors with ``value`` (NaN, Inf)."""

    def mutate(d: Path, marker: Path) -> None:
        header, data = _read_st(d / file)
        buf = bytearray(data)
        for name, info in sorted(header.items()):
            if name == "__metadata__" or info["dtype"] != "F32":
                continue
            a, b = info["data_offsets"]
            buf[a:b] = np.full((b - a) // 4, value, np.float32).tobytes()
            if only_first:
                break
        _write_st(d / file, header, bytes(buf))

    return mutate


def st_header(file: str, change: Callable[[dict[str, Any]], None]) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        header, data = _read_st(d / file)
        change(header)
        _write_st(d / file, header, data)

    return mutate


def _tensors(header: dict[str, Any]) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def _shrink_first(header: dict[str, Any]) -> None:
    """Claim a smaller shape for the largest tensor (same bytes would not match; keep offsets consistent)."""
    name = max(_tensors(header), key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0])
    shape = header[name]["shape"]
    shape[0] = max(1, shape[0] - 1)
    a, _ = header[name]["data_offsets"]
    header[name]["data_offsets"][1] = a + int(np.prod(shape)) * 4


def _transpose_first(header: dict[str, Any]) -> None:
    name = next(k for k in _tensors(header) if len(header[k]["shape"]) == 2 and
                header[k]["shape"][0] != header[k]["shape"][1])
    header[name]["shape"] = header[name]["shape"][::-1]


def _drop_first(header: dict[str, Any]) -> None:
    del header[_tensors(header)[0]]


def _extra(header: dict[str, Any]) -> None:
    header["surprise.weight"] = dict(header[_tensors(header)[0]])


def _dtype(dtype: str) -> Callable[[dict[str, Any]], None]:
    def change(header: dict[str, Any]) -> None:
        for k in _tensors(header):
            header[k]["dtype"] = dtype
    return change


def header_bomb(file: str, claimed: int) -> Mutator:
    """The 8-byte header length claims ``claimed`` bytes (2**62, 100 MB) in a small file."""

    def mutate(d: Path, marker: Path) -> None:
        raw = (d / file).read_bytes()
        (d / file).write_bytes(struct.pack("<Q", claimed) + raw[8:])

    return mutate


def header_json(file: str, text: str) -> Mutator:
    def mutate(d: Path, marker: Path) -> None:
        blob = text.encode()
        (d / file).write_bytes(struct.pack("<Q", len(blob)) + blob)

    return mutate


# -- the lists ------------------------------------------------------------------------------------------------
T = ("model", "tower")


def model_cases() -> list[tuple[str, str, Mutator]]:
    """Mutations of a two-tower model directory, loaded by ``deepsem encode``."""
    cfg, st, tok = "config.json", "model.safetensors", "tokenizer.json"
    return [
        ("config-hidden-1e9", cfg, set_json(cfg, (*T, "hidden_size"), 10**9)),
        ("config-layers-1e6", cfg, set_json(cfg, (*T, "num_layers"), 10**6)),
        ("config-embedding-2M-wide", cfg, set_json(cfg, (*T, "embedding_dim"), 2_000_000)),
        ("config-vocab-2e9", cfg, set_json(cfg, (*T, "vocab_size"), 2 * 10**9)),
        ("config-hidden-4000", cfg, set_json(cfg, (*T, "hidden_size"), 4000)),
        ("config-output-dim-1e9", cfg, set_json(cfg, (*T, "output_dim"), 10**9)),
        ("config-hidden-negative", cfg, set_json(cfg, (*T, "hidden_size"), -5)),
        ("config-hidden-zero", cfg, set_json(cfg, (*T, "hidden_size"), 0)),
        ("config-hidden-string", cfg, set_json(cfg, (*T, "hidden_size"), "abc")),
        ("config-hidden-float", cfg, set_json(cfg, (*T, "hidden_size"), 8.5)),
        ("config-hidden-bool", cfg, set_json(cfg, (*T, "hidden_size"), True)),
        ("config-hidden-null", cfg, set_json(cfg, (*T, "hidden_size"), None)),
        ("config-encoder-unknown", cfg, set_json(cfg, (*T, "encoder"), "transformer")),
        ("config-pooling-int", cfg, set_json(cfg, (*T, "pooling"), 7)),
        ("config-tower-list", cfg, set_json(cfg, T, [])),
        ("config-model-missing", cfg, set_json(cfg, ("model",), ...)),
        ("config-task-unknown", cfg, set_json(cfg, ("task",), "nope")),
        ("config-nested-100000", cfg, write_bytes(cfg, _nested(100_000).encode())),
        ("config-non-object-array", cfg, write_bytes(cfg, b"[]")),
        ("config-non-object-string", cfg, write_bytes(cfg, b'"config"')),
        ("config-empty", cfg, write_bytes(cfg, b"")),
        ("config-truncated", cfg, truncate(cfg, 0.5)),
        ("config-latin1", cfg, write_bytes(cfg, b'{"task": "two-tower\xe9"}')),
        ("config-missing", cfg, remove(cfg)),
        ("config-directory", cfg, make_dir(cfg)),
        ("weights-truncated", st, truncate(st, 0.5)),
        ("weights-few-bytes", st, truncate(st, 0.0001)),
        ("weights-empty", st, write_bytes(st, b"")),
        ("weights-garbage", st, garbage(st)),
        ("weights-header-bomb-2^62", st, header_bomb(st, 2**62)),
        ("weights-header-100MB", st, header_bomb(st, 100 * 1024 * 1024)),
        ("weights-header-not-json", st, header_json(st, "{not json" + " " * 7)),
        ("weights-header-nested", st, header_json(st, _nested(100_000))),
        ("weights-nan", st, st_fill(st, float("nan"))),
        ("weights-inf-one-tensor", st, st_fill(st, float("inf"), only_first=True)),
        ("weights-wrong-shape", st, st_header(st, _shrink_first)),
        ("weights-transposed", st, st_header(st, _transpose_first)),
        ("weights-missing-tensor", st, st_header(st, _drop_first)),
        ("weights-extra-tensor", st, st_header(st, _extra)),
        ("weights-dtype-f64", st, st_header(st, _dtype("F64"))),
        ("weights-dtype-i32", st, st_header(st, _dtype("I32"))),
        ("weights-pickle-payload", st, pickle_payload(st)),
        ("weights-torch-payload", st, torch_payload(st)),
        ("weights-missing", st, remove(st)),
        ("tokenizer-truncated", tok, truncate(tok, 0.5)),
        ("tokenizer-garbage", tok, garbage(tok)),
        ("tokenizer-nested", tok, write_bytes(tok, _nested(100_000).encode())),
        ("tokenizer-non-object", tok, write_bytes(tok, b"[1, 2, 3]")),
        ("tokenizer-empty", tok, write_bytes(tok, b"")),
        ("tokenizer-vocab-missing", tok, set_json(tok, ("vocab",), ...)),
        ("tokenizer-name-unknown", tok, set_json(tok, ("config", "name"), "sentencepiece")),
        ("tokenizer-max-length-negative", tok, set_json(tok, ("config", "max_length"), -1)),
        ("tokenizer-format-wrong", tok, set_json(tok, ("format",), "something.else")),
        ("tokenizer-pickle-payload", tok, pickle_payload(tok)),
        ("tokenizer-missing", tok, remove(tok)),
        ("pytorch-bin-payload-beside", "pytorch_model.bin", torch_payload("pytorch_model.bin")),
    ]


def on_existing(files: tuple[str, ...], make: Callable[[str], Mutator]) -> Mutator:
    """``make(file)`` applied to the first of ``files`` the directory has (checkpoint formats differ between
    versions: optimizer.pt before, optimizer.safetensors after), else to the last."""
    def mutate(d: Path, marker: Path) -> None:
        target = next((f for f in files if (d / f).exists()), files[-1])
        make(target)(d, marker)

    return mutate


def checkpoint_cases() -> list[tuple[str, str, Mutator]]:
    """Mutations of ``training/checkpoint/`` in a model directory, read when ``deepsem train`` resumes. The
    payloads are planted as ``optimizer.pt`` whatever the format: a version that reads it would run them."""
    c = "training/checkpoint/"
    optimizer = (c + "optimizer.safetensors", c + "optimizer.pt")
    return [
        ("optimizer-torch-payload", "optimizer.pt", torch_payload(c + "optimizer.pt")),
        ("optimizer-pickle-payload", "optimizer.pt", pickle_payload(c + "optimizer.pt")),
        ("optimizer-garbage", "optimizer.*", on_existing(optimizer, garbage)),
        ("optimizer-truncated", "optimizer.*", on_existing(optimizer, lambda f: truncate(f, 0.5))),
        ("state-nested", "trainer_state.json", write_bytes(c + "trainer_state.json", _nested(100_000).encode())),
        ("state-garbage", "trainer_state.json", garbage(c + "trainer_state.json", 300)),
        ("state-negative-step", "trainer_state.json", set_json(c + "trainer_state.json", ("global_step",), -5)),
        ("state-step-string", "trainer_state.json", set_json(c + "trainer_state.json", ("epoch",), "one")),
        ("checkpoint-weights-garbage", "model.safetensors", garbage(c + "model.safetensors")),
        ("checkpoint-weights-nan", "model.safetensors", st_fill(c + "model.safetensors", float("nan"))),
    ]


def _current(value: str) -> Mutator:
    return write_bytes("CURRENT", value.encode())


def _outside(d: Path, marker: Path) -> None:
    """A valid version folder beside (outside) the index, with different ids; CURRENT points at it."""
    version = (d / "CURRENT").read_text().strip()
    outside = d.parent / (d.name + "-outside")
    shutil.copytree(d / version, outside)
    with sqlite3.connect(outside / "docs.sqlite") as db:
        db.execute("UPDATE docs SET id = 'outside-' || id")
    (d / "CURRENT").write_text(f"../{outside.name}")


def _sqlite_drop(d: Path, marker: Path) -> None:
    version = (d / "CURRENT").read_text().strip()
    with sqlite3.connect(d / version / "docs.sqlite") as db:
        db.execute("ALTER TABLE docs RENAME TO something_else")


def in_version(mutator_factory: Callable[[str], Mutator], name: str) -> Mutator:
    """Apply ``mutator_factory(name)`` to the file inside the index's current version folder."""

    def mutate(d: Path, marker: Path) -> None:
        version = (d / "CURRENT").read_text().strip()
        mutator_factory(f"{version}/{name}")(d, marker)

    return mutate


def index_cases() -> list[tuple[str, str, Mutator]]:
    """Mutations of an index directory, loaded by ``deepsem search``."""
    meta = "index.json"
    return [
        ("index-json-truncated", meta, in_version(lambda f: truncate(f, 0.5), meta)),
        ("index-json-nested", meta, in_version(lambda f: write_bytes(f, _nested(100_000).encode()), meta)),
        ("index-json-non-object", meta, in_version(lambda f: write_bytes(f, b"[]"), meta)),
        ("index-json-dim-wrong", meta, in_version(lambda f: set_json(f, ("dim",), 17), meta)),
        ("index-json-dim-string", meta, in_version(lambda f: set_json(f, ("dim",), "8"), meta)),
        ("index-json-format-missing", meta, in_version(lambda f: set_json(f, ("format",), ...), meta)),
        ("index-json-search-params-bad", meta,
         in_version(lambda f: set_json(f, ("search_params",), "efSearch=abc"), meta)),
        ("current-dotdot-etc", "CURRENT", _current("../../etc")),
        ("current-outside-index", "CURRENT", _outside),
        ("current-absolute", "CURRENT", _current("/tmp")),
        ("current-missing-version", "CURRENT", _current("v999999")),
        ("current-empty", "CURRENT", _current("")),
        ("faiss-garbage", "index.faiss", in_version(garbage, "index.faiss")),
        ("faiss-truncated", "index.faiss", in_version(lambda f: truncate(f, 0.5), "index.faiss")),
        ("faiss-empty", "index.faiss", in_version(lambda f: write_bytes(f, b""), "index.faiss")),
        ("faiss-pickle-payload", "index.faiss", in_version(pickle_payload, "index.faiss")),
        ("sqlite-garbage", "docs.sqlite", in_version(garbage, "docs.sqlite")),
        ("sqlite-truncated", "docs.sqlite", in_version(lambda f: truncate(f, 0.5), "docs.sqlite")),
        ("sqlite-empty", "docs.sqlite", in_version(lambda f: write_bytes(f, b""), "docs.sqlite")),
        ("sqlite-wrong-schema", "docs.sqlite", _sqlite_drop),
        ("sqlite-pickle-payload", "docs.sqlite", in_version(pickle_payload, "docs.sqlite")),
        ("index-model-weights-changed", "model.safetensors",
         in_version(lambda f: st_fill(f, 0.5, only_first=True), "model/model.safetensors")),
        ("index-model-config-hidden-1e9", "config.json",
         in_version(lambda f: set_json(f, ("model", "tower", "hidden_size"), 10**9), "model/config.json")),
    ]
