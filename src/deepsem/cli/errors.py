"""The one error handler of the ``deepsem`` command: every failure is one ``error: ...`` line.

An error about the user's input (a :class:`~deepsem.errors.DeepsemError`, an OS error on a file, a damaged SQLite,
Faiss or safetensors file, a bad option value) becomes one ``error: ...`` line on stderr and exit code 2; Ctrl-C
prints ``interrupted`` and exits 130; anything else is a bug, shown as ``error: internal error: ...`` with exit
code 1. ``DEEPSEM_DEBUG=1`` also prints the traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

#: Exit codes: a problem with the input or the options, a bug, Ctrl-C.
EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130

_OS_REASONS: dict[type[OSError], str] = {
    FileNotFoundError: "no such file or directory",
    IsADirectoryError: "is a directory",
    NotADirectoryError: "not a directory",
    PermissionError: "permission denied",
    FileExistsError: "already exists",
}


def clean(text: object) -> str:
    """``text`` on one line, without control characters (a crafted file's bytes must not reach the terminal)."""
    lines = [line.strip() for line in str(text).splitlines()]
    joined = " ".join(line for line in lines if line)
    return "".join(c if c.isprintable() else "?" for c in joined)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _os_message(exc: OSError) -> str:
    """"PATH: reason" for an OS error, whether it was raised by the OS (errno, strerror, filename) or by deepsem
    with a message of its own, or with a bare path and no reason at all."""
    reason = exc.strerror or next((r for t, r in _OS_REASONS.items() if isinstance(exc, t)), None)
    if exc.strerror is None:
        text = clean(exc)
        if text and ": " in text:
            return text  # deepsem's own message: it names the file and the cause
        return f"{text}: {reason or 'cannot be read'}" if text else reason or type(exc).__name__
    where = exc.filename2 if exc.filename2 is not None and str(exc.filename).endswith(".tmp") else exc.filename
    if where is not None and exc.filename2 is not None and where is exc.filename:
        where = f"{exc.filename} -> {exc.filename2}"
    reason = _lower_first(str(reason))
    return f"{where}: {reason}" if where is not None else reason


def _raised_in(exc: BaseException, prefix: str) -> bool:
    """Whether a frame of ``exc``'s traceback runs code of a module named ``prefix`` or below it."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name == prefix or name.startswith(prefix + "."):
            return True
        tb = tb.tb_next
    return False


def _leaf_context(exc: BaseException) -> Any:
    """The (click) context of the command that was running when ``exc`` was raised: its parameters and their
    values. Found in the traceback: the frame of the innermost command's ``invoke(self, ctx)``."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        ctx, cmd = frame.f_locals.get("ctx"), frame.f_locals.get("self")
        if (frame.f_code.co_name == "invoke" and hasattr(ctx, "params") and hasattr(cmd, "params")
                and not hasattr(cmd, "commands")):
            found = ctx
        tb = tb.tb_next
    return found


def _files_hint(exc: BaseException, prefer: Sequence[str]) -> str:
    """" (--index DIR)": the first of the command's path parameters named in ``prefer`` (else all of them), for
    errors from libraries (SQLite, Faiss, safetensors, a decoder) that do not say which file they were reading."""
    ctx = _leaf_context(exc)
    if ctx is None:
        return ""
    given = [(p, ctx.params.get(p.name or "")) for p in ctx.command.params]
    given = [(p, v) for p, v in given if isinstance(v, Path)]
    named = {p.name: (p, v) for p, v in given}
    chosen = next(([named[n]] for n in prefer if n in named), given)
    if not chosen:
        return ""
    parts = [f"{p.opts[0] if p.param_type_name == 'option' else p.human_readable_name} {v}" for p, v in chosen]
    return f" ({', '.join(parts)})"


def _library_message(exc: BaseException) -> str | None:
    """The one-line message for an error raised by a library on a damaged or foreign file, else None."""
    import pickle
    import sqlite3

    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return ("a document id is repeated in the input or already in the index (SQLite: "
                f"{clean(exc)}){_files_hint(exc, ('corpus', 'index'))}")
    if isinstance(exc, sqlite3.Error):
        return f"cannot use the document store (SQLite: {clean(exc)}){_files_hint(exc, ('index',))}"
    from safetensors import SafetensorError

    if isinstance(exc, SafetensorError):
        return (f"a weights file is damaged or not a safetensors file ({clean(exc)})"
                f"{_files_hint(exc, ('model', 'out', 'index'))}")
    if isinstance(exc, pickle.UnpicklingError):
        # torch's message recommends weights_only=False, which would run whatever the file contains: never
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        reason = clean(detail.group(1)) if detail else type(exc).__name__
        return (f"a checkpoint file is damaged or was not written by deepsem; it was not loaded ({reason})"
                f"{_files_hint(exc, ('out', 'model'))}")
    if isinstance(exc, RuntimeError) and _raised_in(exc, "faiss"):
        text = str(exc)
        located = re.search(r" at \S+:\d+: (.*)", text, re.S)
        reason = clean(located.group(1) if located else text)
        reason = re.sub(r'^Error: ', "", reason)
        return f"Faiss cannot read or use the vector index ({reason}){_files_hint(exc, ('index',))}"
    if isinstance(exc, RuntimeError) and _raised_in(exc, "torch.serialization"):
        return (f"a checkpoint file is damaged ({clean(exc)}){_files_hint(exc, ('out', 'model'))}")
    return None


def _describe(exc: BaseException) -> tuple[str, int]:
    """The ``error:`` line's text and the exit code for an exception that escaped a command."""
    from deepsem.errors import DeepsemError

    if isinstance(exc, DeepsemError):
        return clean(exc) or type(exc).__name__, EXIT_USER
    if isinstance(exc, OSError):
        return _os_message(exc), EXIT_USER
    library = _library_message(exc)
    if library is not None:
        return library, EXIT_USER
    if isinstance(exc, UnicodeDecodeError):
        return (f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}: {exc.reason}){_files_hint(exc, ())}",
                EXIT_USER)
    if isinstance(exc, ValueError | ImportError):
        # library code not yet on DeepsemError raises ValueError for bad input (and ImportError for a missing
        # optional dependency); their messages name the cause
        return clean(exc) or type(exc).__name__, EXIT_USER
    if isinstance(exc, MemoryError):
        return "out of memory (a smaller --batch-size, --chunk or model may fit)", EXIT_USER
    message = clean(exc)
    return (f"internal error: {type(exc).__name__}{': ' + message if message else ''} "
            "(DEEPSEM_DEBUG=1 shows the traceback)", EXIT_INTERNAL)


def _debug() -> bool:
    return os.environ.get("DEEPSEM_DEBUG", "").strip() not in ("", "0", "false", "no")


def error_line(text: str) -> None:
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)


class DeepsemGroup(TyperGroup):
    """The top-level command group: every command runs under one error handler (see the module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # exits, usage errors: main() shows them
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # the reader of our output went away (`deepsem search ... | head`): stop quietly
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            raise typer.Exit(EXIT_INTERNAL) from None
        except Exception as exc:
            text, code = _describe(exc)
            if _debug():
                traceback.print_exception(exc, file=sys.stderr)
            error_line(text)
            raise typer.Exit(code) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        """Click's main, with a usage error (bad option value, missing argument) shown as one ``error:`` line
        that names the option, like every other error."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was shown; keep Typer's exit code
                from typer.core import HAS_RICH

                if not (HAS_RICH and self.rich_markup_mode is not None):
                    exc.show()  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(_lower_first(clean(exc.format_message())).rstrip(".") + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def fail(exc: Exception | str) -> NoReturn:
    """Stop with one ``error:`` line and exit code 2 (a problem the user can fix)."""
    error_line(clean(exc))
    raise typer.Exit(EXIT_USER)
