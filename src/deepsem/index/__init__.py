"""Vector search over encoded documents: Faiss index + SQLite document store + the model that encoded them."""

from deepsem.index.corpus import Document, iter_corpus
from deepsem.index.exact import exact_search
from deepsem.index.vector_index import Hit, Index

__all__ = ["Document", "Hit", "Index", "exact_search", "iter_corpus"]
