"""Word tokenizer: jieba segments runs of Chinese characters, a regex splits everything else.

Non-Chinese text is split as in the ``char`` tokenizer (Latin words and numbers whole, punctuation kept
as one-character tokens if ``keep_punct``); the text is NFKC-normalised and lower-cased first.

>>> WordTokenizer.build([]).tokenize("我爱北京天安门 in 2024!")
['我', '爱', '北京', '天安门', 'in', '2024', '!']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import jieba

from deepsem.text.base import DEFAULT_MAX_LENGTH, OptionCheck, check_bool
from deepsem.text.char import CJK_RANGES, HAN_RANGES, SYMBOL, WORD, CharTokenizer, normalize_text
from deepsem.text.vocab import UNK_ID, Vocab

#: At most this many distinct Chinese runs are remembered (the cache is emptied when it is full).
CACHE_SIZE = 1 << 18

_jieba_ready = False


def _init_jieba() -> None:
    """Load jieba's dictionary once, without its start-up chatter on stderr."""
    global _jieba_ready
    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _jieba_ready = True


class WordTokenizer(CharTokenizer):
    """jieba words for Chinese, regex words for other scripts, lower-cased.

    ``hmm``: let jieba's HMM guess words missing from its dictionary (jieba's default).
    """

    name: ClassVar[str] = "word"
    OPTIONS: ClassVar[dict[str, OptionCheck]] = {**CharTokenizer.OPTIONS, "hmm": check_bool}

    def __init__(
        self,
        vocab: Vocab,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        lowercase: bool = True,
        nfkc: bool = True,
        keep_punct: bool = True,
        hmm: bool = True,
    ) -> None:
        super().__init__(vocab, max_length=max_length, lowercase=lowercase, nfkc=nfkc, keep_punct=keep_punct)
        check_bool("hmm", hmm)
        self.hmm = hmm
        other = rf"[{CJK_RANGES}]|{WORD}|{SYMBOL}" if keep_punct else rf"[{CJK_RANGES}]|{WORD}"
        # group 1: a run of Han characters (handed to jieba); group 2: any other token.
        self._pattern = re.compile(rf"([{HAN_RANGES}]+)|({other})")
        self._cache_cut: dict[str, list[str]] = {}

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "hmm": self.hmm}

    def _cut(self, run: str) -> list[str]:
        words = self._cache_cut.get(run)
        if words is None:
            _init_jieba()
            words = [w for w in jieba.lcut(run, HMM=self.hmm) if w.strip()]
            if len(self._cache_cut) >= CACHE_SIZE:
                self._cache_cut.clear()
            self._cache_cut[run] = words
        return words

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for han, other in self._pattern.findall(
            normalize_text(text, nfkc=self.nfkc, lowercase=self.lowercase)
        ):
            if han:
                tokens.extend(self._cut(han))
            else:
                tokens.append(other)
        return tokens

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        get = self._ids.get
        max_length = self.max_length
        out: list[list[int]] = []
        for text in texts:
            ids = [get(t, UNK_ID) for t in self.tokenize(text)]
            if not ids:
                ids = [UNK_ID]
            elif max_length is not None and len(ids) > max_length:
                del ids[max_length:]
            out.append(ids)
        return out
