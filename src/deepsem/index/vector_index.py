"""A searchable index: the documents' vectors in Faiss, their ids/texts/metadata in SQLite, and the model.

Index directory layout (every write makes a new version and then switches ``CURRENT`` to it with an atomic
rename, so a killed build, add or delete leaves the previous version in use)::

    INDEX/CURRENT            -> "v000002"
    INDEX/v000002/index.faiss     Faiss index (factory string in index.json), ids = document rows
    INDEX/v000002/docs.sqlite     id, text, metadata (JSON), deleted flag
    INDEX/v000002/index.json      factory, dim, counts, sha256 of the model weights
    INDEX/v000002/model/          the model directory the vectors were made with
    INDEX/v000002/lexical/        (built with ``lexical=True``) a BM25 index of the same documents

A search encodes the queries with that model only: the checksum is verified on load.

Search modes: ``dense`` (the vectors alone), ``lexical`` (BM25 alone) and ``hybrid``: the union of both top
lists, each candidate scored ``w * cosine + (1 - w) * BM25 / (the query's best BM25 score)`` with ``w`` the
index's ``hybrid_weight`` (default 0.5, chosen on LCQMC dev; see bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepsem.encoder import SemanticModel
from deepsem.fileio import atomic_write, atomic_write_json, atomic_write_text
from deepsem.index.corpus import Document, iter_corpus
from deepsem.index.exact import exact_search
from deepsem.index.lexical import LexicalIndex
from deepsem.index.store import DocStore

FORMAT = "deepsem.index"
MODES = ("dense", "lexical", "hybrid")
HYBRID_CANDIDATES = 100  # each side's top list in hybrid mode (at least; more with deleted rows or filters)


def default_search_params(factory: str) -> str:
    """Faiss search parameters that give high recall@10 for a factory (measured in bench/search.py)."""
    if "HNSW" in factory:
        return "efSearch=128"
    if factory.startswith("IVF"):
        return "nprobe=32"
    return ""


@dataclass
class Hit:
    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": self.score, "metadata": self.metadata}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _faiss():
    import faiss

    return faiss


class Index:
    """Build with :meth:`build`, open with :meth:`load`, query with :meth:`search`."""

    def __init__(self, directory: Path, version: str, model: SemanticModel, faiss_index: Any, store: DocStore,
                 meta: dict[str, Any], lexical: LexicalIndex | None = None) -> None:
        self.directory, self.version, self.model = directory, version, model
        self.faiss_index, self.store, self.meta = faiss_index, store, meta
        self.lexical = lexical
        self._flat: np.ndarray | None = None
        self._row_position: dict[int, int] | None = None
        self._deleted = store.deleted_count()

    # -- building -----------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: str | Path | SemanticModel,
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
        vectors: np.ndarray | None = None,
        search_params: str | None = None,
        progress: bool = False,
        lexical: bool = False,
        hybrid_weight: float = 0.5,
    ) -> Index:
        """Encode every document of ``corpus`` with ``model``'s document tower and index the vectors.

        ``factory`` is a Faiss index factory string ("Flat", "HNSW32", "IVF1024,Flat", "IVF256,PQ16", ...);
        inner product on L2-normalised vectors = cosine. Training factories (IVF, PQ) train on the first
        ``train_size`` vectors. ``search_params`` are Faiss run-time parameters kept with the index
        ("efSearch=128" for HNSW, "nprobe=32" for IVF by default: :func:`default_search_params`).
        ``vectors`` (one row per document, in corpus order, made by this model's
        document tower, e.g. with ``deepsem encode --side doc``) skips the encoding.
        ``lexical`` also builds a BM25 index of the documents, for ``mode="lexical"`` and ``"hybrid"``
        searches (then the default); ``hybrid_weight`` is the cosine's share of the hybrid score.
        """
        if not 0.0 <= hybrid_weight <= 1.0:
            raise ValueError(f"hybrid_weight must be in [0, 1], got {hybrid_weight}")
        faiss = _faiss()
        directory = Path(directory)
        model_dir = model if isinstance(model, str | Path) else None
        semantic = SemanticModel.load(model) if model_dir is not None else model
        assert isinstance(semantic, SemanticModel)
        docs: Iterable[Document | str] = (
            iter_corpus(corpus, id_field=id_field, text_field=text_field, skip_bad_rows=skip_bad_rows)
            if isinstance(corpus, str | Path) else corpus
        )
        if vectors is not None and (vectors.ndim != 2 or vectors.shape[1] != semantic.dim):
            raise ValueError(f"vectors of shape {vectors.shape} do not fit the model's dimension {semantic.dim}")
        version, work = _new_version(directory)
        store = DocStore(work / "docs.sqlite")
        try:
            base = faiss.index_factory(semantic.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"bad Faiss factory string {factory!r}: {exc}") from None
        index = faiss.IndexIDMap2(base)
        pending: list[np.ndarray] = []
        pending_rows: list[np.ndarray] = []
        row, t0 = 0, time.perf_counter()
        seen: set[str] = set()
        for batch in _batches(docs, chunk):
            ids = [d.id for d in batch]
            dup = [i for i in ids if i in seen]
            if dup or len(set(ids)) != len(ids):
                raise ValueError(f"duplicate document id(s) in the corpus: {', '.join(dup[:5]) or 'within a batch'}")
            seen.update(ids)
            rows = np.arange(row, row + len(batch), dtype=np.int64)
            if vectors is not None:
                if row + len(batch) > len(vectors):
                    raise ValueError(f"{len(vectors)} vectors given for a corpus of more documents")
                batch_vectors = np.ascontiguousarray(vectors[row : row + len(batch)], dtype=np.float32)
            else:
                batch_vectors = semantic.encode([d.text for d in batch], batch_size=batch_size, side="doc")
            store.add(rows.tolist(), ids, [d.text for d in batch], [d.metadata for d in batch])
            row += len(batch)
            if not index.is_trained:  # hold vectors until there are enough to train on
                pending.append(batch_vectors)
                pending_rows.append(rows)
                if sum(len(p) for p in pending) >= train_size:
                    _train_and_flush(index, pending, pending_rows)
            else:
                index.add_with_ids(batch_vectors, rows)
            if progress:
                print(f"indexed {row:,} documents ({row / (time.perf_counter() - t0):.0f}/s)", flush=True)
        if pending:
            _train_and_flush(index, pending, pending_rows)
        if row == 0:
            raise ValueError("the corpus has no documents")
        if vectors is not None and len(vectors) != row:
            raise ValueError(f"{len(vectors)} vectors given for {row} documents")

        meta = {"format": FORMAT, "version": 1, "factory": factory, "dim": semantic.dim, "documents": row,
                "search_params": default_search_params(factory) if search_params is None else search_params}
        if lexical:
            _lexical_from_store(store).save(work / "lexical")
            meta["lexical"] = {"hybrid_weight": hybrid_weight}
        store.close()
        meta["built_seconds"] = round(time.perf_counter() - t0, 2)
        _write_version(work, index, semantic, meta)
        _switch(directory, version)
        return cls.load(directory)

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> Index:
        faiss = _faiss()
        directory = Path(directory)
        current = directory / "CURRENT"
        if not current.is_file():
            raise FileNotFoundError(f"{directory}: not a deepsem index (no CURRENT file)")
        version = current.read_text(encoding="utf-8").strip()
        work = directory / version
        meta_path = work / "index.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta_path}: unreadable index metadata: {exc}") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        weights = work / "model" / "model.safetensors"
        if _sha256(weights) != meta.get("model_sha256"):
            raise ValueError(f"{weights}: checksum differs from index.json: the index was built with another model")
        model = SemanticModel.load(work / "model")
        if model.dim != meta["dim"]:
            raise ValueError(f"{meta_path}: index dim {meta['dim']} != model dim {model.dim}")
        index = faiss.read_index(str(work / "index.faiss"))
        if meta.get("search_params"):
            try:
                faiss.ParameterSpace().set_index_parameters(index, meta["search_params"])
            except RuntimeError as exc:
                raise ValueError(f"{meta_path}: field 'search_params' {meta['search_params']!r}: {exc}") from None
        lexical = None
        if meta.get("lexical"):
            weight = meta["lexical"].get("hybrid_weight") if isinstance(meta["lexical"], dict) else None
            if not isinstance(weight, int | float) or not 0 <= weight <= 1:
                raise ValueError(f"{meta_path}: field 'lexical.hybrid_weight' must be a number in [0, 1], "
                                 f"got {weight!r}")
            lexical = LexicalIndex.load(work / "lexical")
        return cls(directory, version, model, index, DocStore(work / "docs.sqlite"), meta, lexical)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def factory(self) -> str:
        return str(self.meta["factory"])

    # -- searching -----------------------------------------------------------------------------------------
    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: scores and document rows ``(n, k)``; rows are -1 where fewer than k exist."""
        k = max(1, min(k, self.faiss_index.ntotal))
        if self.factory == "Flat":  # exact: a chunked matmul + top-k beats Faiss Flat at every batch size here
            flat = self._flat_vectors()
            scores, pos = exact_search(vectors, flat[1], k)
            return scores, flat[0][pos]
        return self.faiss_index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def _flat_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is None:
            faiss = _faiss()
            inner = faiss.downcast_index(self.faiss_index.index)
            vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            ids = faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)
            self._flat = (ids, np.array(vectors, copy=True))  # type: ignore[assignment]
        return self._flat  # type: ignore[return-value]

    def search(self, queries: str | Sequence[str], k: int = 10, filter: dict[str, Any] | None = None,
               mode: str | None = None, hybrid_weight: float | None = None) -> list[list[Hit]]:
        """The ``k`` best documents of each query, best first; ``filter`` keeps documents whose metadata
        has every given key equal to the given value. ``mode``: ``dense``, ``lexical`` or ``hybrid`` (see the
        module docstring); default ``hybrid`` for an index built with ``lexical=True``, else ``dense``.
        ``hybrid_weight`` overrides the index's cosine share for this search (e.g. to tune it on dev data)."""
        if isinstance(queries, str):
            queries = [queries]
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mode = self.resolve_mode(mode)
        vectors = None if mode == "lexical" else self.model.encode(list(queries), side="query")
        return self.search_encoded(vectors, k, filter, texts=list(queries), mode=mode, hybrid_weight=hybrid_weight)

    def resolve_mode(self, mode: str | None) -> str:
        """``mode`` checked against this index (None: its default)."""
        if mode is None:
            return "hybrid" if self.lexical is not None else "dense"
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "dense" and self.lexical is None:
            raise ValueError(f"mode {mode!r} needs the index's lexical (BM25) part: {self.directory} was built "
                             "without it (Index.build(..., lexical=True), deepsem index build --lexical)")
        return mode

    def search_encoded(self, vectors: np.ndarray | None, k: int = 10, filter: dict[str, Any] | None = None,
                       texts: Sequence[str] | None = None, mode: str | None = None,
                       hybrid_weight: float | None = None) -> list[list[Hit]]:
        """:meth:`search` for query vectors already encoded with this index's model (query tower).
        ``texts`` (the queries) are needed by the ``lexical`` and ``hybrid`` modes."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mode = self.resolve_mode(mode)
        fetch = k + self._deleted
        if filter:
            fetch = max(fetch * 20, 1000)
        if mode == "dense":
            if vectors is None:
                raise ValueError("dense search needs the query vectors")
            scores, rows = self.search_vectors(vectors, fetch)
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
        """The indexed vectors of document ``rows`` (read back from Faiss; lossy for PQ factories)."""
        if self.factory == "Flat":
            ids, vectors = self._flat_vectors()
            position = {int(r): j for j, r in enumerate(ids)} if self._row_position is None else self._row_position
            self._row_position = position
            return vectors[[position[int(r)] for r in rows]]
        keys = np.ascontiguousarray(rows, dtype=np.int64)
        try:
            return self.faiss_index.reconstruct_batch(keys)
        except RuntimeError:  # an IVF index reconstructs only with its direct map
            faiss = _faiss()
            faiss.extract_index_ivf(self.faiss_index.index).make_direct_map()
            return self.faiss_index.reconstruct_batch(keys)

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
        _, approx_rows = self.faiss_index.search(np.ascontiguousarray(queries), k)
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
    def add(self, docs: Iterable[Document | str]) -> int:
        """Add documents (new ids only); returns how many. Writes a new version atomically."""
        version, work = _new_version(self.directory)
        _copy_version(self.directory / self.version, work)
        store = DocStore(work / "docs.sqlite")
        index = self.faiss_index
        added = 0
        for batch in _batches(docs, 50_000):
            rows = np.arange(store.next_row(), store.next_row() + len(batch), dtype=np.int64)
            store.add(rows.tolist(), [d.id for d in batch], [d.text for d in batch], [d.metadata for d in batch])
            index.add_with_ids(self.model.encode([d.text for d in batch], side="doc"), rows)
            added += len(batch)
        if self.lexical is not None:  # BM25 statistics cover the whole corpus: rebuilt over the live documents
            shutil.rmtree(work / "lexical")
            _lexical_from_store(store).save(work / "lexical")
        store.close()
        self.meta["documents"] = int(self.meta["documents"]) + added
        _write_version(work, index, self.model, self.meta, copy_model=False)
        _switch(self.directory, version)
        self._reopen()
        return added

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (they stop appearing at once; :meth:`rebuild` reclaims the space)."""
        version, work = _new_version(self.directory)
        _copy_version(self.directory / self.version, work)
        store = DocStore(work / "docs.sqlite")
        removed = store.delete(list(ids))
        store.close()
        _switch(self.directory, version)
        self._reopen()
        return removed

    def rebuild(self, factory: str | None = None) -> Index:
        """Re-encode the live documents into a fresh index (optionally with another factory)."""
        docs = [Document(i, t, m) for batch in self.store.iter_live() for _, i, t, m in batch]
        lexical = self.meta.get("lexical") or {}
        built = Index.build(self.model, docs, self.directory, factory or self.factory,
                            search_params=None if factory else self.meta.get("search_params"),
                            lexical=bool(lexical), hybrid_weight=lexical.get("hybrid_weight", 0.5))
        self.__dict__.update(built.__dict__)
        return self

    def _reopen(self) -> None:
        self.store.close()
        fresh = Index.load(self.directory)
        self.__dict__.update(fresh.__dict__)

    def stats(self) -> dict[str, Any]:
        return {"documents": len(self.store), "deleted": self.store.deleted_count(), "factory": self.factory,
                "dim": self.meta["dim"], "version": self.version, "lexical": self.lexical is not None,
                "default_mode": self.resolve_mode(None)}


def _batches(docs: Iterable[Document | str], size: int) -> Iterable[list[Document]]:
    batch: list[Document] = []
    for n, doc in enumerate(docs):
        batch.append(doc if isinstance(doc, Document) else Document(str(n), doc))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _lexical_from_store(store: DocStore) -> LexicalIndex:
    rows: list[int] = []
    texts: list[str] = []
    for batch in store.iter_live():
        rows += [r for r, _, _, _ in batch]
        texts += [t for _, _, t, _ in batch]
    return LexicalIndex.build(rows, texts)


def _train_and_flush(index: Any, pending: list[np.ndarray], pending_rows: list[np.ndarray]) -> None:
    vectors = np.concatenate(pending)
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, np.concatenate(pending_rows))
    pending.clear()
    pending_rows.clear()


def _new_version(directory: Path) -> tuple[str, Path]:
    """A fresh version folder; leftovers of killed writes (folders that CURRENT does not name) are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    current = (directory / "CURRENT").read_text().strip() if (directory / "CURRENT").is_file() else None
    numbers = [int(p.name[1:]) for p in directory.glob("v[0-9]*") if p.name[1:].isdigit()]
    for p in directory.glob("v[0-9]*"):
        if p.name != current and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    version = f"v{max(numbers, default=0) + 1:06d}"
    work = directory / version
    work.mkdir()
    return version, work


def _copy_version(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


def _write_version(work: Path, index: Any, model: SemanticModel, meta: dict[str, Any], copy_model: bool = True
                   ) -> None:
    faiss = _faiss()
    if copy_model:
        model.save(work / "model")
    meta = {**meta, "model_sha256": _sha256(work / "model" / "model.safetensors")}
    atomic_write(work / "index.faiss", lambda p: faiss.write_index(index, str(p)))
    atomic_write_json(work / "index.json", meta)


def _switch(directory: Path, version: str) -> None:
    """Point CURRENT at ``version`` (atomic rename) and remove older versions."""
    atomic_write_text(directory / "CURRENT", version + "\n")
    for p in directory.glob("v[0-9]*"):
        if p.name != version and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
