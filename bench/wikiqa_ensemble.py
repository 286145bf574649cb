"""WikiQA answer ranking (MatchZoo's table) by several re-rankers of the same recipe, alone and averaged: how far one
training run's seed moves the score, and what the mean of k runs' probabilities gives.

    for s in 13 14 15; do deepsem rerank train WikiQA-train.tsv --columns Question,Sentence,Label \\
        --dev WikiQA-dev.tsv --dev-metric ndcg@3 --out runs/wq-seed$s --seed $s ...; done
    python bench/wikiqa_ensemble.py --rerankers runs/wq-seed13 runs/wq-seed14 runs/wq-seed15 \\
        --json bench/results/wikiqa_ensemble.json

Each re-ranker's epoch was chosen on dev NDCG@3 by its own training run; the ensemble (the mean of the k
probabilities of each candidate, fixed before the run, nothing chosen here) is scored on dev and test. Metrics:
:func:`deepsem.evaluation.pairs.ranking_metrics`, as ``deepsem rerank evaluate`` scores the lists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.evaluation.pairs import ranking_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from towers import wikiqa

KEYS = ("ndcg@3", "map", "mrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--rerankers", type=Path, nargs="+", required=True, help="cross-encoder model directories")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = {name: wikiqa(args.data_dir, name) for name in ("dev", "test")}
    probabilities: dict[str, list[np.ndarray]] = {name: [] for name in splits}
    result: dict[str, dict[str, dict[str, float]]] = {}
    for directory in args.rerankers:
        reranker = deepsem.load(directory)
        for name, pairs in splits.items():
            probabilities[name].append(np.asarray(reranker.score(list(zip(pairs.text_a, pairs.text_b, strict=True)))))
        result[str(directory)] = {name: ranking_metrics(pairs, probabilities[name][-1])
                                  for name, pairs in splits.items()}
    result[f"mean of {len(args.rerankers)}"] = {name: ranking_metrics(pairs, np.mean(probabilities[name], axis=0))
                                                for name, pairs in splits.items()}
    for row, metrics in result.items():
        print(f"{row:40s} " + "  ".join(f"{name} " + " ".join(f"{k} {metrics[name][k]:.4f}" for k in KEYS)
                                         for name in splits))
    singles = [m for row, m in result.items() if not row.startswith("mean of")]
    for name in splits:
        values = [m[name]["ndcg@3"] for m in singles]
        print(f"single runs, {name} NDCG@3: mean {np.mean(values):.4f}, range {min(values):.4f}-{max(values):.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
