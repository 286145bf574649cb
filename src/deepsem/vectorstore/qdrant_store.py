"""The Qdrant store: vectors kept in a Qdrant collection, the only module of deepsem that calls qdrant-client.

Qdrant is a vector database: a server or a cluster (``url``), or its embedded local mode inside this process
(``path``: a directory, or neither for memory only). The store's data lives in Qdrant, not in deepsem's files:
:meth:`QdrantStore.save` writes a small JSON descriptor (where Qdrant is, which collection, the width) and
:meth:`QdrantStore.load` reconnects to it. Scores are Qdrant's ``DOT`` distance, the inner product Faiss and the
exact store give (deepsem's vectors are L2-normalised, so it is their cosine). Point ids are deepsem's int64 ids;
Qdrant takes unsigned ids only, so a negative id (``-1`` marks "no result" in every store) is refused.

qdrant-client is an optional extra (``pip install deepsem[qdrant]``); it is imported when a store is made.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsem.errors import ConfigError, IndexFileError
from deepsem.fileio import atomic_write_json, read_json
from deepsem.vectorstore.base import pad_results

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.http import models as qmodels

#: What a descriptor's ``format`` field says.
FORMAT = "deepsem-qdrant-store"
#: The descriptor layout this code writes and reads.
VERSION = 1
#: Points sent or fetched per request (bounds one request's size for a server).
CHUNK = 1024
#: A collection name Qdrant accepts and deepsem writes: letters, digits, ``_ - .``, at most 255 characters.
_COLLECTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
#: Payload values a filter compares by equality.
Scalar = str | int | bool
#: A payload field name :func:`equality_filter` passes to Qdrant as is (no ``.`` or ``[]``: Qdrant reads those as
#: a path into nested payload, where deepsem's metadata keys are flat).
_PLAIN_KEY = re.compile(r"[\w\-]{1,256}")
#: The largest integer a Qdrant range compares exactly (a float64 mantissa).
_EXACT_INT = 2**53
#: Embedded local mode: one client per directory and process, shared by every store on it (Qdrant locks the
#: directory to one client): directory -> client; and every client's users: id -> [client, stores using it].
_LOCAL: dict[Path, QdrantClient] = {}
_USERS: dict[int, list[Any]] = {}
_LOCAL_LOCK = threading.Lock()


def _qdrant() -> tuple[type[QdrantClient], Any]:
    try:
        from qdrant_client import QdrantClient
        from qdrant_client.http import models
    except ImportError:  # the extra is not installed
        raise ImportError("the Qdrant store needs qdrant-client: pip install 'deepsem[qdrant]'") from None
    return QdrantClient, models


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def _point_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` as a flat int64 array of point ids; a negative id (Qdrant ids are unsigned) is a ``ValueError``."""
    keys = np.asarray(ids).reshape(-1)
    if keys.size and keys.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, not {keys.dtype}")
    keys = keys.astype(np.int64)
    if keys.size and keys.min() < 0:
        raise ValueError(f"id {int(keys.min())} is negative: Qdrant point ids are unsigned (-1 means 'no result')")
    return keys


class QdrantStore:
    """A :class:`~deepsem.vectorstore.base.VectorStore` on a Qdrant collection (``DOT`` distance).

    The vectors (and any payload) are held by Qdrant, not by this object or its saved file: :meth:`save` writes a
    descriptor of where they are, :meth:`load` reconnects. Make one with :meth:`create`; :meth:`close` releases the
    client (embedded local mode locks its directory to one client at a time)."""

    def __init__(self, client: QdrantClient, collection: str, dim: int, *, url: str | None = None,
                 path: str | Path | None = None) -> None:
        self.client = client
        self.collection = collection
        self._dim = dim
        self.url = url
        self.path = None if path is None else Path(path)

    @classmethod
    def create(cls, dim: int, *, url: str | None = None, path: str | Path | None = None,
               collection: str | None = None, api_key: str | None = None) -> QdrantStore:
        """An empty store in a new collection ``collection`` (default: a fresh ``deepsem-<hex>`` name) of
        ``dim``-wide vectors under ``DOT`` distance: on the Qdrant server or cluster at ``url``, in embedded local
        mode under the directory ``path``, or in memory when neither is given. An existing collection of that
        name is a ``ValueError`` (never overwritten); an unreachable server a ``ConfigError``."""
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if url is not None and path is not None:
            raise ValueError("give a Qdrant url or a local path, not both")
        client = _connect(url, path, api_key)
        try:
            name = _new_collection(client, collection, dim)
        except ValueError:
            _release(client)
            raise
        except Exception as exc:  # the network or the server answering: one message saying where and why
            _release(client)
            raise ConfigError(f"cannot create a collection in Qdrant at {url or path}: {_cause(exc)}") from None
        return cls(client, name, dim, url=url, path=path)

    def sibling(self, collection: str | None = None) -> QdrantStore:
        """An empty store in a new collection on the same Qdrant connection and width (a rebuild fills one, then
        :meth:`point_alias` moves readers onto it); it shares this store's client (each store is closed)."""
        name = _new_collection(self.client, collection, self._dim)
        _retain(self.client)
        return type(self)(self.client, name, self._dim, url=self.url, path=self.path)

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client (in embedded local mode, the lock on its directory once no store of this process
        uses it). Closing twice is harmless."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        _release(self.client)

    def _present(self, keys: np.ndarray) -> set[int]:
        """Which of ``keys`` the collection holds."""
        found: set[int] = set()
        for part in _chunks(len(keys)):
            records = self.client.retrieve(self.collection, keys[part].tolist(), with_payload=False,
                                           with_vectors=False)
            found.update(int(r.id) for r in records)
        return found

    def add(self, vectors: np.ndarray, ids: np.ndarray,
            payloads: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add ``(n, dim)`` finite ``vectors`` under ``ids`` (new to the store, distinct, >= 0); ``payloads``: one
        JSON-able mapping of metadata per vector, what :meth:`search`'s ``filter`` matches."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = _point_ids(ids)
        if vectors.ndim != 2 or vectors.shape[1] != self._dim or len(vectors) != len(keys):
            raise ValueError(f"{len(keys)} ids for vectors of shape {vectors.shape}; the store holds width {self._dim}")
        if payloads is not None and len(payloads) != len(keys):
            raise ValueError(f"{len(payloads)} payloads for {len(keys)} vectors")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors hold NaN or infinite values")
        if len(np.unique(keys)) != len(keys) or self._present(keys):
            raise ValueError("ids must be new to the store and distinct")
        _, models = _qdrant()
        for part in _chunks(len(keys)):
            batch = models.Batch(ids=keys[part].tolist(), vectors=vectors[part].tolist(),
                                 payloads=None if payloads is None else [dict(p) for p in payloads[part]])
            self.client.upsert(self.collection, points=batch, wait=True)

    def search(self, queries: np.ndarray, k: int, *,
               filter: Mapping[str, Scalar | Sequence[Scalar]] | None = None,
               equal: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, both ``(n_queries, k)``, best first, padded with -inf / -1. ``filter`` keeps the
        points whose payload has every given field equal to the value (or to one of the values of a list).
        ``equal`` keeps, as Python compares JSON values (``1 == 1.0 == True``), the points whose payload field
        equals the value, for every field :func:`exact_condition` takes (see there); Qdrant evaluates both."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries of shape {queries.shape}; the store holds width {self._dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not np.isfinite(queries).all():
            raise ValueError("queries hold NaN or infinite values")
        _, models = _qdrant()
        where = _filter(filter)
        if equal:
            where = _and(where, equality_filter(equal))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        for part in _chunks(len(queries)):
            requests = [models.QueryRequest(query=q.tolist(), limit=k, filter=where, with_payload=False,
                                            with_vector=False) for q in queries[part]]
            for row, response in enumerate(self.client.query_batch_points(self.collection, requests),
                                           start=part.start):
                hits = response.points
                scores[row, : len(hits)] = [h.score for h in hits]
                found[row, : len(hits)] = [int(h.id) for h in hits]
        return pad_results(scores, found, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, ``(n, dim)``, in the order asked; an absent id is a ``KeyError``."""
        keys = _point_ids(ids)
        stored: dict[int, list[float]] = {}
        for part in _chunks(len(keys)):
            for record in self.client.retrieve(self.collection, keys[part].tolist(), with_payload=False,
                                               with_vectors=True):
                vector = record.vector
                if not isinstance(vector, list):  # a named or sparse vector: not a collection deepsem made
                    raise IndexFileError(f"Qdrant collection {self.collection!r}: point {record.id} has no plain "
                                         "vector")
                stored[int(record.id)] = vector  # type: ignore[assignment]
        try:
            return np.array([stored[int(i)] for i in keys], np.float32).reshape(len(keys), self._dim)
        except KeyError as exc:
            raise KeyError(f"id {exc.args[0]} is not in the store") from None

    def payloads(self, ids: np.ndarray) -> list[dict[str, Any]]:
        """The payload stored with each of ``ids`` (``{}`` when none was given); an absent id is a ``KeyError``."""
        keys = _point_ids(ids)
        stored: dict[int, dict[str, Any]] = {}
        for part in _chunks(len(keys)):
            for record in self.client.retrieve(self.collection, keys[part].tolist(), with_payload=True):
                stored[int(record.id)] = dict(record.payload or {})
        try:
            return [stored[int(i)] for i in keys]
        except KeyError as exc:
            raise KeyError(f"id {exc.args[0]} is not in the store") from None

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors of ``ids``; returns how many were there (absent or negative ids count nothing)."""
        keys = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        keys = keys[keys >= 0]
        present = sorted(self._present(keys))
        _, models = _qdrant()
        for start in range(0, len(present), CHUNK):
            self.client.delete(self.collection, models.PointIdsList(points=present[start : start + CHUNK]),
                               wait=True)
        return len(present)

    def point_alias(self, alias: str) -> str | None:
        """Make ``alias`` name this store's collection, in one atomic Qdrant operation (what a rebuild does: fill a
        new collection, then move the alias readers use). Returns the collection the alias named before, or None."""
        if not _COLLECTION.fullmatch(alias):
            raise ValueError(f"alias {alias!r}: use letters, digits, '_', '-' and '.' (at most 255)")
        _, models = _qdrant()
        before = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}.get(alias)
        operations: list[Any] = [] if before is None else [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        operations.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=self.collection, alias_name=alias)))
        self.client.update_collection_aliases(operations)
        return before

    def aliased(self, alias: str) -> str | None:
        """The collection the Qdrant alias ``alias`` names now (None: no such alias)."""
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}.get(alias)

    def retire(self, alias: str, also: Sequence[str] = ()) -> list[str]:
        """Make ``alias`` name this store's collection (:meth:`point_alias`), then drop the alias's other
        collections: every ``ALIAS-<12 hex>`` one (the names a rebuild gives; older versions, or leftovers of a
        killed writer) and the collections ``also`` names. Returns the names dropped."""
        self.point_alias(alias)
        family = re.compile(re.escape(alias) + r"-[0-9a-f]{12}")
        names = {c.name for c in self.client.get_collections().collections}
        old = sorted(n for n in names if n != self.collection and (family.fullmatch(n) or n in also))
        for name in old:
            self.client.delete_collection(name)
        return old

    def drop(self) -> None:
        """Delete this store's collection and every vector in it from Qdrant (an old one after a rebuild)."""
        self.client.delete_collection(self.collection)

    def save(self, path: str | Path) -> None:
        """Write the descriptor (not the vectors: they stay in Qdrant) to ``path`` atomically. A local ``path``
        store records its directory relative to the descriptor's folder when it lies inside it (the pair can be
        moved together). The API key is never written: :meth:`load` takes it, or reads ``QDRANT_API_KEY``."""
        path = Path(path)
        if self.url is None and self.path is None:
            raise ValueError("an in-memory Qdrant store has nothing to reconnect to; create it with a url or a path")
        local: str | None = None
        if self.path is not None:
            where, home = self.path.resolve(), path.parent.resolve()
            local = str(where.relative_to(home)) if where.is_relative_to(home) else str(where)
        atomic_write_json(path, {"format": FORMAT, "version": VERSION, "url": self.url, "path": local,
                                 "collection": self.collection, "dim": self._dim})

    @classmethod
    def load(cls, path: str | Path, *, api_key: str | None = None,
             error: type[Exception] = IndexFileError) -> QdrantStore:
        """Reconnect to the store a descriptor :meth:`save` wrote, checked: a damaged or crafted file, an unreachable
        Qdrant, a missing collection or one of another width or distance is an ``error`` naming the file and cause.
        ``api_key`` (default: the ``QDRANT_API_KEY`` environment variable) is for a server that needs one."""
        path = Path(path)
        spec = read_json(path, error)
        if not isinstance(spec, dict):
            raise error(f"{path}: not a Qdrant store descriptor (a JSON object)")
        if spec.get("format") != FORMAT:
            raise error(f"{path}: field 'format' is {spec.get('format')!r}, not {FORMAT!r}")
        if spec.get("version") != VERSION:
            raise error(f"{path}: field 'version' is {spec.get('version')!r}; this deepsem reads version {VERSION}")
        dim, collection, url, local = spec.get("dim"), spec.get("collection"), spec.get("url"), spec.get("path")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65_536:
            raise error(f"{path}: field 'dim' is {dim!r}, not a width from 1 to 65536")
        if not isinstance(collection, str) or not _COLLECTION.fullmatch(collection):
            raise error(f"{path}: field 'collection' is {collection!r}, not a Qdrant collection name")
        for field, value in (("url", url), ("path", local)):
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise error(f"{path}: field {field!r} is {value!r}, not a non-empty string or null")
        if (url is None) == (local is None):
            raise error(f"{path}: exactly one of the fields 'url' and 'path' must be set")
        where = None if local is None else path.parent / local
        if where is not None and not where.is_dir():
            raise error(f"{path}: field 'path': the Qdrant directory {where} does not exist")
        if where is not None and not (where / "meta.json").is_file():  # never open (and write in) any directory
            raise error(f"{path}: field 'path': {where} is not a Qdrant local storage directory (no meta.json)")
        try:
            client = _connect(url, where, api_key or os.environ.get("QDRANT_API_KEY"))
        except Exception as exc:  # local mode: another client holds the directory, or its files are damaged
            raise error(f"{path}: cannot open Qdrant at {url or where}: {_cause(exc)}") from None
        try:
            info = client.get_collection(collection)
            params = info.config.params.vectors
        except Exception as exc:  # the network or the server answering: any failure is the same message
            _release(client)
            raise error(f"{path}: cannot read collection {collection!r} at {url or where}: {_cause(exc)}") from None
        _, models = _qdrant()
        if not isinstance(params, models.VectorParams):
            _release(client)
            raise error(f"{path}: collection {collection!r} has named vectors, not the single vector deepsem writes")
        if params.size != dim or params.distance != models.Distance.DOT:
            _release(client)
            raise error(f"{path}: collection {collection!r} holds {params.size}-wide vectors under "
                        f"{params.distance}, the descriptor says {dim}-wide under Dot")
        return cls(client, collection, dim, url=url, path=where)


def _cause(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect(url: str | None, path: str | Path | None, api_key: str | None) -> QdrantClient:
    """A client for the server at ``url``, the embedded local directory ``path`` (shared by every store of this
    process on it: Qdrant lets one client hold a directory) or memory; :func:`_release` it when done."""
    QdrantClient, _ = _qdrant()
    if url is not None:
        # no version check: it runs in a background thread that warns at some later moment; load's first request
        # (get_collection) reports an unreachable or unanswering server itself, as an error naming the descriptor
        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
    elif path is not None:
        where = Path(path).resolve()
        with _LOCAL_LOCK:
            shared = _LOCAL.get(where)
            if shared is not None:
                _USERS[id(shared)][1] += 1
                return shared
            where.mkdir(parents=True, exist_ok=True)
            client = QdrantClient(path=str(where))
            _LOCAL[where] = client
            _USERS[id(client)] = [client, 1]
            return client
    else:
        client = QdrantClient(location=":memory:")
    with _LOCAL_LOCK:
        _USERS[id(client)] = [client, 1]
    return client


@atexit.register
def _close_all() -> None:
    """Close the clients still open when the interpreter exits (qdrant-client's own ``__del__`` would run too late,
    during shutdown, and print an ignored exception)."""
    with _LOCAL_LOCK:
        open_clients = [users[0] for users in _USERS.values()]
        _USERS.clear()
        _LOCAL.clear()
    for client in open_clients:
        with contextlib.suppress(Exception):
            client.close()


def _retain(client: QdrantClient) -> None:
    """One more store uses ``client`` (a sibling collection on the same connection)."""
    with _LOCAL_LOCK:
        _USERS.setdefault(id(client), [client, 0])[1] += 1


def _release(client: QdrantClient) -> None:
    """A store is done with ``client``: close it when no other store of this process uses it."""
    with _LOCAL_LOCK:
        users = _USERS.get(id(client))
        if users is not None and users[0] is client:
            users[1] -= 1
            if users[1] > 0:
                return
            del _USERS[id(client)]
        for where, shared in list(_LOCAL.items()):
            if shared is client:
                del _LOCAL[where]
    client.close()


def _new_collection(client: QdrantClient, collection: str | None, dim: int) -> str:
    """Create the collection ``collection`` (default: a fresh ``deepsem-<hex>`` name) of ``dim``-wide vectors under
    ``DOT``; returns its name. A bad or taken name is a ``ValueError``: an existing collection is never reused."""
    _, models = _qdrant()
    name = collection if collection is not None else f"deepsem-{uuid.uuid4().hex[:12]}"
    if not _COLLECTION.fullmatch(name):
        raise ValueError(f"collection name {name!r}: use letters, digits, '_', '-' and '.' (at most 255)")
    if client.collection_exists(name):
        raise ValueError(f"Qdrant already has a collection {name!r}; choose another name or load its store")
    client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT))
    return name


def exact_condition(key: object, value: object) -> bool:
    """Whether :func:`equality_filter` sends "payload field ``key`` == ``value``" to Qdrant: a plain field name
    (letters, digits, ``_`` and ``-``: Qdrant reads ``.`` and ``[]`` as a path into nested payload) and a string,
    a boolean, an integer of at most 2**53 in size or a finite float. Qdrant then keeps every point Python's
    ``==`` keeps; it also keeps a point whose field is a list holding the value (Qdrant matches any element), so
    a caller that needs Python's answer exactly checks the payloads it gets back."""
    if not isinstance(key, str) or not _PLAIN_KEY.fullmatch(key):
        return False
    if isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return abs(value) <= _EXACT_INT
    return isinstance(value, float) and math.isfinite(value)


def equality_filter(equal: Mapping[str, Any]) -> qmodels.Filter | None:
    """A Qdrant filter keeping the points whose payload has every field of ``equal`` equal to its value as Python
    compares JSON values: ``True == 1 == 1.0``, ``"1" != 1``. Fields :func:`exact_condition` refuses are left
    out (the filter keeps more; the caller checks those itself)."""
    _, models = _qdrant()
    must: list[Any] = []
    for key, value in equal.items():
        if not exact_condition(key, value):
            continue
        if isinstance(value, str):
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
            continue
        number = float(value)  # a bool is the number 0 or 1 to Python's ==
        either: list[Any] = [models.FieldCondition(key=key, range=models.Range(gte=number, lte=number))]
        if number in (0.0, 1.0):
            either.append(models.FieldCondition(key=key, match=models.MatchValue(value=bool(number))))
        must.append(either[0] if len(either) == 1 else models.Filter(should=either))
    return models.Filter(must=must) if must else None


def _and(first: qmodels.Filter | None, second: qmodels.Filter | None) -> qmodels.Filter | None:
    if first is None or second is None:
        return first or second
    _, models = _qdrant()
    return models.Filter(must=[first, second])


def _filter(where: Mapping[str, Scalar | Sequence[Scalar]] | None) -> qmodels.Filter | None:
    """A Qdrant filter of payload equalities: ``{"lang": "en", "tag": ["a", "b"]}`` keeps points whose ``lang``
    is "en" and whose ``tag`` is "a" or "b"."""
    if not where:
        return None
    _, models = _qdrant()
    must = []
    for key, value in where.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter field {key!r}: a payload field name")
        if isinstance(value, str | int | bool):
            match: Any = models.MatchValue(value=value)
        elif isinstance(value, Sequence) and value and all(isinstance(v, str | int | bool) for v in value):
            match = models.MatchAny(any=list(value))
        else:
            raise ValueError(f"filter field {key!r}: {value!r} is not a string, integer, boolean or list of them")
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


__all__ = ["QdrantStore", "equality_filter", "exact_condition"]
