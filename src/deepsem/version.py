"""The version of deepsem (its own module, so no module needs to import the package root)."""

__version__ = "0.1.0"
