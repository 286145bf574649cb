"""A searchable index: the documents' vectors in a vector store (Faiss), their ids/texts/metadata in SQLite, and
the model.

Index directory layout::

    INDEX/CURRENT            -> "v000002"
    INDEX/LOCK               the writers' lock (fcntl.flock) and the pid of the process writing
    INDEX/v000002/index.faiss     Faiss index (factory string in index.json), ids = document rows
    INDEX/v000002/docs.sqlite     id, text, metadata (JSON), deleted flag
    INDEX/v000002/index.json      factory, dim, counts, sha256 of the model weights
    INDEX/v000002/model/          the model directory the vectors were made with
    INDEX/v000002/lexical/        (built with ``lexical=True``) a BM25 index of the same documents

Every write (build, add, delete, rebuild) holds the lock, fills a work folder of its own
(``.work-PID-RANDOM``), renames it to the next version name and then switches ``CURRENT`` to it with an atomic
rename, so a killed write leaves the previous version in use and a half-written file is never read. A second
writer waits for the first (up to ``lock_timeout`` seconds, then :class:`~deepsem.errors.IndexLockedError`).
Under the lock, leftovers of killed writers (work folders, versions ``CURRENT`` does not name) are removed;
nothing else in the directory is ever touched: a version folder is recognised by its exact name (``v`` and six
or more digits) and its contents (only the files above). ``build`` refuses a non-empty directory that is not
an index.

With a Qdrant target (``Index.build(..., qdrant=QdrantTarget(url=...))``, ``deepsem index build --qdrant-url``)
the vectors live in a Qdrant collection instead of ``index.faiss``: the version holds ``vectors.qdrant.json``
(where Qdrant is and which collection) and each document's metadata is its point's payload, so filters are
evaluated by Qdrant. Every build or rebuild fills a new collection ``ALIAS-<12 hex>``, publishes the version,
then moves the Qdrant alias ``ALIAS`` onto it in one atomic request (what ``CURRENT`` is for deepsem readers, the
alias is for anything reading Qdrant directly) and drops the older collections of that alias. ``add`` writes the
new points into the live collection, ``delete`` removes them from it.

A search encodes the queries with that model only: the checksum is verified on load. The model is any text encoder
a model directory holds (loaded through the task registry, :func:`deepsem.tasks.load`); the vectors live in a
:class:`~deepsem.vectorstore.FaissStore`, so nothing here calls Faiss.

Search modes: ``dense`` (the vectors alone), ``lexical`` (BM25 alone) and ``hybrid``: the union of both top
lists, each candidate scored ``w * cosine + (1 - w) * BM25 / (the query's best BM25 score)`` with ``w`` the
index's ``hybrid_weight`` (default 0.5, chosen on LCQMC dev; see bench/RESULTS.md).

Two-stage search (``search(..., rerank=CROSS_ENCODER)``): the first stage above (any mode, filters included)
fetches each query's best ``rerank_top`` documents (at least ``k``), a cross-encoder
(:class:`~deepsem.tasks.rerank.CrossEncoder`, reading query and document together) scores them and the best ``k``
by its probability come back; each hit keeps its first-stage score and rank (``first_score``, ``first_rank``).
:meth:`Index.search_timed` also says how long each stage took (:class:`SearchTimings`).

Score fusion (``rerank_weight=w`` with ``0 <= w < 1``): instead of the re-ranker's probability alone, each query's
candidates are ranked by ``w * minmax(probability) + (1 - w) * minmax(first-stage score)``, where ``minmax`` maps
the candidates' values to [0, 1] (``(x - min) / (max - min)``; all equal: all 1.0), so a re-ranker weaker than the
first stage can still add to it instead of replacing its order. This is the convex combination with min-max
normalisation of Bruch et al. 2023 ("An Analysis of Fusion Functions for Hybrid Retrieval"): scale-free, so it
mixes cosines, raw BM25 and hybrid scores alike. Ties keep the first stage's order; ``Hit.score`` is the fused
score; ``w = 0`` is the first stage's own order, ``w = 1`` (or None, the default) the re-ranker's alone, with its
probability as score. Choose ``w`` on dev data (``bench/two_stage.py --weights``).
"""

from __future__ import annotations

import contextlib
import fcntl
import numbers
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from deepsem.data.errors import DataError
from deepsem.data.lexical import LexicalIndex
from deepsem.errors import ConfigError, IndexFileError, IndexLockedError, ModelFileError, QueryError
from deepsem.fileio import (
    atomic_write_json,
    atomic_write_text,
    fsync_path,
    read_json,
    regular_file,
    sha256_file,
)
from deepsem.index.corpus import Document, corpus_shards, is_sharded, read_corpus
from deepsem.index.shards import VectorShards, is_vector_shards
from deepsem.index.store import DocStore, check_regular
from deepsem.tasks import TASKS
from deepsem.tasks import load as load_model
from deepsem.vectorstore.exact import exact_search
from deepsem.vectorstore.faiss_store import FaissStore, default_search_params, faiss_cause
from deepsem.vectorstore.qdrant_store import QdrantStore, exact_condition

if TYPE_CHECKING:
    from deepsem.evaluation.pairs import TextEncoder
    from deepsem.tasks import rerank as _rerank  # the task modules are reached through the registry package

    CrossEncoder = _rerank.CrossEncoder

    class IndexedModel(TextEncoder, Protocol):
        """A :class:`TextEncoder` as an index holds it: its vectors' width, and a model directory to copy."""

        @property
        def dim(self) -> int: ...

        def save(self, directory: str | Path) -> Path: ...

FORMAT = "deepsem.index"
MODES = ("dense", "lexical", "hybrid")
HYBRID_CANDIDATES = 100  # each side's top list in hybrid mode (at least; more with deleted rows or filters)
#: First-stage candidates a re-ranker scores per query by default (at least ``k`` are always fetched).
RERANK_TOP = 50
LOCK_FILE = "LOCK"
#: Seconds a writer waits for another one to finish before it gives up with IndexLockedError.
LOCK_TIMEOUT = 600.0
_VERSION_NAME = re.compile(r"v[0-9]{6,}")
_WORK_NAME = re.compile(r"\.work-[0-9]+-[0-9a-f]{8}")
_CURRENT_TMP = re.compile(r"\.CURRENT\..+\.tmp")
_VERSION_ENTRIES = {"index.faiss", "docs.sqlite", "index.json", "model", "lexical", "docs.sqlite-journal",
                    "docs.sqlite-wal", "docs.sqlite-shm", "vectors.qdrant.json"}
_VERSION_TMP = re.compile(r"\.(index\.faiss|index\.json|vectors\.qdrant\.json)\..+\.tmp")
#: The file of a version that says where its vectors are, by vector store.
VECTOR_FILES = {"faiss": "index.faiss", "qdrant": "vectors.qdrant.json"}
#: What index.json's ``factory`` says for an index whose vectors are in Qdrant (exact search in embedded mode,
#: the server's HNSW otherwise).
QDRANT_FACTORY = "qdrant"
_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}")
#: Test hook: called with a short description after every step of a write (fault-injection tests kill the
#: process there); None in normal use.
_fault_hook: Callable[[str], None] | None = None


def _step(what: str) -> None:
    if _fault_hook is not None:
        _fault_hook(what)


@dataclass
class Hit:
    """A found document. ``score``: the first stage's (cosine, BM25 or hybrid), or the re-ranker's relevance
    probability in a two-stage search (the fused score with a ``rerank_weight`` below 1), where ``first_score`` and
    ``first_rank`` (1-based) keep what the first stage said of it (both None in a one-stage search)."""

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    first_score: float | None = None
    first_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """id, text, score, metadata; and first_score, first_rank when the hit was re-ranked."""
        out = {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}
        if self.first_rank is not None:
            out["first_score"], out["first_rank"] = self.first_score, self.first_rank
        return out


@dataclass(frozen=True)
class SearchTimings:
    """Milliseconds a search spent in each stage: ``encode`` (the query tower; 0 in lexical mode),
    ``first_stage`` (vector / BM25 / hybrid search and fetching the documents), ``rerank`` (the cross-encoder;
    about 0 without one) and ``total`` (the whole call: checks and loading a re-ranker's directory included)."""

    encode: float
    first_stage: float
    rerank: float
    total: float

    def to_dict(self) -> dict[str, float]:
        return {"encode": self.encode, "first_stage": self.first_stage, "rerank": self.rerank, "total": self.total}

    def __str__(self) -> str:
        return (f"encode {self.encode:.2f} ms, first stage {self.first_stage:.2f} ms, rerank {self.rerank:.2f} ms, "
                f"total {self.total:.2f} ms")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def cross_encoder(model: str | Path | CrossEncoder) -> CrossEncoder:
    """``model``, or the model of the directory ``model``, checked to be a cross-encoder (task ``rerank``, as
    ``deepsem rerank train`` writes); a two-tower model or any other kind is a :class:`ConfigError` naming it."""
    loaded = load_model(model) if isinstance(model, str | Path) else model
    if not isinstance(loaded, TASKS["rerank"].wrapper):
        where = f"{model}: " if isinstance(model, str | Path) else ""
        kind = "a two-tower model" if callable(getattr(loaded, "encode", None)) else f"a {type(loaded).__name__}"
        raise ConfigError(f"{where}{kind}, not a cross-encoder: a re-ranker reads query and document together; give "
                          "a model directory of task rerank (deepsem rerank train) or a CrossEncoder")
    return cast("CrossEncoder", loaded)


def minmax(values: np.ndarray) -> np.ndarray:
    """``values`` (float64) mapped onto [0, 1] by ``(x - min) / (max - min)``; all 1.0 when they are all equal (or
    there is one), so a query whose candidates the scorer cannot tell apart leaves the other score to decide."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.ones_like(values)
    return (values - lo) / (hi - lo)


def fuse_scores(probabilities: np.ndarray, first_scores: np.ndarray, weight: float) -> np.ndarray:
    """The fused scores of one query's candidates: ``weight * minmax(probabilities) + (1 - weight) *
    minmax(first_scores)`` (see the module docstring)."""
    return weight * minmax(probabilities) + (1.0 - weight) * minmax(first_scores)


def check_rerank_weight(weight: object) -> float:
    """``weight`` as a float when it is a number from 0 to 1 (not a bool, not NaN), else a :class:`QueryError`."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= float(weight) <= 1:
        raise QueryError(f"rerank_weight must be a number from 0 to 1, got {weight!r}")
    return float(weight)


def rerank_hits(reranker: CrossEncoder, query: str, hits: Sequence[Hit], k: int,
                weight: float | None = None) -> list[Hit]:
    """The best ``k`` of ``hits`` (a first stage's list for ``query``, best first) by ``reranker``'s probability
    (:meth:`CrossEncoder.rank`: the query encoded once; ties keep the first stage's order), each carrying that
    probability as ``score`` and its first-stage score and rank. ``weight`` below 1: by the fused score
    (:func:`fuse_scores`), which is then ``score``; None or 1: the probability alone."""
    if not hits:
        return []
    if weight is None or weight == 1:
        ranked = reranker.rank(query, [h.text for h in hits], top_k=k)
        return [Hit(hits[i].id, hits[i].text, p, hits[i].metadata, first_score=hits[i].score, first_rank=i + 1)
                for i, p in ranked]
    probabilities = np.zeros(len(hits), np.float64)
    for i, p in reranker.rank(query, [h.text for h in hits]):
        probabilities[i] = p
    fused = fuse_scores(probabilities, np.array([h.score for h in hits], np.float64), float(weight))
    order = np.argsort(-fused, kind="stable")[:k]
    return [Hit(hits[i].id, hits[i].text, float(fused[i]), hits[i].metadata, first_score=hits[i].score,
                first_rank=int(i) + 1) for i in order]


_cause = faiss_cause
#: Where an index's vectors may be: a Faiss file of the version, or a Qdrant collection.
Vectors = FaissStore | QdrantStore


@dataclass(frozen=True)
class QdrantTarget:
    """Where :meth:`Index.build` puts the vectors in Qdrant: the server or cluster at ``url`` (with ``api_key``,
    default the ``QDRANT_API_KEY`` environment variable), or Qdrant's embedded local mode in the directory
    ``path`` (one process at a time). ``alias``: the Qdrant alias naming the index's live collection (default:
    ``deepsem-`` and the index directory's name)."""

    url: str | None = None
    path: str | Path | None = None
    alias: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise ValueError("a Qdrant target needs a url (a server or cluster) or a path (embedded local mode), "
                             "not both")
        if self.alias is not None and not _ALIAS.fullmatch(self.alias):
            raise ValueError(f"Qdrant alias {self.alias!r}: use letters, digits, '_', '-' and '.' (at most 201)")

    def alias_for(self, directory: Path) -> str:
        """The alias: the one given, else ``deepsem-`` and the index directory's name (other characters as ``_``)."""
        if self.alias is not None:
            return self.alias
        return "deepsem-" + (re.sub(r"[^A-Za-z0-9_.\-]", "_", directory.resolve().name)[:180] or "index")

    def new_store(self, dim: int, alias: str) -> QdrantStore:
        """An empty collection ``ALIAS-<12 hex>`` for a new version of the index."""
        return QdrantStore.create(dim, url=self.url, path=self.path, collection=f"{alias}-{secrets.token_hex(6)}",
                                  api_key=self.api_key or os.environ.get("QDRANT_API_KEY"))


def text_encoder(model: str | Path | IndexedModel, **backend: Any) -> IndexedModel:
    """``model``, or the model of the directory ``model`` (any task, through the registry; ``backend`` and
    ``onnx`` as :func:`deepsem.load` takes them), checked to be a text encoder: ``encode(texts, side=...)`` and
    ``dim``. Another kind of model is a :class:`ConfigError` naming it."""
    loaded = load_model(model, **backend) if isinstance(model, str | Path) else model
    if not callable(getattr(loaded, "encode", None)) or not isinstance(getattr(loaded, "dim", None), int):
        where = f"{model}: " if isinstance(model, str | Path) else ""
        raise ConfigError(f"{where}a {type(loaded).__name__}, not a two-tower model: an index needs a text encoder "
                          "(encode(texts, side=...) and dim), such as the model directory deepsem train writes")
    return loaded


class Index:
    """Build with :meth:`build`, open with :meth:`load`, query with :meth:`search`."""

    def __init__(self, directory: Path, version: str, model: IndexedModel, vectors: Vectors, store: DocStore,
                 meta: dict[str, Any], lexical: LexicalIndex | None = None) -> None:
        self.directory, self.version, self.model = directory, version, model
        self.vectors, self.store, self.meta = vectors, store, meta
        self.lexical = lexical
        self._deleted = store.deleted_count()

    @property
    def faiss_index(self) -> Any:
        """The raw Faiss index under :attr:`vectors` (kept for code that reached into it; None in Qdrant)."""
        return getattr(self.vectors, "index", None)

    @property
    def in_qdrant(self) -> bool:
        """Whether the vectors are in a Qdrant collection (else a Faiss file of the version)."""
        return isinstance(self.vectors, QdrantStore)

    def close(self) -> None:
        """Close the document store and release the Qdrant client (a no-op for Faiss's in-memory index)."""
        self.store.close()
        if isinstance(self.vectors, QdrantStore):
            self.vectors.close()

    # -- building -----------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: str | Path | IndexedModel,
        corpus: str | Path | Iterable[Document | str],
        directory: str | Path,
        factory: str = "Flat",
        *,
        id_field: str = "id",
        text_field: str = "text",
        skip_bad_rows: bool = False,
        batch_size: int = 512,
        chunk: int = 50_000,
        train_size: int = 100_000,
        vectors: np.ndarray | str | Path | None = None,
        search_params: str | None = None,
        progress: bool = False,
        lexical: bool = False,
        hybrid_weight: float = 0.5,
        lock_timeout: float = LOCK_TIMEOUT,
        qdrant: QdrantTarget | None = None,
    ) -> Index:
        """Encode every document of ``corpus`` with ``model``'s document tower and index the vectors.

        ``factory`` is a Faiss index factory string ("Flat", "HNSW32", "IVF1024,Flat", "IVF256,PQ16", ...);
        inner product on L2-normalised vectors = cosine. Training factories (IVF, PQ) train on the first
        ``train_size`` vectors. ``search_params`` are Faiss run-time parameters kept with the index
        ("efSearch=128" for HNSW, "nprobe=32" for IVF by default: :func:`default_search_params`).
        ``vectors`` (an array or a ``.npy`` file, one row per document, in corpus order, made by this model's
        document tower, e.g. with ``deepsem encode --side doc``) skips the encoding; NaN or infinite values
        are refused. ``vectors`` may also be the folder (or a manifest) ``deepsem encode`` wrote for a corpus in
        shards: read shard by shard, memory-mapped, each checked against the corpus (files, sizes, row counts,
        ids) and the model. ``corpus`` may be a folder or glob pattern of corpus files (read in
        :func:`~deepsem.index.corpus.corpus_shards` order).
        ``lexical`` also builds a BM25 index of the documents, for ``mode="lexical"`` and ``"hybrid"`` searches
        (then the default); ``hybrid_weight`` is the cosine's share of the hybrid score.
        ``directory`` must be new, empty or an index (whose versions are replaced); another writer of the
        same index is waited for up to ``lock_timeout`` seconds. ``qdrant``: keep the vectors in a Qdrant
        collection there instead of a Faiss file (``factory`` and ``search_params`` are then not used); the
        documents' metadata become the points' payloads.
        """
        if qdrant is not None and (factory != "Flat" or search_params is not None):
            raise ValueError("factory and search_params are Faiss settings: an index whose vectors are in Qdrant "
                             "takes neither")
        if not 0.0 <= hybrid_weight <= 1.0:
            raise ValueError(f"hybrid_weight must be in [0, 1], got {hybrid_weight}")
        directory = Path(directory)
        semantic = text_encoder(model)
        source = str(corpus) if isinstance(corpus, str | Path) else None
        docs: Iterable[Document | str] = (
            read_corpus(corpus, id_field=id_field, text_field=text_field, skip_bad_rows=skip_bad_rows)
            if isinstance(corpus, str | Path) else corpus
        )
        checked: np.ndarray | VectorShards | None = None
        if vectors is not None:
            checked = _checked_vectors(vectors, semantic.dim)
            if isinstance(checked, VectorShards):  # a corpus in shards: each vector checked against its document
                checked.check_model(semantic, semantic.dim)
                if isinstance(corpus, str | Path) and is_sharded(corpus):
                    checked.check_corpus(corpus_shards(corpus))
                docs = checked.aligned(docs)
        _check_target(directory)
        directory.mkdir(parents=True, exist_ok=True)

        def fill(work: Path, make_store: Callable[[int], Vectors] | None = None) -> None:
            _build_version(work, semantic, docs, factory, model_name=str(model) if isinstance(model, str | Path)
                           else "the model", source=source, id_field=id_field, batch_size=batch_size,
                           chunk=chunk, train_size=train_size, vectors=checked, search_params=search_params,
                           progress=progress, lexical=lexical, hybrid_weight=hybrid_weight, make_store=make_store)

        if qdrant is None:
            _write(directory, lock_timeout, fill)
        else:
            alias = qdrant.alias_for(directory)
            _write_collection(directory, lock_timeout, alias, lambda dim: qdrant.new_store(dim, alias), fill)
        return cls.load(directory, **getattr(semantic, "backend_options", {}))

    # -- loading --------------------------------------------------------------------------------------------
    @staticmethod
    def current_version(directory: str | Path) -> str:
        """The version folder name ``directory/CURRENT`` names, checked: a name the index itself makes
        (``v`` and six or more digits) of a real folder inside ``directory``; otherwise an
        :class:`IndexFileError` (``FileNotFoundError`` when there is no CURRENT: not an index). A server
        compares it with :attr:`version` to see that a writer published a new version."""
        directory = Path(directory)
        current = directory / "CURRENT"
        try:
            st = os.stat(current)
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory}: not a deepsem index (no CURRENT file)") from None
        except OSError as exc:
            raise IndexFileError(f"{current}: cannot read: {_cause(exc)}") from None
        if not stat.S_ISREG(st.st_mode):
            raise IndexFileError(f"{current}: not a regular file")
        try:
            with open(current, "rb") as fh:
                raw = fh.read(65)
            name = raw.decode("utf-8").strip()
        except OSError as exc:
            raise IndexFileError(f"{current}: cannot read: {_cause(exc)}") from None
        except UnicodeDecodeError:
            raise IndexFileError(f"{current}: not UTF-8 text; it should hold a version name such as v000001"
                                 ) from None
        if len(raw) > 64 or not _VERSION_NAME.fullmatch(name):
            shown = name[:40] + ("..." if len(name) > 40 else "")
            raise IndexFileError(f"{current}: names {shown!r}, not a version of this index (v000001, v000002, ...)")
        folder = directory / name
        if folder.is_symlink() or not folder.is_dir() or folder.resolve().parent != directory.resolve():
            raise IndexFileError(f"{current}: names {name}, which is not a folder inside {directory}")
        return name

    @classmethod
    def load(cls, directory: str | Path, *, backend: str = "torch", onnx: str | Path | None = None,
             precision: str = "fp32") -> Index:
        """Open the version ``CURRENT`` names. A damaged or crafted file is an :class:`IndexFileError` naming it;
        a version removed by a writer while it was being read is retried with the new ``CURRENT``. ``backend``,
        ``onnx`` and ``precision``: how its model answers (:func:`deepsem.load`), kept when the index reloads."""
        directory = Path(directory)
        for attempt in range(5):
            version = cls.current_version(directory)
            try:
                return cls._load_version(directory, version, backend=backend, onnx=onnx, precision=precision)
            except (IndexFileError, ModelFileError, FileNotFoundError):
                if attempt == 4 or cls.current_version(directory) == version:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_version(cls, directory: Path, version: str, **backend: Any) -> Index:
        work = directory / version
        meta = _read_meta(work / "index.json")
        weights = work / "model" / "model.safetensors"
        check_regular(weights, "model weights file")
        if sha256_file(weights) != meta["model_sha256"]:
            raise IndexFileError(f"{weights}: checksum differs from index.json: the index was built with "
                                 "another model")
        model = text_encoder(work / "model", **backend)
        if model.dim != meta["dim"]:
            raise IndexFileError(f"{work / 'index.json'}: field 'dim' is {meta['dim']}, the model's vectors "
                                 f"have {model.dim}")
        index: Vectors
        if meta.get("store") == "qdrant":
            index = _read_qdrant(work / VECTOR_FILES["qdrant"], meta["dim"])
        else:
            index = _read_faiss(work / "index.faiss", meta["dim"])
            if meta.get("search_params"):
                try:
                    index.set_search_params(meta["search_params"])
                except ValueError as exc:
                    raise IndexFileError(f"{work / 'index.json'}: field 'search_params' "
                                         f"{meta['search_params']!r}: {exc}") from None
        try:
            store = DocStore.open_existing(work / "docs.sqlite")
            try:
                lexical = LexicalIndex.load(work / "lexical") if meta.get("lexical") else None
            except BaseException:
                store.close()
                raise
        except BaseException:
            if isinstance(index, QdrantStore):
                index.close()
            raise
        return cls(directory, version, model, index, store, meta, lexical)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def factory(self) -> str:
        return str(self.meta["factory"])

    # -- searching -----------------------------------------------------------------------------------------
    def search_vectors(self, vectors: np.ndarray, k: int, *, equal: dict[str, Any] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: scores and document rows ``(n, k)``; rows are -1 where fewer than k exist. ``equal``
        (Qdrant only): metadata equalities Qdrant evaluates (:func:`~deepsem.vectorstore.qdrant_store.
        equality_filter`). A Qdrant collection a writer dropped after publishing a newer version is followed:
        the index reloads that version and searches again."""
        if not isinstance(self.vectors, QdrantStore):
            k = max(1, min(k, len(self.vectors)))
            return self.vectors.search(vectors, k)
        k = max(1, min(k, int(self.meta["documents"])))  # every point has a row; no count request per search
        try:
            return self.vectors.search(vectors, k, equal=equal)
        except Exception:
            if Index.current_version(self.directory) == self.version:
                raise
        self._reopen()  # a rebuild published a new version and dropped this one's collection
        return self.search_vectors(vectors, k, equal=equal)

    def search(self, queries: str | Sequence[str], k: int = 10, filter: dict[str, Any] | None = None,
               mode: str | None = None, hybrid_weight: float | None = None, *,
               rerank: str | Path | CrossEncoder | None = None, rerank_top: int | None = None,
               rerank_weight: float | None = None) -> list[list[Hit]]:
        """The ``k`` best documents of each query, best first; ``filter`` keeps documents whose metadata
        has every given key equal to the given value. ``mode``: ``dense``, ``lexical`` or ``hybrid`` (see the
        module docstring); default ``hybrid`` for an index built with ``lexical=True``, else ``dense``.
        ``hybrid_weight`` overrides the index's cosine share for this search (e.g. to tune it on dev data).
        ``rerank``: a cross-encoder (or its model directory, loaded once and kept on the index) re-scores the first
        stage's best ``rerank_top`` documents (default :data:`RERANK_TOP`, at least ``k``; filters apply in the
        first stage) and the best ``k`` of them by its probability come back (see :class:`Hit`).
        ``rerank_weight`` (0 to 1; None: 1) mixes that probability with the first stage's score (score fusion, see
        the module docstring): 1 is the re-ranker alone, 0 the first stage's order; choose it on dev data."""
        return self.search_timed(queries, k, filter, mode, hybrid_weight, rerank=rerank, rerank_top=rerank_top,
                                 rerank_weight=rerank_weight)[0]

    def search_timed(self, queries: str | Sequence[str], k: int = 10, filter: dict[str, Any] | None = None,
                     mode: str | None = None, hybrid_weight: float | None = None, *,
                     rerank: str | Path | CrossEncoder | None = None, rerank_top: int | None = None,
                     rerank_weight: float | None = None) -> tuple[list[list[Hit]], SearchTimings]:
        """:meth:`search`, and the milliseconds each stage took over all the queries (:class:`SearchTimings`)."""
        t0 = time.perf_counter()
        if isinstance(queries, str):
            queries = [queries]
        _check_queries(queries)
        if k < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        reranker = None if rerank is None else self.reranker(rerank)
        if rerank_top is not None:
            if reranker is None:
                raise ValueError("rerank_top is the re-ranker's number of candidates: give rerank too")
            if isinstance(rerank_top, bool) or not isinstance(rerank_top, int) or rerank_top < 1:
                raise QueryError(f"rerank_top must be an integer >= 1, got {rerank_top!r}")
        if rerank_weight is not None:
            if reranker is None:
                raise ValueError("rerank_weight mixes the re-ranker's probability with the first stage's score: "
                                 "give rerank too")
            check_rerank_weight(rerank_weight)
        mode = self.resolve_mode(mode)
        t1 = time.perf_counter()
        vectors = None if mode == "lexical" else self.model.encode(list(queries), side="query")
        t2 = time.perf_counter()
        if vectors is not None and not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise ModelFileError(f"{self.directory / self.version / 'model'}: the model made NaN or infinite "
                                 f"vectors for query {bad + 1} ({queries[bad][:40]!r}): its weights are damaged")
        fetch = k if reranker is None else max(k, RERANK_TOP if rerank_top is None else rerank_top)
        found = self.search_encoded(vectors, fetch, filter, texts=list(queries), mode=mode,
                                    hybrid_weight=hybrid_weight)
        t3 = time.perf_counter()
        if reranker is not None:
            found = [rerank_hits(reranker, q, hits, k, rerank_weight) for q, hits in zip(queries, found, strict=True)]
        t4 = time.perf_counter()
        return found, SearchTimings(_ms(t2 - t1) if vectors is not None else 0.0, _ms(t3 - t2), _ms(t4 - t3),
                                    _ms(t4 - t0))

    def reranker(self, model: str | Path | CrossEncoder) -> CrossEncoder:
        """The cross-encoder ``model`` names (:func:`cross_encoder`); a model directory is loaded once and kept
        on this index (by its resolved path), so later searches reuse it and its document cache
        (``CrossEncoder.cache_documents()``, the default budget). A CrossEncoder given is used as it is."""
        if not isinstance(model, str | Path):
            return cross_encoder(model)
        # made on first use, not in __init__: _reopen's __dict__.update from a freshly loaded Index keeps it
        cache: dict[Path, CrossEncoder] = self.__dict__.setdefault("_rerankers", {})
        key = Path(model).resolve()
        if key not in cache:
            cache[key] = cross_encoder(model).cache_documents()
        return cache[key]

    def resolve_mode(self, mode: str | None) -> str:
        """``mode`` checked against this index (None: its default)."""
        if mode is None:
            return "hybrid" if self.lexical is not None else "dense"
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "dense" and self.lexical is None:
            raise QueryError(f"mode {mode!r} needs the index's lexical (BM25) part: {self.directory} was built "
                             "without it (Index.build(..., lexical=True), deepsem index build --lexical)")
        return mode

    def search_encoded(self, vectors: np.ndarray | None, k: int = 10, filter: dict[str, Any] | None = None,
                       texts: Sequence[str] | None = None, mode: str | None = None,
                       hybrid_weight: float | None = None) -> list[list[Hit]]:
        """:meth:`search` for query vectors already encoded with this index's model (query tower).
        ``texts`` (the queries) are needed by the ``lexical`` and ``hybrid`` modes."""
        if texts is not None:
            _check_queries(texts)
        if k < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        if vectors is not None and not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(np.atleast_2d(vectors)).all(axis=1))[0])
            raise QueryError(f"query vector {bad + 1} holds NaN or infinite values", position=bad)
        mode = self.resolve_mode(mode)
        fetch = k + self._deleted
        if filter:
            fetch = max(fetch * 20, 1000)
        pushed: dict[str, Any] | None = None
        if mode == "dense" and self.in_qdrant:  # Qdrant filters; deleted documents have no points
            pushed = {key: value for key, value in (filter or {}).items() if exact_condition(key, value)}
            fetch = k if len(pushed) == len(filter or {}) else max(k * 20, 1000)
        if mode == "dense":
            if vectors is None:
                raise ValueError("dense search needs the query vectors")
            dense_scores, dense_rows = self.search_vectors(vectors, fetch, equal=pushed)
            scores, rows = list(dense_scores), list(dense_rows)
        else:
            if texts is None or (vectors is None and mode == "hybrid"):
                raise ValueError(f"{mode} search needs the query texts" + (" and vectors" if mode == "hybrid" else ""))
            if hybrid_weight is not None and not 0.0 <= hybrid_weight <= 1.0:
                raise ValueError(f"hybrid_weight must be in [0, 1], got {hybrid_weight}")
            scores, rows = self._ranked(texts, vectors, fetch, mode, hybrid_weight)
        docs = self.store.fetch(sorted({int(r) for row in rows for r in row if r >= 0}))
        results = []
        for s_row, r_row in zip(scores, rows, strict=True):
            hits: list[Hit] = []
            for s, r in zip(s_row, r_row, strict=True):
                doc = docs.get(int(r))
                if doc is None:
                    continue
                if filter and any(doc[2].get(key) != value for key, value in filter.items()):
                    continue
                hits.append(Hit(doc[0], doc[1], float(s), doc[2]))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def _ranked(self, texts: Sequence[str], vectors: np.ndarray | None, fetch: int, mode: str,
                weight: float | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Scores and rows, best first, of the lexical or hybrid ranking of each query."""
        assert self.lexical is not None
        weight = float(self.meta["lexical"]["hybrid_weight"]) if weight is None else weight
        size = max(fetch, HYBRID_CANDIDATES)
        if mode == "hybrid":
            assert vectors is not None
            if len(vectors) != len(texts):
                raise ValueError(f"{len(vectors)} query vectors for {len(texts)} query texts")
            dense_scores, dense_rows = self.search_vectors(vectors, size)
        out_scores, out_rows = [], []
        for i, text in enumerate(texts):
            bm25 = self.lexical.scores(text)
            if mode == "lexical":
                s, r = self.lexical.top(bm25, fetch)
                out_scores.append(s)
                out_rows.append(r)
                continue
            assert vectors is not None
            keep = dense_rows[i] >= 0
            d_rows, cosine = dense_rows[i][keep], dense_scores[i][keep]
            _, lex_rows = self.lexical.top(bm25, size)
            extra = np.setdiff1d(lex_rows, d_rows)
            if len(extra):
                cosine = np.concatenate([cosine, self._vectors_of(extra) @ vectors[i]])
                d_rows = np.concatenate([d_rows, extra])
            best = float(bm25.max(initial=0.0))
            lexical = self.lexical.scores_of(bm25, d_rows) / best if best > 0 else np.zeros(len(d_rows), np.float32)
            fused = weight * cosine + (1.0 - weight) * lexical
            order = np.argsort(-fused, kind="stable")[:fetch]
            out_scores.append(fused[order].astype(np.float32))
            out_rows.append(d_rows[order])
        return out_scores, out_rows

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """The indexed vectors of document ``rows`` (read back from the store; lossy for PQ factories)."""
        return self.vectors.reconstruct(rows)

    def check_recall(self, k: int = 10, n_queries: int = 200, seed: int = 0) -> float:
        """Recall@k of this index against exact search over the same vectors.

        Queries are documents of the index (a random sample); the exact answer is a full scan of every
        live document's vector, re-encoded from the store (so lossy factories such as PQ are measured
        against the true vectors).
        """
        rows, vectors = self._all_vectors()
        rng = np.random.default_rng(seed)
        queries = vectors[rng.choice(len(rows), size=min(n_queries, len(rows)), replace=False)]
        k = min(k, len(rows))
        _, exact_pos = exact_search(queries, vectors, k)
        exact_rows = rows[exact_pos]
        native = self.vectors.search_native if isinstance(self.vectors, FaissStore) else self.vectors.search
        _, approx_rows = native(queries, k)
        hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_rows, exact_rows, strict=True))
        return hits / (len(queries) * k)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every document's vector, re-encoded from the store (works for any factory, lossy or not)."""
        rows, texts = [], []
        for batch in self.store.iter_live():
            rows += [r for r, _, _, _ in batch]
            texts += [t for _, _, t, _ in batch]
        return np.asarray(rows, np.int64), self.model.encode(texts, side="doc")

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, docs: Iterable[Document | str], *, source: str | Path | None = None,
            lock_timeout: float = LOCK_TIMEOUT) -> int:
        """Add documents (new ids only, each once); returns how many. Writes a new version atomically, on top
        of the index's current version (another writer's additions are kept). ``source`` (the file the
        documents come from) is named in errors."""
        added = 0
        points: list[np.ndarray] = []  # rows written into the live Qdrant collection

        def fill(work: Path) -> None:
            nonlocal added
            self._refresh()
            _copy_version(self.directory / self.version, work)
            store = DocStore(work / "docs.sqlite")
            try:
                index = self.vectors if isinstance(self.vectors, QdrantStore) else \
                    _read_faiss(work / "index.faiss", int(self.meta["dim"]))
                seen: dict[str, int] = {}
                for batch in _batches(docs, 50_000):
                    _check_unique(batch, seen, added, source)
                    rows = np.arange(store.next_row(), store.next_row() + len(batch), dtype=np.int64)
                    store.add(rows.tolist(), [d.id for d in batch], [d.text for d in batch],
                              [d.metadata for d in batch])
                    vectors = self.model.encode([d.text for d in batch], side="doc")
                    _check_finite(vectors, batch, self.directory / self.version / "model", added)
                    if isinstance(index, QdrantStore):
                        index.remove(rows)  # points a killed add left under these unpublished rows
                        points.append(rows)
                    _add_vectors(index, vectors, rows, batch)
                    added += len(batch)
                _step("add: documents stored")
                if self.lexical is not None:  # BM25 statistics cover the whole corpus: rebuilt over the live ones
                    shutil.rmtree(work / "lexical")
                    _lexical_from_store(store).save(work / "lexical")
                    _step("add: lexical index written")
            finally:
                store.close()
            meta = {**self.meta, "documents": int(self.meta["documents"]) + added}
            _write_version(work, index, self.model, meta, copy_model=False)

        before = self.version
        try:
            _write(self.directory, lock_timeout, fill)
        except BaseException:
            if points and isinstance(self.vectors, QdrantStore) and self._published() == before:
                with contextlib.suppress(Exception):  # the next add removes them too
                    self.vectors.remove(np.concatenate(points))
            raise
        self._reopen()
        return added

    def _published(self) -> str | None:
        """The version CURRENT names now (None when it cannot be read)."""
        try:
            return Index.current_version(self.directory)
        except (IndexFileError, FileNotFoundError):
            return None

    def delete(self, ids: Sequence[str], *, lock_timeout: float = LOCK_TIMEOUT) -> int:
        """Delete documents by id (they stop appearing at once; :meth:`rebuild` reclaims the space)."""
        removed = 0
        rows: list[int] = []

        def fill(work: Path) -> None:
            nonlocal removed
            self._refresh()
            _copy_version(self.directory / self.version, work)
            store = DocStore(work / "docs.sqlite")
            try:
                rows.extend(store.live_rows(list(ids)))
                removed = store.delete(list(ids))
            finally:
                store.close()
            _step("delete: documents marked")

        def drop_points() -> None:  # published: the points of the deleted documents leave the collection
            if isinstance(self.vectors, QdrantStore) and rows:
                self.vectors.remove(np.asarray(rows, np.int64))
                _step("delete: points removed")

        _write(self.directory, lock_timeout, fill, published=drop_points)
        self._reopen()
        return removed

    def rebuild(self, factory: str | None = None, *, lock_timeout: float = LOCK_TIMEOUT) -> Index:
        """Re-encode the live documents into a fresh index (optionally with another factory)."""

        if factory is not None and self.in_qdrant:
            raise ValueError("factory is a Faiss setting: this index's vectors are in Qdrant")

        def fill(work: Path, make_store: Callable[[int], Vectors] | None = None) -> None:
            self._refresh()
            docs = [Document(i, t, m) for batch in self.store.iter_live() for _, i, t, m in batch]
            lexical = self.meta.get("lexical") or {}
            _build_version(work, self.model, docs, factory or self.factory, model_name=str(self.directory),
                           search_params=None if factory else self.meta.get("search_params"),
                           lexical=bool(lexical), hybrid_weight=lexical.get("hybrid_weight", 0.5),
                           make_store=make_store)

        if isinstance(self.vectors, QdrantStore):
            live, alias = self.vectors, str(self.meta["qdrant"]["alias"])
            _write_collection(self.directory, lock_timeout, alias,
                              lambda dim: live.sibling(f"{alias}-{secrets.token_hex(6)}"), fill)
        else:
            _write(self.directory, lock_timeout, fill)
        self._reopen()
        return self

    def _refresh(self) -> None:
        """Reload when another writer published a newer version than the one this object holds."""
        if Index.current_version(self.directory) != self.version:
            self._reopen()

    def _reopen(self) -> None:
        old = self.vectors
        self.store.close()
        fresh = Index.load(self.directory, **self.load_options)
        self.__dict__.update(fresh.__dict__)
        if isinstance(old, QdrantStore):  # the new version's store holds its own share of the client
            old.close()

    @property
    def load_options(self) -> dict[str, Any]:
        """The keywords of :meth:`load` that open this index with its model answering as now (backend, file)."""
        return dict(getattr(self.model, "backend_options", {}))

    def stats(self) -> dict[str, Any]:
        stats = {"documents": len(self.store), "deleted": self.store.deleted_count(), "factory": self.factory,
                 "dim": self.meta["dim"], "version": self.version, "lexical": self.lexical is not None,
                 "default_mode": self.resolve_mode(None)}
        if isinstance(self.vectors, QdrantStore):
            stats["qdrant"] = {"where": self.vectors.url or str(self.vectors.path),
                               "alias": self.meta["qdrant"]["alias"], "collection": self.vectors.collection}
        return stats


def _check_queries(queries: Sequence[str]) -> None:
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            where = f"query {i + 1} of {len(queries)}" if len(queries) > 1 else "the query"
            raise QueryError(f"{where} is empty or only whitespace: give some text to search for", position=i)


def _batches(docs: Iterable[Document | str], size: int) -> Iterable[list[Document]]:
    batch: list[Document] = []
    for n, doc in enumerate(docs):
        batch.append(doc if isinstance(doc, Document) else Document(str(n), doc))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_unique(batch: list[Document], seen: dict[str, int], before: int, source: str | Path | None,
                  id_field: str = "id") -> None:
    """Record the batch's ids (``before`` documents came earlier); an id seen before is an error naming it and
    both documents (1-based)."""
    for n, doc in enumerate(batch, before + 1):
        first = seen.setdefault(doc.id, n)
        if first != n:
            problem = f"duplicate document id {doc.id!r} (first at document {first}); ids must be unique"
            if source is not None:
                raise DataError(source, n, "id", problem, column=id_field, unit="document")
            raise IndexFileError(f"document {n}: {problem}")


def _check_finite(vectors: np.ndarray, batch: list[Document], model: Path | str, before: int) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        j = int(np.flatnonzero(~finite)[0])
        raise ModelFileError(f"{model}: the model made NaN or infinite vectors for document {before + j + 1} "
                             f"(id {batch[j].id!r}): its weights are damaged; nothing was indexed")


def _checked_vectors(vectors: np.ndarray | str | Path, dim: int) -> np.ndarray | VectorShards:
    """Precomputed document vectors, checked: a 2-D array of real numbers, ``dim`` wide, all finite. A file is
    read as ``.npy`` without pickle (memory-mapped, so a crafted header cannot make it allocate). A folder (or
    manifest) of vector shards is opened as :class:`VectorShards` (files, shapes and dim checked here; values as
    they are read)."""
    where = "vectors"
    if isinstance(vectors, str | Path) and is_vector_shards(vectors):
        shards = VectorShards.open(vectors)
        if shards.dim != dim:
            raise IndexFileError(f"{vectors}: vectors of dim {shards.dim} do not fit the model's dimension {dim}")
        return shards
    if isinstance(vectors, str | Path):
        where = str(vectors)
        try:
            regular_file(vectors, "vectors file")
            vectors = np.load(vectors, mmap_mode="r", allow_pickle=False)
        except DataError as exc:
            raise IndexFileError(str(exc)) from None
        except (OSError, ValueError, EOFError) as exc:
            raise IndexFileError(f"{where}: not a NumPy .npy array file: {_cause(exc)}") from None
    if not isinstance(vectors, np.ndarray):
        raise IndexFileError(f"{where}: expected a NumPy array, got {type(vectors).__name__}")
    if vectors.dtype.kind not in "fiu":
        raise IndexFileError(f"{where}: dtype {vectors.dtype} is not a real number type (give float32 vectors)")
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise IndexFileError(f"{where}: vectors of shape {vectors.shape} do not fit the model's dimension {dim} "
                             f"(expected (documents, {dim}))")
    for start in range(0, len(vectors), 65_536):
        finite = np.isfinite(vectors[start : start + 65_536]).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise IndexFileError(f"{where}: row {row} (document {row + 1}) holds NaN or infinite values; "
                                 "re-encode the documents")
    return vectors


def _build_version(work: Path, semantic: IndexedModel, docs: Iterable[Document | str], factory: str, *,
                   model_name: str = "the model", source: str | None = None, id_field: str = "id",
                   batch_size: int = 512, chunk: int = 50_000, train_size: int = 100_000,
                   vectors: np.ndarray | VectorShards | None = None, search_params: str | None = None,
                   progress: bool = False, lexical: bool = False, hybrid_weight: float = 0.5,
                   make_store: Callable[[int], Vectors] | None = None) -> None:
    """Write a complete index version of ``docs`` into the folder ``work`` (not yet published). ``make_store``:
    the empty vector store of that width to fill (a new Qdrant collection), else a Faiss ``factory`` one."""
    params: str | None = default_search_params(factory) if search_params is None else search_params
    index = FaissStore.create(semantic.dim, factory, params or "") if make_store is None else \
        make_store(semantic.dim)
    if isinstance(index, QdrantStore):
        factory, params = QDRANT_FACTORY, None
    store = DocStore(work / "docs.sqlite")
    pending: list[np.ndarray] = []
    pending_rows: list[np.ndarray] = []
    row, t0 = 0, time.perf_counter()
    seen: dict[str, int] = {}
    try:
        for batch in _batches(docs, chunk):
            _check_unique(batch, seen, row, source, id_field)
            rows = np.arange(row, row + len(batch), dtype=np.int64)
            if vectors is not None:
                if row + len(batch) > len(vectors):
                    raise IndexFileError(f"{len(vectors)} vectors given for a corpus of more documents")
                batch_vectors = np.ascontiguousarray(vectors[row : row + len(batch)], dtype=np.float32)
            else:
                batch_vectors = semantic.encode([d.text for d in batch], batch_size=batch_size, side="doc")
                _check_finite(batch_vectors, batch, model_name, row)
            store.add(rows.tolist(), [d.id for d in batch], [d.text for d in batch], [d.metadata for d in batch])
            row += len(batch)
            if isinstance(index, FaissStore) and index.needs_training:  # hold vectors until enough to train on
                pending.append(batch_vectors)
                pending_rows.append(rows)
                if sum(len(p) for p in pending) >= train_size:
                    _train_and_flush(index, pending, pending_rows)
            else:
                _add_vectors(index, batch_vectors, rows, batch)
            if progress:
                print(f"indexed {row:,} documents ({row / (time.perf_counter() - t0):.0f}/s)", flush=True)
        if pending and isinstance(index, FaissStore):
            _train_and_flush(index, pending, pending_rows)
        if row == 0:
            if source is not None:
                raise DataError(source, None, None, "the corpus has no documents (empty, or a header line only)")
            raise ValueError("the corpus has no documents")
        if vectors is not None and len(vectors) != row:
            raise IndexFileError(f"{len(vectors)} vectors given for {row} documents")
        _step("build: documents stored")
        meta: dict[str, Any] = {"format": FORMAT, "version": 1, "factory": factory, "dim": semantic.dim,
                                "documents": row, "search_params": params}
        if isinstance(index, QdrantStore):  # the collection is ALIAS-<12 hex>
            meta["store"], meta["qdrant"] = "qdrant", {"alias": index.collection[:-13]}
        if lexical:
            _lexical_from_store(store).save(work / "lexical")
            meta["lexical"] = {"hybrid_weight": hybrid_weight}
            _step("build: lexical index written")
    finally:
        store.close()
    meta["built_seconds"] = round(time.perf_counter() - t0, 2)
    _write_version(work, index, semantic, meta)


def _lexical_from_store(store: DocStore) -> LexicalIndex:
    rows: list[int] = []
    texts: list[str] = []
    for batch in store.iter_live():
        rows += [r for r, _, _, _ in batch]
        texts += [t for _, _, t, _ in batch]
    return LexicalIndex.build(rows, texts)


def _add_vectors(index: Vectors, vectors: np.ndarray, rows: np.ndarray, batch: list[Document]) -> None:
    """Add a batch's vectors under their rows; into Qdrant with each document's metadata as the payload."""
    if isinstance(index, QdrantStore):
        index.add(vectors, rows, payloads=[d.metadata for d in batch])
    else:
        index.add(vectors, rows)


def _train_and_flush(index: FaissStore, pending: list[np.ndarray], pending_rows: list[np.ndarray]) -> None:
    vectors = np.concatenate(pending)
    if index.needs_training:
        index.train(vectors)
    index.add(vectors, np.concatenate(pending_rows))
    pending.clear()
    pending_rows.clear()


# -- reading a version ------------------------------------------------------------------------------------------
def _read_meta(path: Path) -> dict[str, Any]:
    """index.json, read with the size/depth/UTF-8 checks of :func:`read_json` and its fields type-checked."""
    meta = read_json(path, IndexFileError)
    if not isinstance(meta, dict):
        raise IndexFileError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise IndexFileError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    expected: dict[str, type] = {"factory": str, "dim": int, "documents": int, "model_sha256": str,
                                 "search_params": str}
    for key, kind in expected.items():
        value = meta.get(key)
        if key == "search_params" and value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            wanted = "a non-negative integer" if kind is int else "a string"
            raise IndexFileError(f"{path}: field {key!r} must be {wanted}, got {repr(value)[:100]}")
    kind = meta.get("store", "faiss")
    if kind not in VECTOR_FILES:
        raise IndexFileError(f"{path}: field 'store' is {repr(kind)[:100]}, not one of {', '.join(VECTOR_FILES)}")
    if kind == "qdrant":
        spec = meta.get("qdrant")
        alias = spec.get("alias") if isinstance(spec, dict) else None
        if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
            raise IndexFileError(f"{path}: field 'qdrant.alias' must be a Qdrant alias name, got {repr(alias)[:100]}")
    lexical = meta.get("lexical")
    if lexical:
        weight = lexical.get("hybrid_weight") if isinstance(lexical, dict) else None
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 <= weight <= 1:
            raise IndexFileError(f"{path}: field 'lexical.hybrid_weight' must be a number in [0, 1], "
                                 f"got {repr(weight)[:100]}")
    return meta


def _read_faiss(path: Path, dim: int) -> FaissStore:
    """The vector store file as deepsem writes it (an ID map of ``dim``-wide vectors); anything else, a truncated
    or garbage file included, is an :class:`IndexFileError` naming the file and the cause."""
    store = FaissStore.load(path, error=IndexFileError)
    if store.dim != dim:
        raise IndexFileError(f"{path}: vectors of dimension {store.dim}, index.json says {dim}")
    return store


def _read_qdrant(path: Path, dim: int) -> QdrantStore:
    """The Qdrant store a version's descriptor names, reconnected and checked (an :class:`IndexFileError` naming
    the file and the cause otherwise: an unreachable server, a missing collection, another width)."""
    check_regular(path, "Qdrant store descriptor")
    try:
        store = QdrantStore.load(path, error=IndexFileError)
    except ImportError as exc:
        raise IndexFileError(f"{path}: this index's vectors are in Qdrant: {exc}") from None
    if store.dim != dim:
        store.close()
        raise IndexFileError(f"{path}: vectors of dimension {store.dim}, index.json says {dim}")
    return store


def _current_qdrant(directory: Path) -> dict[str, str] | None:
    """The alias and collection of the index's current version when its vectors are in Qdrant, else None."""
    try:
        work = directory / Index.current_version(directory)
        meta = _read_meta(work / "index.json")
        if meta.get("store") != "qdrant":
            return None
        collection = read_json(work / VECTOR_FILES["qdrant"], IndexFileError).get("collection")
    except (FileNotFoundError, IndexFileError, AttributeError):
        return None
    return {"alias": str(meta["qdrant"]["alias"]), "collection": str(collection)}


def _write_collection(directory: Path, lock_timeout: float, alias: str, new_store: Callable[[int], QdrantStore],
                      fill: Callable[[Path, Callable[[int], Vectors]], None]) -> None:
    """:func:`_write` of a version whose vectors go into a new Qdrant collection: ``fill`` makes it with the
    store factory it is given. After the version is published the alias moves onto the new collection and the
    older ones are dropped; a write that fails before that drops the new collection. An alias that exists and
    is not this index's (its current version's alias) is refused: it belongs to another index."""
    made: list[QdrantStore] = []
    previous: dict[str, str] | None = None
    published = False

    def make(dim: int) -> Vectors:
        nonlocal previous
        previous = _current_qdrant(directory)  # under the lock
        store = new_store(dim)
        made.append(store)
        owner = store.aliased(alias)
        if owner is not None and (previous is None or previous["alias"] != alias):
            raise IndexFileError(f"{directory}: the Qdrant alias {alias!r} already names the collection {owner!r}, "
                                 "of another index; choose another name (--collection)")
        return store

    def switch() -> None:
        nonlocal published
        published = True
        also = [previous["collection"]] if previous is not None else []
        made[-1].retire(alias, also)
        _step("qdrant: alias switched, old collections dropped")

    try:
        _write(directory, lock_timeout, lambda work: fill(work, make), published=switch)
    finally:
        for store in made:
            if not published:
                with contextlib.suppress(Exception):
                    store.drop()
            store.close()


# -- writing a version ------------------------------------------------------------------------------------------
def _own_version(path: Path) -> bool:
    """A version folder this index made: its exact name pattern, a real folder, nothing but its own files."""
    if not _VERSION_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
        return False
    try:
        return all(e.name in _VERSION_ENTRIES or _VERSION_TMP.fullmatch(e.name) for e in path.iterdir())
    except OSError:
        return False


def _leftover(path: Path) -> bool:
    """The index's lock file or something a killed writer left: a work folder, a temporary CURRENT."""
    if path.is_symlink():
        return False
    if path.name == LOCK_FILE:
        return path.is_file()
    if _WORK_NAME.fullmatch(path.name):
        return path.is_dir()
    return bool(_CURRENT_TMP.fullmatch(path.name)) and path.is_file()


def _check_target(directory: Path) -> None:
    """``directory`` may receive a build: new, an index, or holding only what an index's writers leave."""
    if not directory.exists():
        if directory.is_symlink():
            raise IndexFileError(f"{directory}: a broken symbolic link; give a new or empty directory for the index")
        return
    if not directory.is_dir():
        raise IndexFileError(f"{directory}: exists and is not a directory; give a new or empty directory for "
                             "the index")
    if (directory / "CURRENT").exists() or (directory / "CURRENT").is_symlink():
        try:
            Index.current_version(directory)
        except (IndexFileError, FileNotFoundError) as exc:
            raise IndexFileError(f"{directory}: not a deepsem index ({exc}); give a new or empty directory for "
                                 "the index") from None
        return
    strangers = sorted(p.name for p in directory.iterdir() if not _leftover(p) and not _own_version(p))
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise IndexFileError(f"{directory}: not empty and not a deepsem index (no CURRENT file; it holds {shown}); "
                             "give a new or empty directory for the index")


@contextlib.contextmanager
def _write_lock(directory: Path, timeout: float) -> Iterator[None]:
    """Hold the index's writer lock (``fcntl.flock`` on ``LOCK``), waiting up to ``timeout`` seconds for another
    writer, whose pid is said on stderr; the lock dies with its process, so a killed writer never blocks."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot open the index's lock file: {_cause(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IndexFileError(f"{path}: the index's lock file is not a regular file")
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = f"pid {holder}" if holder.isdigit() else "another process"
            now = time.monotonic()
            if now >= deadline:
                raise IndexLockedError(f"{directory}: {holder} is writing this index and did not finish within "
                                       f"{timeout:g} s (lock_timeout); try again when it has finished")
            if not told:
                print(f"{directory}: waiting for {holder}, which is writing this index (up to {timeout:g} s)",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(min(0.05, deadline - now))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _clean(directory: Path) -> None:
    """Under the lock: remove what killed writers left (work folders, temporary CURRENT files, versions that
    CURRENT does not name). Only names and contents the index itself makes are touched."""
    try:
        keep: str | None = Index.current_version(directory)
    except FileNotFoundError:
        keep = None  # no index yet: any version folder is an unpublished one of a killed first build
    except IndexFileError:
        keep = ""  # a damaged CURRENT: which version it meant is unknown, so every version stays
    for path in directory.iterdir():
        if path.name == LOCK_FILE:
            continue
        if _leftover(path):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        elif keep != "" and path.name != keep and _own_version(path):
            shutil.rmtree(path, ignore_errors=True)


def _write(directory: Path, lock_timeout: float, fill: Callable[[Path], None],
           published: Callable[[], None] | None = None) -> str:
    """Under the lock: clean up, let ``fill`` write a whole version into a fresh work folder of this writer's own,
    publish it, then call ``published`` (still under the lock); on any failure remove that work folder (and only
    it). Returns the new version's name."""
    with _write_lock(directory, lock_timeout):
        _clean(directory)
        work = directory / f".work-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
        _step("work folder made")
        try:
            fill(work)
            version = _publish(directory, work)
            if published is not None:
                published()
            return version
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)


def _publish(directory: Path, work: Path) -> str:
    """Rename the finished ``work`` folder to the next version name, then switch CURRENT to it."""
    taken = [int(p.name[1:]) for p in directory.iterdir() if _VERSION_NAME.fullmatch(p.name)]
    version = f"v{max(taken, default=0) + 1:06d}"
    os.rename(work, directory / version)
    fsync_path(directory)
    _step("version folder renamed")
    try:
        _switch(directory, version)
    except BaseException:
        with contextlib.suppress(IndexFileError, FileNotFoundError):
            if Index.current_version(directory) != version:
                shutil.rmtree(directory / version, ignore_errors=True)
        raise
    return version


def _copy_version(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
        _step(f"copied {item.name}")


def _write_version(work: Path, index: Vectors, model: IndexedModel, meta: dict[str, Any], copy_model: bool = True
                   ) -> None:
    if copy_model:
        model.save(work / "model")
        _step("model saved")
    meta = {**meta, "model_sha256": sha256_file(work / "model" / "model.safetensors")}
    name = VECTOR_FILES["qdrant" if isinstance(index, QdrantStore) else "faiss"]
    index.save(work / name)
    _step(f"{name} written")
    atomic_write_json(work / "index.json", meta)
    _step("index.json written")


def _switch(directory: Path, version: str) -> None:
    """Point CURRENT at ``version`` (atomic rename) and remove the index's older versions."""
    atomic_write_text(directory / "CURRENT", version + "\n")
    fsync_path(directory)
    _step("CURRENT switched")
    for p in directory.iterdir():
        if p.name != version and _own_version(p):
            shutil.rmtree(p, ignore_errors=True)
            _step(f"removed {p.name}")
