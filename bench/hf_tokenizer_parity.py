"""Parity and speed of the ``char`` tokenizer against its Hugging Face form (``CharTokenizer.to_hf``).

    PYTHONPATH=src python bench/hf_tokenizer_parity.py [--data-dir ../shared/datasets] [--max-length 64]

For each data set, every text (all columns that hold text, every line): a vocabulary is learnt from the texts
(``min_count=2``, so unknown tokens occur), then ``CharTokenizer.encode_batch`` and the HF tokenizer's
``encode_batch`` are compared id for id, for both ``keep_punct`` settings. Then every Unicode code point is put
between letters and digits and the two token sequences (normaliser + pre-tokenizer, before the vocabulary) are
compared. Prints texts checked, mismatches (the empty string is counted apart: HF gives no ids by design) and
texts per second of each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

from deepsem.text import CharTokenizer

DATASETS = {
    "bq": ["train.tsv", "dev.tsv"],
    "lcqmc": ["dev.tsv", "test.tsv"],
    "afqmc": ["train.tsv"],
    "qbqtc": ["dev.tsv", "train_preliminary_2021-10.tsv"],
    "kuake_qqr": ["train.tsv", "dev.tsv"],
    "tatoeba_cmn": ["cmn.txt"],
    "snli": ["snli_1.0_dev.jsonl", "snli_1.0_test.jsonl"],
    "wikiqa": ["WikiQA-train.tsv", "WikiQA-dev.tsv", "WikiQA-test.tsv"],
    "scifact": ["corpus.jsonl", "queries.jsonl"],
}
JSON_TEXT_KEYS = ("sentence1", "sentence2", "title", "text")


def read_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if path.suffix == ".jsonl":
                record = json.loads(line)
                yield from (record[k] for k in JSON_TEXT_KEYS if isinstance(record.get(k), str))
            else:
                # every column that is not a bare label / number (wikiqa's header and ids included: harmless)
                yield from (f for f in line.rstrip("\n").split("\t") if not f.strip().isdigit())


def compare(tok: CharTokenizer, texts: list[str]) -> tuple[int, int, float, float, list[str]]:
    hf = tok.to_hf()
    start = time.perf_counter()
    ours = tok.encode_batch(texts)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [e.ids for e in hf.encode_batch(texts)]
    t_hf = time.perf_counter() - start
    empty = sum(1 for t in texts if t == "")
    bad = [t for t, a, b in zip(texts, ours, theirs, strict=True) if t != "" and a != b]
    return empty, len(bad), len(texts) / t_ours, len(texts) / t_hf, bad[:3]


def codepoint_scan(keep_punct: bool) -> list[int]:
    tok = CharTokenizer.build(["x"], keep_punct=keep_punct, max_length=None)
    hf = tok.to_hf()
    normalize, pre = hf.normalizer.normalize_str, hf.pre_tokenizer.pre_tokenize_str  # type: ignore[union-attr]
    bad = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        text = f"ab{c}cd 12{c}34 {c}{c} 我{c}a"
        if tok.tokenize(text) != [t for t, _ in pre(normalize(text))]:
            bad.append(cp)
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--no-scan", action="store_true", help="skip the every-code-point scan")
    args = parser.parse_args()
    total = {True: [0, 0], False: [0, 0]}
    print(f"{'data set':<12} {'keep_punct':>10} {'texts':>9} {'empty':>6} {'mismatch':>8} "
          f"{'deepsem/s':>10} {'hf/s':>10}")
    for name, files in DATASETS.items():
        paths = [args.data_dir / name / f for f in files if (args.data_dir / name / f).is_file()]
        if not paths:
            print(f"{name:<12} (absent)")
            continue
        texts = [t for p in paths for t in read_texts(p)]
        for keep_punct in (True, False):
            tok = CharTokenizer.build(texts, keep_punct=keep_punct, min_count=2, max_length=args.max_length)
            empty, bad, speed_ours, speed_hf, examples = compare(tok, texts)
            total[keep_punct][0] += len(texts)
            total[keep_punct][1] += bad
            print(f"{name:<12} {keep_punct!s:>10} {len(texts):>9,} {empty:>6} {bad:>8} "
                  f"{speed_ours:>10,.0f} {speed_hf:>10,.0f}" + (f"  e.g. {examples!r}" if examples else ""))
    for keep_punct, (n, bad) in total.items():
        print(f"total keep_punct={keep_punct}: {n:,} texts, {bad} mismatches")
    if not args.no_scan:
        for keep_punct in (True, False):
            bad_cps = codepoint_scan(keep_punct)
            shown = ", ".join(f"U+{cp:04X}" for cp in bad_cps[:20])
            print(f"code point scan keep_punct={keep_punct}: {len(bad_cps)} of 1,112,064 differ {shown}")


if __name__ == "__main__":
    main()
