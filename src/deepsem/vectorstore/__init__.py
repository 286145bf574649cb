"""Vector stores: where vectors are kept and searched by inner product.

:class:`VectorStore` is the protocol; :data:`STORES` names the implementations. A new backend is one module here
and one entry in :data:`STORES`. :class:`QdrantStore` needs the optional qdrant-client package only when a store is
made or loaded (``import deepsem`` never needs it).
"""

from deepsem.vectorstore.base import VectorStore
from deepsem.vectorstore.exact import ExactStore, exact_search
from deepsem.vectorstore.faiss_store import FaissStore, default_search_params
from deepsem.vectorstore.qdrant_store import QdrantStore

#: Every store by name.
STORES: dict[str, type[VectorStore]] = {"faiss": FaissStore, "exact": ExactStore, "qdrant": QdrantStore}

__all__ = ["STORES", "ExactStore", "FaissStore", "QdrantStore", "VectorStore", "default_search_params", "exact_search"]
