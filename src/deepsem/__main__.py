"""``python -m deepsem``: the ``deepsem`` command."""

from deepsem.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
