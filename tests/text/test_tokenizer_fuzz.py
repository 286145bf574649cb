"""Issue 13, "prove the class" for tokenizers: char / word / trigram / subword (WordPiece, BPE) tokenizers built
from any texts (NULs, control characters, CR/CRLF, BOMs, combining marks, emoji, very long or empty texts) encode
any text into valid ids within max_length, in bounded time, and a saved tokenizer encodes exactly as the one in
memory. Examples are derandomized and few (CI-reproducible, a few seconds)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepsem.errors import DeepsemError
from deepsem.text import build_tokenizer, load_tokenizer

SETTINGS = settings(max_examples=25, deadline=5000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PIECES = ["\0", "\r", "\n", "\r\n", "\t", "\ufeff", "\u200b", "\u0301", "e\u0301", "😀", "👍🏽", "中文", "北京欢迎你",
          "Hello", "WORLD", "  ", "-", "'", '"', "\\", "\x7f", "\u2028", "ß", "ǅ", "İ", "ﬁ", "١٢٣", "x" * 300]
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
)
KINDS = [("char", {}), ("word", {}), ("trigram", {}), ("subword", {"model": "wordpiece", "max_size": 200}),
         ("subword", {"model": "bpe", "max_size": 200})]


def _check_ids(ids: list[int], vocab_size: int, max_length: int) -> None:
    assert isinstance(ids, list) and 1 <= len(ids) <= max_length
    assert all(isinstance(i, int) and 0 <= i < vocab_size for i in ids), ids


@SETTINGS
@given(kind=st.sampled_from(range(len(KINDS))), corpus=st.lists(TEXT, max_size=12), probes=st.lists(TEXT, max_size=6),
       max_length=st.integers(1, 70))
def test_build_and_encode_any_text(kind: int, corpus: list[str], probes: list[str], max_length: int) -> None:
    name, options = KINDS[kind]
    try:
        tok = build_tokenizer(name, corpus, max_length=max_length, **options)
    except DeepsemError:
        return  # a clear refusal (e.g. nothing to learn from) is fine; any other exception fails
    texts = corpus[:4] + probes
    batch = tok.encode_batch(texts)
    assert len(batch) == len(texts)
    for text, ids in zip(texts, batch, strict=True):
        _check_ids(ids, tok.vocab_size, max_length)
        assert tok.encode(text) == ids  # one text and a batch agree
    with tempfile.TemporaryDirectory(prefix="deepsem-tok-") as folder:
        tok.save(Path(folder))
        again = load_tokenizer(Path(folder))
        assert again.vocab_size == tok.vocab_size
        assert again.encode_batch(texts) == batch  # what was saved encodes exactly the same


@SETTINGS
@given(kind=st.sampled_from(range(len(KINDS))), text=TEXT)
def test_a_tokenizer_built_on_nothing_still_encodes(kind: int, text: str) -> None:
    name, options = KINDS[kind]
    try:
        tok = build_tokenizer(name, [], **options)
    except DeepsemError:
        return
    _check_ids(tok.encode(text), tok.vocab_size, tok.max_length or 10**9)
