"""Which tokenizers travel as a Hugging Face ``tokenizer.json`` (``to_hf``), and that those give deepsem's ids."""

from __future__ import annotations

import pytest

from deepsem.text import SubwordTokenizer, TrigramTokenizer

TEXTS = ["怎么还款呢", "how do I repay my loan?", "信用卡 credit card 还款", "还款 loan " * 40, "借呗额度为什么降低了"]


@pytest.mark.parametrize("model", ["wordpiece", "bpe"])
def test_subword_to_hf_gives_the_same_ids(model: str):
    tok = SubwordTokenizer.build(TEXTS * 20, max_size=200, max_length=16, model=model)
    hf = tok.to_hf()
    assert [e.ids for e in hf.encode_batch(TEXTS, add_special_tokens=False)] == tok.encode_batch(TEXTS)
    assert len(hf.encode(TEXTS[3], add_special_tokens=False).ids) == 16  # the truncation travels too
    assert tok.hf_tokenizer.truncation is None  # the tokenizer itself is not changed


def test_trigram_has_no_hugging_face_form():
    tok = TrigramTokenizer.build(TEXTS)
    with pytest.raises(NotImplementedError, match="trigram"):
        tok.to_hf()
