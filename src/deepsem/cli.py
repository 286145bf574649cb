"""The ``deepsem`` command: train, evaluate, encode, index, search, serve, classify, recommend, demo.

Every command runs under one error handler (:class:`_DeepsemGroup`): an error about the user's input (a
:class:`~deepsem.errors.DeepsemError`, an OS error on a file, a damaged SQLite, Faiss or safetensors file, a
bad option value) becomes one ``error: ...`` line on stderr and exit code 2; Ctrl-C prints ``interrupted`` and
exits 130; anything else is a bug, shown as ``error: internal error: ...`` with exit code 1. ``DEEPSEM_DEBUG=1``
also prints the traceback.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


def _clean(text: object) -> str:
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
        text = _clean(exc)
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
                f"{_clean(exc)}){_files_hint(exc, ('corpus', 'index'))}")
    if isinstance(exc, sqlite3.Error):
        return f"cannot use the document store (SQLite: {_clean(exc)}){_files_hint(exc, ('index',))}"
    from safetensors import SafetensorError

    if isinstance(exc, SafetensorError):
        return (f"a weights file is damaged or not a safetensors file ({_clean(exc)})"
                f"{_files_hint(exc, ('model', 'out', 'index'))}")
    if isinstance(exc, pickle.UnpicklingError):
        # torch's message recommends weights_only=False, which would run whatever the file contains: never
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        reason = _clean(detail.group(1)) if detail else type(exc).__name__
        return (f"a checkpoint file is damaged or was not written by deepsem; it was not loaded ({reason})"
                f"{_files_hint(exc, ('out', 'model'))}")
    if isinstance(exc, RuntimeError) and _raised_in(exc, "faiss"):
        text = str(exc)
        located = re.search(r" at \S+:\d+: (.*)", text, re.S)
        reason = _clean(located.group(1) if located else text)
        reason = re.sub(r'^Error: ', "", reason)
        return f"Faiss cannot read or use the vector index ({reason}){_files_hint(exc, ('index',))}"
    if isinstance(exc, RuntimeError) and _raised_in(exc, "torch.serialization"):
        return (f"a checkpoint file is damaged ({_clean(exc)}){_files_hint(exc, ('out', 'model'))}")
    return None


def _describe(exc: BaseException) -> tuple[str, int]:
    """The ``error:`` line's text and the exit code for an exception that escaped a command."""
    from deepsem.errors import DeepsemError

    if isinstance(exc, DeepsemError):
        return _clean(exc) or type(exc).__name__, EXIT_USER
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
        return _clean(exc) or type(exc).__name__, EXIT_USER
    if isinstance(exc, MemoryError):
        return "out of memory (a smaller --batch-size, --chunk or model may fit)", EXIT_USER
    message = _clean(exc)
    return (f"internal error: {type(exc).__name__}{': ' + message if message else ''} "
            "(DEEPSEM_DEBUG=1 shows the traceback)", EXIT_INTERNAL)


def _debug() -> bool:
    return os.environ.get("DEEPSEM_DEBUG", "").strip() not in ("", "0", "false", "no")


def _error_line(text: str) -> None:
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)


class _DeepsemGroup(TyperGroup):
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
            _error_line(text)
            raise typer.Exit(code) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Click's main, with a usage error (bad option value, missing argument) shown as one ``error:`` line
        that names the option, like every other error."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was shown; keep Typer's exit code
                from typer.core import HAS_RICH

                if not (HAS_RICH and self.rich_markup_mode is not None):
                    exc.show()  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error_line(_lower_first(_clean(exc.format_message())).rstrip(".") + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="deepsem",
    help="Learn what text means from weak signals: LSTM-DSSM two-tower models for search and matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_DeepsemGroup,
)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console entry point (``deepsem``, ``python -m deepsem``): run the app under the error handler."""
    app(args=argv)
    sys.exit(0)  # pragma: no cover - app() always exits


class Encoder(StrEnum):
    lstm_peephole = "lstm-peephole"
    lstm = "lstm"
    lstm_coupled = "lstm-coupled"
    gru = "gru"
    rnn = "rnn"
    dssm = "dssm"
    cnn = "cnn"


class Pooling(StrEnum):
    last = "last"
    mean = "mean"
    max = "max"
    last_max = "last+max"


class Loss(StrEnum):
    softmax = "softmax"
    pointwise = "pointwise"
    hinge = "hinge"
    pointwise_softmax = "pointwise+softmax"


class Negatives(StrEnum):
    in_batch = "in-batch"
    random = "random"
    both = "both"
    labelled = "labelled"


class Side(StrEnum):
    query = "query"
    doc = "doc"


class TokenizerName(StrEnum):
    char = "char"
    word = "word"
    trigram = "trigram"
    subword = "subword"


def _columns(spec: str) -> tuple[int | str | None, ...]:
    """"0,1,2" or "q,d,label" or "0,1,-" (no label: every pair positive) -> a column spec per field."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise typer.BadParameter(f"expected three comma-separated columns (text_a,text_b,label), got {spec!r}")
    return tuple(None if p in ("-", "") else int(p) if p.isdigit() else p for p in parts)


def _fail(exc: Exception | str) -> NoReturn:
    """Stop with one ``error:`` line and exit code 2 (a problem the user can fix)."""
    _error_line(_clean(exc))
    raise typer.Exit(EXIT_USER)


# -- option checks: a bad value is refused before any work, with the option's name ---------------------------

def _finite(value: float | None, at_least: float, strictly: bool) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < at_least or (strictly and value == at_least):
        raise typer.BadParameter(f"must be {'>' if strictly else '>='} {at_least:g}, got {value}")
    return value


def _above_zero(value: float | None) -> float | None:
    """A float option that must be a finite number > 0 (learning rate, minutes, gamma)."""
    return _finite(value, 0.0, strictly=True)


def _not_negative(value: float | None) -> float | None:
    """A float option that must be a finite number >= 0 (weight decay, clipping, waiting time)."""
    return _finite(value, 0.0, strictly=False)


def _regular(value: Path, what: str) -> Path:
    from deepsem.data.errors import DataError
    from deepsem.fileio import regular_file

    try:
        regular_file(value, what)
    except DataError as exc:
        raise typer.BadParameter(f"{value}: {exc.problem}") from None
    return value


def _data_file(value: Path | None) -> Path | None:
    """An input file: it must exist and be a regular file (a directory, FIFO or device is refused here, before
    a reader would fail obscurely, block forever or read without end)."""
    return None if value is None else _regular(value, "file")


def _data_files(value: list[Path] | None) -> list[Path] | None:
    return None if value is None else [_regular(v, "file") for v in value]


def _text_file_or_stdin(value: Path | None) -> Path | None:
    """An input file, or ``-`` / nothing for stdin."""
    return value if value is None or str(value) == "-" else _regular(value, "file")


def _data_file_or_dir(value: Path) -> Path:
    """An input that may be a folder (a MovieLens folder) or a regular file."""
    return value if value.is_dir() else _regular(value, "file or folder")


def _existing_dir(value: Path | None) -> Path | None:
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value}: {'not a folder' if value.exists() else 'no such folder'}")
    return value


def _out_dir(value: Path | None) -> Path | None:
    """An output folder: created when missing; an existing file there is refused (never overwritten)."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value}: is a file; give a folder (it is created if missing)")
    return value


def _out_file(value: Path | None) -> Path | None:
    """An output file: an existing folder there is refused."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value}: is a folder; give a file name")
    return value


def _cutoffs(value: str) -> str:
    """"10,50": comma-separated cut-offs >= 1."""
    try:
        ks = [int(x) for x in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers such as 10,50, got {value!r}") from None
    if min(ks) < 1:
        raise typer.BadParameter(f"every cut-off must be >= 1, got {value!r}")
    return value


#: Longest line of a text file read by encode / classify predict (the texts are truncated to tokens anyway).
MAX_LINE_BYTES = 2**20


def _text_lines(texts: Path | None) -> Iterator[str]:
    """The texts of a file (or stdin for None / ``-``), one per line, decoded line by line so that an error names
    its line: not UTF-8, empty, or longer than :data:`MAX_LINE_BYTES`. A UTF-8 BOM before the first is dropped."""
    name = str(texts) if texts is not None and str(texts) != "-" else "stdin"
    stream = open(name, "rb") if name != "stdin" else getattr(sys.stdin, "buffer", None)  # noqa: SIM115
    if stream is None:  # a text-only stdin (an embedding application's): encode it back
        stream = io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))
    try:
        number = 0
        while raw := stream.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                _fail(f"{name}, line {number}: longer than {MAX_LINE_BYTES:,} bytes; one text per line")
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                _fail(f"{name}, line {number}: not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason})")
            if number == 1:
                text = text.removeprefix("\ufeff")
                if "\r" in text:
                    _fail(f"{name}, line 1: carriage returns (CR) alone end the lines (the old Mac format); "
                          "convert the line ends to LF or CRLF, e.g. tr '\\r' '\\n'")
            if not text.strip():
                _fail(f"{name}, line {number}: empty text")
            yield text
    finally:
        if name != "stdin":
            stream.close()


_PROGRESS_HELP = "Show progress (default: only when stderr is a terminal, so a log file gets no progress lines)."
_RESUME_HELP = ("Resume the run in --out from its last checkpoint when there is one and the data and settings "
                "match; --no-resume starts over in this folder (its earlier checkpoint is replaced).")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training pairs: TSV/CSV/JSONL/Parquet with text_a, text_b[, label].",
                                         callback=_data_file)],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=_out_dir)],
    dev: Annotated[Path | None, typer.Option(help="Dev pairs: chooses the best epoch and the threshold.",
                                             callback=_data_file)] = None,
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")] = False,
    clicks: Annotated[bool, typer.Option(help="DATA (and --dev) are click logs: --columns name query,doc,clicks "
                      "('-' for clicks: each row is one click); rows are summed per (query, doc); clicked "
                      "pairs are positives, shown-but-unclicked pairs (with --impressions) negatives.")] = False,
    impressions: Annotated[str | None, typer.Option(help="Impressions column of a click log (index or name).")
                           ] = None,
    tokenizer: Annotated[TokenizerName | None, typer.Option(help="char: Chinese characters + whole Latin words; "
                         "word: jieba; trigram: DSSM letter trigrams; subword: WordPiece. Default: trigram for "
                         "the dssm and cnn encoders, char otherwise.")] = None,
    min_count: Annotated[int, typer.Option(help="Drop tokens seen fewer times in the training text.", min=1)] = 1,
    max_vocab: Annotated[int | None, typer.Option(help="Keep at most this many tokens.", min=1)] = None,
    max_length: Annotated[int, typer.Option(help="Truncate texts to this many tokens.", min=1)] = 64,
    encoder: Annotated[Encoder, typer.Option(help="Tower: lstm-peephole (LSTM-DSSM), lstm, lstm-coupled, gru, rnn "
                       "(recurrent); dssm (bag of letter trigrams -> tanh layers); cnn (CLSM convolution).")
                       ] = Encoder.lstm_peephole,
    embedding_dim: Annotated[int, typer.Option(help="Token embedding size (recurrent towers).", min=1)] = 128,
    hidden: Annotated[int | None, typer.Option(help="Hidden size per direction; dssm: hidden layer width; cnn: "
                      "feature maps. Default: 128 (recurrent), 300 (dssm, cnn).", min=1)] = None,
    layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers; dssm: hidden tanh layers. "
                      "Default: 1; dssm 2.", min=1)] = None,
    orthogonal_init: Annotated[bool, typer.Option(help="Orthogonal recurrent matrices (else torch's uniform).")
                               ] = True,
    pretrained: Annotated[Path | None, typer.Option(help="Initialise the token embeddings from word vectors "
                          "(word2vec/fastText .vec/.txt, e.g. from 'deepsem embeddings train').",
                          callback=_data_file)] = None,
    freeze_embeddings: Annotated[bool, typer.Option(help="Keep the --pretrained embeddings fixed.")] = False,
    bidirectional: Annotated[bool, typer.Option(help="Read the text both ways.")] = True,
    pooling: Annotated[Pooling, typer.Option(help="Sentence vector: last state, mean, max, or last+max.")
                       ] = Pooling.last_max,
    dim: Annotated[int, typer.Option(help="Semantic vector size (the tanh layer).", min=1)] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout before the semantic layer and between layers.")] = 0.2,
    embedding_dropout: Annotated[float, typer.Option(help="Dropout on token embeddings.")] = 0.2,
    separate_towers: Annotated[bool, typer.Option(help="Separate query and document towers.")] = False,
    gamma: Annotated[float, typer.Option(help="Initial softmax smoothing factor gamma.", callback=_above_zero)
                     ] = 10.0,
    loss: Annotated[Loss, typer.Option(help="softmax: DSSM -log P(D+|Q) over negatives; pointwise: BCE on 0/1 "
                    "labels; hinge: pairwise margin; pointwise+softmax: both.")] = Loss.pointwise_softmax,
    negatives: Annotated[Negatives, typer.Option(help="Negatives for softmax/hinge: in-batch, K random "
                         "documents, both, or labelled: in-batch + K of the query's own label-0 documents (its "
                         "unclicked results, a question's wrong candidates).")] = Negatives.in_batch,
    num_negatives: Annotated[int, typer.Option(help="K random negatives per query.", min=0)] = 4,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.", min=1)] = 5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.", min=1)] = 128,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.", callback=_above_zero)] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", callback=_not_negative)] = 0.01,
    schedule: Annotated[str, typer.Option(help="linear, cosine or constant decay after warm-up.")] = "linear",
    clip_norm: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).",
                                             callback=_not_negative)] = 1.0,
    clip_value: Annotated[float, typer.Option(help="Clip every gradient element to [-v, v] (0 = off).",
                                              callback=_not_negative)] = 0.0,
    patience: Annotated[int, typer.Option(help="Stop after this many dev evaluations without gain.", min=1)] = 3,
    eval_every: Annotated[int | None, typer.Option(help="Steps between dev evaluations (default: epoch).", min=1)
                          ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes; the learning "
                           "rate decay then follows the elapsed time when that ends training first.",
                           callback=_above_zero)] = None,
    seed: Annotated[int, typer.Option(help="Random seed (data order, initialisation, dropout).")] = 13,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.", min=1)] = None,
    length_buckets: Annotated[bool, typer.Option(help="Batches of pairs of similar lengths, in shuffled order: a "
                              "recurrent tower runs far fewer padding steps (BQ: 3x faster epochs).")] = True,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP)] = True,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Train an LSTM-DSSM two-tower model on text pairs and save the best model directory.

    The defaults are the settings that gave the best BQ result on a 2-core CPU (bench/RESULTS.md): character
    tokens, peephole BiLSTM 2 x 128, last+max pooling, dropout 0.2, pointwise + in-batch softmax loss.
    """
    from deepsem.config import ModelConfig, TowerConfig, TrainConfig
    from deepsem.tasks.matching import train as train_pairs

    tower = TowerConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                        num_layers=layers, bidirectional=bidirectional, pooling=pooling.value, output_dim=dim,
                        dropout=dropout, embedding_dropout=embedding_dropout, orthogonal_init=orthogonal_init)
    if tokenizer is None:
        tokenizer = TokenizerName.trigram if encoder in (Encoder.dssm, Encoder.cnn) else TokenizerName.char
    model_cfg = ModelConfig(tower=tower, shared_towers=not separate_towers, gamma=gamma)
    model_cfg.validate()
    train_cfg = TrainConfig(loss=loss.value, negatives=negatives.value, num_negatives=num_negatives,
                            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                            schedule=schedule, clip_norm=clip_norm or None, clip_value=clip_value or None,
                            patience=patience,
                            eval_every=eval_every, max_minutes=max_minutes, seed=seed, threads=threads,
                            length_buckets=length_buckets)
    train_cfg.validate()
    # progress None (auto: a terminal only) goes through to the trainer, which owns the bar
    model, result = train_pairs(
        data, out, dev, tokenizer=tokenizer.value,
        tokenizer_options={"min_count": min_count, "max_size": max_vocab, "max_length": max_length},
        model=model_cfg, training=train_cfg, columns=_columns(columns), skip_bad_rows=skip_bad_rows,
        clicks=clicks, impressions=int(impressions) if impressions and impressions.isdigit() else impressions,
        resume=resume, progress=progress, pretrained=pretrained, freeze_embeddings=freeze_embeddings,
    )
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "dev_metrics" in model.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in model.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    data: Annotated[Path | None, typer.Argument(help="Labelled pairs (TSV/CSV/JSONL/Parquet).",
                                                callback=_data_file)] = None,
    retrieval: Annotated[Path | None, typer.Option(help="A BEIR-style folder (corpus.jsonl, queries.jsonl, "
                         "qrels/SPLIT.tsv) to rank instead of pairs.", callback=_existing_dir)] = None,
    split: Annotated[str, typer.Option(help="qrels split of --retrieval.")] = "test",
    columns: Annotated[str, typer.Option(help="Columns text_a,text_b,label of DATA.")] = "0,1,2",
    threshold: Annotated[float | None, typer.Option(help="Cosine threshold for accuracy/F1 (default: the "
                         "one chosen on dev at training time).")] = None,
    dev: Annotated[Path | None, typer.Option(help="Choose the threshold on these pairs instead.",
                                             callback=_data_file)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Score a model: accuracy, F1, ROC-AUC, Spearman on pairs; MRR, MAP, NDCG, recall on retrieval."""
    from deepsem.data.readers import read_retrieval
    from deepsem.metrics import best_threshold
    from deepsem.tasks import load
    from deepsem.tasks.matching import as_pairs, evaluate_pairs, evaluate_retrieval

    if (data is None) == (retrieval is None):
        _fail("give either DATA (pairs) or --retrieval DIR")
    semantic = load(model)
    if retrieval is not None:
        rs = read_retrieval(retrieval, split=split)
        metrics = evaluate_retrieval(semantic, rs.queries, rs.corpus, rs.qrels, ks=(1, 10, 100))
    else:
        assert data is not None
        pairs = as_pairs(data, _columns(columns), skip_bad_rows)
        chosen = threshold
        if dev is not None:
            dev_pairs = as_pairs(dev, _columns(columns), skip_bad_rows)
            assert dev_pairs.labels is not None
            chosen = best_threshold(semantic.similarity(dev_pairs.text_a, dev_pairs.text_b), dev_pairs.labels)
        if chosen is None:
            chosen = semantic.threshold
        metrics = evaluate_pairs(semantic, pairs, threshold=chosen)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>12}  {value:.4f}")


@app.command()
def encode(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    out: Annotated[Path, typer.Option(help="Where to write the vectors (.npy, float32, one row per text).",
                                      callback=_out_file)],
    texts: Annotated[Path | None, typer.Argument(help="A text file, one text per line; stdin when absent or '-'.",
                                                 callback=_text_file_or_stdin)] = None,
    side: Annotated[Side, typer.Option(help="Tower to use: query or doc.")] = Side.query,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 512,
    chunk: Annotated[int, typer.Option(help="Texts read and encoded at a time (bounds memory).", min=1)] = 100_000,
) -> None:
    """Encode texts (one per line) into L2-normalised vectors saved as a .npy file."""
    import numpy as np

    from deepsem.fileio import atomic_write
    from deepsem.tasks import load

    semantic = load(model)
    parts: list[np.ndarray] = []
    batch: list[str] = []
    for text in _text_lines(texts):
        batch.append(text)
        if len(batch) >= chunk:
            parts.append(semantic.encode(batch, batch_size=batch_size, side=side.value))
            batch = []
    if batch:
        parts.append(semantic.encode(batch, batch_size=batch_size, side=side.value))
    vectors = np.concatenate(parts) if parts else np.zeros((0, semantic.dim), np.float32)
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.save(fh, vectors)

    atomic_write(out, write)
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}", err=True)


index_app = typer.Typer(help="Build and change a vector index (Faiss + document store + model).",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")


def _load_index(path: Path):
    from deepsem.index import Index

    return Index.load(path)


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Model directory whose document tower encodes the corpus.")],
    corpus: Annotated[Path, typer.Option(help="Documents: JSONL ({id, text, ...metadata}), TSV/CSV with a "
                      "header (id, text, ...), or a text file with one document per line.", callback=_data_file)],
    index: Annotated[Path, typer.Option(help="Index directory to write (replaced atomically).",
                                        callback=_out_dir)],
    factory: Annotated[str, typer.Option(help="Faiss factory string: Flat (exact), HNSW32, IVF4096,Flat, "
                       "IVF1024,PQ32 ...")] = "Flat",
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed documents (counted).")] = False,
    check_recall: Annotated[bool, typer.Option(help="Report recall@10 of the index against exact search on "
                            "a sample of 200 documents used as queries.")] = False,
    search_params: Annotated[str | None, typer.Option(help="Faiss search parameters kept with the index, e.g. "
                             "'efSearch=256' (HNSW) or 'nprobe=64' (IVF); default efSearch=128 / nprobe=32.")
                             ] = None,
    vectors: Annotated[Path | None, typer.Option(help="Precomputed document vectors (.npy from `deepsem encode "
                       "--side doc`, one row per document in corpus order): skips encoding.",
                       callback=_data_file)] = None,
    lexical: Annotated[bool, typer.Option(help="Also build a BM25 index (CJK characters, Latin words) for "
                       "lexical and hybrid search; hybrid becomes the index's default mode.")] = False,
    hybrid_weight: Annotated[float, typer.Option(help="The cosine's share of the hybrid score (the rest is "
                             "BM25 scaled by the query's best BM25 score).", min=0.0, max=1.0)] = 0.5,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Encode every document of a corpus and index the vectors."""
    import time

    from deepsem.index import Index
    from deepsem.progress import progress_enabled

    t0 = time.perf_counter()
    # the library reads the .npy itself (memory-mapped, no pickle) and checks its shape, dtype and values
    built = Index.build(model, corpus, index, factory, id_field=id_field, text_field=text_field,
                        skip_bad_rows=skip_bad_rows, vectors=vectors, search_params=search_params,
                        progress=progress_enabled(progress), lexical=lexical, hybrid_weight=hybrid_weight)
    typer.echo(f"indexed {len(built):,} documents with {factory} in {time.perf_counter() - t0:.1f} s -> {index}")
    if check_recall:
        typer.echo(f"recall@10 against exact search: {built.check_recall(k=10):.4f}")


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    corpus: Annotated[Path, typer.Option(help="Documents to add (same formats as build); ids must be new.",
                                         callback=_data_file)],
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
) -> None:
    """Add documents to an existing index."""
    from deepsem.index import iter_corpus

    idx = _load_index(index)
    added = idx.add(iter_corpus(corpus, id_field=id_field, text_field=text_field), source=corpus)
    typer.echo(f"added {added:,} documents; {len(idx):,} in the index")


@index_app.command("delete")
def index_delete(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
) -> None:
    """Delete documents by id."""
    idx = _load_index(index)
    typer.echo(f"deleted {idx.delete(ids):,} of {len(ids):,} ids; {len(idx):,} in the index")


@index_app.command("rebuild")
def index_rebuild(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    factory: Annotated[str | None, typer.Option(help="A new factory string (default: keep).")] = None,
) -> None:
    """Re-encode the live documents into a fresh index, reclaiming deleted ones."""
    idx = _load_index(index)
    idx.rebuild(factory)
    typer.echo(f"rebuilt: {idx.stats()}")


@index_app.command("stats")
def index_stats(index: Annotated[Path, typer.Option(help="Index directory.")]) -> None:
    """Print the number of documents, the factory and the version."""
    typer.echo(json.dumps(_load_index(index).stats(), indent=2))


@app.command()
def search(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    query: Annotated[list[str] | None, typer.Argument(help="Query text(s).")] = None,
    queries: Annotated[Path | None, typer.Option(help="A file of queries, one per line (blank lines skipped).",
                                                 callback=_data_file)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.", min=1)] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query, for scripts.")] = False,
    mode: Annotated[str | None, typer.Option(help="dense (cosine), lexical (BM25) or hybrid; default: hybrid "
                    "for an index built with --lexical, else dense.")] = None,
) -> None:
    """Search an index: ranked documents with their scores (cosine, BM25 or the hybrid score)."""
    texts = list(query or [])
    blank = [i for i, text in enumerate(texts, 1) if not text.strip()]
    if blank:
        _fail(f"query {blank[0]} is empty: give a text to search for")
    if queries is not None:
        try:
            lines = queries.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            _fail(f"{queries}: not UTF-8 text ({exc.reason})")
        texts += [line for line in lines if line.strip()]
    if not texts:
        _fail("give a query text or --queries FILE")
    idx = _load_index(index)
    found = idx.search(texts, k=k, mode=mode)
    for text, hits in zip(texts, found, strict=True):
        if as_json:
            typer.echo(json.dumps({"query": text, "results": [h.to_dict() for h in hits]}, ensure_ascii=False))
        else:
            typer.echo(f"> {text}")
            for rank, h in enumerate(hits, 1):
                typer.echo(f"{rank:3d}. {h.score:.4f}  [{h.id}] {h.text}")


_API_KEY_ENV = "DEEPSEM_API_KEY"
_API_KEY_HELP = ("Require this key on every request but /healthz ('Authorization: Bearer KEY' or 'X-API-Key: KEY'). "
                 "Prefer the environment variable: a key on the command line shows in the process list.")


def _api_key_kwargs(api_key: str | None) -> dict[str, str]:
    """``{"api_key": key}`` for ``create_app`` when a key is given (an empty one is refused, not ignored)."""
    if api_key is None:
        return {}
    if not api_key.strip():
        _fail(f"--api-key (or {_API_KEY_ENV}) is empty; give a key or unset it")
    return {"api_key": api_key}


# The service's guards, shared by `deepsem serve` and `deepsem recommend serve` (deepsem.serve.Limits).
MaxBodyBytes = Annotated[int, typer.Option(help="Largest request body in bytes; a larger one is refused (413) "
                                           "without being read.", min=1)]
BodyTimeout = Annotated[float, typer.Option(help="Seconds a request's whole body may take to arrive; slower: 408.",
                                            min=0.001)]
MaxInFlight = Annotated[int, typer.Option(help="Requests handled at once; more get 503 with Retry-After.", min=1)]
HeaderTimeout = Annotated[float, typer.Option(help="Seconds a request's headers (and a new connection's first "
                                              "request) may take; then the connection is closed.", min=0.001)]
MaxHeaderBytes = Annotated[int, typer.Option(help="Largest request line + headers in bytes; more: 431.", min=256)]
MaxHeaders = Annotated[int, typer.Option(help="Most header fields in one request; more: 431.", min=1)]
KeepAlive = Annotated[float, typer.Option(help="Seconds an idle connection stays open.", min=0.001)]


def _guard_limits(max_body_bytes: int, body_timeout: float, max_in_flight: int, header_timeout: float,
                  max_header_bytes: int, max_headers: int, keep_alive: float) -> dict[str, float | int]:
    return {"max_body_bytes": max_body_bytes, "body_timeout_s": body_timeout, "max_in_flight": max_in_flight,
            "header_timeout_s": header_timeout, "max_header_bytes": max_header_bytes, "max_headers": max_headers,
            "keep_alive_s": keep_alive}


@app.command()
def serve(
    index: Annotated[Path | None, typer.Option(help="Index directory to search (its model encodes queries).")
                     ] = None,
    model: Annotated[Path | None, typer.Option(help="Serve only /similarity and /embed for this model (/classify "
                     "for a classifier's directory, /recommend for a recommender's).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8000,
    max_chars: Annotated[int, typer.Option(help="Longest text accepted (characters).", min=1)] = 1000,
    max_texts: Annotated[int, typer.Option(help="Most texts (queries, pairs) in one request.", min=1)] = 256,
    max_k: Annotated[int, typer.Option(help="Largest k accepted.", min=1)] = 100,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait for others to share its encoder "
                           "call (requests that queued meanwhile always share it).", callback=_not_negative)] = 0.0,
    threads: Annotated[int, typer.Option(help="Torch threads for encoding. 1 leaves the other cores to the "
                       "HTTP loop; small micro-batches gain nothing from more.", min=1)] = 1,
    encoder_thread: Annotated[bool, typer.Option(help="Run the model in a worker thread instead of in the event "
                              "loop between requests (slower here: the thread fights the loop for the GIL).")
                              ] = False,
    api_key: Annotated[str | None, typer.Option(envvar=_API_KEY_ENV, show_envvar=True, help=_API_KEY_HELP)
                       ] = None,
    reload_interval: Annotated[float, typer.Option(help="Seconds between looks at INDEX/CURRENT for the versions "
                               "'index add' / 'index delete' write (the new one is loaded and swapped in); 0: "
                               "serve the index as loaded, until POST /admin/reload.", callback=_not_negative)
                               ] = 1.0,
    max_body_bytes: MaxBodyBytes = 1 << 20,
    body_timeout: BodyTimeout = 10.0,
    max_in_flight: MaxInFlight = 256,
    header_timeout: HeaderTimeout = 10.0,
    max_header_bytes: MaxHeaderBytes = 16 << 10,
    max_headers: MaxHeaders = 100,
    keep_alive: KeepAlive = 5.0,
) -> None:
    """Serve search, similarity and embeddings over HTTP, with a search page at /."""
    import torch

    torch.set_num_threads(threads)

    from deepsem.serve import Limits, create_app, run
    from deepsem.tasks import load

    if (index is None) == (model is None):
        _fail("give --index DIR (search and more) or --model DIR (similarity and embeddings)")
    auth = _api_key_kwargs(api_key)
    idx = _load_index(index) if index is not None else None
    loaded = load(model) if model is not None else None
    from deepsem.tasks.classification import Classifier
    from deepsem.tasks.recommendation import Recommender

    classifier = loaded if isinstance(loaded, Classifier) else None  # a classifier directory: /classify
    recommender = loaded if isinstance(loaded, Recommender) else None  # a recommender directory: /recommend
    semantic = None if isinstance(loaded, Classifier | Recommender) else loaded
    limits = Limits(max_chars, max_texts, max_k, **_guard_limits(max_body_bytes, body_timeout, max_in_flight,
                                                                 header_timeout, max_header_bytes, max_headers,
                                                                 keep_alive))
    app_ = create_app(idx, semantic, limits, max_wait_ms=max_wait_ms, classifier=classifier,
                      recommender=recommender, encoder_thread=encoder_thread,
                      reload_interval_s=reload_interval or None, **auth)
    typer.echo(f"serving on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    run(app_, host=host, port=port)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Keep the model and index directories here (default: a "
                   "temporary directory).", callback=_out_dir)] = None,
    serve: Annotated[bool, typer.Option(help="Serve the search page after training (--no-serve stops after "
                     "the example searches).")] = True,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.", min=0, max=65535)] = 8000,
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.", callback=_above_zero)] = 1.8,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Train LSTM-DSSM on the shipped Tatoeba English–Chinese pairs, index every sentence, serve a search page."""
    from deepsem.demo import run_demo

    _, index_dir, _ = run_demo(out=out, minutes=minutes, progress=progress)
    if serve:
        from deepsem.index import Index
        from deepsem.serve import create_app, run

        typer.echo(f"\nsearch page: http://{host}:{port}/   (Ctrl-C to stop)")
        run(create_app(Index.load(index_dir)), host=host, port=port)


classify_app = typer.Typer(help="Text classification with the towers: train, evaluate, predict.",
                           no_args_is_help=True)
app.add_typer(classify_app, name="classify")


def _column(spec: str) -> int | str:
    """"0" / "-1" -> a column position, anything else -> a header name."""
    return int(spec) if spec.lstrip("-").isdigit() else spec


def _class_weights(spec: str | None) -> str | dict[str, float] | None:
    """None, "balanced", or "label=weight,label=weight"."""
    if spec is None or spec in ("", "none"):
        return None
    if spec == "balanced":
        return spec
    weights: dict[str, float] = {}
    for part in spec.split(","):
        label, sep, value = part.rpartition("=")
        try:
            if not sep or not label.strip():
                raise ValueError
            weights[label.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--class-weights: expected 'balanced' or label=weight,..., got {spec!r}"
                                     ) from None
    return weights


def _load_task(model: Path, kind: type, wrong: str):
    """``deepsem.load(model)``, which must be a ``kind``; else exit 2 with ``wrong``."""
    from deepsem.tasks import load

    loaded = load(model)
    if not isinstance(loaded, kind):
        _fail(f"{model}: {wrong}")
    return loaded


def _load_classifier(model: Path):
    from deepsem.tasks.classification import Classifier

    return _load_task(model, Classifier, "not a classifier (train one with 'deepsem classify train')")


@classify_app.command("train")
def classify_train(
    data: Annotated[Path, typer.Argument(help="Training texts with labels: TSV/CSV/JSONL/Parquet.",
                                         callback=_data_file)],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=_out_dir)],
    dev: Annotated[Path | None, typer.Option(help="Dev texts: choose the best epoch, stop early.",
                                             callback=_data_file)] = None,
    text_col: Annotated[str, typer.Option(help="Text column: 0-based index or header name.")] = "0",
    label_col: Annotated[str, typer.Option(help="Label column: 0-based index or header name.")] = "1",
    header: Annotated[bool | None, typer.Option(help="The first TSV/CSV line is a header (--no-header: it is "
                      "data). Default: detected from column names such as text/label (the decision is printed).")
                      ] = None,
    multi_label: Annotated[bool, typer.Option(help="Several labels per text (a sigmoid per label, BCE loss).")
                           ] = False,
    label_sep: Annotated[str, typer.Option(help="Separator of the labels of one text (--multi-label).")] = ",",
    class_weights: Annotated[str | None, typer.Option(help="'balanced' (rare classes weigh more) or "
                             "label=weight,label=weight. Multi-label: the positives' weight per label.")] = None,
    encoder: Annotated[Encoder, typer.Option(help="Tower: lstm-peephole, lstm, lstm-coupled, gru, rnn (recurrent); "
                       "dssm (bag of letter trigrams); cnn (CLSM convolution).")] = Encoder.lstm_peephole,
    tokenizer: Annotated[TokenizerName | None, typer.Option(help="char, word (jieba), trigram or subword. "
                         "Default: trigram for the dssm and cnn encoders, char otherwise.")] = None,
    min_count: Annotated[int, typer.Option(help="Drop tokens seen fewer times in the training text.", min=1)] = 1,
    max_length: Annotated[int, typer.Option(help="Truncate texts to this many tokens.", min=1)] = 64,
    embedding_dim: Annotated[int, typer.Option(help="Token embedding size (recurrent towers).", min=1)] = 128,
    hidden: Annotated[int | None, typer.Option(help="Hidden size per direction; dssm: layer width; cnn: feature "
                      "maps. Default: 128 (recurrent), 300 (dssm, cnn).", min=1)] = None,
    layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers; dssm: hidden layers.", min=1)
                      ] = None,
    bidirectional: Annotated[bool, typer.Option(help="Read the text both ways.")] = True,
    pooling: Annotated[Pooling, typer.Option(help="Sentence vector: last state, mean, max, or last+max.")
                       ] = Pooling.last_max,
    dim: Annotated[int, typer.Option(help="Size of the tower's output vector.", min=1)] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout in the tower and on token embeddings.")] = 0.2,
    ngram_buckets: Annotated[int, typer.Option(help="Add a fastText-style bag of token n-grams next to the tower, "
                             "hashed into this many rows (e.g. 100000; 0 = the tower alone).", min=0)] = 0,
    ngram_order: Annotated[int, typer.Option(help="Longest n-gram of the bag (2 = bigrams).")] = 2,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.", min=1)] = 10,
    batch_size: Annotated[int, typer.Option(help="Texts per step.", min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.", callback=_above_zero)] = 3e-3,
    patience: Annotated[int, typer.Option(help="Stop after this many dev evaluations without gain.", min=1)] = 3,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes.",
                                                      callback=_above_zero)] = None,
    clip_norm: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).",
                                             callback=_not_negative)] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.", min=1)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")] = False,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP)] = True,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Train a text classifier (any tower -> linear layer) and save the best model directory."""
    from deepsem.config import TowerConfig, TrainConfig
    from deepsem.tasks.classification import train_classifier

    if tokenizer is None:
        tokenizer = TokenizerName.trigram if encoder in (Encoder.dssm, Encoder.cnn) else TokenizerName.char
    tower = TowerConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                        num_layers=layers, bidirectional=bidirectional, pooling=pooling.value, output_dim=dim,
                        dropout=dropout, embedding_dropout=dropout)
    tower.validate()
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, clip_norm=clip_norm or None,
                            patience=patience, max_minutes=max_minutes, seed=seed, threads=threads)
    train_cfg.validate()
    clf, result = train_classifier(
        data, out, dev, tokenizer=tokenizer.value,
        tokenizer_options={"min_count": min_count, "max_length": max_length}, tower=tower, training=train_cfg,
        multi_label=multi_label, class_weights=_class_weights(class_weights), text_col=_column(text_col),
        label_col=_column(label_col), label_sep=label_sep, header=header, skip_bad_rows=skip_bad_rows, resume=resume,
        ngram_buckets=ngram_buckets, ngram_order=ngram_order,
        progress=progress,  # None (auto) through to the trainer
    )
    typer.echo(f"{len(clf.labels)} labels; stopped: {result.stopped} after {result.steps} steps "
               f"({result.seconds:.0f} s)")
    if "dev_metrics" in clf.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in clf.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


@classify_app.command("evaluate")
def classify_evaluate(
    model: Annotated[Path, typer.Option(help="Classifier model directory.")],
    data: Annotated[Path, typer.Argument(help="Labelled texts (TSV/CSV/JSONL/Parquet).", callback=_data_file)],
    text_col: Annotated[str, typer.Option(help="Text column: 0-based index or header name.")] = "0",
    label_col: Annotated[str, typer.Option(help="Label column: 0-based index or header name.")] = "1",
    label_sep: Annotated[str | None, typer.Option(help="Separator of multi-label labels (default: the one the "
                         "model was trained with).")] = None,
    header: Annotated[bool | None, typer.Option(help="The first TSV/CSV line is a header (--no-header: it is "
                      "data). Default: detected from column names such as text/label (the decision is printed).")
                      ] = None,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG here.",
                                                   callback=_out_file)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every metric as JSON.")] = False,
) -> None:
    """Accuracy, macro/micro F1, per-class precision/recall/F1 and the most confused classes."""
    from deepsem.tasks.classification import evaluate_classifier

    clf = _load_classifier(model)
    metrics = evaluate_classifier(clf, data, text_col=_column(text_col), label_col=_column(label_col),
                                  label_sep=label_sep, header=header, skip_bad_rows=skip_bad_rows,
                                  confusion_png=confusion)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
        return
    for key in ("examples", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "log_loss", "hamming_loss"):
        if key in metrics:
            value = metrics[key]
            typer.echo(f"{key:>12}  {value}" if isinstance(value, int) else f"{key:>12}  {value:.4f}")
    width = max(8, *(len(y) for y in clf.labels))
    typer.echo(f"\n{'label':<{width}}  precision  recall      f1  support")
    for label, row in metrics["per_class"].items():
        typer.echo(f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
                   f"{row['support']:7d}")
    if metrics.get("most_confused"):
        typer.echo("\nmost confused (true -> predicted):")
        for pair in metrics["most_confused"]:
            typer.echo(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    if "confusion_png" in metrics:
        typer.echo(f"\nconfusion matrix: {metrics['confusion_png']}")


@classify_app.command("predict")
def classify_predict(
    model: Annotated[Path, typer.Option(help="Classifier model directory.")],
    texts: Annotated[Path | None, typer.Argument(help="A text file, one text per line; stdin when absent or '-'.",
                                                 callback=_text_file_or_stdin)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Labels per text, most probable first.", min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per text.")] = False,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 1024,
    chunk: Annotated[int, typer.Option(help="Texts read and classified at a time (bounds memory).", min=1)
                     ] = 100_000,
) -> None:
    """Print the k most probable labels of each text with their probabilities (tab-separated)."""
    clf = _load_classifier(model)
    def flush(batch: list[str]) -> None:
        for text, top in zip(batch, clf.predict(batch, k=k, batch_size=batch_size), strict=True):
            if as_json:
                typer.echo(json.dumps({"text": text, "predictions": [{"label": y, "prob": round(p, 6)}
                                                                     for y, p in top]}, ensure_ascii=False))
            else:
                typer.echo("\t".join(f"{y}\t{p:.4f}" for y, p in top))

    batch: list[str] = []
    for text in _text_lines(texts):
        batch.append(text)
        if len(batch) >= chunk:
            flush(batch)
            batch = []
    if batch:
        flush(batch)


embeddings_app = typer.Typer(help="Word vectors (word2vec, fastText) for initialising token embeddings.",
                             no_args_is_help=True)
app.add_typer(embeddings_app, name="embeddings")


class VectorMethod(StrEnum):
    skipgram = "skipgram"
    cbow = "cbow"
    fasttext = "fasttext"


@embeddings_app.command("train")
def embeddings_train(
    corpus: Annotated[list[Path], typer.Argument(help="Text files, one text per line (a TSV/CSV line is used "
                      "whole unless --column picks fields).")],
    out: Annotated[Path, typer.Option(help="Vectors file to write (word2vec text format, .vec).",
                                      callback=_out_file)],
    tokenizer: Annotated[TokenizerName, typer.Option(help="Tokens to learn vectors for: the tokenizer the model "
                         "will use (char for Chinese characters, word for jieba/English words).")
                         ] = TokenizerName.char,
    column: Annotated[list[int] | None, typer.Option(help="Tab-separated columns holding text (repeatable); "
                      "default: the whole line.")] = None,
    method: Annotated[VectorMethod, typer.Option(help="skipgram or cbow (word2vec), or fasttext (skip-gram "
                      "with character n-grams).")] = VectorMethod.skipgram,
    dim: Annotated[int, typer.Option(help="Vector size: use the model's --embedding-dim.", min=1)] = 128,
    window: Annotated[int, typer.Option(help="Context window.", min=1)] = 5,
    min_count: Annotated[int, typer.Option(help="Ignore tokens rarer than this.", min=1)] = 2,
    epochs: Annotated[int, typer.Option(help="Passes over the corpus.", min=1)] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    workers: Annotated[int, typer.Option(help="Worker threads (1 is deterministic).", min=1)] = 1,
) -> None:
    """Learn word vectors on your own corpus with gensim; pass them to 'deepsem train --pretrained'."""
    from deepsem.data.errors import DataError
    from deepsem.embeddings import train_vectors
    from deepsem.fileio import regular_file
    from deepsem.text import build_tokenizer

    def texts():
        for path in corpus:
            with open(path, encoding="utf-8") as fh:
                number = 0
                try:
                    for number, line in enumerate(fh, 1):
                        line = line.rstrip("\n")
                        if column is None:
                            yield line
                            continue
                        fields = line.split("\t")
                        for c in column:
                            if c >= len(fields):
                                raise ValueError(f"{path}, line {number}: no column {c} ({len(fields)} fields)")
                            yield fields[c]
                except UnicodeDecodeError as exc:
                    raise DataError(path, number + 1, None, f"not UTF-8 text ({exc.reason})") from None

    class Corpus:  # re-iterable: gensim reads the corpus once per epoch
        def __iter__(self):
            return texts()

    missing = [str(p) for p in corpus if not p.exists()]
    if missing:
        _fail(f"no such file: {', '.join(missing)}")
    for path in corpus:
        regular_file(path)  # a directory, FIFO or device: one clear error
    if tokenizer in (TokenizerName.subword, TokenizerName.trigram):
        _fail("word vectors are learned for char or word tokens (the tokens of a recurrent tower)")
    tok = build_tokenizer(tokenizer.value, [], min_count=1)
    info = train_vectors(Corpus(), out, tokenizer=tok, method=method.value, dim=dim, window=window,
                         min_count=min_count, epochs=epochs, seed=seed, workers=workers)
    typer.echo(f"{info.words} vectors of {info.dim} dimensions ({info.method}, {info.seconds:.1f} s) -> {out}")


diagnose_app = typer.Typer(help="Look inside training: gradients through time.", no_args_is_help=True)
app.add_typer(diagnose_app, name="diagnose")


@diagnose_app.command("gradients")
def diagnose_gradients(
    out: Annotated[Path, typer.Option(help="Folder for the plot (gradient_norms.png), table and JSON.",
                                      callback=_out_dir)],
    cell: Annotated[list[str] | None, typer.Option(help="Cells to compare (repeatable): rnn, gru, lstm, "
                    "lstm-peephole, lstm-coupled. Default: rnn, gru, lstm.")] = None,
    task: Annotated[str, typer.Option(help="adding (the adding problem) or copy (copy the first token).")
                    ] = "adding",
    length: Annotated[int, typer.Option(help="Sequence length (the distance the gradient must travel).", min=1)
                      ] = 100,
    steps: Annotated[int, typer.Option(help="Training steps per cell.", min=1)] = 1000,
    hidden: Annotated[int, typer.Option(help="Hidden size.", min=1)] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (these small recurrences run fastest on 1).",
                                         min=1)] = 1,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Train cells on a long-range synthetic task and plot ||dL/dh_t|| against the distance from the end."""
    from deepsem.diagnose import diagnose_gradients as run
    from deepsem.diagnose import table_markdown
    from deepsem.progress import progress_enabled

    report = run(cells=tuple(cell or ("rnn", "gru", "lstm")), task=task, length=length, steps=steps,
                 hidden=hidden, seed=seed, out_dir=out, threads=threads, progress=progress_enabled(progress))
    typer.echo(table_markdown(report.results))
    typer.echo(f"plot: {report.png}\ntable: {report.table}")


recommend_app = typer.Typer(help="Two-tower recommendation from interaction logs: train, evaluate, predict, "
                            "item2vec, serve.", no_args_is_help=True)
app.add_typer(recommend_app, name="recommend")


class RecurrentEncoder(StrEnum):
    lstm_peephole = "lstm-peephole"
    lstm = "lstm"
    lstm_coupled = "lstm-coupled"
    gru = "gru"
    rnn = "rnn"


class RecommendNegatives(StrEnum):
    full = "full"
    in_batch = "in-batch"
    sampled = "sampled"


def _interactions(data: Path, items: Path | None, users: Path | None, columns: str, rating_col: str | None,
                  min_rating: float | None, skip_bad_rows: bool):
    """A MovieLens folder, or a log file with --columns user,item,time (+ optional item / user feature files)."""
    from deepsem.data.interactions import load_movielens, read_interactions, read_items, read_user_features

    if data.is_dir():
        loaded = load_movielens(data, skip_bad_rows=skip_bad_rows)
    else:
        parts = [p.strip() for p in columns.split(",")]
        if len(parts) != 3:
            raise typer.BadParameter(f"--columns: expected user,item,time, got {columns!r}")
        loaded = read_interactions(data, user_col=_column(parts[0]), item_col=_column(parts[1]),
                                   time_col=_column(parts[2]),
                                   rating_col=_column(rating_col) if rating_col else None,
                                   skip_bad_rows=skip_bad_rows)
    if items is not None:
        loaded.item_features = read_items(items)
    if users is not None:
        loaded.user_features = read_user_features(users)
    if loaded.skipped.count:
        typer.echo(f"{data}: {loaded.skipped}", err=True)
    if loaded.duplicates:
        typer.echo(f"{data}: dropped {loaded.duplicates} repeated (user, item, time) rows", err=True)
    return loaded.filter(min_rating)


def _load_recommender(model: Path):
    from deepsem.tasks.recommendation import Recommender

    return _load_task(model, Recommender, "not a recommender (train one with 'deepsem recommend train')")


_DATA_HELP = ("Interactions: a MovieLens folder (ml-100k, ml-1m, ml-latest) or a CSV/TSV/JSONL/Parquet log with "
              "user, item and time columns.")


@recommend_app.command("train")
def recommend_train(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP, callback=_data_file_or_dir)],
    out: Annotated[Path, typer.Option(help="Model directory to write.", callback=_out_dir)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file (index or header name).")
                       ] = "0,1,2",
    rating_col: Annotated[str | None, typer.Option(help="Rating column of a log file.")] = None,
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    items: Annotated[Path | None, typer.Option(help="Item features: item id, title, '|'-separated categories.",
                                               callback=_data_file)] = None,
    users: Annotated[Path | None, typer.Option(help="User features: user id, then one feature column.",
                                               callback=_data_file)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")] = False,
    n_test: Annotated[int, typer.Option(help="Last items per user held out for the test.", min=0)] = 1,
    n_valid: Annotated[int, typer.Option(help="Items before them held out for validation (early stopping).",
                                         min=0)] = 1,
    encoder: Annotated[RecurrentEncoder, typer.Option(help="User tower.")] = RecurrentEncoder.lstm_peephole,
    embedding_dim: Annotated[int, typer.Option(help="Item (and feature) embedding size.", min=1)] = 64,
    hidden: Annotated[int, typer.Option(help="User tower hidden size.", min=1)] = 128,
    layers: Annotated[int, typer.Option(help="User tower layers.", min=1)] = 1,
    dim: Annotated[int, typer.Option(help="User / item vector size.", min=1)] = 64,
    dropout: Annotated[float, typer.Option(help="Dropout.")] = 0.2,
    max_history: Annotated[int, typer.Option(help="Most recent items the user tower reads.", min=1)] = 50,
    title_encoder: Annotated[str, typer.Option(help="Item titles in the item tower: bag (mean word embedding), a "
                             "text tower (dssm, cnn, gru, lstm, lstm-peephole...) or none.")] = "bag",
    item_features: Annotated[bool, typer.Option(help="Use item titles and categories.")] = True,
    user_features: Annotated[bool, typer.Option(help="Use user features.")] = True,
    negatives: Annotated[RecommendNegatives, typer.Option(help="Softmax over all items, the batch's targets, or "
                         "those plus popularity-sampled items.")] = RecommendNegatives.full,
    num_negatives: Annotated[int, typer.Option(help="Sampled items per batch (--negatives sampled).", min=1)
                             ] = 256,
    logq: Annotated[bool, typer.Option(help="Log-Q correction of in-batch / sampled negatives.")] = True,
    item2vec_init: Annotated[bool, typer.Option(help="Start the item embeddings from Item2Vec (needs gensim).")
                             ] = False,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.", min=1)] = 60,
    batch_size: Annotated[int, typer.Option(help="History windows per step.", min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.", callback=_above_zero)] = 2e-3,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better validation "
                        "NDCG@10.", min=1)] = 5,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes.",
                                                      callback=_above_zero)] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.", min=1)] = None,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP)] = True,
    progress: Annotated[bool | None, typer.Option(help=_PROGRESS_HELP)] = None,
) -> None:
    """Train the two-tower recommender (user tower over the history, item tower over id + features)."""
    from deepsem.tasks.recommendation import train_recommender

    loaded = _interactions(data, items, users, columns, rating_col, min_rating, skip_bad_rows)
    config = {"encoder": encoder.value, "embedding_dim": embedding_dim, "hidden_size": hidden, "num_layers": layers,
              "output_dim": dim, "dropout": dropout, "max_history": max_history,
              "title_encoder": title_encoder}
    training = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience, "seed": seed,
                "max_minutes": max_minutes, "threads": threads, "weight_decay": 0.0}
    # progress None (auto) goes through to the trainer
    rec, result = train_recommender(loaded, out, config=config, training=training, negatives=negatives.value,
                                    num_negatives=num_negatives, logq=logq, n_test=n_test, n_valid=n_valid,
                                    use_item_features=item_features, use_user_features=user_features,
                                    item2vec_init=item2vec_init, resume=resume, progress=progress)
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "valid_metrics" in rec.info:
        typer.echo("best validation: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.info["valid_metrics"].items()))
    typer.echo(f"model directory: {out}")


@recommend_app.command("evaluate")
def recommend_evaluate(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    data: Annotated[Path, typer.Argument(help=_DATA_HELP + " Split as at training time.",
                                         callback=_data_file_or_dir)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file.")] = "0,1,2",
    rating_col: Annotated[str | None, typer.Option(help="Rating column of a log file.")] = None,
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    users: Annotated[Path | None, typer.Option(help="User features file.", callback=_data_file)] = None,
    n_test: Annotated[int, typer.Option(help="Last items per user held out for the test.", min=0)] = 1,
    n_valid: Annotated[int, typer.Option(help="Items before them held out for validation.", min=0)] = 1,
    stage: Annotated[str, typer.Option(help="test or valid.")] = "test",
    k: Annotated[str, typer.Option(help="Comma-separated cut-offs.", callback=_cutoffs)] = "10,50",
    baselines: Annotated[bool, typer.Option(help="Also evaluate most-popular and Item2Vec on the same split.")
                         ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """HitRate@k, Recall@k, NDCG@k, MRR and coverage, every target ranked among all items (history excluded)."""
    from deepsem.data.interactions import split_sequences
    from deepsem.tasks.recommendation import evaluate_ranking_over_items, popularity_scores

    rec = _load_recommender(model)
    if stage not in ("test", "valid"):
        _fail(f"--stage must be test or valid, got {stage!r}")
    loaded = _interactions(data, None, users, columns, rating_col, min_rating, False)
    split = split_sequences(loaded, n_test=n_test, n_valid=n_valid)
    ks = [int(x) for x in k.split(",")]
    # the model's catalogue decides the item positions; items it never saw cannot be recommended
    split = _align_split(split, rec.catalogue.ids)
    results = {"deepsem": evaluate_ranking_over_items(rec.scorer(split, loaded.user_features), split, stage, ks)}
    if baselines:
        from deepsem.item2vec import train_item2vec

        results["most-popular"] = evaluate_ranking_over_items(popularity_scores(split), split, stage, ks)
        vectors = train_item2vec([split.history(u, stage).tolist() for u in range(len(split.users))])
        results["item2vec"] = evaluate_ranking_over_items(vectors.scorer(split), split, stage, ks)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    names = list(next(iter(results.values())))
    typer.echo(f"{'method':<14}" + "".join(f"{n:>13}" for n in names))
    for method, metrics in results.items():
        typer.echo(f"{method:<14}" + "".join(f"{metrics[n]:>13.4f}" for n in names))


def _align_split(split, catalogue: list[str]):
    """``split`` re-indexed to the model's catalogue: item positions follow ``catalogue``; interactions with items
    the model does not know are dropped from histories, and such targets can only be missed (rank > every k)."""
    import numpy as np

    from deepsem.data.interactions import SequenceSplit

    if list(split.items) == list(catalogue):
        return split
    index = {item: i for i, item in enumerate(catalogue)}
    unknown = len(catalogue)  # a position past the catalogue: never recommended
    mapping = np.array([index.get(item, unknown) for item in split.items], dtype=np.int64)

    def remap(seqs: list, keep_unknown: bool) -> list:
        out = []
        for seq in seqs:
            mapped = mapping[seq]
            out.append(mapped if keep_unknown else mapped[mapped < unknown])
        return out

    n_unknown_targets = int(sum((mapping[t] == unknown).sum() for t in split.test))
    if n_unknown_targets:
        typer.echo(f"{n_unknown_targets} test targets are items the model never saw", err=True)
    return SequenceSplit(split.users, [*list(catalogue), "<unknown>"], remap(split.train, False),
                         remap(split.valid, True), remap(split.test, True), split.train_time, split.valid_time,
                         split.test_time)


@recommend_app.command("predict")
def recommend_predict(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    history: Annotated[list[str] | None, typer.Argument(help="The user's item ids, oldest first.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Items to return.", min=1)] = 10,
    include_seen: Annotated[bool, typer.Option(help="Also return items of the history.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recommend k items for a history given on the command line (an empty one gets the most popular)."""
    rec = _load_recommender(model)
    answer = rec.recommend_many([history or []], k, exclude_seen=not include_seen)[0]
    if answer.unknown:
        typer.echo(f"unknown item ids ignored: {' '.join(answer.unknown)}", err=True)
    if answer.fallback:
        typer.echo("no known item in the history: the most popular items", err=True)
    titles = rec.catalogue.titles
    rows = [{"id": i, "title": titles[rec.catalogue.index[i]], "score": round(s, 6)} for i, s in answer.items]
    if as_json:
        typer.echo(json.dumps({"items": rows, "fallback": answer.fallback, "unknown": answer.unknown},
                              ensure_ascii=False))
        return
    for row in rows:
        typer.echo(f"{row['id']}\t{row['score']:.4f}\t{row['title']}")


@recommend_app.command("item2vec")
def recommend_item2vec(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP, callback=_data_file_or_dir)],
    out: Annotated[Path, typer.Option(help="Vector file to write (word2vec text format, one item id per line).",
                                      callback=_out_file)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file.")] = "0,1,2",
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    dim: Annotated[int, typer.Option(help="Vector size.", min=1)] = 64,
    window: Annotated[int, typer.Option(help="Skip-gram window (items).", min=1)] = 5,
    epochs: Annotated[int, typer.Option(help="Passes over the sequences.", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
) -> None:
    """Item2Vec: skip-gram over each user's items in time order (all of them: no split)."""
    from deepsem.embeddings import write_vectors
    from deepsem.item2vec import train_item2vec

    loaded = _interactions(data, None, None, columns, None, min_rating, False)
    vectors = train_item2vec([s.tolist() for s in loaded.sequences()], dim=dim, window=window, epochs=epochs,
                             seed=seed)
    write_vectors(out, [loaded.items[int(i)] for i in vectors.items], vectors.matrix)
    typer.echo(f"{len(vectors.items)} item vectors of dimension {vectors.matrix.shape[1]} -> {out}")


@recommend_app.command("serve")
def recommend_serve(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8000,
    max_k: Annotated[int, typer.Option(help="Largest k accepted.", min=1)] = 100,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait to share a user-tower call.",
                                               callback=_not_negative)] = 0.0,
    threads: Annotated[int, typer.Option(help="Torch threads.", min=1)] = 1,
    api_key: Annotated[str | None, typer.Option(envvar=_API_KEY_ENV, show_envvar=True, help=_API_KEY_HELP)
                       ] = None,
    max_body_bytes: MaxBodyBytes = 1 << 20,
    body_timeout: BodyTimeout = 10.0,
    max_in_flight: MaxInFlight = 256,
    header_timeout: HeaderTimeout = 10.0,
    max_header_bytes: MaxHeaderBytes = 16 << 10,
    max_headers: MaxHeaders = 100,
    keep_alive: KeepAlive = 5.0,
) -> None:
    """Serve POST /recommend (history in, items out, seen items excluded) over HTTP."""
    import torch

    from deepsem.serve import Limits, create_app, run

    torch.set_num_threads(threads)
    auth = _api_key_kwargs(api_key)
    rec = _load_recommender(model)
    rec.index()
    limits = Limits(max_k=max_k, **_guard_limits(max_body_bytes, body_timeout, max_in_flight, header_timeout,
                                                 max_header_bytes, max_headers, keep_alive))
    app_ = create_app(recommender=rec, limits=limits, max_wait_ms=max_wait_ms, **auth)
    typer.echo(f"serving {rec!r} on http://{host}:{port}/recommend  (API docs: http://{host}:{port}/docs)")
    run(app_, host=host, port=port)


if __name__ == "__main__":  # pragma: no cover - after every command group is added (recommend included)
    main()
