"""When to show progress: on a terminal only, so that a run logging to a file gets no bar redrawn per step."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["progress_enabled"]


def progress_enabled(flag: bool | None, stream: TextIO | None = None) -> bool:
    """``flag`` when given (``--progress`` / ``--no-progress``); for ``None`` (auto) whether ``stream``
    (default: ``sys.stderr``, where progress bars go) is a terminal. A stream without ``isatty`` or a closed
    one counts as no terminal."""
    if flag is not None:
        return bool(flag)
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
