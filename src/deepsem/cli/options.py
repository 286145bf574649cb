"""What the commands share: option types and checks, choices built from the registries, input readers.

A bad option value is refused before any work, with the option's name. The choices of ``--encoder`` and
``--tokenizer`` are the names in :data:`deepsem.towers.TOWERS` and :data:`deepsem.text.TOKENIZERS`, so a new tower
or tokenizer reaches every command without an edit here.
"""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer

from deepsem.cli.errors import fail
from deepsem.config import LOSSES, NEGATIVES, POOLINGS, RECOMMEND_NEGATIVES
from deepsem.data.precision import PRECISIONS
from deepsem.deploy.runtime import BACKENDS
from deepsem.text import TOKENIZERS
from deepsem.towers import TOWERS


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """A string enum of ``values`` for a Typer option; members are the values with ``-`` and ``+`` as ``_``."""
    return StrEnum(name, {re.sub(r"\W", "_", value): value for value in values})  # type: ignore[return-value]


#: ``--encoder``: every registered tower (``RecurrentEncoder``: the recurrent ones, for the recommender's user tower).
Encoder: Any = choices("Encoder", TOWERS)
RecurrentEncoder: Any = choices("RecurrentEncoder", (name for name, spec in TOWERS.items() if spec.recurrent))
TokenizerName: Any = choices("TokenizerName", TOKENIZERS)
Pooling: Any = choices("Pooling", POOLINGS)
Loss: Any = choices("Loss", LOSSES)
Negatives: Any = choices("Negatives", NEGATIVES)
RecommendNegatives: Any = choices("RecommendNegatives", RECOMMEND_NEGATIVES)
BackendName: Any = choices("BackendName", BACKENDS)

#: ``--backend`` / ``--onnx``: what runs a loaded model (:func:`deepsem.load`'s ``backend`` and ``onnx``).
Backend = Annotated[BackendName, typer.Option(help="What runs the model: torch, or onnx (onnxruntime, the onnx "
                    "extra; the towers are exported in memory unless --onnx names the files deepsem export wrote).")]
OnnxFile = Annotated[Path | None, typer.Option(help="With --backend onnx: the file deepsem export wrote (an int8 "
                     "one, say); refused unless it was exported from this very model.", exists=True,
                     dir_okay=False)]


def backend_kwargs(backend: Any, onnx: Path | None) -> dict[str, Any]:
    """``--backend`` and ``--onnx`` as :func:`deepsem.load`'s keywords; ``--onnx`` alone is refused."""
    if onnx is not None and backend.value != "onnx":
        fail("--onnx FILE needs --backend onnx")
    return {"backend": backend.value, "onnx": onnx}


#: ``--rerank-onnx``: the re-ranker's own exported file (search and serve, beside ``--rerank``).
RerankOnnxFile = Annotated[Path | None, typer.Option(help="The file deepsem export wrote for the --rerank model (an "
                           "int8 one, say): the re-ranker runs on onnxruntime from it. Without it, the re-ranker "
                           "follows --backend (exported in memory for onnx).", exists=True, dir_okay=False)]


def rerank_kwargs(backend: Any, rerank: Path | None, rerank_onnx: Path | None, precision: str) -> dict[str, Any]:
    """:func:`deepsem.load`'s keywords for the ``--rerank`` model: onnxruntime from ``--rerank-onnx``, or what
    ``--backend`` says (the encoder's ``--onnx`` file is not the re-ranker's); ``--rerank-onnx`` alone is refused."""
    if rerank_onnx is not None and rerank is None:
        fail("--rerank-onnx FILE is the re-ranker's exported file: give --rerank DIR too")
    if rerank_onnx is not None or backend.value == "onnx":
        return {"backend": "onnx", "onnx": rerank_onnx}
    return {"precision": precision}


PrecisionName: Any = choices("PrecisionName", PRECISIONS)


class Side(StrEnum):
    query = "query"
    doc = "doc"


def pair_columns(spec: str) -> tuple[int | str | None, ...]:
    """"0,1,2" or "q,d,label" or "0,1,-" (no label: every pair positive) -> a column spec per field."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise typer.BadParameter(f"expected three comma-separated columns (text_a,text_b,label), got {spec!r}")
    return tuple(None if p in ("-", "") else int(p) if p.isdigit() else p for p in parts)


# -- option checks: a bad value is refused before any work, with the option's name ---------------------------

def _finite(value: float | None, at_least: float, strictly: bool) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < at_least or (strictly and value == at_least):
        raise typer.BadParameter(f"must be {'>' if strictly else '>='} {at_least:g}, got {value}")
    return value


def above_zero(value: float | None) -> float | None:
    """A float option that must be a finite number > 0 (learning rate, minutes, gamma)."""
    return _finite(value, 0.0, strictly=True)


def a_decay(value: float | None) -> float | None:
    """A float option that must lie strictly between 0 and 1 (a moving average's decay)."""
    if value is not None and not 0.0 < value < 1.0:  # NaN fails too
        raise typer.BadParameter(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def not_negative(value: float | None) -> float | None:
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


def data_file(value: Path | None) -> Path | None:
    """An input file: it must exist and be a regular file (a directory, FIFO or device is refused here, before
    a reader would fail obscurely, block forever or read without end)."""
    return None if value is None else _regular(value, "file")


def data_file_or_shards(value: Path) -> Path:
    """Training input: a regular file (read into memory as before), or a directory or glob pattern of shards
    (streamed); a directory without shards or a pattern matching no file is refused here, in one line."""
    from deepsem.data.errors import DataError
    from deepsem.data.stream import find_shards, is_sharded

    if not is_sharded(value):
        return _regular(value, "file")
    try:
        find_shards(value)
    except DataError as exc:
        raise typer.BadParameter(f"{value}: {exc.problem}") from None
    return value


def data_files(value: list[Path] | None) -> list[Path] | None:
    return None if value is None else [_regular(v, "file") for v in value]


def text_file_or_stdin(value: Path | None) -> Path | None:
    """An input file, or ``-`` / nothing for stdin."""
    return value if value is None or str(value) == "-" else _regular(value, "file")


def corpus_source(value: Path | None) -> Path | None:
    """A corpus: a regular file, or a folder / glob pattern of corpus files (shards) that holds at least one."""
    from deepsem.data.errors import DataError
    from deepsem.index.corpus import corpus_shards, is_sharded

    if value is None or not is_sharded(value):
        return data_file(value)
    try:
        corpus_shards(value)
    except DataError as exc:
        raise typer.BadParameter(f"{value}: {exc.problem}") from None
    return value


def texts_or_shards(value: list[Path] | None) -> list[Path] | None:
    """``deepsem encode``'s input: nothing or ``-`` (stdin), a text file, or a corpus in shards (a folder, a glob
    pattern, several files) that holds at least one file."""
    if not value:
        return None
    if len(value) == 1:
        one = value[0]
        return value if str(one) == "-" else [p for p in [corpus_source(one)] if p is not None]
    for v in value:
        _regular(v, "file")
    return value


def vectors_source(value: Path | None) -> Path | None:
    """``index build --vectors``: a .npy file, or a folder (or manifest file) of vector shards."""
    return value if value is None or value.is_dir() else data_file(value)


def split_spec(value: str | None) -> str | None:
    """``--shard I/N``: part I (from 0) of N."""
    if value is None:
        return None
    from deepsem.errors import ConfigError
    from deepsem.index.shards import Split

    try:
        Split.parse(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def data_file_or_dir(value: Path) -> Path:
    """An input that may be a folder (a MovieLens folder) or a regular file."""
    return value if value.is_dir() else _regular(value, "file or folder")


def existing_dir(value: Path | None) -> Path | None:
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value}: {'not a folder' if value.exists() else 'no such folder'}")
    return value


def out_dir(value: Path | None) -> Path | None:
    """An output folder: created when missing; an existing file there is refused (never overwritten)."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value}: is a file; give a folder (it is created if missing)")
    return value


def out_file(value: Path | None) -> Path | None:
    """An output file: an existing folder there is refused."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value}: is a folder; give a file name")
    return value


def cutoffs(value: str) -> str:
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


def text_lines(texts: Path | None) -> Iterator[str]:
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
                fail(f"{name}, line {number}: longer than {MAX_LINE_BYTES:,} bytes; one text per line")
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                fail(f"{name}, line {number}: not UTF-8 text (byte {exc.start + 1} of the line: {exc.reason})")
            if number == 1:
                text = text.removeprefix("\ufeff")
                if "\r" in text:
                    fail(f"{name}, line 1: carriage returns (CR) alone end the lines (the old Mac format); "
                         "convert the line ends to LF or CRLF, e.g. tr '\\r' '\\n'")
            if not text.strip():
                fail(f"{name}, line {number}: empty text")
            yield text
    finally:
        if name != "stdin":
            stream.close()


PROGRESS_HELP = "Show progress (default: only when stderr is a terminal, so a log file gets no progress lines)."
RESUME_HELP = ("Resume the run in --out from its last checkpoint when there is one and the data and settings "
               "match; --no-resume starts over in this folder (its earlier checkpoint is replaced).")

# -- options shared by several commands, each defined once (a command's default stays in its signature) ----

Progress = Annotated[bool | None, typer.Option(help=PROGRESS_HELP)]
Resume = Annotated[bool, typer.Option(help=RESUME_HELP)]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Threads = Annotated[int | None, typer.Option(help="Torch CPU threads.", min=1)]
ShuffleBuffer = Annotated[int, typer.Option(help="Streamed shards (DATA a folder or glob): pairs held in the "
                          "shuffle buffer (memory grows with it).", min=1)]
VocabSample = Annotated[int | None, typer.Option(help="Streamed shards: learn the vocabulary from the first N pairs "
                        "(default: one pass over all of them).", min=1)]
MaxSteps = Annotated[int | None, typer.Option(help="Stop after this many steps; the learning-rate schedule decays "
                                              "over them (default: the epochs decide).", min=1)]
SkipBadRows = Annotated[bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")]
IndexDir = Annotated[Path, typer.Option(help="Index directory.")]
MinCount = Annotated[int, typer.Option(help="Drop tokens seen fewer times in the training text.", min=1)]
MaxLength = Annotated[int, typer.Option(help="Truncate texts to this many tokens.", min=1)]
EmbeddingDim = Annotated[int, typer.Option(help="Token embedding size (recurrent towers).", min=1)]
Patience = Annotated[int, typer.Option(help="Stop after this many dev evaluations without gain.", min=1)]
LearningRate = Annotated[float, typer.Option(help="Peak AdamW learning rate.", callback=above_zero)]
Epochs = Annotated[int, typer.Option(help="Maximum epochs.", min=1)]
MaxMinutes = Annotated[float | None, typer.Option(help="Stop training after this many minutes.",
                                                 callback=above_zero)]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.", callback=not_negative)]
ClipNorm = Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).", callback=not_negative)]
EvalEvery = Annotated[int | None, typer.Option(help="Steps between dev evaluations (default: epoch).", min=1)]
Schedule = Annotated[str, typer.Option(help="linear, cosine or constant decay after warm-up.")]
EmaDecay = Annotated[float | None, typer.Option(help="Keep an exponential moving average of the weights with this "
                                                "decay (e.g. 0.999; warmed up: after t steps it spans about the last "
                                                "t/9, at most 1/(1-decay)): evaluation and the saved model use the "
                                                "average (default: off).", callback=a_decay)]
Bidirectional = Annotated[bool, typer.Option(help="Read the text both ways.")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port.", min=0, max=65535)]
MaxK = Annotated[int, typer.Option(help="Largest k accepted.", min=1)]


def torch_device(value: str) -> str:
    """A device torch can train on here: the name must parse (``cpu``, ``cuda``, ``cuda:1``, ``mps``) and CUDA /
    MPS must be available; refused before any data is read."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise typer.BadParameter(f"not a device torch knows: {value!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{value}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise typer.BadParameter(f"{value}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise typer.BadParameter(f"{value}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise typer.BadParameter(f"{value}: training runs on cpu, cuda or mps")
    return value


Device = Annotated[str, typer.Option(help="Where to train: cpu, cuda, cuda:N or mps.", callback=torch_device)]
#: ``--precision`` of the training commands and of the commands that load a model to encode or predict.
Precision = Annotated[PrecisionName, typer.Option(help="fp32, or bf16: mixed precision, the forward pass and loss "
                      "under bf16 autocast, weights and optimiser state in fp32 (a CPU with AVX512-BF16 or AMX, or a "
                      "GPU with bf16). Kept in the run's settings: a resumed run needs the same.")]
EncodePrecision = Annotated[PrecisionName, typer.Option("--precision", help="fp32, or bf16: encode under bf16 "
                            "autocast (a CPU with AVX512-BF16 or AMX); vectors are still float32, L2-normalised.")]


def check_precision(precision: Any, device: str = "cpu") -> str:
    """``--precision``'s value, refused (one ``error:`` line) before any data is read where ``device`` cannot
    compute it."""
    from deepsem.data.precision import check_precision as check

    check(precision.value, device)
    return str(precision.value)


API_KEY_ENV = "DEEPSEM_API_KEY"
API_KEY_HELP = ("Require this key on every request but /healthz ('Authorization: Bearer KEY' or 'X-API-Key: KEY'). "
                "Prefer the environment variable: a key on the command line shows in the process list.")


class ApiKey(TypedDict, total=False):
    api_key: str


def api_key_kwargs(api_key: str | None) -> ApiKey:
    """``{"api_key": key}`` for ``create_app`` when a key is given (an empty one is refused, not ignored)."""
    if api_key is None:
        return {}
    if not api_key.strip():
        fail(f"--api-key (or {API_KEY_ENV}) is empty; give a key or unset it")
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


class GuardLimits(TypedDict):
    """The guard fields of :class:`deepsem.serve.Limits`."""

    max_body_bytes: int
    body_timeout_s: float
    max_in_flight: int
    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    keep_alive_s: float


def guard_limits(max_body_bytes: int, body_timeout: float, max_in_flight: int, header_timeout: float,
                 max_header_bytes: int, max_headers: int, keep_alive: float) -> GuardLimits:
    return {"max_body_bytes": max_body_bytes, "body_timeout_s": body_timeout, "max_in_flight": max_in_flight,
            "header_timeout_s": header_timeout, "max_header_bytes": max_header_bytes, "max_headers": max_headers,
            "keep_alive_s": keep_alive}


def column_spec(spec: str) -> int | str:
    """"0" / "-1" -> a column position, anything else -> a header name."""
    return int(spec) if spec.lstrip("-").isdigit() else spec


def vector_model(loaded: Any, model: Path, what: str) -> Any:
    """``loaded`` when it makes vectors; a cross-encoder (``deepsem rerank``) scores pairs and has none: exit 2
    saying so, instead of failing deep inside ``what``."""
    from deepsem.tasks.rerank import CrossEncoder

    if isinstance(loaded, CrossEncoder):
        fail(f"{model}: a cross-encoder (rerank) model scores pairs of texts and makes no vectors, so it cannot "
             f"{what}; use it with 'deepsem rerank evaluate|predict'")
    return loaded


def load_task(model: Path, kind: type, wrong: str, **how: Any) -> Any:
    """``deepsem.load(model, **how)``, which must be a ``kind``; else exit 2 with ``wrong``."""
    from deepsem.tasks import load

    loaded = load(model, **how)
    if not isinstance(loaded, kind):
        fail(f"{model}: {wrong}")
    return loaded
