"""Training pairs from a bare corpus: documents alone, no labelled pairs, no clicks.

Two kinds of positive pair, both drawn deterministically from a seed:

- the inverse cloze task (ICT, Lee et al. 2019): a sentence of a document is a pseudo-query and the rest of the
  document (its title first, the sentence taken out) its positive; a document of one sentence pairs it with its
  title; a document's title is also a pseudo-query, of its whole text;
- dropout-noise pairs as unsupervised SimCSE does (Gao et al. 2021): a sentence paired with itself, the two
  encodings differing only by the dropout masks of two separate forward passes (the two-tower model encodes the
  query and the document sides in separate calls), the other pairs of the batch its negatives.

The documents are read as ``deepsem index build --corpus`` reads them: JSONL / Parquet / TSV / CSV (with a header)
rows with a ``text`` field and an optional ``title`` (other fields ignored), or any other file as plain text, one
document per line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepsem import fileio
from deepsem.data.errors import DataError, SkipReport
from deepsem.data.pairs import TextPairs
from deepsem.data.readers import _SUFFIX_FORMATS, iter_records

__all__ = ["CorpusDocument", "CorpusPairs", "corpus_pairs", "ict_pairs", "read_documents", "simcse_pairs",
           "split_sentences"]

#: Suffixes read as rows with named fields (a header for TSV/CSV); any other file is plain text, a document a line.
_TABLE_SUFFIXES = frozenset(s for s in _SUFFIX_FORMATS if s != ".txt")
_COMPRESSED = (".gz", ".bz2", ".xz")

# A sentence ends after a run of 。！？ (Chinese; closing quotes stay with it), after a run of . ! ? followed by white
# space (so 3.5 and example.com stay whole), and at every line break.
_SENTENCE_END = re.compile(r"[。！？]+[”’」』）)]*|[.!?]+[\"')\]]*(?=\s)|\n+")


@dataclass(frozen=True)
class CorpusDocument:
    """One document of a corpus: its text and an optional title."""

    text: str
    title: str | None = None


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: split after 。！？ (Chinese), after . ! ? followed by white space (English and
    other Latin text) and at line breaks; each stripped, empty ones dropped."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


def read_documents(path: str | os.PathLike[str], *, text_field: str = "text", title_field: str = "title",
                   skip_bad_rows: bool = False, report: SkipReport | None = None) -> list[CorpusDocument]:
    """The documents of a corpus file, in file order.

    ``.jsonl``/``.json``/``.parquet``/``.tsv``/``.csv`` (optionally compressed): rows with a ``text_field`` and an
    optional ``title_field`` (a TSV/CSV has a header naming them); a row without the text field, or with an empty or
    non-text value, is a :class:`DataError` naming the file, the line and the field (skipped and counted in
    ``report`` with ``skip_bad_rows``). Any other file: plain UTF-8 text, one document a line (blank lines
    skipped)."""
    path = Path(path)
    fileio.regular_file(path, "corpus file")
    report = report if report is not None else SkipReport()
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _TABLE_SUFFIXES:
        return list(_table_documents(path, text_field, title_field, skip_bad_rows, report))
    return list(_line_documents(path, skip_bad_rows, report))


def _table_documents(path: Path, text_field: str, title_field: str, skip_bad_rows: bool,
                     report: SkipReport) -> Iterator[CorpusDocument]:
    columns = {"text": text_field, "title": title_field}
    for rec in iter_records(path, columns, optional=("title",), header=True, skip_bad_rows=skip_bad_rows,
                            report=report):
        try:
            text = _field_text(path, rec.line, text_field, rec.values.get("text"), required=True)
            title = _field_text(path, rec.line, title_field, rec.values.get("title"), required=False)
        except DataError as error:
            if not skip_bad_rows:
                raise
            report.add(error)
            continue
        assert text is not None
        yield CorpusDocument(text, title)


def _field_text(path: Path, line: int, name: str, value: object, *, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(path, line, name, "missing value (null)" if value is None else "empty text")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(path, line, name, f"expected text, got {type(value).__name__}")
    return str(value).strip()


def _line_documents(path: Path, skip_bad_rows: bool, report: SkipReport) -> Iterator[CorpusDocument]:
    with open(path, "rb") as fh:
        for number, raw in fileio.bounded_lines(fh, path, fileio.MAX_LINE_BYTES):
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                error = DataError(path, number, "text", f"not UTF-8 (byte {exc.start + 1} of the line)")
                if not skip_bad_rows:
                    raise error from None
                report.add(error)
                continue
            if text:
                yield CorpusDocument(text)


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _candidates(doc: CorpusDocument) -> list[tuple[str, str]]:
    """Every (pseudo-query, positive) pair ICT can take from one document, none of them two equal texts."""
    sentences = split_sentences(doc.text)
    out: list[tuple[str, str]] = []
    if len(sentences) > 1:
        for i, sentence in enumerate(sentences):
            out.append((sentence, _join(doc.title, " ".join(sentences[:i] + sentences[i + 1:]))))
    elif sentences and doc.title:
        out.append((sentences[0], doc.title))
    if doc.title and sentences:
        out.append((doc.title, " ".join(sentences)))
    return [(q, d) for q, d in out if q != d]


def ict_pairs(docs: Sequence[CorpusDocument], pairs_per_doc: int, rng: np.random.Generator) -> TextPairs:
    """Inverse cloze pairs: up to ``pairs_per_doc`` per document, drawn without replacement from its candidates
    (each sentence against the title and the rest; the title against the whole text), in document order."""
    if pairs_per_doc < 1:
        raise ValueError(f"ict_pairs_per_doc must be >= 1, got {pairs_per_doc}")
    a: list[str] = []
    b: list[str] = []
    for doc in docs:
        candidates = _candidates(doc)
        if not candidates:
            continue
        take = min(pairs_per_doc, len(candidates))
        for j in sorted(rng.choice(len(candidates), size=take, replace=False).tolist()):
            a.append(candidates[j][0])
            b.append(candidates[j][1])
    return TextPairs(a, b)


def simcse_pairs(docs: Sequence[CorpusDocument], count: int, rng: np.random.Generator) -> TextPairs:
    """``count`` dropout-noise pairs: a sentence (or title) of the corpus paired with itself, drawn without
    replacement while the corpus has enough distinct ones."""
    pool = list(dict.fromkeys(s for doc in docs
                              for s in ([doc.title] if doc.title else []) + split_sentences(doc.text)))
    if count <= 0 or not pool:
        return TextPairs([], [])
    picks = rng.choice(len(pool), size=count, replace=count > len(pool)).tolist()
    texts = [pool[j] for j in picks]
    return TextPairs(texts, list(texts))


@dataclass
class CorpusPairs:
    """What :func:`corpus_pairs` draws: training pairs (ICT then SimCSE), positive-only dev pairs (ICT pairs of
    held-out documents, empty when none are held out) and the counts."""

    train: TextPairs
    dev: TextPairs
    documents: int
    ict: int
    simcse: int
    dev_documents: int


def corpus_pairs(docs: Sequence[CorpusDocument], *, ict_pairs_per_doc: int = 2, simcse_share: float = 0.0,
                 dev_share: float = 0.0, seed: int = 0) -> CorpusPairs:
    """Positive training pairs from documents: ICT pairs of every document and SimCSE pairs making
    ``simcse_share`` of the whole (in [0, 1)), shuffled together.

    ``dev_share`` > 0 holds out that share of the documents that give ICT pairs (at least one, at most 2,000):
    each gives one ICT pair to the dev set and nothing to training, so that choosing a model by dev retrieval
    (MRR@10) never sees its documents. Everything is a function of ``docs`` and the arguments: the same seed
    gives the same pairs (a resumed run trains on the pairs it started with)."""
    if not 0.0 <= simcse_share < 1.0:
        raise ValueError(f"simcse_share must be in [0, 1), got {simcse_share}")
    if not 0.0 <= dev_share < 1.0:
        raise ValueError(f"dev_share must be in [0, 1), got {dev_share}")
    if not docs:
        raise ValueError("the corpus has no documents")
    rng = np.random.default_rng([seed, 17])
    usable = [i for i, doc in enumerate(docs) if _candidates(doc)]
    held: set[int] = set()
    if dev_share > 0 and len(usable) > 1:
        n_dev = min(2000, len(usable) - 1, max(1, round(dev_share * len(usable))))
        held = set(rng.choice(usable, size=n_dev, replace=False).tolist())
    train_docs = [doc for i, doc in enumerate(docs) if i not in held]
    dev = ict_pairs([docs[i] for i in sorted(held)], 1, rng)
    ict = ict_pairs(train_docs, ict_pairs_per_doc, rng)
    if not ict.text_a:
        raise ValueError("no inverse cloze pairs: every document is one sentence without a title")
    n_simcse = math.ceil(len(ict.text_a) * simcse_share / (1.0 - simcse_share) - 1e-9) if simcse_share else 0
    simcse = simcse_pairs(train_docs, n_simcse, rng)
    a = ict.text_a + simcse.text_a
    b = ict.text_b + simcse.text_b
    order = rng.permutation(len(a)).tolist()
    return CorpusPairs(TextPairs([a[i] for i in order], [b[i] for i in order]), dev, documents=len(docs),
                       ict=len(ict.text_a), simcse=len(simcse.text_a), dev_documents=len(held))
