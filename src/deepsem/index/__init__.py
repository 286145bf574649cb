"""Vector search over encoded documents."""

from deepsem.index.exact import exact_search

__all__ = ["exact_search"]
