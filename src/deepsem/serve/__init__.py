"""Online serving: FastAPI app with micro-batched encoding, its web page, and the guards in front of it."""

from deepsem.serve.app import Limits, api_key_from_env, create_app, run

__all__ = ["Limits", "api_key_from_env", "create_app", "run"]
