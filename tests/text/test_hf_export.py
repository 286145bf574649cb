"""The ``char`` tokenizer as a Hugging Face ``tokenizers.Tokenizer`` gives the ids ``CharTokenizer.encode`` gives."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from deepsem.text import CharTokenizer
from deepsem.text.vocab import UNK_ID

DATA_DIR = Path(os.environ.get("DEEPSEM_DATASETS", "/work/shared/datasets"))
#: (file, lines read from its start): Chinese pairs, bilingual, English captions, long English abstracts
SAMPLE = (
    ("bq/dev.tsv", 3000),
    ("lcqmc/test.tsv", 3000),
    ("qbqtc/dev.tsv", 2000),
    ("tatoeba_cmn/cmn.txt", 3000),
    ("snli/snli_1.0_dev.jsonl", 1000),
    ("scifact/corpus.jsonl", 300),
)
JSON_TEXT_KEYS = ("sentence1", "sentence2", "title", "text", "query")

EDGE_CASES = [
    "",
    " ",
    "\t\n\r ",
    "\u200b\u200c\ufeff",
    "\x00\x01\x7f\x85",
    "ＡＢＣ１２３，ｘｙｚ！",
    "ｶﾀｶﾅ ﾊﾝｶｸ",
    "我爱北京 Tiananmen 2024年!",
    "iPhone15价格是5999.00元，折扣3.5折。",
    "3.14 1.2.3 v2.0. .5 5. 1..2",
    "٣٤.٥ ١٢ ۱۲۳ ๑๒๓",
    "नमस्ते दुनिया",
    "ภาษาไทย่ ทดสอบ",
    "한국어 텍스트 테스트",
    "Привет, мир! ÀÉÎÕÜ",
    "ΟΔΟΣ ΟΔΟΣ. ΣΑΣ Σ ΟΔΟ'Σ ΟΔΟ''Σ Ο\u0301Σ ΑΣ'Β ΑΣ.Β",
    "İstanbul ǅemal ẞtraße ﬁne ﬂow",
    "ⅫⅢ ² ① ㊿ 一二三 〇々〻",
    "😀👍🏽👨‍👩‍👧 🇨🇳 hi❤️",
    "a_b c-d e'f g/h @#$%^&*()",
    "ab\u200bcd ef\u00adgh ij\u2060kl",
    "tab\there\x0bvt\x0cff\x1cfs",
    "\U00020000\U0002a6d6 𠀀 ㄅㄆㄇ ・ ー",
    "e\u0301 cafe\u0301 n\u0303",
    "字" * 200,
    "word " * 150,
]


def sample_texts() -> Iterator[str]:
    for name, limit in SAMPLE:
        path = DATA_DIR / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= limit:
                    break
                if name.endswith(".jsonl"):
                    record = json.loads(line)
                    yield from (record[k] for k in JSON_TEXT_KEYS if isinstance(record.get(k), str))
                else:
                    yield from line.rstrip("\n").split("\t")[:2]


def assert_same_ids(tok: CharTokenizer, hf: HFTokenizer, texts: list[str]) -> None:
    ours = tok.encode_batch(texts)
    theirs = [e.ids for e in hf.encode_batch(texts)]
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if t != "" and a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first: {bad[:3]}"
    assert [tok.encode(t) for t in texts[:50]] == ours[:50]


@pytest.mark.parametrize("keep_punct", [True, False])
@pytest.mark.parametrize("max_length", [64, 8, None])
def test_edge_cases_same_ids(keep_punct: bool, max_length: int | None) -> None:
    tok = CharTokenizer.build(EDGE_CASES[::2], keep_punct=keep_punct, max_length=max_length)
    assert_same_ids(tok, tok.to_hf(), EDGE_CASES)


@pytest.mark.parametrize("keep_punct", [True, False])
def test_dataset_sample_same_ids(keep_punct: bool) -> None:
    texts = list(sample_texts())
    if not texts:
        pytest.skip(f"no data sets under {DATA_DIR}")
    # a vocabulary from half the texts, rare tokens dropped: the other half meets [UNK] too
    tok = CharTokenizer.build(texts[::2], keep_punct=keep_punct, min_count=2)
    assert_same_ids(tok, tok.to_hf(), texts)
    untruncated = CharTokenizer(tok.vocab, keep_punct=keep_punct, max_length=None)
    assert_same_ids(untruncated, untruncated.to_hf(), texts)


def test_no_token_texts_are_unk_empty_string_is_empty() -> None:
    tok = CharTokenizer.build(["abc"], keep_punct=False)
    hf = tok.to_hf()
    for text in (" ", "\u200b", "!!! ...", "\x00"):
        assert hf.encode(text).ids == tok.encode(text) == [UNK_ID]
    # the one documented difference: HF skips the normaliser on "" and returns no ids
    assert tok.encode("") == [UNK_ID]
    assert hf.encode("").ids == []


def test_truncation_and_unknown_tokens() -> None:
    tok = CharTokenizer.build(["我 爱 you"], max_length=3)
    hf = tok.to_hf()
    text = "我爱你 you and me"
    assert hf.encode(text).ids == tok.encode(text) == [tok.token_to_id("我"), tok.token_to_id("爱"), UNK_ID]
    assert hf.encode(text).tokens == ["我", "爱", "[UNK]"]


@pytest.mark.parametrize("keep_punct", [True, False])
def test_save_hf_loads_with_from_file(tmp_path: Path, keep_punct: bool) -> None:
    tok = CharTokenizer.build(EDGE_CASES, keep_punct=keep_punct, max_length=16)
    path = tok.save_hf(tmp_path / "tokenizer.json")
    assert path == tmp_path / "tokenizer.json"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # atomic: no temporary left behind
    loaded = HFTokenizer.from_file(str(path))
    assert_same_ids(tok, loaded, EDGE_CASES)
    assert loaded.get_vocab() == dict(tok.vocab.index)
    # and the deepsem side is untouched: the deepsem directory format still round-trips with the same ids
    again = CharTokenizer.load(tok.save(tmp_path / "model"))
    assert again.encode_batch(EDGE_CASES) == tok.encode_batch(EDGE_CASES)


def _tables_differ(c: str) -> bool:
    """The documented Unicode-version differences: Python's NFKC / lower() against HF's, character by character."""
    import unicodedata

    from tokenizers import normalizers

    folded = unicodedata.normalize("NFKC", c)
    return folded != normalizers.NFKC().normalize_str(c) or folded.lower() != normalizers.Lowercase().normalize_str(
        folded
    )


@pytest.mark.parametrize("keep_punct", [True, False])
def test_every_code_point_of_common_blocks_splits_the_same(keep_punct: bool) -> None:
    """Latin to CJK symbols, kana, full-width forms: the normaliser + pre-tokenizer give ``tokenize``'s tokens."""
    tok = CharTokenizer.build(["x"], keep_punct=keep_punct, max_length=None)
    hf = tok.to_hf()
    assert hf.normalizer is not None and hf.pre_tokenizer is not None
    normalize, pre = hf.normalizer.normalize_str, hf.pre_tokenizer.pre_tokenize_str
    checked, bad = 0, []
    for cp in [*range(0x3400), *range(0xFB00, 0x10000), *range(0x1F000, 0x1FB00)]:
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or _tables_differ(c):
            continue
        text = f"ab{c}cd 12{c}34 {c}{c} 我{c}a"
        checked += 1
        if tok.tokenize(text) != [t for t, _ in pre(normalize(text))]:
            bad.append(f"U+{cp:04X}")
    assert checked > 17_000
    assert not bad, bad[:20]


def test_final_sigma_residual_is_as_documented() -> None:
    """Python looks back over any number of case-ignorable characters before a final Σ; the HF form over two."""
    tok = CharTokenizer.build(["x"], max_length=None)
    hf = tok.to_hf()
    assert hf.normalizer is not None
    assert tok.tokenize("ΟΔΟ''Σ")[-1] == hf.normalizer.normalize_str("ΟΔΟ''Σ")[-1] == "ς"
    assert tok.tokenize("ΟΔΟ'''Σ")[-1] == "ς"
    assert hf.normalizer.normalize_str("ΟΔΟ'''Σ")[-1] == "σ"
