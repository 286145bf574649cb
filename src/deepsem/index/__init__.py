"""Vector search over encoded documents: Faiss index (or a Qdrant collection) + SQLite document store + the model
that encoded them."""

from deepsem.index.corpus import Document, iter_corpus
from deepsem.index.vector_index import Hit, Index, QdrantTarget, SearchTimings
from deepsem.vectorstore.exact import exact_search

__all__ = ["Document", "Hit", "Index", "QdrantTarget", "SearchTimings", "exact_search", "iter_corpus"]
