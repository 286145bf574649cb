"""Text pipelines: tokenizers that turn (Chinese and other) text into token ids for the towers.

``char``, ``word`` (jieba), ``trigram`` (DSSM letter trigrams) and ``subword`` (WordPiece / BPE) share the
:class:`Tokenizer` interface; pick one by name::

    tok = build_tokenizer("char", texts, min_count=2, max_length=64)
    tok.save("run/tokenizer")
    tok = load_tokenizer("run/tokenizer")
    ids = tok.encode_batch(["我爱北京天安门", "hello world"])
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from deepsem.errors import ConfigError
from deepsem.text.base import TOKENIZER_FILE, Tokenizer, read_tokenizer_file, tokenizer_directory
from deepsem.text.char import CharTokenizer
from deepsem.text.subword import SubwordTokenizer
from deepsem.text.trigram import TrigramTokenizer, letter_trigrams
from deepsem.text.vocab import PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, Vocab
from deepsem.text.word import WordTokenizer

#: name -> tokenizer class; the only classes :func:`build_tokenizer` and :func:`load_tokenizer` create.
TOKENIZERS: dict[str, type[Tokenizer]] = {
    cls.name: cls for cls in (CharTokenizer, WordTokenizer, TrigramTokenizer, SubwordTokenizer)
}


def _tokenizer_class(name: str, source: str = "") -> type[Tokenizer]:
    cls = TOKENIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        where = f"{source}: field 'config.name': " if source else ""
        raise ConfigError(f"{where}unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    return cls


def build_tokenizer(name: str, texts: Iterable[str], **options: Any) -> Tokenizer:
    """Learn the ``name`` tokenizer from ``texts`` (iterated once).

    ``options``: ``min_count``, ``max_size``, ``max_length`` and the tokenizer's own options
    (e.g. ``lowercase``, ``keep_punct``, ``hmm``, ``model``).
    """
    return _tokenizer_class(name).build(texts, **options)


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save` from ``directory`` (or its ``tokenizer.json``).

    Raises :class:`~deepsem.errors.ModelFileMissingError` (a ``FileNotFoundError``) if there is no
    ``tokenizer.json``, and :class:`~deepsem.errors.ConfigError` (a ``ValueError``) naming the file and the bad
    field if it is corrupt or names an unknown tokenizer.
    """
    directory = tokenizer_directory(directory)
    path, payload = read_tokenizer_file(directory)
    cls = _tokenizer_class(payload["config"]["name"], str(path))
    return cls.from_payload(payload, directory, str(path))


__all__ = [
    "PAD_ID",
    "PAD_TOKEN",
    "TOKENIZERS",
    "TOKENIZER_FILE",
    "UNK_ID",
    "UNK_TOKEN",
    "CharTokenizer",
    "SubwordTokenizer",
    "Tokenizer",
    "TrigramTokenizer",
    "Vocab",
    "WordTokenizer",
    "build_tokenizer",
    "letter_trigrams",
    "load_tokenizer",
]
