"""A searchable index: the documents' vectors in Faiss, their ids/texts/metadata in SQLite, and the model.

Index directory layout (every write makes a new version and then switches ``CURRENT`` to it with an atomic
rename, so a killed build, add or delete leaves the previous version in use)::

    INDEX/CURRENT            -> "v000002"
    INDEX/v000002/index.faiss     Faiss index (factory string in index.json), ids = document rows
    INDEX/v000002/docs.sqlite     id, text, metadata (JSON), deleted flag
    INDEX/v000002/index.json      factory, dim, counts, sha256 of the model weights
    INDEX/v000002/model/          the model directory the vectors were made with

A search encodes the queries with that model only: the checksum is verified on load.
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
from deepsem.index.store import DocStore

FORMAT = "deepsem.index"


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
                 meta: dict[str, Any]) -> None:
        self.directory, self.version, self.model = directory, version, model
        self.faiss_index, self.store, self.meta = faiss_index, store, meta
        self._flat: np.ndarray | None = None
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
    ) -> Index:
        """Encode every document of ``corpus`` with ``model``'s document tower and index the vectors.

        ``factory`` is a Faiss index factory string ("Flat", "HNSW32", "IVF1024,Flat", "IVF256,PQ16", ...);
        inner product on L2-normalised vectors = cosine. Training factories (IVF, PQ) train on the first
        ``train_size`` vectors. ``search_params`` are Faiss run-time parameters kept with the index
        ("efSearch=128" for HNSW, "nprobe=32" for IVF by default: :func:`default_search_params`).
        ``vectors`` (one row per document, in corpus order, made by this model's
        document tower, e.g. with ``deepsem encode --side doc``) skips the encoding.
        """
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

        store.close()
        meta = {"format": FORMAT, "version": 1, "factory": factory, "dim": semantic.dim, "documents": row,
                "search_params": default_search_params(factory) if search_params is None else search_params,
                "built_seconds": round(time.perf_counter() - t0, 2)}
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
        return cls(directory, version, model, index, DocStore(work / "docs.sqlite"), meta)

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

    def search(self, queries: str | Sequence[str], k: int = 10, filter: dict[str, Any] | None = None
               ) -> list[list[Hit]]:
        """The ``k`` nearest documents of each query, best first; ``filter`` keeps documents whose metadata
        has every given key equal to the given value."""
        if isinstance(queries, str):
            queries = [queries]
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.search_encoded(self.model.encode(list(queries), side="query"), k, filter)

    def search_encoded(self, vectors: np.ndarray, k: int = 10, filter: dict[str, Any] | None = None
                       ) -> list[list[Hit]]:
        """:meth:`search` for query vectors already encoded with this index's model (query tower)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        fetch = k + self._deleted
        if filter:
            fetch = max(fetch * 20, 1000)
        scores, rows = self.search_vectors(vectors, fetch)
        docs = self.store.fetch(sorted({int(r) for r in rows.ravel() if r >= 0}))
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
        built = Index.build(self.model, docs, self.directory, factory or self.factory)
        self.__dict__.update(built.__dict__)
        return self

    def _reopen(self) -> None:
        self.store.close()
        fresh = Index.load(self.directory)
        self.__dict__.update(fresh.__dict__)

    def stats(self) -> dict[str, Any]:
        return {"documents": len(self.store), "deleted": self.store.deleted_count(), "factory": self.factory,
                "dim": self.meta["dim"], "version": self.version}


def _batches(docs: Iterable[Document | str], size: int) -> Iterable[list[Document]]:
    batch: list[Document] = []
    for n, doc in enumerate(docs):
        batch.append(doc if isinstance(doc, Document) else Document(str(n), doc))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
