"""A general Chinese LSTM-DSSM trained on every Chinese pair set together, scored on LCQMC (never trained on).

    python bench/chinese.py --minutes 15 --out runs/zh-general

Training data: the union of the Chinese pair sets in ``--data-dir`` (see ``SOURCES`` for each file and how
its labels become 0/1). 3,000 pairs of the union are held out to choose the best epoch; LCQMC is used only
for scoring: the decision threshold is chosen on LCQMC dev and applied to LCQMC test. The model directory
written to ``--out`` is the general Chinese model that the search benchmarks use.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import deepsem
from deepsem.data import read_pairs
from deepsem.metrics import best_threshold
from deepsem.tasks.matching import TextPairs, as_pairs, evaluate_pairs

BINARY = {"0": 0.0, "1": 1.0}
NLI = {"entailment": 1.0, "contradiction": 0.0, "neutral": None}  # None: the row is left out
# file -> (columns text_a, text_b, label; label map: raw label -> 0/1 or None to leave the pair out)
SOURCES: dict[str, tuple[tuple[Any, Any, Any], Any]] = {
    "bq/train.tsv": ((0, 1, 2), BINARY),
    "afqmc/train.tsv": ((0, 1, 2), BINARY),
    "atec/train_partial.tsv": ((0, 1, 2), BINARY),
    "chip2019/train.tsv": ((0, 1, 2), BINARY),
    "oppo_xiaobu/dev.tsv": ((0, 1, 2), BINARY),
    # KUAKE-QQR: 2 = equivalent -> 1; 1 = B narrower than A, 0 = unrelated -> 0
    "kuake_qqr/train.tsv": ((0, 1, 2), {"0": 0.0, "1": 0.0, "2": 1.0}),
    "kuake_qqr/dev.tsv": ((0, 1, 2), {"0": 0.0, "1": 0.0, "2": 1.0}),
    # QBQTC query-title: 2 = very relevant -> 1, 0 = poor -> 0, 1 = some relevance: left out
    "qbqtc/train_preliminary_2021-10.tsv": ((0, 1, 2), {"0": 0.0, "1": None, "2": 1.0}),
    "qbqtc/dev.tsv": ((0, 1, 2), {"0": 0.0, "1": None, "2": 1.0}),
    # STS-B scores 0-5: >= 4 -> 1, <= 2 -> 0, in between left out
    "stsb_zh/train.tsv": ((0, 1, 2), lambda s: 1.0 if float(s) >= 4 else 0.0 if float(s) <= 2 else None),
    "pawsx_zh/dev_2k.tsv": (("sentence1", "sentence2", "label"), BINARY),
    # NLI: entailment -> 1, contradiction -> 0, neutral left out
    "ocnli/train_10k.tsv": ((0, 1, 2), NLI),
    "ocnli/dev.tsv": ((0, 1, 2), NLI),
    "cnsd_snli/dev.tsv": ((0, 1, 2), NLI),
    "cmnli/dev.tsv": ((0, 1, 2), NLI),
}

SETTINGS: dict[str, Any] = {
    "tokenizer": {"name": "char", "min_count": 2, "max_length": 48},
    "model": {"tower": {"encoder": "lstm-peephole", "embedding_dim": 128, "hidden_size": 128,
                        "bidirectional": True, "pooling": "last+max", "output_dim": 128, "dropout": 0.2,
                        "embedding_dropout": 0.2}},
    # the linear decay follows the 15-minute budget (time_schedule), whichever ends first
    "training": {"loss": "pointwise+softmax", "negatives": "in-batch", "epochs": 6, "batch_size": 128,
                 "lr": 3e-3, "patience": 3, "eval_every": 600, "time_schedule": True},
}


def load_union(data_dir: Path) -> tuple[TextPairs, dict[str, int]]:
    a: list[str] = []
    b: list[str] = []
    y: list[float] = []
    counts = {}
    for name, ((ca, cb, cl), label_map) in SOURCES.items():
        path = data_dir / name
        if not path.exists():
            print(f"missing {path}: left out", file=sys.stderr)
            continue
        pairs = read_pairs(path, text_a=ca, text_b=cb, label=cl, label_map=label_map, skip_bad_rows=True)
        if pairs.skipped.count:
            print(f"{name}: {pairs.skipped}", file=sys.stderr)
        a += pairs.text_a
        b += pairs.text_b
        y += pairs.labels.tolist()
        counts[name] = len(pairs.text_a)
    return TextPairs(a, b, np.asarray(y, np.float32)), counts


def split(pairs: TextPairs, n_dev: int, seed: int) -> tuple[TextPairs, TextPairs]:
    assert pairs.labels is not None
    order = np.random.default_rng(seed).permutation(len(pairs.text_a))
    dev_idx, train_idx = order[:n_dev], order[n_dev:]

    def take(idx: np.ndarray) -> TextPairs:
        assert pairs.labels is not None
        return TextPairs([pairs.text_a[i] for i in idx], [pairs.text_b[i] for i in idx], pairs.labels[idx])

    return take(train_idx), take(dev_idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("runs/zh-general"))
    parser.add_argument("--settings", type=Path, help="JSON file overriding SETTINGS (same shape)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    settings = json.loads(json.dumps(SETTINGS))
    if args.settings:
        for key, value in json.loads(args.settings.read_text()).items():
            settings[key].update(value)
    union, counts = load_union(args.data_dir)
    assert union.labels is not None
    print(f"union: {len(union.text_a):,} pairs ({union.labels.mean():.1%} positive) from {len(counts)} files")
    train, dev = split(union, 3000, seed=0)
    tok = dict(settings["tokenizer"])
    name = tok.pop("name")
    t0 = time.perf_counter()
    training = {**settings["training"], "max_minutes": args.minutes}
    model, result = deepsem.train(train, args.out, dev, tokenizer=name, tokenizer_options=tok,
                                  model=settings["model"], training=training, resume=False,
                                  progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    lcqmc_dev = as_pairs(args.data_dir / "lcqmc" / "dev.tsv")
    lcqmc_test = as_pairs(args.data_dir / "lcqmc" / "test.tsv")
    assert lcqmc_dev.labels is not None
    threshold = best_threshold(model.similarity(lcqmc_dev.text_a, lcqmc_dev.text_b), lcqmc_dev.labels)
    test = evaluate_pairs(model, lcqmc_test, threshold=threshold)
    bq_dev = evaluate_pairs(model, as_pairs(args.data_dir / "bq" / "dev.tsv"), threshold=model.threshold)
    row = {"train_pairs": len(train.text_a), "sources": counts, "settings": settings,
           "train_seconds": round(result.seconds, 1), "wall_seconds": round(wall, 1),
           "epochs": round(result.epochs_run, 2), "stopped": result.stopped, "lcqmc_test": test,
           "union_dev": model.info.get("dev_metrics"), "bq_dev": bq_dev,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    print(f"\nLCQMC test ({len(lcqmc_test.text_a):,} pairs; threshold {threshold:.3f} chosen on LCQMC dev; "
          f"no LCQMC pair in training)")
    print(f"  accuracy {test['accuracy']:.4f}  F1 {test['f1']:.4f}  ROC-AUC {test['roc_auc']:.4f}  "
          f"Spearman {test['spearman']:.4f}")
    print(f"BQ dev accuracy {bq_dev['accuracy']:.4f} Spearman {bq_dev['spearman']:.4f}; "
          f"{result.epochs_run:.2f} epochs in {result.seconds:.0f} s ({result.stopped})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=2, ensure_ascii=False, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
