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

Other runtimes (issue 16): :meth:`CharTokenizer.to_hf` expresses this tokenizer as a Hugging Face
``tokenizers.Tokenizer`` (normalisers NFKC, capital-sigma fix, Lowercase, invisible characters to spaces; a
``Split`` pre-tokenizer keeping the matches of this module's pattern with every class spelt out as explicit code
point ranges; a ``WordLevel`` model over the same vocabulary; truncation to ``max_length``), and
:meth:`CharTokenizer.save_hf` writes it as one ``tokenizer.json`` that the Python, Rust and Node bindings load and
that gives the same ids as :meth:`CharTokenizer.encode`. The explicit ranges are needed because the pattern
itself, handed to Oniguruma (HF's regex engine), splits differently from Python's ``re`` on about 8,000 code points:
Oniguruma's ``\\w`` also takes combining marks (``Mn``/``Mc``/``Me``: accents, Hindi vowel signs, Thai tone
marks), connector punctuation (``‿``) and circled letters (``Ⓐ``), Python's also takes ``No`` numerics (``²``,
``①``); Oniguruma reads ``\\x80``-``\\x9f`` as bytes, not the C1 controls; and it knows characters that this
Python's Unicode tables leave unassigned. Spelt out from ``str.isalnum``/``isdecimal``/``isspace``, the classes
read the same in both engines. The inputs that still differ, by design of the HF pipeline:

* the empty string ``""``: every HF binding returns no ids without running the normaliser; deepsem gives
  ``[UNK]`` - a caller maps an empty result to ``[1]`` (any other text with no token, e.g. only spaces or
  zero-width characters, does give ``[UNK]``: a normaliser turns it into a sentinel that maps to ``[UNK]``);
* ``Σ`` lower-cased as final ``ς`` when a case-ignorable character (an apostrophe, a combining mark) stands
  between it and the preceding cased letter: Python looks back over any number of them, the HF normaliser's
  look-behind over at most two;
* 127 of the 1,112,064 code points, where the Unicode tables differ (Python 3.11: Unicode 14; ``tokenizers``
  0.23's Rust crates: older NFKC data, newer case data): 72 that Python's NFKC folds and HF's does not (``㋿``
  U+32FF, ``🅬`` U+1F16C, the modifier letters U+A7F2-A7F4, U+AB69, U+10781-107BA, the segmented digits
  U+1FBF0-1FBF9), 55 that Python 3.11 leaves unassigned and HF lower-cases (U+1C89, U+A7CB, ...). None occurs in
  the data sets; ``bench/hf_tokenizer_parity.py`` scans every code point and lists them.

Not expressible this way: ``word`` (jieba's dictionary + HMM segmentation is an algorithm, not a regex: another
runtime runs a jieba port - jieba-rs, nodejieba - with the same dictionary, then looks the words up in the saved
vocabulary) and ``trigram`` (letter-trigram hashing into buckets: another runtime re-implements the documented
hash over the ``#word#`` trigrams, a few lines of code). ``subword`` already is a Hugging Face tokenizer
(``hf_tokenizer.json``).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deepsem.fileio import atomic_write_text
from deepsem.text.base import DEFAULT_MAX_LENGTH, OptionCheck, VocabTokenizer, check_bool
from deepsem.text.vocab import UNK_ID, UNK_TOKEN, Vocab

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

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


# ---------------------------------------------------------------------- the Hugging Face form
#: What the HF normaliser turns a text without any token into: one token, never in a vocabulary, so ``[UNK]``.
HF_NO_TOKEN_SENTINEL = "\x00"


def _hf_class(test: Callable[[str], bool]) -> str:
    """An Oniguruma character class body listing, as ``\\x{..}`` ranges, every code point passing ``test``."""
    parts: list[str] = []
    start = -1
    for cp in range(0x110001):
        inside = cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF and test(chr(cp))
        if inside and start < 0:
            start = cp
        elif not inside and start >= 0:
            end = cp - 1
            parts.append(f"\\x{{{start:x}}}" if start == end else f"\\x{{{start:x}}}-\\x{{{end:x}}}")
            start = -1
    return "".join(parts)


@lru_cache(maxsize=4)
def _hf_classes() -> dict[str, str]:
    """Python ``re``'s classes on ``str`` as Oniguruma class bodies (``re``: ``\\d`` is ``str.isdecimal``,
    ``[^\\W_]`` is ``str.isalnum``, ``\\s`` is ``str.isspace``), so both engines read the same characters."""
    cjk = re.compile(f"[{CJK_RANGES}]")
    space = re.compile(rf"[\s{IGNORED_RANGES}]")
    ignored = re.compile(f"[{IGNORED_RANGES}]")
    return {
        "cjk": _hf_class(lambda c: cjk.match(c) is not None),
        "digit": _hf_class(str.isdecimal),
        "word": _hf_class(lambda c: c.isalnum() and cjk.match(c) is None),
        "alnum": _hf_class(str.isalnum),
        "space": _hf_class(lambda c: space.match(c) is not None),
        "ignored": _hf_class(lambda c: ignored.match(c) is not None),
    }


def hf_pattern(keep_punct: bool) -> str:
    """:func:`word_pattern` for Oniguruma (HF ``tokenizers``), plus the no-token sentinel as a token."""
    c = _hf_classes()
    parts = [r"\x{0}", f"[{c['cjk']}]", f"[{c['digit']}]+(?:\\.[{c['digit']}]+)+", f"[{c['word']}]+"]
    if keep_punct:
        parts.append(f"[^{c['space']}]")
    return "|".join(parts)


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

    # -------------------------------------------------------------- Hugging Face export
    def to_hf(self) -> HFTokenizer:
        """The same tokenizer as a Hugging Face ``tokenizers.Tokenizer``: same tokens, same ids, same truncation.

        Differs only on the inputs listed in the module docstring (the empty string gives no ids).
        """
        from tokenizers import Regex, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        steps: list[Any] = []
        if self.nfkc:
            steps.append(normalizers.NFKC())
        if self.lowercase:
            # str.lower's final sigma: Σ after a cased letter (at most two case-ignorable characters between)
            # and not before one. HF's Lowercase maps each character alone, so Σ -> σ always.
            steps.append(normalizers.Replace(Regex(
                r"(?<=\p{Cased}|\p{Cased}\p{Case_Ignorable}|\p{Cased}\p{Case_Ignorable}\p{Case_Ignorable})"
                r"Σ(?!\p{Case_Ignorable}*\p{Cased})"), "ς"))
            steps.append(normalizers.Lowercase())
        # invisible characters separate tokens exactly as a space does (and a NUL in the text is not the sentinel);
        # then a text with no token at all becomes the sentinel, a token of its own that no vocabulary holds,
        # hence [UNK] as encode() gives
        classes = _hf_classes()
        steps.append(normalizers.Replace(Regex(f"[{classes['ignored']}]"), " "))
        no_token = f"[{classes['space']}]" if self.keep_punct else f"[^{classes['alnum']}]"
        steps.append(normalizers.Replace(Regex(rf"\A{no_token}*\z"), HF_NO_TOKEN_SENTINEL))
        hf = HFTokenizer(models.WordLevel(dict(self.vocab.index), unk_token=UNK_TOKEN))
        hf.normalizer = normalizers.Sequence(steps)
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(hf_pattern(self.keep_punct)), behavior="removed", invert=True)
        if self.max_length is not None:
            hf.enable_truncation(self.max_length)
        return hf

    def save_hf(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_hf` as one Hugging Face ``tokenizer.json`` at ``path`` (atomically); returns the path."""
        return atomic_write_text(path, self.to_hf().to_str())

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
