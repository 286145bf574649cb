"""Vector search over encoded documents: Faiss index + SQLite document store + the model that encoded them."""

from deepsem.index.corpus import Document, iter_corpus
from deepsem.index.vector_index import Hit, Index
from deepsem.vectorstore.exact import exact_search

__all__ = ["Document", "Hit", "Index", "exact_search", "iter_corpus"]
