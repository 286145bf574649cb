"""Letter-trigram word hashing, as in DSSM (Huang et al., 2013).

Each word is wrapped in ``#`` boundary marks and cut into overlapping character trigrams:
``good`` -> ``#good#`` -> ``#go``, ``goo``, ``ood``, ``od#``; a one-letter word gives one trigram (``#a#``).
Words are split as in the ``char`` tokenizer, so each Chinese character is its own word (``中`` -> ``#中#``).
Punctuation is dropped by default (``keep_punct=False``), as in the original word hashing.

* :meth:`TrigramTokenizer.tokenize` and :meth:`~TrigramTokenizer.encode` give the flat trigram sequence with
  the word separator ``#`` (always id :data:`SEPARATOR_ID` = 2) between words, so that a tower can find the
  words again (``good day`` -> ``#go goo ood od# # #da day ay#``; ``encode`` truncated to ``max_length`` ids,
  separators included). A lone ``#`` is never a trigram, so the separator is unambiguous;
* :meth:`TrigramTokenizer.encode_words` gives one list of trigram ids per word (truncated to ``max_length``
  words) - the input of the bag-of-trigrams DSSM and CNN-DSSM towers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Self

from deepsem.text.base import DEFAULT_MAX_LENGTH
from deepsem.text.char import CharTokenizer
from deepsem.text.vocab import UNK_ID, Vocab

BOUNDARY = "#"
#: The token between two words of the flat sequence, and its id in every trigram vocabulary.
SEPARATOR = "#"
SEPARATOR_ID = 2
#: At most this many distinct words are remembered (the cache is emptied when it is full).
CACHE_SIZE = 1 << 18


def letter_trigrams(word: str) -> list[str]:
    """``good`` -> ``['#go', 'goo', 'ood', 'od#']``; ``a`` -> ``['#a#']``; ``''`` -> ``[]``."""
    if not word:
        return []
    marked = f"{BOUNDARY}{word}{BOUNDARY}"
    return [marked[i : i + 3] for i in range(len(marked) - 2)]


class TrigramTokenizer(CharTokenizer):
    """DSSM letter trigrams per word; the vocabulary holds the trigrams seen in the corpus.

    Words are the tokens of :class:`CharTokenizer` (same options), punctuation dropped by default.
    """

    def to_hf(self) -> Any:
        """Not expressible in Hugging Face ``tokenizers`` (no model cuts a word into overlapping letter trigrams
        and marks word boundaries with an id); another runtime reimplements the steps of the module docstring."""
        raise NotImplementedError("the trigram tokenizer has no Hugging Face tokenizers form")

    name: ClassVar[str] = "trigram"

    def __init__(
        self,
        vocab: Vocab,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        lowercase: bool = True,
        nfkc: bool = True,
        keep_punct: bool = False,
    ) -> None:
        if len(vocab) > SEPARATOR_ID and vocab.id_to_token(SEPARATOR_ID) != SEPARATOR:
            raise ValueError(f"a trigram vocabulary must hold the word separator {SEPARATOR!r} at id {SEPARATOR_ID}, "
                             f"got {vocab.id_to_token(SEPARATOR_ID)!r}")
        super().__init__(vocab, max_length=max_length, lowercase=lowercase, nfkc=nfkc, keep_punct=keep_punct)
        self._cache_word_ids: dict[str, list[int]] = {}

    @classmethod
    def build(cls, texts: Iterable[str], **kwargs: Any) -> Self:
        """As :meth:`VocabTokenizer.build`, then the separator is moved to id :data:`SEPARATOR_ID`."""
        tokenizer = super().build(texts, **kwargs)
        vocab = tokenizer.vocab
        tokens = [t for t in vocab.tokens if t != SEPARATOR]
        max_size = kwargs.get("max_size")
        if max_size is not None and len(tokens) >= max_size:  # keep the size limit with the separator in
            tokens = tokens[: max_size - 1]
        tokens.insert(SEPARATOR_ID, SEPARATOR)
        tokenizer.vocab = Vocab(tokens, [vocab.count(t) for t in tokens])
        tokenizer._ids = tokenizer.vocab.index
        tokenizer._on_vocab_change()
        return tokenizer

    def _on_vocab_change(self) -> None:
        self._cache_word_ids.clear()

    def words(self, text: str) -> list[str]:
        """The words of ``text`` (split as in the ``char`` tokenizer)."""
        return super().tokenize(text)

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for word in self.words(text):
            if out:
                out.append(SEPARATOR)
            out.extend(letter_trigrams(word))
        return out

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache_word_ids.get(word)
        if ids is None:
            get = self._ids.get
            ids = [get(tri, UNK_ID) for tri in letter_trigrams(word)]
            if len(self._cache_word_ids) >= CACHE_SIZE:
                self._cache_word_ids.clear()
            self._cache_word_ids[word] = ids
        return ids

    def _encode_untruncated(self, text: str) -> list[int]:
        cache = self._cache_word_ids
        ids: list[int] = []
        for word in self.words(text):
            if ids:
                ids.append(SEPARATOR_ID)
            word_ids = cache.get(word)
            ids.extend(self._word_ids(word) if word_ids is None else word_ids)
        return ids

    def encode_words(self, text: str) -> list[list[int]]:
        """One list of trigram ids per word, at most ``max_length`` words; ``[[unk_id]]`` for an empty text.

        Unknown trigrams map to ``unk_id``, so no word's list is empty. The inner lists are fresh copies.
        """
        words = self.words(text)
        if self.max_length is not None:
            words = words[: self.max_length]
        if not words:
            return [[UNK_ID]]
        cache = self._cache_word_ids
        out: list[list[int]] = []
        for word in words:
            word_ids = cache.get(word)
            out.append((self._word_ids(word) if word_ids is None else word_ids).copy())
        return out

    def encode_words_batch(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """:meth:`encode_words` for each text."""
        return [self.encode_words(t) for t in texts]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._finish(self._encode_untruncated(t)) for t in texts]
