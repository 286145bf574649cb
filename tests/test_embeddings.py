"""deepsem.embeddings: reading word-vector files, training them with gensim, initialising embedding tables."""

from __future__ import annotations

import gzip
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepsem.embeddings import (
    Coverage,
    initialize_embedding,
    load_vectors,
    read_vectors,
    train_vectors,
    vocab_tokens,
    write_vectors,
)
from deepsem.text import build_tokenizer

GROUPS = [
    ["apple", "banana", "cherry", "grape", "mango", "peach"],
    ["car", "truck", "bus", "train", "bicycle", "boat"],
    ["red", "green", "blue", "yellow", "purple", "orange"],
    ["dog", "cat", "horse", "rabbit", "tiger", "wolf"],
    ["piano", "violin", "guitar", "drum", "flute", "trumpet"],
    ["soccer", "tennis", "golf", "hockey", "rugby", "cricket"],
]
GROUP_OF = {word: g for g, words in enumerate(GROUPS) for word in words}
FAST = {"dim": 16, "epochs": 5, "sample": 0.0, "buckets": 5000}


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Sentences of 5 words of one group: words of a group share their contexts, other groups never."""
    rng = random.Random(seed)
    texts = [" ".join(rng.sample(GROUPS[i % len(GROUPS)], 5)) for i in range(n)]
    texts.append("apricot apple banana")  # apricot: seen once, below min_count=2
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]):
    return build_tokenizer("char", texts)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# ---------------------------------------------------------------------- read_vectors
def test_read_with_header(tmp_path: Path) -> None:
    path = write(tmp_path / "v.vec", "3 2\nhello 1 2\n世界 -0.5 3e-1\nx 0 0 \n")
    words, matrix = read_vectors(path)
    assert words == ["hello", "世界", "x"]
    assert matrix.dtype == np.float32 and matrix.shape == (3, 2)
    np.testing.assert_allclose(matrix, [[1, 2], [-0.5, 0.3], [0, 0]], rtol=1e-6)
    assert load_vectors(path).header


def test_read_without_header_like_glove(tmp_path: Path) -> None:
    path = write(tmp_path / "glove.txt", "the 0.1 0.2 0.3\r\n\n, 1 2 3\r\n")
    loaded = load_vectors(path)
    assert not loaded.header and loaded.words == ["the", ","] and loaded.dim == 3
    np.testing.assert_allclose(loaded.matrix[0], [0.1, 0.2, 0.3], rtol=1e-6)


def test_read_gzip(tmp_path: Path) -> None:
    path = tmp_path / "v.vec.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("2 2\na 1 2\nb 3 4\n")
    assert read_vectors(path)[0] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("a 1 2\nb 1 oops\n", 2, "value 2 of token 'b' is not a number: 'oops'"),
        ("a 1 2\nb 1 2 3\n", 2, "token 'b' has 3 values, expected 2 as in line 1"),
        ("2 3\na 1 2 3\nb 1 2\n", 3, "token 'b' has 2 values, expected 3 as in the header"),
        ("a 1 2\nb nan 2\n", 2, "value 1 of token 'b' is not finite"),
        ("a 1 2\n 1 2\n", 2, "empty token"),
    ],
)
def test_read_errors_name_file_line_and_problem(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = write(tmp_path / "bad.vec", text)
    with pytest.raises(ValueError, match=r"bad\.vec, line") as info:
        read_vectors(path)
    assert f"line {line}:" in str(info.value) and what in str(info.value)


def test_read_header_count_and_empty_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="announces 3 vectors but the file holds 2"):
        read_vectors(write(tmp_path / "short.vec", "3 2\na 1 2\nb 1 2\n"))
    with pytest.raises(ValueError, match="no vectors"):
        read_vectors(write(tmp_path / "empty.vec", "\n"))
    binary = tmp_path / "w2v.bin"
    binary.write_bytes(b"1 2\nab \xff\xfe\x00\x00\x80?\x00\x00\x00@\n")
    with pytest.raises(ValueError, match=r"w2v\.bin, line 2: not UTF-8"):
        read_vectors(binary)


def test_read_skip_mode_counts_bad_lines(tmp_path: Path) -> None:
    loaded = load_vectors(write(tmp_path / "v.vec", "a 1 2\nb x 2\nc 1\nd 3 4\n"), on_error="skip")
    assert loaded.words == ["a", "d"] and loaded.bad_lines == 2 and loaded.lines == 4


def test_read_duplicates_keep_first(tmp_path: Path) -> None:
    loaded = load_vectors(write(tmp_path / "v.vec", "4 2\na 1 1\nb 2 2\na 9 9\nb 8 8\n"))
    assert loaded.words == ["a", "b"] and loaded.duplicates == 2
    np.testing.assert_array_equal(loaded.matrix, [[1, 1], [2, 2]])


def test_read_limit_and_vocab(tmp_path: Path) -> None:
    path = write(tmp_path / "v.vec", "5 1\nThe 1\nthe 2\nBeijing 3\ncat 4\ndog 5\n")
    assert read_vectors(path, limit=2)[0] == ["The", "the"]
    words, matrix = read_vectors(path, vocab={"cat", "the", "beijing"})
    assert words == ["the", "cat"] and matrix.tolist() == [[2], [4]]
    assert read_vectors(path, vocab={"beijing"}, match_lowercase=True)[0] == ["Beijing"]
    assert read_vectors(path, limit=3, vocab={"dog"})[0] == []


def test_write_read_round_trip_and_rejects_spaces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((4, 5)).astype(np.float32)
    path = write_vectors(tmp_path / "out.vec", ["a", "##b", "中", "c</w>"], matrix)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "4 5"
    words, back = read_vectors(path)
    assert words == ["a", "##b", "中", "c</w>"]
    np.testing.assert_allclose(back, matrix, rtol=1e-5)
    with pytest.raises(ValueError, match="whitespace"):
        write_vectors(tmp_path / "x.vec", ["a b"], matrix[:1])


# ---------------------------------------------------------------------- train_vectors
@pytest.mark.parametrize("method", ["skipgram", "cbow", "fasttext"])
def test_train_groups_words_that_share_contexts(tmp_path: Path, texts, tokenizer, method: str) -> None:
    info = train_vectors(texts, tmp_path / f"{method}.vec", tokenizer=tokenizer, method=method, **FAST)
    assert info.method == method and info.dim == 16 and info.sentences == len(texts)
    assert info.tokens == sum(len(t.split()) for t in texts) and info.skipped == 0 and info.seconds > 0
    words, matrix = read_vectors(info.path)
    assert info.words == len(words) == matrix.shape[0]
    trained = [w for w in words if w in GROUP_OF]
    assert sorted(trained) == sorted(GROUP_OF)  # min_count=2 keeps all group words
    vectors = unit(matrix[[words.index(w) for w in trained]])
    labels = np.array([GROUP_OF[w] for w in trained])
    cosine = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    different = labels[:, None] != labels[None, :]
    # every pair of words of one group is closer than any pair of words from two groups
    assert cosine[same].min() > cosine[different].max() + 0.1, (cosine[same].min(), cosine[different].max())


def test_fasttext_composes_vectors_for_rare_vocab_tokens(tmp_path: Path, texts, tokenizer) -> None:
    assert "apricot" in tokenizer.vocab  # built with min_count=1
    fast = train_vectors(texts, tmp_path / "ft.vec", tokenizer=tokenizer, method="fasttext", **FAST)
    plain = train_vectors(texts, tmp_path / "sg.vec", tokenizer=tokenizer, method="skipgram", **FAST)
    fast_words, fast_matrix = read_vectors(fast.path)
    assert fast.composed == 1 and fast_words[-1] == "apricot" and np.abs(fast_matrix[-1]).sum() > 0
    assert "apricot" not in read_vectors(plain.path)[0] and plain.composed == 0
    nofill = train_vectors(
        texts, tmp_path / "ft2.vec", tokenizer=tokenizer, method="fasttext", fill_vocab=False, **FAST
    )
    assert nofill.composed == 0 and "apricot" not in read_vectors(nofill.path)[0]


@pytest.mark.parametrize("method", ["skipgram", "fasttext"])
def test_train_is_deterministic(tmp_path: Path, texts, tokenizer, method: str) -> None:
    runs = [
        train_vectors(texts, tmp_path / f"{i}.vec", tokenizer=tokenizer, method=method, seed=seed, **FAST)
        for i, seed in enumerate((5, 5, 6))
    ]
    first, again, other = (r.path.read_bytes() for r in runs)
    assert first == again
    assert first != other
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporary files cleaned up


class PipeTokenizer:
    """Tokens split at '|': lets a token hold a space, which no deepsem tokenizer produces."""

    def tokenize(self, text: str) -> list[str]:
        return text.split("|")


def test_train_skips_whitespace_tokens_and_streams_a_generator(tmp_path: Path) -> None:
    texts = ["a|b|c d|e", "a|b|x\ty|e", "|a|b|e"] * 20
    info = train_vectors((t for t in texts), tmp_path / "v.vec", tokenizer=PipeTokenizer(), dim=4, epochs=1)
    assert info.skipped == 60  # "c d", "x\ty" and the empty token
    assert info.tokens == 9 * 20 and info.sentences == 60
    assert sorted(read_vectors(info.path)[0]) == ["a", "b", "e"]


def test_train_rejects_bad_arguments(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        train_vectors(["a b"], tmp_path / "v.vec", tokenizer=tokenizer, method="glove")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        train_vectors(["a b"], tmp_path / "v.vec", tokenizer=tokenizer, dim=0)
    with pytest.raises(ValueError, match="no token occurs at least min_count=5"):
        train_vectors(["a b", "a c"], tmp_path / "v.vec", tokenizer=tokenizer, min_count=5)
    assert not (tmp_path / "v.vec").exists()


def test_train_without_gensim_says_what_to_install(tmp_path: Path, tokenizer, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gensim", None)
    with pytest.raises(ImportError, match=r"pip install 'deepsem\[embeddings\]'"):
        train_vectors(["a b"], tmp_path / "v.vec", tokenizer=tokenizer)


# ---------------------------------------------------------------------- vocab_tokens
def test_vocab_tokens_for_every_tokenizer() -> None:
    texts = ["我爱北京天安门", "Hello world, hello 北京!"] * 3
    for name in ("char", "word", "trigram", "subword"):
        tok = build_tokenizer(name, texts)
        tokens = vocab_tokens(tok)
        assert len(tokens) == tok.vocab_size and tokens[:2] == ["[PAD]", "[UNK]"], name
        assert all(tok.token_to_id(t) == i for i, t in enumerate(tokens)), name
        assert set(tok.tokenize("hello 北京")) <= set(tokens), name


# ---------------------------------------------------------------------- initialize_embedding
TOKENS = ["[PAD]", "[UNK]", "a", "b", "c", "beijing", "zzz"]
DIM = 8


def random_weight(seed: int = 0) -> torch.Tensor:
    weight = torch.randn(len(TOKENS), DIM, generator=torch.Generator().manual_seed(seed)) * DIM**-0.5
    weight[0] = 0
    return weight


def file_vectors(seed: int = 1) -> tuple[list[str], np.ndarray]:
    words = ["b", "[UNK]", "a", "Beijing", "unused", "c"]
    return words, np.random.default_rng(seed).standard_normal((len(words), DIM)).astype(np.float32) * 3


def test_initialize_copies_found_rows_at_the_model_scale() -> None:
    weight = random_weight()
    before = weight.clone()
    words, matrix = file_vectors()
    coverage = initialize_embedding(weight, TOKENS, (words, matrix))
    assert isinstance(coverage, Coverage)
    assert (coverage.found, coverage.total, coverage.dim, coverage.lowercase) == (4, 5, DIM, 1)
    assert coverage.missing_examples == ["zzz"] and coverage.ratio == pytest.approx(0.8)
    assert torch.equal(weight[0], torch.zeros(DIM))  # [PAD] stays zero
    assert torch.equal(weight[1], before[1])  # [UNK] untouched though the file has it
    assert torch.equal(weight[6], before[6])  # missing token untouched
    rows = {"a": 2, "b": 3, "c": 4, "beijing": 5}
    source = {"a": "a", "b": "b", "c": "c", "beijing": "Beijing"}
    copied = weight[list(rows.values())]
    expected = torch.from_numpy(matrix[[words.index(source[t]) for t in rows]])
    cosine = torch.nn.functional.cosine_similarity(copied, expected, dim=1)
    torch.testing.assert_close(cosine, torch.ones(4))
    # one common factor, chosen so the copied rows' mean norm is the initial rows' mean norm
    ratios = copied.norm(dim=1) / expected.norm(dim=1)
    torch.testing.assert_close(ratios, torch.full((4,), coverage.scale))
    target = before[1:].norm(dim=1).mean()
    torch.testing.assert_close(copied.norm(dim=1).mean(), target)
    assert coverage.scale < 0.5  # the file's vectors were ~3x longer
    assert "found 4 of 5 tokens (80.0%)" in coverage.summary()


def test_initialize_without_scale_or_lowercase_copies_values(tmp_path: Path) -> None:
    weight = random_weight()
    words, matrix = file_vectors()
    path = write_vectors(tmp_path / "v.vec", words, matrix)
    coverage = initialize_embedding(weight, TOKENS, path, scale=None, lowercase_fallback=False)
    assert (coverage.found, coverage.lowercase, coverage.scale) == (3, 0, 1.0)
    assert coverage.missing_examples == ["beijing", "zzz"]
    torch.testing.assert_close(weight[2], torch.from_numpy(matrix[2]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight[3], torch.from_numpy(matrix[0]), rtol=1e-5, atol=1e-6)


def test_initialize_parameter_keeps_no_history_and_checks_shapes() -> None:
    embedding = torch.nn.Embedding(len(TOKENS), DIM, padding_idx=0)
    initialize_embedding(embedding.weight, TOKENS, file_vectors())
    assert embedding.weight.requires_grad and embedding.weight.grad_fn is None
    with pytest.raises(ValueError, match="dimension 8 but the embedding matrix has dimension 4"):
        initialize_embedding(torch.zeros(len(TOKENS), 4), TOKENS, file_vectors())
    with pytest.raises(ValueError, match="6 vocabulary tokens for an embedding matrix of 7 rows"):
        initialize_embedding(random_weight(), TOKENS[:-1], file_vectors())


def test_trained_vectors_initialise_a_tower_vocabulary(tmp_path: Path, texts, tokenizer) -> None:
    info = train_vectors(texts, tmp_path / "v.vec", tokenizer=tokenizer, **FAST)
    tokens = vocab_tokens(tokenizer)
    weight = torch.randn(len(tokens), 16) * 0.25
    weight[0] = 0
    coverage = initialize_embedding(weight, tokens, info.path)
    assert coverage.total == len(tokens) - 2 and coverage.found == coverage.total - 1  # all but apricot
    assert coverage.missing_examples == ["apricot"]
