"""Character tokenizer: each CJK character is a token, Latin words and numbers stay whole.

The splitting rules here (:func:`normalize_text`, :func:`word_pattern`) are shared by the ``word`` and
``trigram`` tokenizers:

* text is NFKC-normalised (full-width ``ＡＢＣ１２３，`` becomes ``ABC123,``) and lower-cased (both options);
* every CJK ideograph, kana or bopomofo character is its own token;
* runs of other letters and digits (Latin, Cyrillic, Hangul, ...) are one token; decimals like ``3.14`` too;
* any other non-space character (punctuation, symbols) is a one-character token if ``keep_punct``,
  otherwise dropped; whitespace and invisible characters (controls, zero-width spaces, BOM) are dropped.

>>> CharTokenizer.build(["我爱北京 Tiananmen 2024年!"]).tokenize("我爱北京 Tiananmen 2024年!")
['我', '爱', '北', '京', 'tiananmen', '2024', '年', '!']
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any, ClassVar

from deepsem.text.base import DEFAULT_MAX_LENGTH, OptionCheck, VocabTokenizer, check_bool
from deepsem.text.vocab import UNK_ID, Vocab

#: Han ideographs (with 々 〇 and the Hangzhou numerals) - the characters jieba segments.
HAN_RANGES = (
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002fa1f\U00030000-\U000323af"
)
#: Every character that is a token on its own: Han, hiragana, katakana (not the middle dot), bopomofo.
CJK_RANGES = HAN_RANGES + "\u3040-\u309f\u30a0-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3100-\u312f\u31a0-\u31bf"

#: Invisible characters dropped like whitespace: C0/C1 controls, soft hyphen, zero-width and direction marks,
#: byte-order mark. Written as regex escapes, understood by both ``re`` and Hugging Face's Oniguruma.
IGNORED_RANGES = r"\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff"
#: Any other visible non-space character: punctuation or a symbol, a token of its own if ``keep_punct``.
SYMBOL = rf"[^\s{IGNORED_RANGES}]"

#: One non-CJK word: a decimal number, or a run of letters/digits that are not CJK.
WORD = rf"\d+(?:\.\d+)+|(?:(?![{CJK_RANGES}])[^\W_])+"


def word_pattern(keep_punct: bool) -> re.Pattern[str]:
    """A pattern whose ``findall`` yields the ``char`` tokens of normalised text."""
    return re.compile(rf"[{CJK_RANGES}]|{WORD}|{SYMBOL}" if keep_punct else rf"[{CJK_RANGES}]|{WORD}")


def normalize_text(text: str, *, nfkc: bool = True, lowercase: bool = True) -> str:
    """NFKC (full-width -> half-width, compatibility forms folded) and lower-case, as asked."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return text


class CharTokenizer(VocabTokenizer):
    """CJK characters one by one; Latin words and numbers whole; punctuation kept (``keep_punct``)."""

    name: ClassVar[str] = "char"
    OPTIONS: ClassVar[dict[str, OptionCheck]] = {
        "lowercase": check_bool,
        "nfkc": check_bool,
        "keep_punct": check_bool,
    }

    def __init__(
        self,
        vocab: Vocab,
        *,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        lowercase: bool = True,
        nfkc: bool = True,
        keep_punct: bool = True,
    ) -> None:
        super().__init__(vocab, max_length=max_length)
        for key, value in (("lowercase", lowercase), ("nfkc", nfkc), ("keep_punct", keep_punct)):
            check_bool(key, value)
        self.lowercase = lowercase
        self.nfkc = nfkc
        self.keep_punct = keep_punct
        self._pattern = word_pattern(keep_punct)

    def _options(self) -> dict[str, Any]:
        return {"lowercase": self.lowercase, "nfkc": self.nfkc, "keep_punct": self.keep_punct}

    def tokenize(self, text: str) -> list[str]:
        return self._pattern.findall(normalize_text(text, nfkc=self.nfkc, lowercase=self.lowercase))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        get = self._ids.get
        findall = self._pattern.findall
        nfkc, lowercase, max_length = self.nfkc, self.lowercase, self.max_length
        out: list[list[int]] = []
        for text in texts:
            ids = [get(t, UNK_ID) for t in findall(normalize_text(text, nfkc=nfkc, lowercase=lowercase))]
            if not ids:
                ids = [UNK_ID]
            elif max_length is not None and len(ids) > max_length:
                del ids[max_length:]
            out.append(ids)
        return out
