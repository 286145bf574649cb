"""``python -m deepsem.cli``: the ``deepsem`` command, with every command group registered."""

from deepsem.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
