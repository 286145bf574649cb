"""Online serving: FastAPI app with micro-batched encoding, and its web page."""

from deepsem.serve.app import Limits, create_app, run

__all__ = ["Limits", "create_app", "run"]
