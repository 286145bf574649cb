"""WikiQA answer ranking (MatchZoo's table) scored as deepsem's two-stage search scores a candidate list: the
re-ranker's probability fused with the first stage's cosine, ``fuse_scores(p, cos, w) = w * minmax(p) + (1 - w) *
minmax(cos)`` over each question's candidates (what ``rerank_weight=w`` does in ``Index.search``). ``w`` is chosen on
the dev questions; test is scored once, for that ``w``; ``w = 1`` is the re-ranker alone. Without ``--model`` the
first stage is BM25 (bm25s, the statistics of every WikiQA sentence: the collection a search would index).

    python bench/wikiqa_first_stage.py --out runs/wikiqa-dssm-td --articles train dev --threads 2
    python bench/wikiqa_fused_ranking.py --reranker runs/rerank-wikiqa --model runs/wikiqa-dssm-td \\
        --json bench/results/wikiqa_fused_ranking.json
    python bench/wikiqa_fused_ranking.py --reranker runs/rerank-wikiqa --json bench/results/wikiqa_fused_bm25.json

The first stage here learns from the train and dev articles only (``--articles train dev``): no test sentence, as
for the re-ranker. Metrics: :func:`deepsem.evaluation.pairs.ranking_metrics` (the questions with a correct answer,
as ``deepsem rerank evaluate`` scores them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.data.pairs import TextPairs
from deepsem.evaluation.pairs import ranking_metrics
from deepsem.index.vector_index import fuse_scores

sys.path.insert(0, str(Path(__file__).resolve().parent))
from towers import wikiqa

WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.0)


def fused(pairs: TextPairs, probabilities: np.ndarray, cosines: np.ndarray, weight: float) -> np.ndarray:
    """Each question's candidates scored by :func:`fuse_scores` over that question's list alone."""
    out = np.empty(len(pairs.text_a), np.float64)
    rows: dict[str, list[int]] = {}
    for i, question in enumerate(pairs.text_a):
        rows.setdefault(question, []).append(i)
    for index in rows.values():
        out[index] = fuse_scores(probabilities[index], cosines[index], weight)
    return out


def bm25_scores(pairs: TextPairs, corpus: list[str]) -> np.ndarray:
    """BM25 (bm25s, English stop words removed) of each candidate for its question, with the statistics of
    ``corpus`` (every candidate sentence of the three splits: the collection a search would index)."""
    import bm25s

    position = {text: i for i, text in enumerate(corpus)}
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    out = np.empty(len(pairs.text_a), np.float64)
    rows: dict[str, list[int]] = {}
    for i, question in enumerate(pairs.text_a):
        rows.setdefault(question, []).append(i)
    for question, index in rows.items():
        tokens = bm25s.tokenize([question], stopwords="en", show_progress=False, return_ids=False)[0]
        every = retriever.get_scores(tokens)
        out[index] = [every[position[pairs.text_b[i]]] for i in index]
    return out


def scores(pairs: TextPairs, reranker: object, model: object | None,
           corpus: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The re-ranker's probabilities and the first stage's scores: the two-tower cosine, or BM25 without a model."""
    probabilities = np.asarray(reranker.score(list(zip(pairs.text_a, pairs.text_b, strict=True))))  # type: ignore[attr-defined]
    if model is None:
        return probabilities, bm25_scores(pairs, corpus)
    questions = list(dict.fromkeys(pairs.text_a))
    sentences = list(dict.fromkeys(pairs.text_b))
    q = dict(zip(questions, model.encode(questions), strict=True))  # type: ignore[attr-defined]
    s = dict(zip(sentences, model.encode(sentences), strict=True))  # type: ignore[attr-defined]
    cosines = np.array([float(np.dot(q[a], s[b])) for a, b in zip(pairs.text_a, pairs.text_b, strict=True)])
    return probabilities, cosines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--reranker", type=Path, required=True, help="a cross-encoder model directory")
    parser.add_argument("--model", type=Path, default=None, help="the first stage: a two-tower model directory "
                        "(default: BM25)")
    parser.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS), help="rerank_weight values tried")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reranker = deepsem.load(args.reranker)
    model = None if args.model is None else deepsem.load(args.model)
    dev, test = wikiqa(args.data_dir, "dev"), wikiqa(args.data_dir, "test")
    corpus = list(dict.fromkeys(t for split in ("train", "dev", "test") for t in wikiqa(args.data_dir, split).text_b))
    dev_scores = scores(dev, reranker, model, corpus)
    table = {}
    for w in args.weights:
        table[w] = ranking_metrics(dev, fused(dev, *dev_scores, w))
        print(f"dev  w={w:.2f}  " + "  ".join(f"{k} {table[w][k]:.4f}" for k in ("ndcg@3", "map", "mrr")))
    chosen = max(args.weights, key=lambda w: (table[w]["ndcg@3"], w))  # a tie: the larger weight (less fusion)
    test_scores = scores(test, reranker, model, corpus)
    result = {"chosen_weight": chosen, "dev": {str(w): m for w, m in table.items()},
              "test": ranking_metrics(test, fused(test, *test_scores, chosen)),
              "test_reranker_alone": ranking_metrics(test, fused(test, *test_scores, 1.0)),
              "reranker": str(args.reranker), "model": "bm25" if args.model is None else str(args.model)}
    print(f"chosen on dev: w={chosen}")
    for name in ("test", "test_reranker_alone"):
        print(f"{name}: " + "  ".join(f"{k} {result[name][k]:.4f}" for k in ("ndcg@3", "map", "mrr")))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
