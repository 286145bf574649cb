"""Tests of the text pipeline: the four tokenizers, the vocabulary, and their saved files."""

from __future__ import annotations

import json
import pathlib
import pickle
from collections import Counter
from pathlib import Path

import pytest

from deepsem.text import (
    TOKENIZERS,
    CharTokenizer,
    SubwordTokenizer,
    Tokenizer,
    TrigramTokenizer,
    Vocab,
    WordTokenizer,
    build_tokenizer,
    letter_trigrams,
    load_tokenizer,
)
from deepsem.text.trigram import SEPARATOR_ID

CORPUS = [
    "我爱北京天安门",
    "北京是中国的首都",
    "我爱自然语言处理",
    "今天天气很好，我们去公园吧！",
    "Hello world, hello Beijing.",
    "我在用Python写代码",
    "DSSM 是一个语义匹配模型",
    "上海和北京都是大城市",
    "How do I repay my loan?",
    "怎么还款？",
] * 3
SAMPLES = ["我爱北京天安门", "hello 世界!", "", "   ", "未登录的字：猫狗", "Python 2024年 3.14"]


def build(name: str, **options: object) -> Tokenizer:
    if name == "subword":
        options.setdefault("max_size", 200)
    return build_tokenizer(name, CORPUS, **options)


# ---------------------------------------------------------------------- registry
def test_registry_names_match_classes() -> None:
    assert set(TOKENIZERS) == {"char", "word", "trigram", "subword"}
    for name, cls in TOKENIZERS.items():
        assert cls.name == name
        assert issubclass(cls, Tokenizer)


def test_build_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        build_tokenizer("nope", CORPUS)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_common_interface(name: str) -> None:
    tok = build(name)
    assert tok.pad_id == 0 and tok.unk_id == 1
    assert tok.id_to_token(0) == "[PAD]" and tok.id_to_token(1) == "[UNK]"
    assert tok.token_to_id("[PAD]") == 0 and tok.token_to_id("never-seen-token") == 1
    config = tok.config()
    assert config["name"] == name and config["max_length"] == 64
    json.dumps(config)
    batch = tok.encode_batch(SAMPLES)
    assert batch == [tok.encode(t) for t in SAMPLES]
    for ids in batch:
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode("") == [tok.unk_id] and tok.encode(" \t\n") == [tok.unk_id]
    with pytest.raises(TypeError):
        tok.encode_batch([None])  # type: ignore[list-item]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_max_length_truncation(name: str) -> None:
    long_text = "我爱北京天安门" * 20
    tok = build(name, max_length=5)
    assert len(tok.encode(long_text)) == 5
    assert all(len(ids) <= 5 for ids in tok.encode_batch([long_text, "北京"]))
    unlimited = build(name, max_length=None)
    full = unlimited.encode(long_text)
    assert len(full) > 5 and full[:5] == tok.encode(long_text)
    with pytest.raises(ValueError, match="max_length"):
        build(name, max_length=0)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_build_iterates_a_generator_once(name: str) -> None:
    seen = []

    def texts():
        for t in CORPUS:
            seen.append(t)
            yield t

    options = {"max_size": 200} if name == "subword" else {}
    tok = build_tokenizer(name, texts(), **options)
    assert len(seen) == len(CORPUS)
    assert tok.unk_id not in tok.encode("北京")


# ---------------------------------------------------------------------- char
def test_char_tokens() -> None:
    tok = build("char")
    expected = ["我", "爱", "北", "京", "tiananmen", "2024", "年", "!"]
    assert tok.tokenize("我爱北京 Tiananmen 2024年!") == expected
    assert tok.tokenize("3.14 ok。") == ["3.14", "ok", "。"]


def test_char_lowercase_option() -> None:
    assert build("char").tokenize("Hello WORLD") == ["hello", "world"]
    assert build("char", lowercase=False).tokenize("Hello WORLD") == ["Hello", "WORLD"]


def test_char_nfkc_full_width() -> None:
    tok = build("char")
    assert tok.tokenize("ＡＢＣ１２３，ｄｅｆ！") == ["abc123", ",", "def", "!"]
    assert tok.encode("ｈｅｌｌｏ") == tok.encode("hello") != [tok.unk_id]


def test_char_punctuation_option() -> None:
    assert build("char", keep_punct=False).tokenize("你好，世界！ok?") == ["你", "好", "世", "界", "ok"]
    assert build("char").tokenize("你好，世界！") == ["你", "好", ",", "世", "界", "!"]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_invisible_characters_are_dropped(name: str) -> None:
    tok = build(name)
    assert tok.encode("\ufeff北京\u200b天安门\x07") == tok.encode("北京 天安门")


def test_char_empty_text_gives_unk() -> None:
    tok = build("char")
    assert tok.tokenize("   ") == []
    assert tok.encode("") == tok.encode("   ") == [1]
    assert tok.encode("猫") == [1]


def test_char_vocab_from_corpus() -> None:
    tok = build("char", min_count=3)
    assert isinstance(tok, CharTokenizer)
    assert "北" in tok.vocab and "我" in tok.vocab
    assert tok.vocab.count("北") == Counter(c for t in CORPUS for c in t)["北"]


# ---------------------------------------------------------------------- word
def test_word_jieba_segments_chinese() -> None:
    tok = build("word")
    assert isinstance(tok, WordTokenizer)
    tokens = tok.tokenize("我爱北京天安门")
    assert "北京" in tokens and "天安门" in tokens
    assert "".join(tokens) == "我爱北京天安门"


def test_word_mixed_english() -> None:
    tokens = build("word").tokenize("我在用Python写代码, Hello World 2024!")
    assert "python" in tokens and "hello" in tokens and "world" in tokens and "2024" in tokens
    assert "代码" in tokens and "!" in tokens
    assert " " not in tokens and "" not in tokens


def test_word_encode_known_words() -> None:
    tok = build("word")
    ids = tok.encode("我爱北京天安门")
    assert tok.unk_id not in ids
    assert [tok.id_to_token(i) for i in ids] == tok.tokenize("我爱北京天安门")


# ---------------------------------------------------------------------- trigram
def test_letter_trigrams() -> None:
    assert letter_trigrams("good") == ["#go", "goo", "ood", "od#"]
    assert letter_trigrams("a") == ["#a#"]
    assert letter_trigrams("ab") == ["#ab", "ab#"]
    assert letter_trigrams("") == []


def test_trigram_tokenize() -> None:
    tok = build("trigram")
    assert tok.tokenize("good") == ["#go", "goo", "ood", "od#"]
    assert tok.tokenize("A") == ["#a#"]
    assert tok.tokenize("中文") == ["#中#", "#", "#文#"]  # the word separator between words
    assert tok.tokenize("Good, 中!") == ["#go", "goo", "ood", "od#", "#", "#中#"]
    assert tok.token_to_id("#") == SEPARATOR_ID == 2


def test_trigram_separator_id_is_fixed() -> None:
    # the separator sits at id 2 whatever the counts, and max_size still bounds the vocabulary
    for texts, max_size in ((["good"], None), (["a b c d e f g h"], None), (["good day", "good"], 5)):
        tok = TrigramTokenizer.build(texts, max_size=max_size)
        assert tok.vocab.tokens[:3] == ["[PAD]", "[UNK]", "#"]
        assert max_size is None or tok.vocab_size == max_size
    ids = tok.encode("good day")
    assert ids.count(SEPARATOR_ID) == 1 and ids[0] != SEPARATOR_ID
    with pytest.raises(ValueError, match="separator"):
        TrigramTokenizer(Vocab(["[PAD]", "[UNK]", "#go", "#"]))


def test_trigram_encode_words() -> None:
    tok = TrigramTokenizer.build(["good morning 中国", "good"], max_length=3)
    words = tok.encode_words("good good zzz 中 extra words")
    assert len(words) == 3  # truncated to max_length words
    good = [tok.token_to_id(t) for t in ["#go", "goo", "ood", "od#"]]
    assert words[0] == good and words[1] == good
    assert words[2] == [tok.unk_id] * 3  # "#zz", "zzz", "zz#" unseen
    assert tok.encode_words("中") == [[tok.token_to_id("#中#")]]
    assert tok.encode_words("") == [[tok.unk_id]]
    words[0].append(99)  # returned lists are copies, the cache is untouched
    assert tok.encode_words("good")[0] == good
    assert tok.encode_words_batch(["good", ""]) == [[good], [[tok.unk_id]]]
    assert tok.encode("good morning") == good[:3]  # flat trigram ids, truncated to max_length ids
    assert tok.encode("中 国") == [tok.token_to_id("#中#"), SEPARATOR_ID, tok.token_to_id("#国#")]


# ---------------------------------------------------------------------- subword
@pytest.mark.parametrize("model", ["wordpiece", "bpe"])
def test_subword_train_and_encode(model: str) -> None:
    tok = build("subword", model=model)
    assert isinstance(tok, SubwordTokenizer)
    assert tok.config()["model"] == model
    assert tok.vocab_size <= 200
    tokens = tok.tokenize("我爱北京 Hello")
    assert tokens[:4] == ["我", "爱", "北", "京"] or tokens[:4] == ["我</w>", "爱</w>", "北</w>", "京</w>"]
    ids = tok.encode("我爱北京 Hello")
    assert tok.unk_id not in ids and tok.pad_id not in ids
    assert tok.decode(ids) == "我爱北京 hello"
    unknown = tok.encode("猫")
    assert unknown == [tok.unk_id]
    assert tok.decode(tok.encode("我爱猫")) == "我爱 [UNK]"


def test_subword_bad_model() -> None:
    with pytest.raises(ValueError, match="model"):
        build("subword", model="unigram")


# ---------------------------------------------------------------------- vocab
def test_vocab_limits_and_order() -> None:
    counts = {"b": 3, "a": 3, "c": 5, "d": 1, "e": 2}
    vocab = Vocab.from_counts(counts)
    assert vocab.tokens == ["[PAD]", "[UNK]", "c", "a", "b", "e", "d"]
    assert Vocab.from_counts(counts, min_count=2).tokens == ["[PAD]", "[UNK]", "c", "a", "b", "e"]
    assert Vocab.from_counts(counts, max_size=4).tokens == ["[PAD]", "[UNK]", "c", "a"]
    assert Vocab.from_counts(dict(reversed(counts.items()))) == vocab
    assert vocab.token_to_id("[PAD]") == vocab.pad_id == 0
    assert vocab.token_to_id("zzz") == vocab.unk_id == 1
    assert vocab.encode(["c", "zzz"]) == [2, 1] and vocab.decode([2, 0]) == ["c", "[PAD]"]
    assert vocab.count("c") == 5 and vocab.count("zzz") == 0
    assert len(Vocab.from_counts({})) == 2
    assert Vocab.from_counts({"[UNK]": 9, "x": 1}).tokens == ["[PAD]", "[UNK]", "x"]
    with pytest.raises(ValueError, match="min_count"):
        Vocab.from_counts(counts, min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        Vocab.from_counts(counts, max_size=1)
    with pytest.raises(IndexError):
        vocab.id_to_token(99)


def test_vocab_save_load(tmp_path: Path) -> None:
    vocab = Vocab.from_counts({"北": 2, "京": 1})
    path = vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(path) == vocab and Vocab.load(path).count("北") == 2
    path.write_text('{"format": "deepsem.vocab", "version": 1, "vocab": {"tokens": ["a", "b"]}}')
    with pytest.raises(ValueError, match=r"vocab\.json.*'vocab'"):
        Vocab.load(path)


def test_tokenizer_vocab_limits() -> None:
    full = build("char")
    small = build("char", max_size=10)
    assert small.vocab_size == 10 and full.vocab_size > 10
    assert small.vocab.tokens == full.vocab.tokens[:10]
    assert build("char", min_count=100).vocab_size == 2


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    tok = build(name, max_length=12)
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    expected_files = {"tokenizer.json", "hf_tokenizer.json"} if name == "subword" else {"tokenizer.json"}
    assert {p.name for p in path.parent.iterdir()} == expected_files  # no temporary files left behind
    loaded = load_tokenizer(path.parent)
    assert type(loaded) is type(tok)
    assert loaded.config() == tok.config() and loaded.vocab_size == tok.vocab_size
    texts = [*SAMPLES, *CORPUS, "我爱北京天安门" * 10]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    assert [loaded.tokenize(t) for t in texts] == [tok.tokenize(t) for t in texts]
    assert type(tok).load(path.parent).encode_batch(texts) == tok.encode_batch(texts)
    assert load_tokenizer(path).encode_batch(texts) == tok.encode_batch(texts)  # the file itself is fine too
    if isinstance(tok, TrigramTokenizer):
        assert isinstance(loaded, TrigramTokenizer)
        assert loaded.encode_words_batch(texts) == tok.encode_words_batch(texts)
    # saving again over the old files works, and pickling (DataLoader workers) keeps the behaviour
    tok.save(tmp_path / "tok")
    assert pickle.loads(pickle.dumps(tok)).encode_batch(texts) == tok.encode_batch(texts)


def test_load_checks_the_class(tmp_path: Path) -> None:
    build("char").save(tmp_path)
    with pytest.raises(ValueError, match="expected 'word'"):
        WordTokenizer.load(tmp_path)


def _saved_payload(tmp_path: Path) -> tuple[Path, dict]:
    path = build("char").save(tmp_path / "tok")
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_load_corrupt_json(tmp_path: Path) -> None:
    path, _ = _saved_payload(tmp_path)
    path.write_text('{"format": "deepsem.tokenizer", "vers', encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json.*not a valid JSON"):
        load_tokenizer(path.parent)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda p: p["config"].update(name="evil.module"), "config.name"),
        (lambda p: p["config"].update(name=3), "config.name"),
        (lambda p: p["config"].update(max_length=-1), "config.max_length"),
        (lambda p: p["config"].update(lowercase="yes"), "config.lowercase"),
        (lambda p: p["config"].pop("keep_punct"), "config.keep_punct"),
        (lambda p: p["config"].update(surprise=1), "config.surprise"),
        (lambda p: p.update(format="other"), "format"),
        (lambda p: p.update(version=99), "version"),
        (lambda p: p.pop("config"), "config"),
        (lambda p: p.pop("vocab"), "vocab"),
        (lambda p: p["vocab"].update(tokens=["a", "b"]), "vocab"),
        (lambda p: p["vocab"].update(tokens="abc"), "vocab.tokens"),
    ],
)
def test_load_bad_field(tmp_path: Path, edit, field: str) -> None:
    path, payload = _saved_payload(tmp_path)
    edit(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_tokenizer(path.parent)
    message = str(info.value)
    assert str(path) in message and f"'{field}'" in message


def test_load_corrupt_hf_file(tmp_path: Path) -> None:
    path = build("subword").save(tmp_path / "tok")
    hf_path = path.parent / "hf_tokenizer.json"
    hf_path.write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"hf_tokenizer\.json"):
        load_tokenizer(path.parent)
    hf_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"hf_tokenizer\.json"):
        load_tokenizer(path.parent)


def test_failed_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = build("char")
    path = tok.save(tmp_path)
    before = path.read_bytes()
    original = pathlib.Path.write_text

    def crash(self: Path, data: str, *args: object, **kwargs: object) -> int:
        original(self, data[:10], encoding="utf-8")  # a half-written temporary file ...
        raise OSError("disk full")  # ... then the process fails

    monkeypatch.setattr(pathlib.Path, "write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        build("char", max_size=5).save(tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    assert load_tokenizer(tmp_path).encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
