"""The model directory of every task: ``config.json`` + tokenizer files + ``model.safetensors`` + the task's extra
files (a recommender's ``items.json`` and ``items.faiss``). Never a pickle.

One writer (:func:`save_model_dir`) and one reader (:func:`read_model_dir`) serve every task; the known tasks and
the ``config.json`` field of each one's model configuration come from the task registry
(:data:`deepsem.tasks.registry.TASKS`), which callers pass in (``tasks``) so this module imports no task.

A model directory may come from someone else, so nothing in it is trusted: ``config.json`` is read with size and
depth limits and validated (known task, strict model config, bounded sizes: :mod:`deepsem.config`); the weights
file's header is checked against the tensors that config describes (names, shapes, dtypes) before any tensor is
allocated; the weights are read with safetensors, whose format holds only tensors, and must be finite. Every
problem is a :class:`~deepsem.errors.DeepsemError` with a one-line message naming the file and the cause.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model as _save_weights
from torch import nn
from torch.overrides import TorchFunctionMode

from deepsem.config import ModelConfig
from deepsem.errors import ConfigError, DeepsemError, ModelFileError, ModelFileMissingError
from deepsem.fileio import atomic_write, atomic_write_json, read_json
from deepsem.models import TwoTowerModel
from deepsem.text import Tokenizer, load_tokenizer
from deepsem.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Largest ``config.json`` read (a classifier's labels are its biggest part).
MAX_CONFIG_BYTES = 64 * 2**20
#: Largest safetensors header read: deepsem's are a few KB (about 100 bytes a tensor). safetensors itself allows
#: 100 MB, which a crafted file would make it parse.
MAX_HEADER_BYTES = 16 * 2**20
#: safetensors dtype names of the torch dtypes deepsem saves.
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}

M = TypeVar("M", bound=nn.Module)
C = TypeVar("C", bound="_ModelConfig")


class _ModelConfig(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    tokenizer: Tokenizer | None,
    extra: Mapping[str, Any] | None = None,
    *,
    task: str = "two-tower",
    tasks: Mapping[str, str],
    files: Mapping[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Write the model directory of a ``task`` model, each file atomically: the tokenizer's files (when it has
    one), ``model.safetensors``, the task's extra ``files`` (``{name: write(path)}``), and ``config.json`` last:
    ``{deepsem_version, task, <the task's model field>: model.config, **extra}``."""
    field = tasks[task]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(directory)
    atomic_write(directory / WEIGHTS_FILE, lambda p: _save_weights(model, str(p)))
    for name, write in (files or {}).items():
        write(directory / name)
    config: dict[str, Any] = {"deepsem_version": __version__, "task": task,
                              field: cast(_ModelConfig, model.config).to_dict()}
    config.update(extra or {})
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def read_json_file(path: str | os.PathLike[str], error: type[Exception] = ConfigError, **limits: Any) -> Any:
    """:func:`deepsem.fileio.read_json`, with the ``ValueError`` the json module raises for integers of more than
    4300 digits turned into ``error`` too."""
    try:
        return read_json(path, error, **limits)
    except DeepsemError:
        raise
    except ValueError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None


def read_config(directory: str | Path, tasks: Mapping[str, str]) -> dict[str, Any]:
    """``config.json`` of a model directory: a JSON object naming a known ``task`` and holding its model field.
    ``tasks`` is ``{task: config.json field of its model configuration}``: the task registry's
    (:func:`deepsem.tasks.registry.model_fields`), passed in by the tasks, which sit above this module."""
    fields = tasks
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise ModelFileMissingError(f"{directory}: not a deepsem model directory (no {CONFIG_FILE})")
    config = read_json_file(path, ConfigError, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    task = config.get("task")
    if not isinstance(task, str) or task not in fields:
        raise ConfigError(f"{path}: field 'task' is {task!r}; expected one of {', '.join(fields)}")
    if fields[task] not in config:
        raise ConfigError(f"{path}: field {fields[task]!r} is missing")
    return config


def read_task_config(directory: str | Path, task: str, noun: str, tasks: Mapping[str, str]
                     ) -> dict[str, Any]:
    """:func:`read_config` of a directory that must hold a ``task`` model (``noun`` names it in the error)."""
    config = read_config(directory, tasks)
    if config["task"] != task:
        raise ConfigError(f"{Path(directory) / CONFIG_FILE}: a {config['task']} model, not {noun}; load it with "
                          "deepsem.load")
    return config


@dataclass(frozen=True)
class TokenizerSize:
    """The tokenizer a model's weights expect: ``size`` tokens, as ``field`` of config.json says (for the message:
    "model.tower.vocab_size is 5000"); ``what`` names it ("the tokenizer", "the title tokenizer")."""

    size: int
    field: str
    what: str = "the tokenizer"


@dataclass(frozen=True)
class ModelDir(Generic[C, M]):
    """A model directory once read and checked: ``config`` (all of config.json), the parsed ``model_config``, the
    ``tokenizer`` (None when the task has none), the loaded ``model`` and what the task's ``check`` returned."""

    directory: Path
    config: dict[str, Any]
    model_config: C
    tokenizer: Tokenizer | None
    model: M
    extra: Any = None


def read_model_dir(
    directory: str | Path,
    task: str,
    noun: str,
    *,
    parse: Callable[[dict[str, Any], str], C],
    build: Callable[[C], M],
    tokenizer: Callable[[C], TokenizerSize | None],
    check: Callable[[dict[str, Any], C], Any] | None = None,
    tasks: Mapping[str, str],
) -> ModelDir[C, M]:
    """Read the model directory of a ``task`` model, every file checked before the next is read: ``config.json``
    (a known task, this one; its model field parsed by ``parse(field, where)``), the task's own fields and files
    (``check(config, model_config)``, whose answer is kept as ``extra``), the tokenizer (its size must be the one
    ``tokenizer(model_config)`` says; None: the model has none), then the weights (:func:`build_and_load` of
    ``build(model_config)``). ``noun`` names the task in errors ("a classifier")."""
    directory = Path(directory)
    config = read_task_config(directory, task, noun, tasks)
    field = tasks[task]
    model_config = parse(config[field], f"{directory / CONFIG_FILE}: {field}")
    extra = check(config, model_config) if check is not None else None
    expected = tokenizer(model_config)
    loaded: Tokenizer | None = None
    if expected is not None:
        loaded = load_tokenizer(directory)
        if loaded.vocab_size != expected.size:
            raise ConfigError(f"{directory}: {expected.what} has {loaded.vocab_size} tokens but config.json's "
                              f"{expected.field}: the tokenizer and the weights come from different models")
    model = build_and_load(lambda: build(model_config), directory, model_config.to_dict())
    return ModelDir(directory, config, model_config, loaded, model, extra)


def load_model_dir(directory: str | Path, tasks: Mapping[str, str]
                   ) -> tuple[TwoTowerModel, Tokenizer, dict[str, Any]]:
    """A two-tower model directory: the model (in eval mode), its tokenizer and config.json."""
    read = read_model_dir(
        directory, "two-tower", "a two-tower model", tasks=tasks,
        parse=lambda data, where: ModelConfig.from_dict(data, where=where), build=TwoTowerModel,
        tokenizer=lambda c: TokenizerSize(c.tower.vocab_size, f"model.tower.vocab_size is {c.tower.vocab_size}"))
    assert read.tokenizer is not None
    read.model.eval()
    return read.model, read.tokenizer, read.config


# -- weights ------------------------------------------------------------------------------------------------------
def read_weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` from the header of a safetensors file, reading nothing else. The header
    length is checked before safetensors parses it, so a crafted length allocates nothing."""
    if not path.exists():
        raise ModelFileMissingError(f"{path.parent}: {WEIGHTS_FILE} is missing")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(head) < 8:
        raise ModelFileError(f"{path}: truncated or empty ({size} bytes): not a safetensors file")
    length = int.from_bytes(head, "little")
    if length > MAX_HEADER_BYTES:
        raise ModelFileError(f"{path}: its header claims {length:,} bytes, more than the {MAX_HEADER_BYTES:,} "
                             "deepsem reads: not a safetensors file, or a damaged one")
    if 8 + length > size:
        raise ModelFileError(f"{path}: truncated: the header claims {length:,} bytes but the file has {size:,}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {}
            for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                piece = f.get_slice(name)
                header[name] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: not a valid safetensors file: {_one_line(exc)}") from None
    return header


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _suspects(config: dict[str, Any], expected: tuple[int, ...], found: tuple[int, ...]) -> str:
    """The config.json fields that may size the dimensions where ``expected`` and ``found`` differ."""
    fields: list[tuple[str, int]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
            fields.append((prefix[:-1], value))

    walk("", config)
    names: list[str] = []
    for i, want in enumerate(expected):
        if i < len(found) and found[i] == want:
            continue
        for name, value in fields:
            if name not in names and (want in (value, value + 1) or (want % value == 0 and want // value in (2, 3, 4,
                                                                                                           6, 8))):
                names.append(name)
    if len(expected) != len(found) or not names:
        return "the size fields of config.json"
    return ", ".join(f"{n} = {dict(fields)[n]}" for n in names)


def build_and_load(factory: Callable[[], M], directory: str | Path, config: dict[str, Any]) -> M:
    """Build the model ``factory()`` makes and fill it from ``directory/model.safetensors``.

    The model is first built on the ``meta`` device (no memory) and its tensors compared with the file's header:
    every tensor the config implies must be there with the same shape and dtype, and nothing else. Only then is it
    allocated (without running its initialisation) and read, and every tensor must be finite. ``config`` (the
    model's config as a dict) names the fields a wrong shape may come from."""
    weights = Path(directory) / WEIGHTS_FILE
    header = read_weights_header(weights)
    with torch.device("meta"), _SkipNormalInit():
        model = factory()
    _check_header(weights, header, model.state_dict(keep_vars=True), config)
    # allocate without initialising (what to_empty does, minus its meta empty_like, which imports sympy: seconds)
    model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device="cpu"))
    tensors = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name not in tensors:  # non-persistent buffers start as zeros; their owner sets them
                buffer.zero_()
    _read_tensors(weights, header, tensors)
    return model


class _SkipNormalInit(TorchFunctionMode):
    """Skips ``normal_`` while a model is built on the ``meta`` device: its values are thrown away anyway, and
    torch's first meta ``normal_`` in a process loads its reference implementations (seconds)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.normal_ or func is nn.init.normal_:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Read ``directory/model.safetensors`` into an existing ``model``, with the checks of :func:`build_and_load`
    (which loaders use: it checks before the model is allocated)."""
    weights = Path(directory) / WEIGHTS_FILE
    header = read_weights_header(weights)
    tensors = model.state_dict(keep_vars=True)
    _check_header(weights, header, tensors, {})
    _read_tensors(weights, header, tensors)


def _check_header(weights: Path, header: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, Any],
                  config: dict[str, Any]) -> None:
    """Every tensor of ``expected`` (a state dict with ``keep_vars``) is in the header once, with its shape and
    dtype, and the header holds nothing else."""
    groups: dict[int, list[str]] = {}  # one entry per tensor; a shared tower's tensors have two names
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    for name in header:
        if name not in expected:
            raise ModelFileError(f"{weights}: weights do not match config.json: the file holds a tensor {name!r} "
                                 "that config.json does not describe (another kind of model, or another version)")
    for names in groups.values():
        present = [n for n in names if n in header]
        if not present:
            raise ModelFileError(f"{weights}: weights do not match config.json: tensor {names[0]!r} is missing")
        if len(present) > 1:
            raise ModelFileError(f"{weights}: holds {', '.join(map(repr, present))}, one shared tensor, twice")
        name = present[0]
        dtype, shape = header[name]
        want = tuple(expected[name].shape)
        if shape != want:
            raise ModelFileError(
                f"{weights}: weights do not match config.json: tensor {name!r} has shape {list(shape)} in the file "
                f"but config.json implies "
                f"{list(want)} (check {_suspects(config, want, shape)})")
        want_dtype = _DTYPES.get(expected[name].dtype, str(expected[name].dtype))
        if dtype != want_dtype:
            raise ModelFileError(f"{weights}: tensor {name!r} is stored as {dtype}, but deepsem models hold "
                                 f"{want_dtype}; convert the weights or re-save the model with deepsem")


def _read_tensors(weights: Path, header: dict[str, tuple[str, tuple[int, ...]]], tensors: dict[str, Any]) -> None:
    """Copy each tensor of the (checked) file into ``tensors``; a NaN or infinite value is an error."""
    try:
        with torch.no_grad(), safe_open(str(weights), framework="pt") as f:
            for name in header:
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise ModelFileError(
                        f"{weights}: tensor {name!r} holds {bad:,} NaN or infinite value(s) of {tensor.numel():,}: "
                        "the model was saved after its training diverged, or the file is damaged")
                tensors[name].copy_(tensor)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFileError(f"{weights}: cannot read the weights: {_one_line(exc)}") from None
