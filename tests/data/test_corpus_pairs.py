"""Pairs from a bare corpus: sentence splitting, the inverse cloze task, SimCSE pairs, the held-out dev set, reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepsem.data.corpus_pairs import (
    CorpusDocument,
    corpus_pairs,
    ict_pairs,
    read_documents,
    simcse_pairs,
    split_sentences,
)
from deepsem.data.errors import DataError, SkipReport

DOCS = [
    CorpusDocument("猫喜欢吃鱼。狗喜欢啃骨头！鸟会飞吗？", "动物"),
    CorpusDocument("The cell divides. It takes 3.5 hours! Why does it stop? Nobody knows.", "Cell division"),
    CorpusDocument("One sentence only.", "A title"),
    CorpusDocument("第一行\n第二行\n第三行"),
    CorpusDocument("Alone without a title"),
]


def test_split_sentences_chinese():
    assert split_sentences("今天很好。我们走吧！你去吗？“好的。”他说") == [
        "今天很好。", "我们走吧！", "你去吗？", "“好的。”", "他说"]
    assert split_sentences("真的吗？！是的。。") == ["真的吗？！", "是的。。"]


def test_split_sentences_english_and_lines():
    text = "The dose was 3.5 mg. It worked! Did it last? See example.com for more...\nA new line\n\n  "
    assert split_sentences(text) == ["The dose was 3.5 mg.", "It worked!", "Did it last?",
                                     "See example.com for more...", "A new line"]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    assert split_sentences("   ") == []


def _parts(doc: CorpusDocument) -> list[str]:
    return ([doc.title] if doc.title else []) + split_sentences(doc.text)


def test_ict_pairs_come_from_one_document_and_are_never_identical():
    pairs = ict_pairs(DOCS, 10, np.random.default_rng(0))
    assert len(pairs.text_a) > len(DOCS)
    for q, d in zip(pairs.text_a, pairs.text_b, strict=True):
        assert q != d
        owners = [doc for doc in DOCS if q in _parts(doc)]
        assert len(owners) == 1, q
        doc = owners[0]
        if q == doc.title:  # the title's positive: the whole text
            assert d == " ".join(split_sentences(doc.text))
        else:  # a sentence's positive: the title and every other sentence, in order, the sentence left out
            rest = [s for s in split_sentences(doc.text) if s != q]
            assert d == " ".join(([doc.title] if doc.title else []) + rest) or (not rest and d == doc.title)
            assert q not in split_sentences(d)
    # a one-sentence document without a title gives nothing; one with a title gives (sentence, title), (title, text)
    assert "Alone without a title" not in pairs.text_a + pairs.text_b
    assert ("One sentence only.", "A title") in list(zip(pairs.text_a, pairs.text_b, strict=True))


def test_ict_pairs_per_doc_bounds_and_draws_without_replacement():
    pairs = ict_pairs(DOCS, 2, np.random.default_rng(1))
    per_doc = [sum(q in _parts(doc) for q in pairs.text_a) for doc in DOCS]
    assert per_doc == [2, 2, 2, 2, 0]
    assert len(set(zip(pairs.text_a, pairs.text_b, strict=True))) == len(pairs.text_a)
    with pytest.raises(ValueError, match="ict_pairs_per_doc"):
        ict_pairs(DOCS, 0, np.random.default_rng(1))


def test_simcse_pairs_pair_a_text_with_itself():
    pairs = simcse_pairs(DOCS, 6, np.random.default_rng(2))
    assert pairs.text_a == pairs.text_b and len(pairs.text_a) == 6
    assert len(set(pairs.text_a)) == 6  # enough distinct sentences: no repeats
    pool = {s for doc in DOCS for s in _parts(doc)}
    assert set(pairs.text_a) <= pool
    assert len(simcse_pairs(DOCS, 100, np.random.default_rng(2)).text_a) == 100  # more than the pool: repeats


def _corpus(n: int) -> list[CorpusDocument]:
    rng = np.random.default_rng(5)
    return [CorpusDocument(" ".join(f"doc{i} sentence {j} word{rng.integers(1000)}." for j in range(4)), f"title {i}")
            for i in range(n)]


def test_corpus_pairs_are_a_function_of_the_seed():
    docs = _corpus(60)
    a = corpus_pairs(docs, ict_pairs_per_doc=3, simcse_share=0.25, dev_share=0.1, seed=4)
    b = corpus_pairs(docs, ict_pairs_per_doc=3, simcse_share=0.25, dev_share=0.1, seed=4)
    c = corpus_pairs(docs, ict_pairs_per_doc=3, simcse_share=0.25, dev_share=0.1, seed=5)
    assert (a.train.text_a, a.train.text_b, a.dev.text_a) == (b.train.text_a, b.train.text_b, b.dev.text_a)
    assert a.train.text_a != c.train.text_a


def test_corpus_pairs_mix_the_simcse_share_and_hold_out_whole_documents():
    docs = _corpus(100)
    drawn = corpus_pairs(docs, ict_pairs_per_doc=2, simcse_share=0.4, dev_share=0.05, seed=0)
    assert drawn.dev_documents == 5 and len(drawn.dev.text_a) == 5
    assert drawn.ict == 2 * 95
    same = sum(a == b for a, b in zip(drawn.train.text_a, drawn.train.text_b, strict=True))
    assert same == drawn.simcse and drawn.simcse / (drawn.simcse + drawn.ict) == pytest.approx(0.4, abs=0.01)
    # nothing of a held-out document reaches training: its words never appear in a training text
    held = {q.split()[0] for q in drawn.dev.text_a if q.startswith("doc")} | {
        "doc" + q.split()[1] for q in drawn.dev.text_a if q.startswith("title")}
    train_words = {w for t in drawn.train.text_a + drawn.train.text_b for w in t.split()}
    assert held and not held & train_words
    # the ICT pairs are not all first: the two kinds are shuffled together
    kinds = [a == b for a, b in zip(drawn.train.text_a, drawn.train.text_b, strict=True)]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_corpus_pairs_refuse_what_gives_no_pairs():
    with pytest.raises(ValueError, match="no documents"):
        corpus_pairs([], seed=0)
    with pytest.raises(ValueError, match="one sentence without a title"):
        corpus_pairs([CorpusDocument("just one"), CorpusDocument("another one")], seed=0)
    with pytest.raises(ValueError, match="simcse_share"):
        corpus_pairs(DOCS, simcse_share=1.0)


def test_read_documents_formats(tmp_path: Path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"_id": "a", "title": "T", "text": "x. y", "other": 1}) + "\n\n"
                     + json.dumps({"id": 2, "text": "z"}) + "\n", encoding="utf-8")
    assert read_documents(jsonl) == [CorpusDocument("x. y", "T"), CorpusDocument("z", None)]
    tsv = tmp_path / "docs.tsv"
    tsv.write_text("id\ttext\n1\t第一篇。\n2\t第二篇\n", encoding="utf-8")
    assert read_documents(tsv) == [CorpusDocument("第一篇。"), CorpusDocument("第二篇")]
    plain = tmp_path / "docs.txt"
    plain.write_text("\ufeffone doc. two sentences\n\nanother\tdoc\n", encoding="utf-8")
    assert read_documents(plain) == [CorpusDocument("one doc. two sentences"), CorpusDocument("another\tdoc")]
    named = tmp_path / "named.jsonl"
    named.write_text(json.dumps({"body": "b", "head": "h"}) + "\n", encoding="utf-8")
    assert read_documents(named, text_field="body", title_field="head") == [CorpusDocument("b", "h")]


def test_read_documents_errors_name_the_file_line_and_field(tmp_path: Path):
    bad = tmp_path / "docs.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"title": "no text"}) + "\n"
                   + json.dumps({"text": ""}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_documents(bad)
    assert (info.value.line, info.value.field) == (2, "text") and "docs.jsonl, line 2" in str(info.value)
    report = SkipReport()
    assert read_documents(bad, skip_bad_rows=True, report=report) == [CorpusDocument("fine")]
    assert report.count == 2 and "empty text" in report.messages[1]
    with pytest.raises(DataError, match="not found"):
        read_documents(tmp_path / "missing.jsonl")
