"""Vector stores: where vectors are kept and searched by inner product.

:class:`VectorStore` is the protocol; :data:`STORES` names the implementations. A new backend (Qdrant, ...) is one
module here and one entry in :data:`STORES`.
"""

from deepsem.vectorstore.base import VectorStore
from deepsem.vectorstore.exact import ExactStore, exact_search
from deepsem.vectorstore.faiss_store import FaissStore, default_search_params

#: Every store by name.
STORES: dict[str, type[VectorStore]] = {"faiss": FaissStore, "exact": ExactStore}

__all__ = ["STORES", "ExactStore", "FaissStore", "VectorStore", "default_search_params", "exact_search"]
