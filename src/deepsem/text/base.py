"""The tokenizer interface shared by every text pipeline, and the saved-file format.

A tokenizer is saved as a folder holding ``tokenizer.json``::

    {"format": "deepsem.tokenizer", "version": 1,
     "config": {"name": "char", "max_length": 64, ...options},
     "build": {"min_count": 1, "max_size": null},          # how the vocabulary was learnt (informative)
     "vocab": {"tokens": [...], "counts": [...]}}           # absent for "subword"

The ``subword`` tokenizer also writes ``hf_tokenizer.json`` (the Hugging Face ``tokenizers`` model) beside it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from deepsem.errors import ConfigError, ModelFileMissingError
from deepsem.fileio import atomic_write_json, read_json
from deepsem.text.vocab import PAD_ID, PAD_TOKEN, SPECIAL_TOKENS, UNK_ID, UNK_TOKEN, Vocab, check_build_limits

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FORMAT = "deepsem.tokenizer"
TOKENIZER_VERSION = 1
DEFAULT_MAX_LENGTH = 64

#: ``check(key, value)`` raises ``ValueError`` (a message starting with ``key``) when ``value`` is invalid.
OptionCheck = Callable[[str, Any], None]


# ---------------------------------------------------------------------- option checks
def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")


def check_max_length(key: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{key} must be null or an integer >= 1, got {value!r}")


def check_choice(*choices: str) -> OptionCheck:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")

    return check


def check_optional_int(minimum: int) -> OptionCheck:
    def check(key: str, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"{key} must be null or an integer >= {minimum}, got {value!r}")

    return check


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected a str text, got {type(text).__name__}")
    return text


# ---------------------------------------------------------------------- the interface
class Tokenizer(ABC):
    """Turns text into token ids; every tokenizer keeps ``[PAD]`` at id 0 and ``[UNK]`` at id 1.

    Subclasses set :attr:`name` and :attr:`OPTIONS` (their constructor's keyword options besides
    ``max_length``, each with a validity check) and implement the abstract methods.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[Mapping[str, OptionCheck]] = {}
    pad_id: ClassVar[int] = PAD_ID
    unk_id: ClassVar[int] = UNK_ID
    pad_token: ClassVar[str] = PAD_TOKEN
    unk_token: ClassVar[str] = UNK_TOKEN

    def __init__(self, *, max_length: int | None = DEFAULT_MAX_LENGTH) -> None:
        check_max_length("max_length", max_length)
        self.max_length: int | None = max_length
        #: how the vocabulary was learnt (``min_count``, ``max_size``); saved for the record only.
        self.build_info: dict[str, Any] = {}

    # -------------------------------------------------------------- to implement
    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text`` (not truncated; may be empty)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id lies in ``[0, vocab_size)``."""

    @abstractmethod
    def token_to_id(self, token: str) -> int:
        """The id of ``token``, :attr:`unk_id` if unknown."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The token string of ``token_id`` (``IndexError`` if out of range)."""

    @abstractmethod
    def _options(self) -> dict[str, Any]:
        """Current values of the keys of :attr:`OPTIONS`."""

    @abstractmethod
    def _payload(self, directory: Path) -> dict[str, Any]:
        """Extra ``tokenizer.json`` fields (the vocabulary); may write companion files into ``directory``."""

    @classmethod
    @abstractmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        **options: Any,
    ) -> Self:
        """Learn a vocabulary from ``texts`` (iterated once, so a generator is fine).

        ``min_count``: drop tokens seen fewer times; ``max_size``: the most ids, special tokens included.
        """

    @classmethod
    @abstractmethod
    def _from_payload(
        cls, payload: dict[str, Any], kwargs: dict[str, Any], directory: Path, source: str
    ) -> Self:
        """Rebuild from a validated ``tokenizer.json`` (``kwargs``: the checked config, name removed)."""

    # -------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, truncated to :attr:`max_length`; never empty (``[unk_id]`` at worst)."""
        return self._finish(self._encode_untruncated(text))

    def _encode_untruncated(self, text: str) -> list[int]:
        return [self.token_to_id(t) for t in self.tokenize(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for each text."""
        return [self.encode(t) for t in texts]

    def _finish(self, ids: list[int]) -> list[int]:
        if not ids:
            return [UNK_ID]
        if self.max_length is not None and len(ids) > self.max_length:
            return ids[: self.max_length]
        return ids

    # -------------------------------------------------------------- config and files
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings: ``name``, ``max_length`` and every option needed to rebuild."""
        return {"name": self.name, "max_length": self.max_length, **self._options()}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` (and companion files) into ``directory`` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "format": TOKENIZER_FORMAT,
            "version": TOKENIZER_VERSION,
            "config": self.config(),
            "build": dict(self.build_info),
        }
        payload.update(self._payload(directory))
        return atomic_write_json(directory / TOKENIZER_FILE, payload)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        """Read a tokenizer saved by :meth:`save` (its folder or ``tokenizer.json``); names must match."""
        directory = tokenizer_directory(directory)
        path, payload = read_tokenizer_file(directory)
        name = payload["config"].get("name")
        if name != cls.name:
            raise ConfigError(f"{path}: field 'config.name' is {name!r}, expected {cls.name!r}")
        return cls.from_payload(payload, directory, str(path))

    @classmethod
    def from_payload(cls, payload: dict[str, Any], directory: Path, source: str) -> Self:
        """Validate the config of a ``tokenizer.json`` payload against :attr:`OPTIONS` and rebuild."""
        kwargs = parse_config(cls, payload["config"], source)
        tokenizer = cls._from_payload(payload, kwargs, directory, source)
        build = payload.get("build", {})
        if not isinstance(build, dict):
            raise ConfigError(f"{source}: field 'build' must be an object")
        tokenizer.build_info = dict(build)
        return tokenizer

    # -------------------------------------------------------------- misc
    def __getstate__(self) -> dict[str, Any]:
        # Caches (attributes named ``_cache*``) are dropped when pickling, e.g. for DataLoader workers.
        return {k: ({} if k.startswith("_cache") else v) for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, {options})"


def parse_config(cls: type[Tokenizer], config: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a saved config's fields; returns constructor keyword arguments (``name`` removed)."""
    checks: dict[str, OptionCheck] = {"max_length": check_max_length, **cls.OPTIONS}
    for key in config:
        if key != "name" and key not in checks:
            raise ConfigError(f"{source}: unknown field 'config.{key}' for tokenizer {cls.name!r}")
    kwargs: dict[str, Any] = {}
    for key, check in checks.items():
        if key not in config:
            raise ConfigError(f"{source}: missing field 'config.{key}'")
        try:
            check(key, config[key])
        except ValueError as exc:
            raise ConfigError(f"{source}: field 'config.{key}' is invalid: {str(exc)[:300]}") from None
        kwargs[key] = config[key]
    return kwargs


def tokenizer_directory(path: str | os.PathLike[str]) -> Path:
    """The folder of a saved tokenizer, given the folder or its ``tokenizer.json``."""
    path = Path(path)
    return path.parent if path.name == TOKENIZER_FILE and path.is_file() else path


def _short(value: Any) -> str:
    """``repr(value)``, cut to one short line (a crafted file's value may be huge)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**100 else "a huge integer"
    return text if len(text) <= 80 else text[:77] + "..."


def read_tokenizer_file(directory: Path) -> tuple[Path, dict[str, Any]]:
    """Read and check the envelope of ``directory/tokenizer.json``: format, version and a config object."""
    path = directory / TOKENIZER_FILE
    if not path.exists():
        raise ModelFileMissingError(f"no {TOKENIZER_FILE} in {directory}")
    try:
        payload = read_json(path, ConfigError)
    except ConfigError as exc:  # the message names the file; say which kind of file it should be
        raise ConfigError(f"{exc} (not a valid JSON tokenizer file)") from None
    except ValueError as exc:  # json's limit on integer digits
        raise ConfigError(f"{path}: not a valid JSON tokenizer file: {exc}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    if payload.get("format") != TOKENIZER_FORMAT:
        raise ConfigError(
            f"{path}: field 'format' must be {TOKENIZER_FORMAT!r}, got {_short(payload.get('format'))}"
        )
    if payload.get("version") != TOKENIZER_VERSION:
        raise ConfigError(
            f"{path}: field 'version' must be {TOKENIZER_VERSION}, got {_short(payload.get('version'))}"
        )
    config = payload.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: field 'config' must be an object")
    if not isinstance(config.get("name"), str):
        raise ConfigError(f"{path}: field 'config.name' must be a string, got {_short(config.get('name'))}")
    return path, payload


# ---------------------------------------------------------------------- vocabulary-backed tokenizers
class VocabTokenizer(Tokenizer):
    """A tokenizer whose ids come from a :class:`Vocab` of the strings :meth:`tokenize` yields."""

    def __init__(self, vocab: Vocab, *, max_length: int | None = DEFAULT_MAX_LENGTH) -> None:
        super().__init__(max_length=max_length)
        self.vocab = vocab
        self._ids: Mapping[str, int] = vocab.index

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        return self.vocab.id_to_token(token_id)

    def _encode_untruncated(self, text: str) -> list[int]:
        get = self._ids.get
        return [get(t, UNK_ID) for t in self.tokenize(text)]

    def _vocab_tokens(self, text: str) -> Iterable[str]:
        """The tokens counted when building the vocabulary (by default :meth:`tokenize`)."""
        return self.tokenize(text)

    def _payload(self, directory: Path) -> dict[str, Any]:
        return {"vocab": self.vocab.to_dict()}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        **options: Any,
    ) -> Self:
        check_build_limits(min_count, max_size)
        tokenizer = cls(Vocab(SPECIAL_TOKENS), max_length=max_length, **options)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenizer._vocab_tokens(check_text(text)))
        tokenizer.vocab = Vocab.from_counts(counts, min_count=min_count, max_size=max_size)
        tokenizer._ids = tokenizer.vocab.index
        tokenizer._on_vocab_change()
        tokenizer.build_info = {"min_count": min_count, "max_size": max_size}
        return tokenizer

    def _on_vocab_change(self) -> None:
        """Called after :meth:`build` replaces the vocabulary: drop anything cached from the old one."""

    @classmethod
    def _from_payload(
        cls, payload: dict[str, Any], kwargs: dict[str, Any], directory: Path, source: str
    ) -> Self:
        if "vocab" not in payload:
            raise ConfigError(f"{source}: missing field 'vocab'")
        vocab = Vocab.from_dict(payload["vocab"], source=source)
        try:
            return cls(vocab, **kwargs)
        except ValueError as exc:  # e.g. a trigram vocabulary without its word separator
            raise ConfigError(f"{source}: field 'vocab' is invalid: {str(exc)[:300]}") from None
