"""Pretrained word vectors (word2vec, fastText) to initialise the embedding tables of the towers.

Three steps, each usable on its own::

    tok = build_tokenizer("char", texts)
    info = train_vectors(texts, Path("runs/vectors/bq_char.vec"), tokenizer=tok, method="skipgram", dim=128)
    tower = RecurrentTower(config)                                   # embedding_dim == 128
    coverage = initialize_embedding(tower.embedding.weight, vocab_tokens(tok), info.path)
    print(coverage.summary())                                        # found 2,941 of 3,012 tokens (97.6%) ...

* :func:`train_vectors` learns vectors with gensim (skip-gram, CBOW or fastText) over the *tokens of a deepsem
  tokenizer*, so the file's words are exactly the strings of the tokenizer's vocabulary (Chinese characters,
  jieba words, lower-cased English words, subwords).
* :class:`TextCorpus` is the texts of plain or tab-separated files (whole lines, or chosen columns) to train on.
* :func:`read_vectors` reads word2vec / fastText / GloVe text files (``.vec``, ``.txt``, optionally ``.gz``),
  streaming, with or without the ``count dim`` header line.
* :func:`initialize_embedding` copies the vector of each vocabulary token found into its row of an embedding
  matrix, rescaled (by default) to the scale the model was initialised at.

gensim is an optional dependency, needed only by :func:`train_vectors`: ``pip install 'deepsem[embeddings]'``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn, Protocol, cast

import numpy as np

from deepsem import fileio
from deepsem.data.errors import DataError
from deepsem.fileio import atomic_write, bounded_lines, regular_file
from deepsem.text.base import Tokenizer, VocabTokenizer
from deepsem.text.vocab import SPECIAL_TOKENS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Method = Literal["skipgram", "cbow", "fasttext"]
METHODS: tuple[str, ...] = ("skipgram", "cbow", "fasttext")
#: Significant digits of each value written to a ``.vec`` file (float32 holds about 7).
VALUE_DIGITS = 6
#: gensim's iterable corpus truncates longer sentences; ours are cut into pieces of this many tokens.
MAX_SENTENCE_TOKENS = 10_000
#: How many missing vocabulary tokens :class:`Coverage` lists, most frequent (lowest id) first.
MISSING_EXAMPLES = 20
GENSIM_HINT = "pip install 'deepsem[embeddings]'"


class SupportsTokenize(Protocol):
    """Anything with a deepsem-style ``tokenize`` (every :class:`~deepsem.text.Tokenizer` has one)."""

    def tokenize(self, text: str) -> list[str]: ...


# ---------------------------------------------------------------------- the vocabulary of a tokenizer
def vocab_tokens(tokenizer: Tokenizer) -> list[str]:
    """The token string of every id of ``tokenizer``, in id order (``[PAD]``, ``[UNK]``, ...).

    Works for every deepsem tokenizer: the :class:`~deepsem.text.Vocab` of ``char``/``word``/``trigram``, the
    Hugging Face vocabulary of ``subword`` (WordPiece continuations keep their ``##`` prefix, BPE word ends their
    ``</w>`` suffix, exactly as :meth:`~deepsem.text.Tokenizer.tokenize` yields them).
    """
    if isinstance(tokenizer, VocabTokenizer):
        return tokenizer.vocab.tokens
    return [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]


def _has_space(token: str) -> bool:
    return any(c.isspace() for c in token)


# ---------------------------------------------------------------------- training
@dataclass(frozen=True)
class VectorsInfo:
    """What :func:`train_vectors` wrote.

    ``words``: vectors in the file; ``composed``: of those, fastText vectors composed from character n-grams
    for vocabulary tokens below ``min_count`` (0 for the other methods); ``sentences``/``tokens``: the corpus
    trained on; ``skipped``: tokens left out because they contain whitespace (the format cannot hold them);
    ``seconds``: wall time of the whole call (tokenising, training, writing).
    """

    path: Path
    method: str
    words: int
    dim: int
    seconds: float
    sentences: int = 0
    tokens: int = 0
    skipped: int = 0
    composed: int = 0


class _TokenFile:
    """A re-iterable corpus: one sentence per line, tokens separated by single spaces (none holds a space)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[list[str]]:
        with open(self.path, encoding="utf-8", newline="\n") as fh:
            for line in fh:
                yield line.rstrip("\n").split(" ")


def _tokenize_to_file(
    texts: Iterable[str], tokenizer: SupportsTokenize, path: Path
) -> tuple[int, int, int]:
    """Write the tokens of each text to ``path``; returns (sentences, tokens, skipped whitespace tokens)."""
    sentences = tokens = skipped = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected a str text, got {type(text).__name__}")
            kept: list[str] = []
            for token in tokenizer.tokenize(text):
                if not token or _has_space(token):
                    skipped += 1
                else:
                    kept.append(token)
            for start in range(0, len(kept), MAX_SENTENCE_TOKENS):
                fh.write(" ".join(kept[start : start + MAX_SENTENCE_TOKENS]))
                fh.write("\n")
                sentences += 1
            tokens += len(kept)
    return sentences, tokens, skipped


class TextCorpus:
    """The texts of ``paths`` in order: each line whole (``columns`` None), or the tab-separated ``columns`` of
    each line, one text per column. Re-iterable (each iteration reads the files again), so word2vec-style
    trainers can read it once per epoch without holding it in memory.

    A line without one of the ``columns`` raises ``ValueError`` and text that is not UTF-8 a
    :class:`~deepsem.data.DataError`, each naming the file and line.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], columns: Sequence[int] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.columns = None if columns is None else list(columns)

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            with open(path, encoding="utf-8") as fh:
                number = 0
                try:
                    for number, line in enumerate(fh, 1):
                        line = line.rstrip("\n")
                        if self.columns is None:
                            yield line
                            continue
                        fields = line.split("\t")
                        for c in self.columns:
                            if c >= len(fields):
                                raise ValueError(f"{path}, line {number}: no column {c} ({len(fields)} fields)")
                            yield fields[c]
                except UnicodeDecodeError as exc:
                    raise DataError(path, number + 1, None, f"not UTF-8 text ({exc.reason})") from None


def _import_gensim_models() -> Any:
    try:
        from gensim import models
    except ImportError as exc:
        raise ImportError(f"training word vectors needs gensim, which is not installed: {GENSIM_HINT}") from exc
    return models


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def train_vectors(
    texts: Iterable[str],
    out: str | os.PathLike[str],
    *,
    tokenizer: SupportsTokenize,
    method: Method = "skipgram",
    dim: int = 128,
    window: int = 5,
    min_count: int = 2,
    epochs: int = 5,
    negative: int = 5,
    sample: float = 1e-3,
    seed: int = 13,
    workers: int = 1,
    min_n: int = 3,
    max_n: int = 6,
    buckets: int = 500_000,
    fill_vocab: bool = True,
) -> VectorsInfo:
    """Train word vectors on the tokens ``tokenizer`` gives ``texts`` and write them to ``out`` (``.vec``).

    ``texts`` is iterated once (a list, a re-iterable or a generator): the tokens are streamed to a temporary
    file beside ``out`` that the epochs then read, so nothing is held in memory and each text is tokenised once.

    ``method``: ``skipgram`` / ``cbow`` (gensim ``Word2Vec``, ``sg=1`` / ``sg=0``) or ``fasttext`` (skip-gram
    over words plus their character ``min_n``..``max_n``-grams hashed into ``buckets`` rows, which take
    ``buckets * dim * 4`` bytes: 256 MB at the defaults). All use negative sampling (``negative`` noise words),
    ``sample`` is the down-sampling threshold of frequent tokens (0 turns it off) and tokens seen fewer than
    ``min_count`` times get no vector - except, with ``fasttext`` and ``fill_vocab``, the tokens of the
    tokenizer's vocabulary, whose vectors are composed from their n-grams and appended after the trained ones.

    With ``workers=1`` the result depends only on the inputs and ``seed`` (same file byte for byte); more
    workers train faster but in a thread-scheduling-dependent order.

    The file is in word2vec text format (``count dim`` then ``token v1 ... vd`` per line, most frequent token
    first, :data:`VALUE_DIGITS` significant digits) and written atomically. Tokens containing whitespace cannot
    be written in that format; they are left out of training and counted in :attr:`VectorsInfo.skipped`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    for name, value, minimum in (
        ("dim", dim, 1), ("window", window, 1), ("min_count", min_count, 1), ("epochs", epochs, 1),
        ("negative", negative, 1), ("workers", workers, 1), ("min_n", min_n, 1), ("max_n", max_n, 1),
        ("buckets", buckets, 1),
    ):
        _check_int(name, value, minimum)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(sample, int | float) or isinstance(sample, bool) or not 0 <= sample < 1:
        raise ValueError(f"sample must be a number in [0, 1), got {sample!r}")
    if max_n < min_n:
        raise ValueError(f"max_n ({max_n}) must be >= min_n ({min_n})")
    models = _import_gensim_models()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        corpus_path = Path(tmp) / "tokens.txt"
        sentences, tokens, skipped = _tokenize_to_file(texts, tokenizer, corpus_path)
        logger.info("%s: %d sentences, %d tokens (%d skipped)", out, sentences, tokens, skipped)
        corpus = _TokenFile(corpus_path)
        common: dict[str, Any] = {
            "vector_size": dim, "window": window, "min_count": min_count, "negative": negative, "hs": 0,
            "sample": sample, "seed": seed, "workers": workers, "epochs": epochs,
        }
        if method == "fasttext":
            model = models.FastText(sg=1, min_n=min_n, max_n=max_n, bucket=buckets, **common)
        else:
            model = models.Word2Vec(sg=1 if method == "skipgram" else 0, **common)
        model.build_vocab(corpus)
        if len(model.wv) == 0:
            raise ValueError(
                f"no token occurs at least min_count={min_count} times in the {sentences} texts "
                f"({tokens} tokens); nothing to train"
            )
        model.train(corpus, total_examples=model.corpus_count, total_words=model.corpus_total_words, epochs=epochs)

    wv = model.wv
    words: list[str] = list(wv.index_to_key)
    matrix = np.asarray(wv.vectors, dtype=np.float32)
    composed = 0
    if method == "fasttext" and fill_vocab and isinstance(tokenizer, Tokenizer):
        extra = [
            t for t in vocab_tokens(tokenizer)[len(SPECIAL_TOKENS) :]
            if t and t not in wv.key_to_index and not _has_space(t)
        ]
        extra_vectors = [np.asarray(wv.get_vector(t), dtype=np.float32) for t in extra]
        kept = [(t, v) for t, v in zip(extra, extra_vectors, strict=True) if np.any(v)]
        if kept:
            words += [t for t, _ in kept]
            matrix = np.concatenate([matrix, np.stack([v for _, v in kept])])
            composed = len(kept)
    write_vectors(out, words, matrix)
    seconds = time.perf_counter() - started
    logger.info("%s: %d vectors of dimension %d in %.1f s", out, len(words), dim, seconds)
    return VectorsInfo(
        path=out, method=method, words=len(words), dim=dim, seconds=seconds,
        sentences=sentences, tokens=tokens, skipped=skipped, composed=composed,
    )


def write_vectors(path: str | os.PathLike[str], words: Sequence[str], matrix: np.ndarray) -> Path:
    """Write ``words`` and their rows of ``matrix`` in word2vec text format, atomically.

    Raises ``ValueError`` for a shape mismatch, an empty token or one containing whitespace.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise ValueError(f"expected a ({len(words)}, dim) matrix for {len(words)} words, got {matrix.shape}")
    for i, word in enumerate(words):
        if not word or _has_space(word):
            raise ValueError(f"word {i} ({word!r}) is empty or contains whitespace: not writable as word2vec text")
    dim = matrix.shape[1]
    row_format = " ".join([f"%.{VALUE_DIGITS}g"] * dim)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(f"{len(words)} {dim}\n")
            for word, row in zip(words, matrix.tolist(), strict=True):
                fh.write(f"{word} {row_format % tuple(row)}\n")

    return atomic_write(path, write)


# ---------------------------------------------------------------------- reading
@dataclass
class VectorFile:
    """The vectors read from a file, and what was left out.

    ``words[i]`` is the token of ``matrix[i]``; ``header``: the file starts with a ``count dim`` line;
    ``lines``: vector lines read (before any filter); ``duplicates``: later repeats of a token, ignored
    (the first vector wins); ``bad_lines``: malformed lines skipped (only with ``on_error="skip"``).
    """

    path: Path
    words: list[str]
    matrix: np.ndarray
    header: bool = False
    lines: int = 0
    duplicates: int = 0
    bad_lines: int = 0

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


class _Rows:
    """A float32 matrix grown by doubling, so reading never holds a Python list of rows."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.data = np.empty((max(capacity, 1), dim), dtype=np.float32)
        self.size = 0

    def append(self, row: np.ndarray) -> None:
        if self.size == self.data.shape[0]:
            grown = np.empty((2 * self.data.shape[0], self.data.shape[1]), dtype=np.float32)
            grown[: self.size] = self.data
            self.data = grown
        self.data[self.size] = row
        self.size += 1

    def result(self) -> np.ndarray:
        return self.data[: self.size].copy() if self.size < self.data.shape[0] else self.data


def _open_lines(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _parse_header(line: str) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def load_vectors(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    vocab: Collection[str] | None = None,
    match_lowercase: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    encoding_errors: str = "strict",
) -> VectorFile:
    """Read a word2vec / fastText / GloVe text file (``.vec``, ``.txt``; ``.gz`` is decompressed), streaming.

    A first line of two integers is the ``count dim`` header (GloVe files have none: the first vector line then
    fixes the dimension). Each other line is a token, one ASCII space, and ``dim`` numbers separated by
    whitespace; blank lines are ignored. The matrix is float32.

    ``limit``: read only the first ``limit`` vectors of the file (files list the most frequent tokens first);
    ``vocab``: keep only these tokens (and, with ``match_lowercase``, tokens whose lower-case form is the
    lower-case form of one of them), so a 2M-word file costs memory only for the words wanted.

    Raises :class:`~deepsem.data.errors.DataError` (a ``ValueError``) naming the file, the line and the problem:
    a wrong number of values (or one that differs from the header's dimension), a value that is not a finite
    number (NaN, Inf, too large for float32) with its token, an empty token, text that is not UTF-8 (binary
    word2vec files are not supported), fewer/more vectors than the header announces, a line longer than
    :data:`deepsem.fileio.MAX_LINE_BYTES`, or a path that is not a regular file.
    With ``on_error="skip"`` malformed vector lines are skipped and counted instead (the header checks remain).
    A token seen again is ignored (the first vector is kept) and counted in :attr:`VectorFile.duplicates`.
    """
    path = Path(path)
    if limit is not None:
        _check_int("limit", limit, 0)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    wanted: Callable[[str], bool] | None = None
    if vocab is not None:
        exact = set(vocab)
        if match_lowercase:
            lowered = {t.lower() for t in exact}
            wanted = lambda token: token in exact or token.lower() in lowered  # noqa: E731
        else:
            wanted = exact.__contains__

    words: list[str] = []
    seen: set[str] = set()
    rows: _Rows | None = None
    header: tuple[int, int] | None = None
    dim = 0
    dim_source = ""
    lines = duplicates = bad_lines = 0
    finished = True  # read to the end (False when stopped by ``limit``)

    def fail(lineno: int | None, message: str) -> NoReturn:
        raise DataError(path, lineno, None, message)

    regular_file(path, "word-vector file")
    with _open_lines(path) as fh:
        for lineno, raw in bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
            try:
                line = raw.decode("utf-8", errors=encoding_errors).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                fail(lineno, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line); binary files are "
                     "not supported")
            if not line.strip():
                continue
            if lineno == 1 and (header := _parse_header(line)) is not None:
                if header[1] < 1:
                    fail(1, f"the header announces dimension {header[1]}")
                dim, dim_source = header[1], "the header (line 1)"
                cap = min(header[0], 1 << 20) if vocab is None else 1024
                rows = _Rows(dim, min(cap, limit) if limit is not None else cap)
                continue
            if limit is not None and lines >= limit:
                finished = False
                break
            lines += 1
            token, _, rest = line.partition(" ")
            values = rest.split()
            try:
                if not token:
                    raise ValueError("the line starts with a space: empty token")
                if dim == 0:
                    if not values:
                        raise ValueError(f"token {token!r} has no values")
                    dim, dim_source = len(values), f"line {lineno}, the first vector"
                    rows = _Rows(dim, 1024 if limit is None or vocab is not None else limit)
                if len(values) != dim:
                    raise ValueError(f"token {token!r} has {len(values)} values, expected {dim} as in {dim_source}")
                try:
                    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported below
                        row = np.array(values, dtype=np.float32)
                except ValueError:
                    bad = next(i for i, v in enumerate(values) if not _is_number(v))
                    raise ValueError(f"value {bad + 1} of token {token!r} is not a number: {values[bad]!r}") from None
                if not np.isfinite(row).all():
                    bad = int(np.flatnonzero(~np.isfinite(row))[0])
                    why = "" if not math.isfinite(float(values[bad])) else " (too large for float32)"
                    raise ValueError(f"value {bad + 1} of token {token!r} is not finite: {values[bad]!r}{why}")
            except ValueError as exc:
                if on_error == "raise":
                    fail(lineno, str(exc))
                bad_lines += 1
                continue
            if token in seen:
                duplicates += 1
                continue
            if wanted is not None and not wanted(token):
                continue
            seen.add(token)
            assert rows is not None
            words.append(token)
            rows.append(row)
    if header is None and lines == 0:
        fail(None, "no vectors in the file")
    if header is not None and finished and header[0] != lines:
        fail(None, f"the header (line 1) announces {header[0]} vectors but the file holds {lines}")
    matrix = rows.result() if rows is not None else np.zeros((0, dim), dtype=np.float32)
    if duplicates:
        logger.warning("%s: %d duplicate tokens ignored (the first vector of each is kept)", path, duplicates)
    if bad_lines:
        logger.warning("%s: %d malformed lines skipped", path, bad_lines)
    return VectorFile(
        path=path, words=words, matrix=matrix, header=header is not None,
        lines=lines, duplicates=duplicates, bad_lines=bad_lines,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_vectors(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    vocab: Collection[str] | None = None,
    match_lowercase: bool = False,
) -> tuple[list[str], np.ndarray]:
    """The tokens and float32 ``(n, dim)`` matrix of a word-vector text file: :func:`load_vectors`, strict."""
    loaded = load_vectors(path, limit=limit, vocab=vocab, match_lowercase=match_lowercase)
    return loaded.words, loaded.matrix


# ---------------------------------------------------------------------- initialising an embedding table
@dataclass(frozen=True)
class Coverage:
    """How many vocabulary tokens got a pretrained vector.

    ``total`` counts the ordinary tokens (ids >= 2: ``[PAD]`` and ``[UNK]`` are never looked up); ``found``
    those given a vector, ``lowercase`` of them through their lower-case form; ``missing_examples`` the first
    missing tokens in id order (the most frequent first for deepsem vocabularies); ``scale`` the factor the
    copied vectors were multiplied by.
    """

    found: int
    total: int
    dim: int
    missing_examples: list[str] = field(default_factory=list)
    lowercase: int = 0
    scale: float = 1.0

    @property
    def ratio(self) -> float:
        return self.found / self.total if self.total else 0.0

    def summary(self) -> str:
        text = f"found {self.found:,} of {self.total:,} tokens ({100 * self.ratio:.1f}%), dimension {self.dim}"
        if self.lowercase:
            text += f", {self.lowercase:,} through lower case"
        if self.scale != 1.0:
            text += f", scaled by {self.scale:.4g}"
        if self.missing_examples:
            text += "; missing e.g. " + " ".join(self.missing_examples[:10])
        return text


def pretrained_embeddings(tables: Sequence[Any], tokenizer: Tokenizer, path: str | os.PathLike[str],
                          freeze: bool) -> dict[str, Any]:
    """Copy the word vectors of ``path`` into each ``nn.Embedding`` of ``tables`` (rows as :func:`vocab_tokens`
    of ``tokenizer``; see :func:`initialize_embedding`), kept fixed if ``freeze``; prints and returns the coverage
    (``path``, ``found``, ``total``, ``frozen``), which a model directory records."""
    tokens = vocab_tokens(tokenizer)
    words, matrix = read_vectors(path, vocab=set(tokens))
    report: dict[str, Any] = {}
    for table in tables:
        coverage = initialize_embedding(table.weight, tokens, (words, matrix))
        table.weight.requires_grad_(not freeze)
        report = {"path": str(path), "found": coverage.found, "total": coverage.total, "frozen": freeze}
    print(f"pretrained vectors: {report['found']} of {report['total']} tokens found in {path}"
          + (" (frozen)" if freeze else ""))
    return report


def initialize_embedding(
    weight: torch.Tensor,
    tokens: Sequence[str],
    vectors: str | os.PathLike[str] | tuple[Sequence[str], np.ndarray],
    *,
    lowercase_fallback: bool = True,
    scale: Literal["match"] | None = "match",
    limit: int | None = None,
) -> Coverage:
    """Copy the pretrained vector of each token of ``tokens`` (token ``i`` is row ``i``) into ``weight`` in place.

    ``weight``: a ``(V, E)`` embedding matrix, e.g. ``tower.embedding.weight`` (changed under ``torch.no_grad``,
    so its autograd history is untouched); ``tokens``: ``V`` strings, e.g. :func:`vocab_tokens`; ``vectors``: a
    file for :func:`read_vectors` (only the tokens wanted are loaded; ``limit`` as there) or ``(words, matrix)``.

    Row 0 (``[PAD]``) and row 1 (``[UNK]``) are left alone. A token missing from the vectors keeps its row; with
    ``lowercase_fallback`` it then takes the vector of its lower-case form, or else of the file's first token
    whose lower-case form is the same (a cased file's ``Beijing`` for a lower-casing tokenizer's ``beijing``).

    ``scale="match"`` multiplies all copied vectors by one factor so that their mean row norm equals the mean
    row norm that rows 1.. had before (the model's random initialisation). word2vec vectors are typically 2-5
    times longer than deepsem's initial rows (N(0, 1/E): norm about 1); copied as they are, found and missing
    tokens would feed the encoder inputs of different magnitudes, and all the settings tuned at the initial scale
    (learning rate, weight decay, dropout, the saturation of tanh / LSTM gates) would see a different model.
    Scaling by one common factor keeps every direction and all the relative lengths, which is what the
    pretrained vectors know. ``scale=None`` copies the values as they are. If the existing rows are all zero,
    nothing is rescaled.

    Raises ``ValueError`` when ``len(tokens) != V`` or the vectors' dimension differs from ``E``.
    """
    import torch

    if weight.ndim != 2:
        raise ValueError(f"expected a (vocab_size, dim) embedding matrix, got shape {tuple(weight.shape)}")
    size, dim = weight.shape
    if len(tokens) != size:
        raise ValueError(f"{len(tokens)} vocabulary tokens for an embedding matrix of {size} rows")
    if scale not in ("match", None):
        raise ValueError(f"scale must be 'match' or None, got {scale!r}")
    first = len(SPECIAL_TOKENS)
    wanted = list(tokens[first:])

    if isinstance(vectors, tuple):
        words, matrix = list(vectors[0]), np.asarray(vectors[1], dtype=np.float32)
        source = "the given vectors"
        if matrix.ndim != 2 or matrix.shape[0] != len(words):
            raise ValueError(f"{len(words)} words for a vector matrix of shape {matrix.shape}")
    else:
        source = str(vectors)
        words, matrix = read_vectors(vectors, limit=limit, vocab=wanted, match_lowercase=lowercase_fallback)
    if matrix.shape[1] != dim:
        raise ValueError(f"{source} have dimension {matrix.shape[1]} but the embedding matrix has dimension {dim}")

    index: dict[str, int] = {}
    lowered: dict[str, int] = {}
    for i, word in enumerate(words):
        index.setdefault(word, i)
        if lowercase_fallback:
            lowered.setdefault(word.lower(), i)
    rows: list[int] = []
    sources: list[int] = []
    missing: list[str] = []
    by_lowercase = 0
    for row, token in enumerate(wanted, first):
        found = index.get(token)
        if found is None and lowercase_fallback:
            low = token.lower()
            found = index.get(low)
            if found is None:
                found = lowered.get(low)
            by_lowercase += found is not None
        if found is None:
            if len(missing) < MISSING_EXAMPLES:
                missing.append(token)
            continue
        rows.append(row)
        sources.append(found)

    factor = 1.0
    if rows:
        copied = torch.from_numpy(matrix[sources]).to(device=weight.device, dtype=torch.float32)
        with torch.no_grad():
            if scale == "match" and size > 1:
                target = weight[1:].detach().float().norm(dim=1).mean().item()
                current = copied.norm(dim=1).mean().item()
                if target > 0 and current > 0 and math.isfinite(target):
                    factor = target / current
            ids = torch.tensor(rows, dtype=torch.long, device=weight.device)
            weight.index_copy_(0, ids, (copied * factor).to(weight.dtype))
    coverage = Coverage(
        found=len(rows), total=len(wanted), dim=dim, missing_examples=missing, lowercase=by_lowercase, scale=factor
    )
    logger.info("embedding initialised from %s: %s", source, coverage.summary())
    return coverage


__all__ = [
    "METHODS",
    "Coverage",
    "TextCorpus",
    "VectorFile",
    "VectorsInfo",
    "initialize_embedding",
    "load_vectors",
    "pretrained_embeddings",
    "read_vectors",
    "train_vectors",
    "vocab_tokens",
    "write_vectors",
]
