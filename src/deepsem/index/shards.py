"""A corpus encoded in shards: one vector file per input shard plus a manifest, written resumably, read back by
``Index.build(..., vectors=OUTDIR)``.

Output folder layout (``deepsem encode --model M CORPUS_DIR --out OUT``)::

    OUT/manifest.json                    one process (or the merge of the parts below)
    OUT/manifest.part-I-of-N.json        part I of N (``--shard I/N``): input shard j belongs to part j % N
    OUT/shards/NAME-HASH.npy             float32 (rows, dim), one row per document, in the shard's order
    OUT/shards/NAME-HASH.ids.jsonl       the documents' ids, one JSON string per line

A manifest names the model (its weights' digest, backend, precision), the side and dim, every input shard of the
corpus (names, in the order :func:`~deepsem.index.corpus.corpus_shards` gives) and, for the shards of its part,
the input's size, mtime and sha256, the row count, the vector and ids files and ``done``. A shard's vectors and ids
are written atomically and only then is it marked done (the manifest is replaced atomically too): a run killed and
started again skips the finished shards whose input did not change, and encodes again one that changed. Parts never
write the same file, so N machines (a job array, torchrun's ranks) encode one corpus together; a reader merges
the parts and refuses a missing or unfinished one by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.data.errors import DataError
from deepsem.errors import ConfigError, IndexFileError
from deepsem.fileio import atomic_write, atomic_write_json, atomic_write_text, read_json, sha256_file
from deepsem.index.corpus import CorpusShard, Document, corpus_shards, iter_corpus

FORMAT = "deepsem.vector-shards"
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
_PART = re.compile(r"manifest\.part-([0-9]+)-of-([0-9]+)\.json")
_OWN_FILE = re.compile(rf"{SHARDS_DIR}/[A-Za-z0-9_-][A-Za-z0-9._-]*")  # what _file_names makes: no "..", no "/"
#: The settings two runs must share to write into the same folder (what the vectors depend on).
_IDENTITY = ("model", "side", "dim", "dtype", "id_field", "text_field")


@dataclass(frozen=True)
class Split:
    """Part ``part`` (from 0) of ``parts``: input shard j is this part's when ``j % parts == part``."""

    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        if self.parts < 1 or not 0 <= self.part < self.parts:
            raise ConfigError(f"shard {self.part}/{self.parts}: give I/N with 0 <= I < N, e.g. 0/4 ... 3/4")

    @classmethod
    def parse(cls, text: str) -> Split:
        """``"I/N"`` (``--shard 2/4``)."""
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
        if match is None:
            raise ConfigError(f"shard {text!r}: give I/N, part I (from 0) of N parts, e.g. 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Split | None:
        """torchrun's (or any launcher's) ``RANK`` / ``WORLD_SIZE``, when both are set."""
        env = dict(os.environ) if env is None else env
        rank, world = env.get("RANK", "").strip(), env.get("WORLD_SIZE", "").strip()
        if not rank or not world:
            return None
        if not rank.isdigit() or not world.isdigit():
            raise ConfigError(f"RANK={rank!r} / WORLD_SIZE={world!r} in the environment are not whole numbers")
        return cls(int(rank), int(world))

    @property
    def manifest_name(self) -> str:
        return MANIFEST if self.parts == 1 else f"manifest.part-{self.part}-of-{self.parts}.json"

    def mine(self, j: int) -> bool:
        return j % self.parts == self.part


@dataclass
class EncodeReport:
    """What :func:`encode_shards` did: shards encoded, skipped (finished, input unchanged), the part's rows."""

    encoded: int
    skipped: int
    rows: int
    manifest: Path


def model_identity(model: Any, directory: str | Path | None = None) -> dict[str, Any]:
    """What the vectors depend on in a loaded model: its weights' digest (over the tensors, as ``deepsem export``
    records it), backend, ONNX file and precision; ``directory`` is recorded as the model's path."""
    from deepsem.deploy.export import weights_digest

    net = getattr(model, "model", None)
    options = dict(getattr(model, "backend_options", {}))
    onnx = options.get("onnx")
    return {"path": str(Path(directory).resolve()) if directory is not None else None,
            "weights_digest": weights_digest(net) if net is not None else None,
            "backend": options.get("backend", "torch"), "precision": options.get("precision", "fp32"),
            "onnx_sha256": sha256_file(onnx) if onnx else None}


# -- writing ----------------------------------------------------------------------------------------------------

def encode_shards(
    model: str | Path,
    corpus: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    side: str = "doc",
    split: Split | None = None,
    batch_size: int = 512,
    chunk: int = 100_000,
    id_field: str = "id",
    text_field: str = "text",
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **backend: Any,
) -> EncodeReport:
    """Encode this part's shards of ``corpus`` (a folder, glob or list of corpus files) with the model directory
    ``model`` (``backend``: :func:`deepsem.load`'s ``backend`` / ``onnx`` / ``precision``) into ``out``.

    Resumable shard by shard: a shard already done with an unchanged input (same size and mtime, or the same
    sha256) is skipped; a changed input is encoded again (said through ``log``). A folder written with another
    model or settings is refused (:class:`ConfigError`) unless ``overwrite``, which starts this part over.
    ``chunk`` documents are read and encoded at a time, so memory stays bounded whatever a shard's size."""
    from deepsem.tasks import load

    split = split or Split()
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a folder for the vector shards (it is created if missing)")
    shards = corpus_shards(corpus)
    semantic = load(model, **backend)
    if not callable(getattr(semantic, "encode", None)) or not isinstance(getattr(semantic, "dim", None), int):
        raise ConfigError(f"{model}: a {type(semantic).__name__}, not a two-tower model: nothing to encode texts")
    if side not in ("query", "doc"):
        raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
    head: dict[str, Any] = {
        "format": FORMAT, "version": 1, "model": model_identity(semantic, model), "side": side,
        "dim": int(semantic.dim), "dtype": "float32", "id_field": id_field, "text_field": text_field,
        "corpus": [s.name for s in shards], "part": split.part, "parts": split.parts,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / split.manifest_name
    old = _prepare(out, path, head, split, overwrite, say)
    entries: dict[str, dict[str, Any]] = {}
    mine = [(j, s) for j, s in enumerate(shards) if split.mine(j)]
    todo: list[tuple[int, CorpusShard]] = []
    for j, shard in mine:
        entry = old.get(shard.name)
        if entry is not None and entry.get("done") and _unchanged(out, shard, entry, head["dim"]):
            entries[shard.name] = entry
            continue
        if entry is not None and entry.get("done"):
            say(f"{shard.path}: changed since it was encoded (or its vectors are gone): encoding it again")
        entries[shard.name] = _pending(shard)
        todo.append((j, shard))

    def save() -> None:
        atomic_write_json(path, {**head, "shards": [entries[s.name] for _, s in mine]})

    save()  # the part's plan: every shard listed, the finished ones marked done
    if len(mine) > len(todo):
        say(f"{len(mine) - len(todo)} of {len(mine)} shards already encoded (input unchanged): skipped")
    for n, (_, shard) in enumerate(todo, 1):
        entries[shard.name] = _encode_one(semantic, shard, out, side, batch_size, chunk, id_field, text_field,
                                          progress, f"shard {n}/{len(todo)}", say)
        save()
    return EncodeReport(encoded=len(todo), skipped=len(mine) - len(todo),
                        rows=sum(int(entries[s.name]["rows"]) for _, s in mine), manifest=path)


def _prepare(out: Path, path: Path, head: dict[str, Any], split: Split, overwrite: bool,
             say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Check ``out`` against this run (refuse another model, settings or split unless ``overwrite``); the
    entries of this part's earlier run, by input name."""
    others = [p for p in _manifest_files(out) if p.name != path.name]
    merged = out / MANIFEST
    for other in others:
        meta = _read_manifest(other)
        same_split = meta.get("parts") == split.parts
        if other == merged and meta.get("merged") and same_split:
            other.unlink(missing_ok=True)  # a merge of the parts this run changes: read the parts again
            continue
        if overwrite and not same_split:
            _remove(out, other, meta)
            continue
        if overwrite:
            continue  # another part of this split: its own run starts it over
        if not same_split:
            how = "one process" if meta.get("parts") == 1 else f"{meta.get('parts')} parts"
            raise ConfigError(f"{other}: this folder holds vectors encoded in {how}, this run is part "
                              f"{split.part} of {split.parts}; give another --out, or --overwrite to start over")
        _check_identity(other, meta, head)
    if not path.exists():
        return {}
    meta = _read_manifest(path)
    if overwrite:
        _remove(out, path, meta)
        say(f"{path}: --overwrite: starting {'this part' if split.parts > 1 else 'it'} over")
        return {}
    if meta.get("parts") != split.parts:  # a merge of parts, then a run of the whole corpus in one process
        raise ConfigError(f"{path}: this folder holds vectors encoded in {meta.get('parts')} parts, this run is one "
                          "process; give another --out, or --overwrite to start over")
    _check_identity(path, meta, head)
    return {e["name"]: e for e in meta.get("shards", []) if isinstance(e, dict) and isinstance(e.get("name"), str)}


def _remove(out: Path, path: Path, meta: dict[str, Any]) -> None:
    """Remove a manifest and the vector and ids files it lists (``--overwrite``)."""
    for entry in meta.get("shards", []):
        for key in ("vectors", "ids"):
            name = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(name, str) and _OWN_FILE.fullmatch(name):
                (out / name).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _check_identity(path: Path, meta: dict[str, Any], head: dict[str, Any]) -> None:
    for key in _IDENTITY:
        if meta.get(key) != head[key]:
            old, new = meta.get(key), head[key]
            if key == "model":
                old = old if isinstance(old, dict) else {}
                what = [f"{k} {_short(old.get(k))} then, {_short(new[k])} now" for k in new
                        if k != "path" and old.get(k) != new[k]]
                raise ConfigError(f"{path}: these vectors were made by another model ({old.get('path')}: "
                                  f"{'; '.join(what)}); vectors of two models cannot be mixed: give another --out, "
                                  "or --overwrite to start over")
            raise ConfigError(f"{path}: these vectors were made with {key} {old!r}, this run has {new!r}; give "
                              "another --out, or --overwrite to start over")


def _short(value: Any) -> str:
    return repr(value[:12] + "...") if isinstance(value, str) and len(value) > 16 else repr(value)


def _pending(shard: CorpusShard) -> dict[str, Any]:
    return {"name": shard.name, "path": str(shard.path.resolve()), "done": False}


def _file_names(name: str) -> tuple[str, str]:
    """The vector and ids file names (under ``shards/``) of an input shard: its name made safe, plus a hash."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))[-80:].lstrip(".") or "shard"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{SHARDS_DIR}/{stem}-{digest}.npy", f"{SHARDS_DIR}/{stem}-{digest}.ids.jsonl"


def _unchanged(out: Path, shard: CorpusShard, entry: dict[str, Any], dim: int) -> bool:
    """Whether a finished shard stands: its input the same (size and mtime, else the sha256; a matching hash
    updates the entry's mtime) and its files there with the rows the entry records."""
    try:
        st = shard.path.stat()
        vectors = _open_npy(out / str(entry["vectors"]))
        ids_ok = (out / str(entry["ids"])).is_file()
    except (OSError, KeyError, IndexFileError):
        return False
    if not ids_ok or vectors.shape != (entry.get("rows"), dim):
        return False
    if st.st_size != entry.get("size"):
        return False
    if st.st_mtime_ns != entry.get("mtime_ns"):
        if sha256_file(shard.path) != entry.get("sha256"):
            return False
        entry["mtime_ns"] = st.st_mtime_ns
    return True


def _encode_one(semantic: Any, shard: CorpusShard, out: Path, side: str, batch_size: int, chunk: int,
                id_field: str, text_field: str, progress: bool, label: str, say: Callable[[str], None]
                ) -> dict[str, Any]:
    """Encode one input shard into its vector and ids files (each written atomically); its manifest entry."""
    import time

    before = shard.path.stat()
    digest = sha256_file(shard.path)
    vectors_name, ids_name = _file_names(shard.name)
    ids: list[str] = []
    dim = int(semantic.dim)
    t0 = time.perf_counter()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _npy_header(fh, 0, dim)
            rows = 0
            docs = iter_corpus(shard.path, id_field=id_field, text_field=text_field, id_prefix=shard.id_prefix)
            for batch in _chunks(docs, chunk):
                vectors = np.ascontiguousarray(semantic.encode([d.text for d in batch], batch_size=batch_size,
                                                               side=side), dtype="<f4")
                finite = np.isfinite(vectors).all(axis=1)
                if not finite.all():
                    bad = int(np.flatnonzero(~finite)[0])
                    raise ConfigError(f"{shard.path}: the model made NaN or infinite vectors for document "
                                      f"{rows + bad + 1} (id {batch[bad].id!r}): its weights are damaged")
                fh.write(vectors.tobytes())
                ids.extend(d.id for d in batch)
                rows += len(batch)
                if progress:
                    say(f"{label} {shard.name}: {rows:,} documents ({rows / (time.perf_counter() - t0):.0f}/s)")
            fh.seek(0)
            _npy_header(fh, rows, dim)

    atomic_write(out / vectors_name, write)
    atomic_write_text(out / ids_name, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids))
    after = shard.path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise DataError(str(shard.path), None, None, "changed while it was being encoded; encode it again")
    return {"name": shard.name, "path": str(shard.path.resolve()), "size": before.st_size,
            "mtime_ns": before.st_mtime_ns, "sha256": digest, "rows": len(ids), "vectors": vectors_name,
            "ids": ids_name, "done": True}


_HEADER_BYTES = 128


def _npy_header(fh: Any, rows: int, dim: int) -> None:
    """A ``.npy`` version 1.0 header for float32 ``(rows, dim)``, always :data:`_HEADER_BYTES` long, so that it can be
    written first (rows unknown) and rewritten in place once the rows are counted."""
    start = fh.tell()
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    if fh.tell() - start != _HEADER_BYTES:  # pragma: no cover - numpy pads every such header to 128 bytes
        raise AssertionError(f"npy header of {fh.tell() - start} bytes")


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- reading ----------------------------------------------------------------------------------------------------

def _manifest_files(directory: Path) -> list[Path]:
    found = [p for p in directory.iterdir() if p.name == MANIFEST or _PART.fullmatch(p.name)] \
        if directory.is_dir() else []
    return sorted(found)


def _read_manifest(path: Path) -> dict[str, Any]:
    meta = read_json(path, IndexFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f"{path}: not a manifest of deepsem encode (field 'format' is not {FORMAT!r})")
    for key, kind in (("dim", int), ("parts", int), ("corpus", list), ("shards", list)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise IndexFileError(f"{path}: field {key!r} is missing or not a{'n integer' if kind is int else ' list'}")
    return meta


def is_vector_shards(path: str | Path) -> bool:
    """Whether ``path`` is meant as vector shards: a folder, or a manifest file (``manifest*.json``)."""
    path = Path(path)
    return path.is_dir() or (path.suffix == ".json" and path.name.startswith("manifest"))


def merge_manifests(directory: str | Path) -> dict[str, Any]:
    """The whole set a folder holds: its ``manifest.json``, or else its parts merged (all N present, the same
    model and corpus, every input shard in exactly one part, every shard done); an :class:`IndexFileError`
    naming the file otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFileError(f"{directory}: no such folder of vector shards")
    single = directory / MANIFEST
    if single.exists():
        meta = _read_manifest(single)
        _check_done(single, meta, meta["shards"], meta["corpus"])
        return meta
    parts = [(p, _PART.fullmatch(p.name)) for p in _manifest_files(directory)]
    if not parts:
        raise IndexFileError(f"{directory}: is a directory with no {MANIFEST} (nor manifest.part-I-of-N.json) of "
                             "deepsem encode; give a .npy file or a folder deepsem encode wrote")
    counts = {int(m.group(2)) for _, m in parts if m}
    if len(counts) != 1:
        raise IndexFileError(f"{directory}: holds manifest parts of different splits ({sorted(counts)} parts); "
                             "remove the stale ones or encode again with --overwrite")
    n = counts.pop()
    by_part = {int(m.group(1)): p for p, m in parts if m}
    for i in range(n):
        if i not in by_part:
            raise IndexFileError(f"{directory / f'manifest.part-{i}-of-{n}.json'}: missing: part {i} of {n} has "
                                 f"not been run (deepsem encode ... --shard {i}/{n})")
    metas = [(by_part[i], _read_manifest(by_part[i])) for i in range(n)]
    first_path, first = metas[0]
    entries: list[dict[str, Any]] = []
    for path, meta in metas:
        for key in (*_IDENTITY, "corpus"):
            if meta.get(key) != first.get(key):
                raise IndexFileError(f"{path}: its {key} differs from {first_path.name}'s; every part must encode "
                                     "the same corpus with the same model and settings (run it again)")
        entries += meta["shards"]
    _check_done(directory, first, entries, first["corpus"])
    return {**{k: v for k, v in first.items() if k != "part"}, "part": None, "merged": True,
            "shards": sorted(entries, key=lambda e: first["corpus"].index(e["name"]))}


def _check_done(where: Path, meta: dict[str, Any], entries: list[dict[str, Any]], corpus: list[str]) -> None:
    seen: dict[str, int] = {}
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in corpus:
            raise IndexFileError(f"{where}: lists a shard {name!r} that is not in its corpus")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            raise IndexFileError(f"{where}: input shard {name!r} is in two parts; encode again with --overwrite")
        if not entry.get("done"):
            part = corpus.index(name) % int(meta["parts"])
            raise IndexFileError(f"{where}: input shard {name!r} is not finished (part {part} of {meta['parts']}): "
                                 "run that part again")
    missing = [name for name in corpus if name not in seen]
    if missing:
        raise IndexFileError(f"{where}: input shard {missing[0]!r} is not in the manifest"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def write_merged_manifest(directory: str | Path) -> Path:
    """``deepsem encode --merge-manifest``: the parts of ``directory`` checked and merged into its manifest.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFileError(f"{directory}: no such folder of vector shards")
    if not any(_PART.fullmatch(p.name) for p in directory.iterdir()):
        raise IndexFileError(f"{directory}: no manifest.part-I-of-N.json to merge (deepsem encode --shard I/N "
                             "writes them)")
    (directory / MANIFEST).unlink(missing_ok=True)  # merged again from the parts
    meta = merge_manifests(directory)
    return atomic_write_json(directory / MANIFEST, meta)


def _open_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise IndexFileError(f"{path}: not a NumPy .npy array file: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise IndexFileError(f"{path}: not a NumPy .npy array file")
    return array


class VectorShards:
    """The vectors of a corpus in shards, read shard by shard (memory-mapped) as one ``(rows, dim)`` sequence:
    ``len()`` and slices ``[start:stop]`` (float32, finite, or an :class:`IndexFileError` naming the file and
    row). :meth:`aligned` checks a document stream against the shards' ids as it passes."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory, self.meta = directory, meta
        self.dim = int(meta["dim"])
        self.entries: list[dict[str, Any]] = meta["shards"]
        for entry in self.entries:
            for key in ("vectors", "ids"):
                if not isinstance(entry.get(key), str) or not _OWN_FILE.fullmatch(entry[key]):
                    raise IndexFileError(f"{directory}: the manifest's {key} file of input {entry.get('name')!r} "
                                         f"is {entry.get(key)!r}, not a file deepsem encode writes")
            if not isinstance(entry.get("rows"), int):
                raise IndexFileError(f"{directory}: the manifest gives no row count for input {entry.get('name')!r}")
        self.files = [directory / str(e["vectors"]) for e in self.entries]
        self.arrays: list[np.ndarray] = []
        for entry, file in zip(self.entries, self.files, strict=True):
            array = _open_npy(file)
            if array.ndim != 2 or array.shape[1] != self.dim:
                raise IndexFileError(f"{file}: vectors of shape {array.shape}, the manifest says dim {self.dim}")
            if array.shape[0] != entry.get("rows"):
                raise IndexFileError(f"{file}: {array.shape[0]} rows, the manifest says {entry.get('rows')} for "
                                     f"input {entry['name']!r}")
            if array.dtype.kind != "f":
                raise IndexFileError(f"{file}: dtype {array.dtype} is not a float type")
            self.arrays.append(array)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    @classmethod
    def open(cls, path: str | Path) -> VectorShards:
        """A folder deepsem encode wrote, or one of its manifest files (the whole set is read either way)."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        if not path.is_dir() and not path.is_file():
            raise IndexFileError(f"{path}: no such manifest file")
        if path.is_file() and path.name == MANIFEST:
            meta = _read_manifest(path)
            _check_done(path, meta, meta["shards"], meta["corpus"])
        else:
            meta = merge_manifests(directory)
        return cls(directory, meta)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("vector shards are read in contiguous slices")
        parts = []
        j = max(int(np.searchsorted(self.offsets, start, side="right")) - 1, 0)
        while start < stop and j < len(self.arrays):
            lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
            if start < hi:
                piece = np.asarray(self.arrays[j][start - lo : min(stop, hi) - lo], dtype=np.float32)
                finite = np.isfinite(piece).all(axis=1)
                if not finite.all():
                    row = start - lo + int(np.flatnonzero(~finite)[0])
                    raise IndexFileError(f"{self.files[j]}: row {row} (document {row + 1} of input "
                                         f"{self.entries[j]['name']!r}) holds NaN or infinite values; encode again")
                parts.append(piece)
                start = min(stop, hi)
            j += 1
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def check_model(self, model: Any, dim: int) -> None:
        """Refuse vectors of another width, another model's weights, or a query tower that is not the document
        tower."""
        where = self.directory / MANIFEST
        if self.dim != dim:
            raise IndexFileError(f"{where}: vectors of dim {self.dim}, the model's are {dim}")
        made = self.meta.get("model") or {}
        digest = model_identity(model)["weights_digest"] if getattr(model, "model", None) is not None else None
        if digest is not None and made.get("weights_digest") not in (None, digest):
            raise IndexFileError(f"{where}: these vectors were made by another model ({made.get('path')}); encode "
                                 "the corpus with this one")
        net = getattr(model, "model", None)
        separate = net is not None and getattr(net, "query_tower", None) is not getattr(net, "doc_tower", None)
        if self.meta.get("side") != "doc" and separate:
            raise IndexFileError(f"{where}: vectors of the {self.meta.get('side')} tower; an index needs the "
                                 "document tower's (deepsem encode --side doc)")

    def check_corpus(self, shards: Sequence[CorpusShard]) -> None:
        """The corpus files given to the index against those encoded: the same names, in order, same sizes."""
        names = [s.name for s in shards]
        if names != self.meta["corpus"]:
            extra = sorted(set(names) - set(self.meta["corpus"]))
            gone = sorted(set(self.meta["corpus"]) - set(names))
            what = (f"{extra[0]!r} was not encoded" if extra else f"{gone[0]!r} is missing" if gone
                    else "their order differs")
            raise IndexFileError(f"{self.directory}: the corpus files differ from those encoded ({what}); give the "
                                 "same corpus, or encode this one")
        for shard, entry in zip(shards, self.entries, strict=True):
            size = shard.path.stat().st_size
            if size != entry.get("size"):
                raise IndexFileError(f"{shard.path}: changed since it was encoded ({size:,} bytes, "
                                     f"{entry.get('size'):,} then); encode it again")

    def aligned(self, docs: Iterable[Document | str]) -> Iterator[Document]:
        """``docs`` passed through, each checked to be the document of the vector at its row (same id)."""
        stream = iter(docs)
        n = 0
        for entry in self.entries:
            ids_file = self.directory / str(entry["ids"])
            with open(ids_file, encoding="utf-8") as fh:
                for k, line in enumerate(fh, 1):
                    expected = json.loads(line)
                    doc = next(stream, None)
                    if doc is None:
                        raise IndexFileError(f"{ids_file}: the corpus ends at its document {k - 1} of input "
                                             f"{entry['name']!r}; the vectors hold {entry['rows']}")
                    if not isinstance(doc, Document):
                        doc = Document(str(n), doc)
                    n += 1
                    if doc.id != expected:
                        raise IndexFileError(f"{ids_file}: row {k} is document {expected!r}, the corpus has "
                                             f"{doc.id!r} there: the vectors were made from other documents")
                    yield doc
        extra = next(stream, None)
        if extra is not None:
            raise IndexFileError(f"{self.directory}: the corpus has more documents than the {n:,} vectors (the "
                                 "first without one: "
                                 f"{extra.id if isinstance(extra, Document) else str(n)!r})")
