"""Token vocabulary: a deterministic token <-> id mapping with ``[PAD]`` = 0 and ``[UNK]`` = 1."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepsem.errors import ConfigError
from deepsem.fileio import atomic_write_json, read_json

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS: tuple[str, str] = (PAD_TOKEN, UNK_TOKEN)

VOCAB_FORMAT = "deepsem.vocab"
VOCAB_VERSION = 1


class Vocab:
    """An immutable list of tokens; a token's id is its position.

    ids 0 and 1 are always ``[PAD]`` and ``[UNK]``; :meth:`token_to_id` maps every unknown token to
    :attr:`unk_id`. ``counts`` (optional, aligned with ``tokens``) keeps the corpus frequency of each token
    (0 for the special tokens), which is handy for IDF weights or frequency reports.
    """

    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    pad_token: str = PAD_TOKEN
    unk_token: str = UNK_TOKEN

    __slots__ = ("_counts", "_index", "_tokens")

    def __init__(self, tokens: Sequence[str], counts: Sequence[int] | None = None) -> None:
        tokens = list(tokens)
        if tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise ValueError(f"a vocabulary must start with {list(SPECIAL_TOKENS)}, got {tokens[:2]}")
        index: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or not token:
                raise ValueError(f"vocabulary token {i} is not a non-empty string: {token!r}")
            if token in index:
                raise ValueError(f"duplicate vocabulary token {token!r} (ids {index[token]} and {i})")
            index[token] = i
        if counts is not None:
            counts = [int(c) for c in counts]
            if len(counts) != len(tokens):
                raise ValueError(f"{len(counts)} counts for {len(tokens)} tokens")
            if any(c < 0 for c in counts):
                raise ValueError("token counts must be >= 0")
        self._tokens: list[str] = tokens
        self._index: dict[str, int] = index
        self._counts: list[int] | None = counts

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], *, min_count: int = 1, max_size: int | None = None
    ) -> Vocab:
        """Keep tokens seen at least ``min_count`` times, most frequent first (ties: by token).

        ``max_size`` caps the total size, the two special tokens included (so ``len(vocab) <= max_size``).
        Tokens equal to a special token are ignored.
        """
        check_build_limits(min_count, max_size)
        kept = [
            (tok, int(c)) for tok, c in counts.items() if c >= min_count and tok and tok not in SPECIAL_TOKENS
        ]
        kept.sort(key=lambda tc: (-tc[1], tc[0]))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIAL_TOKENS)]
        return cls([*SPECIAL_TOKENS, *(t for t, _ in kept)], [0] * len(SPECIAL_TOKENS) + [c for _, c in kept])

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "vocabulary") -> Vocab:
        """Rebuild from :meth:`to_dict` output; ``ValueError`` naming ``source`` and the field if invalid."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: field 'vocab' must be an object, got {type(data).__name__}")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConfigError(f"{source}: field 'vocab.tokens' must be a list of strings")
        counts = data.get("counts")
        if counts is not None and (
            not isinstance(counts, list)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        ):
            raise ConfigError(f"{source}: field 'vocab.counts' must be a list of integers or null")
        try:
            return cls(tokens, counts)
        except ValueError as exc:
            raise ConfigError(f"{source}: field 'vocab' is invalid: {str(exc)[:300]}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": list(self._tokens), "counts": None if self._counts is None else list(self._counts)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary as JSON (atomically)."""
        return atomic_write_json(
            path, {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "vocab": self.to_dict()}
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        path = Path(path)
        try:
            data = read_json(path, ConfigError)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (not a valid JSON vocabulary file)") from None
        except ValueError as exc:  # json's limit on integer digits
            raise ConfigError(f"{path}: not a valid JSON vocabulary file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise ConfigError(f"{path}: field 'format' must be {VOCAB_FORMAT!r}")
        if data.get("version") != VOCAB_VERSION:
            raise ConfigError(f"{path}: field 'version' must be {VOCAB_VERSION}")
        return cls.from_dict(data.get("vocab"), source=str(path))

    # ------------------------------------------------------------------ lookup
    def token_to_id(self, token: str) -> int:
        return self._index.get(token, UNK_ID)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            raise IndexError(f"token id {token_id} out of range [0, {len(self._tokens)})")
        return self._tokens[token_id]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self._index.get
        return [get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_token(i) for i in ids]

    def count(self, token: str) -> int:
        """Corpus count of ``token`` (0 if unknown, special, or counts were not kept)."""
        if self._counts is None or token not in self._index:
            return 0
        return self._counts[self._index[token]]

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    @property
    def index(self) -> Mapping[str, int]:
        """The token -> id mapping (read it, do not modify it)."""
        return self._index

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"


def check_build_limits(min_count: int, max_size: int | None) -> None:
    """Validate the ``min_count`` / ``max_size`` arguments shared by every vocabulary builder."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < len(SPECIAL_TOKENS)
    ):
        raise ValueError(f"max_size must be None or an integer >= {len(SPECIAL_TOKENS)}, got {max_size!r}")
