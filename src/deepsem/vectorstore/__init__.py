"""Vector stores: where vectors are kept and searched by inner product."""

from deepsem.vectorstore.exact import exact_search

__all__ = ["exact_search"]
