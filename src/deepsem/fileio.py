"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target.

A reader never sees a half-written file, and a process killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from deepsem.errors import ConfigError, DataError, DataFileNotFoundError


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory (a directory: so that the renames inside it survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then atomically move it to ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
    0600 of the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_npy(path: str | os.PathLike[str], array: Any) -> Path:
    """Write a numpy array as ``.npy`` (never pickled: object arrays are refused) atomically."""
    import numpy as np

    def write(target: Path) -> None:
        with open(target, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


#: Deepest nesting of arrays/objects a deepsem JSON file may have (config.json, tokenizer.json, index.json,
#: metadata); real files stay under 10.
MAX_JSON_DEPTH = 64
#: Largest JSON file read whole (a tokenizer's vocabulary is the biggest: a few MB).
MAX_JSON_BYTES = 256 * 2**20


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def read_json(path: str | os.PathLike[str], error: type[Exception] | None = None, *,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a JSON file deepsem wrote (or someone crafted): a regular file of at most ``max_bytes``, UTF-8,
    nested at most ``max_depth`` deep. Any problem raises ``error`` (default :class:`deepsem.errors.ConfigError`)
    with a one-line message naming the file and the cause; never RecursionError or MemoryError."""
    error = error or ConfigError
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise error(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} a deepsem JSON file may have")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # e.g. an integer of more digits than int() converts
        raise error(f"{path}: not valid JSON: {str(exc).split(';')[0]}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if _json_depth_exceeds(value, max_depth):
        raise error(f"{path}: JSON nested more than {max_depth} levels deep")
    return value


def regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` if it is an existing regular file (following links); otherwise a
    :class:`deepsem.data.errors.DataError` saying what it is instead (missing, a directory, a FIFO, a device).
    Reading a FIFO would block forever and ``/dev/zero`` never ends, so readers call this first."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataFileNotFoundError(path, None, None, f"{what} not found") from None
    except OSError as exc:
        raise DataError(path, None, None, f"cannot read {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(path, None, None, f"is a directory; give a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise DataError(path, None, None, f"is {kind}, not a regular {what}")
    return path


#: Longest line (in bytes, without its line end) a data reader accepts. A longer one is almost always a file
#: that is not line-based text (a binary file, one endless line such as ``/dev/zero``, CR-only line ends of
#: a large file); reading it whole would exhaust memory.
MAX_LINE_BYTES = 1 << 20

#: A UTF-8 byte-order mark, dropped from the start of a file by every reader.
UTF8_BOM = b"\xef\xbb\xbf"


def bounded_lines(fh: IO[bytes], path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES
                  ) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, raw bytes with the line end)`` of a binary stream, never holding more than
    ``max_line_bytes`` of one line: a longer line raises :class:`deepsem.data.errors.DataError` naming the
    file and the line. A UTF-8 byte-order mark at the start of the stream is dropped."""
    lineno = 0
    while True:
        try:
            raw = fh.readline(max_line_bytes + 1)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:  # damaged or cut-off compressed data
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DataError(path, lineno + 1, None, f"cannot read: {reason}"
                            + (" (truncated?)" if isinstance(exc, EOFError) else "")) from None
        if not raw:
            return
        lineno += 1
        if lineno == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
            if len(raw) == max_line_bytes + 1 - len(UTF8_BOM) and not raw.endswith(b"\n"):
                raw += fh.readline(len(UTF8_BOM))  # the BOM does not count against the cap
        if len(raw) > max_line_bytes and raw.endswith(b"\r"):  # a CRLF line of exactly the cap
            raw += fh.readline(1)
        if lineno == 1 and _bare_cr(raw):
            raise DataError(path, 1, None, "carriage returns (CR) alone end the lines (the old Mac format); "
                            "convert the line ends to LF or CRLF, e.g. tr '\\r' '\\n'")
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            hint = " (CR-only line ends?)" if b"\r" in raw else ""
            raise DataError(path, lineno, None, f"line longer than {max_line_bytes:,} bytes{hint}; "
                            "is this a line-based text file?")
        yield lineno, raw


def _bare_cr(raw: bytes) -> bool:
    """Whether a line holds a carriage return that is not the CR of its CRLF end: in a first line, the mark of a
    file whose lines end in CR alone (read as one endless line otherwise)."""
    body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith((b"\n", b"\r")) else raw
    return b"\r" in body


def utf8_lines(fh: IO[bytes], path: str | os.PathLike[str], max_line_bytes: int | None = None
               ) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text without its line end)`` of a UTF-8 binary stream (a file, ``sys.stdin.buffer``)
    with :func:`bounded_lines`. Bytes that are not UTF-8 raise :class:`deepsem.data.errors.DataError` naming
    the line and the byte's position in that line (never an offset into a read buffer)."""
    for lineno, raw in bounded_lines(fh, path, MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(path, lineno, None, f"not UTF-8 text (byte {exc.start + 1} of the line is "
                            f"{raw[exc.start:exc.start + 1]!r})") from None
        yield lineno, text.rstrip("\r\n")
