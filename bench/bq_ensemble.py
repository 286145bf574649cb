"""BQ dev by several models, each alone and averaged: cross-encoders as the ensemble that ``deepsem train --teacher A
--teacher B ...`` distils (the mean of their logits: how good a teacher the ensemble is before any student learns from
it), or two-tower models (the mean of their cosines, which is the cosine-sum of their vectors side by side).

    python bench/bq_ensemble.py --rerankers runs/rerank-bq runs/rerank-bq-2 runs/rerank-bq-3 \\
        --json bench/results/bq_teacher_ensemble.json
    python bench/bq_ensemble.py --two-towers runs/bq-distilled runs/bq-distilled-2 --json ...

Metrics: :func:`deepsem.metrics.pair_metrics` (accuracy and F1 at the threshold chosen on the same dev pairs, as a
training run's dev evaluation and ``deepsem rerank evaluate`` without --dev choose it; ROC-AUC; Spearman).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.data.pairs import as_pairs
from deepsem.metrics import pair_metrics
from deepsem.tasks.rerank import CrossEncoder

KEYS = ("accuracy", "f1", "roc_auc", "spearman")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--rerankers", type=Path, nargs="+", help="cross-encoder model directories")
    models.add_argument("--two-towers", type=Path, nargs="+", help="two-tower model directories")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = as_pairs(args.data_dir / "bq" / "dev.tsv")
    assert dev.labels is not None
    scores = []
    results: dict[str, dict[str, float]] = {}
    for directory in args.rerankers or args.two_towers:
        if args.rerankers:
            model = CrossEncoder.load(directory)
            tok = model.tokenizer
            scores.append(model.logits_of_ids(tok.encode_batch(dev.text_a), tok.encode_batch(dev.text_b)))
        else:
            scores.append(deepsem.load(directory).similarity(dev.text_a, dev.text_b))
        results[str(directory)] = {k: round(pair_metrics(scores[-1], dev.labels)[k], 4) for k in KEYS}
        print(directory, results[str(directory)], flush=True)
    name = f"ensemble (mean of the {'logits' if args.rerankers else 'cosines'})"
    mean = np.mean(np.stack(scores), axis=0)
    results[name] = {k: round(pair_metrics(mean, dev.labels)[k], 4) for k in KEYS}
    print(name, results[name])
    if args.json is not None:
        args.json.write_text(json.dumps({"pairs": len(dev.labels), "results": results}, indent=2) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()
