"""Every tower on the same data with the same time budget: BQ (pair matching) and WikiQA (answer ranking).

    python bench/towers.py --bq-minutes 4 --wikiqa-minutes 2 --threads 1 --json bench/results/towers.json
    python bench/towers.py --speed --threads 1 --json bench/results/towers.json    # throughput, quiet machine

- BQ (``bq/train.tsv``, chosen and scored on ``bq/dev.tsv``): dev accuracy and F1 at the dev threshold,
  Spearman, parameters, training examples/s and encode sentences/s (10,000 dev sentences, batch 512). The
  throughput columns are measured again alone with ``--speed`` (40 training steps of batch 128, no dev
  evaluation), since other work on the machine during the long runs slows them unevenly.
- WikiQA (train on WikiQA-train, best epoch by MAP on WikiQA-dev, each test question's candidates ranked,
  questions without a correct answer left out): NDCG@3, NDCG@5, MAP, MRR, next to MatchZoo's published
  numbers on the same test set.

Recurrent towers read characters (BQ) or words (WikiQA); ``dssm`` and ``cnn`` read letter trigrams. All
towers share the trainer's defaults (pointwise + in-batch softmax loss, AdamW 3e-3, batch 128) and the
tower defaults of their encoder. ``--vectors-en``/``--vectors-zh`` add rows for a recurrent tower whose
embeddings start from word vectors (``deepsem embeddings train``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import deepsem
from deepsem.config import ENCODERS
from deepsem.tasks.matching import TextPairs, evaluate_ranking
from deepsem.text import Tokenizer, build_tokenizer

# MatchZoo's WikiQA benchmark table: NDCG@3, NDCG@5, MAP
MATCHZOO = {"DSSM": (0.544, 0.613, 0.565), "CDSSM": (0.549, 0.608, 0.559), "ARC-I": (0.568, 0.632, 0.587),
            "MV-LSTM": (0.582, 0.645, 0.599), "DRMM_TKS": (0.646, 0.696, 0.659)}


def wikiqa(data_dir: Path, split: str) -> TextPairs:
    lines = (data_dir / "wikiqa" / f"WikiQA-{split}.tsv").read_text("utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return TextPairs([r[1] for r in rows], [r[5] for r in rows], np.array([float(r[6]) for r in rows], np.float32))


def tokenizer_for(encoder: str, language: str) -> str:
    return "trigram" if encoder in ("dssm", "cnn") else ("char" if language == "zh" else "word")


def run_bq(encoder: str, args: argparse.Namespace, vectors: Path | None = None) -> dict[str, float]:
    data = args.data_dir / "bq"
    out = args.out / f"bq-{encoder}{'-vectors' if vectors else ''}"
    model, result = deepsem.train(
        data / "train.tsv", out, data / "dev.tsv", tokenizer=tokenizer_for(encoder, "zh"),
        model={"tower": {"encoder": encoder}},
        training={"epochs": 50, "max_minutes": args.bq_minutes, "threads": args.threads, "seed": args.seed},
        resume=False, progress=False, pretrained=vectors)
    dev = [line.split("\t") for line in (data / "dev.tsv").read_text("utf-8").splitlines()]
    sentences = list(dict.fromkeys(t for r in dev for t in r[:2]))[:10_000]
    model.encode(sentences[:512])  # warm up
    t0 = time.perf_counter()
    model.encode(sentences, batch_size=512)
    encode_rate = len(sentences) / (time.perf_counter() - t0)
    m = model.info["dev_metrics"]
    return {"accuracy": m["accuracy"], "f1": m["f1"], "spearman": m["spearman"], "roc_auc": m["roc_auc"],
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "train_examples_per_s": result.steps * 128 / result.seconds, "epochs": result.epochs_run,
            "encode_per_s": encode_rate}


def run_wikiqa(encoder: str, args: argparse.Namespace, vectors: Path | None = None) -> dict[str, float]:
    out = args.out / f"wikiqa-{encoder}{'-vectors' if vectors else ''}-{args.wikiqa_negatives}-{args.wikiqa_lr:g}"
    train = wikiqa(args.data_dir, "train")
    tokenizer: str | Tokenizer = tokenizer_for(encoder, "en")
    if vectors is not None:
        # with word vectors learned on the corpus, the vocabulary is the corpus's (every candidate sentence of
        # the three files, and the training questions), so test words unseen in training keep their vectors
        corpus = [t for split in ("train", "dev", "test") for t in wikiqa(args.data_dir, split).text_b]
        tokenizer = build_tokenizer("word", [*corpus, *train.text_a])
    model, result = deepsem.train(
        train, out, wikiqa(args.data_dir, "dev"), tokenizer=tokenizer,
        tokenizer_options={"min_count": 1}, model={"tower": {"encoder": encoder}},
        training={"epochs": 50, "max_minutes": args.wikiqa_minutes, "threads": args.threads, "seed": args.seed,
                  "negatives": args.wikiqa_negatives, "lr": args.wikiqa_lr},
        dev_metric="map", resume=False, progress=False, pretrained=vectors)
    m = evaluate_ranking(model, wikiqa(args.data_dir, "test"))
    return {"ndcg@3": m["ndcg@3"], "ndcg@5": m["ndcg@5"], "map": m["map"], "mrr": m["mrr"],
            "queries": m["queries"], "dev_map": model.info["dev_metrics"]["map"], "epochs": result.epochs_run}


def run_speed(encoder: str, args: argparse.Namespace, steps: int = 40) -> dict[str, float]:
    """Throughput alone, on a quiet machine: ``steps`` training steps of batch 128 on BQ-train pairs (no dev
    evaluation in the timing) and encoding 10,000 BQ-dev sentences."""
    data = args.data_dir / "bq"
    rows = [line.split("\t") for line in (data / "train.tsv").read_text("utf-8").splitlines()[: steps * 128]]
    pairs = TextPairs([r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows], np.float32))
    model, result = deepsem.train(pairs, args.out / f"speed-{encoder}", tokenizer=tokenizer_for(encoder, "zh"),
                                  model={"tower": {"encoder": encoder}},
                                  training={"epochs": 1, "threads": args.threads, "checkpoint_every": 10_000},
                                  resume=False, progress=False)
    dev = [line.split("\t") for line in (data / "dev.tsv").read_text("utf-8").splitlines()]
    sentences = list(dict.fromkeys(t for r in dev for t in r[:2]))[:10_000]
    model.encode(sentences[:512])
    t0 = time.perf_counter()
    model.encode(sentences, batch_size=512)
    return {"train_examples_per_s": len(rows) / result.seconds,
            "encode_per_s": len(sentences) / (time.perf_counter() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("runs/towers"))
    parser.add_argument("--encoders", nargs="*", default=list(ENCODERS), choices=ENCODERS,
                        help="towers to run (none: only the rows with --vectors-*)")
    parser.add_argument("--tasks", nargs="+", default=["bq", "wikiqa"], choices=["bq", "wikiqa"])
    parser.add_argument("--bq-minutes", type=float, default=4.0)
    parser.add_argument("--wikiqa-minutes", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wikiqa-lr", type=float, default=3e-3)
    parser.add_argument("--wikiqa-negatives", default="in-batch", choices=["in-batch", "labelled"],
                        help="labelled: the softmax also sees 4 wrong candidates of the question itself")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--vectors-zh", type=Path, help="char vectors for a BQ row with pretrained embeddings")
    parser.add_argument("--vectors-en", type=Path, help="word vectors for a WikiQA row with pretrained embeddings")
    parser.add_argument("--vectors-encoder", default="lstm-peephole", choices=ENCODERS)
    parser.add_argument("--speed", action="store_true",
                        help="only re-measure training and encoding throughput (run on a quiet machine)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, dict[str, float]]] = {"bq": {}, "wikiqa": {}}
    if args.json and args.json.exists():  # keep rows of earlier runs (e.g. other encoders)
        results.update(json.loads(args.json.read_text("utf-8")))

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")

    for encoder in args.encoders if args.speed else ():
        speed = run_speed(encoder, args)
        results["bq"].setdefault(encoder, {}).update(speed)
        print("speed", encoder, speed, flush=True)
        save()
    for encoder in args.encoders if not args.speed else ():
        if "bq" in args.tasks:
            results["bq"][encoder] = run_bq(encoder, args)
            print("bq", encoder, results["bq"][encoder], flush=True)
            save()
        if "wikiqa" in args.tasks:
            name = encoder if args.wikiqa_negatives == "in-batch" else f"{encoder}, {args.wikiqa_negatives} negatives"
            name += f", lr {args.wikiqa_lr:g}" if args.wikiqa_lr != 3e-3 else ""
            results["wikiqa"][name] = run_wikiqa(encoder, args)
            print("wikiqa", name, results["wikiqa"][name], flush=True)
            save()
    if args.vectors_zh and "bq" in args.tasks and not args.speed:
        name = f"{args.vectors_encoder} + {args.vectors_zh.name}"
        results["bq"][name] = run_bq(args.vectors_encoder, args, args.vectors_zh)
        save()
    if args.vectors_en and "wikiqa" in args.tasks and not args.speed:
        name = f"{args.vectors_encoder} + {args.vectors_en.name}"
        results["wikiqa"][name] = run_wikiqa(args.vectors_encoder, args, args.vectors_en)
        save()

    print(f"\nBQ dev, {args.bq_minutes:g} min per tower, {args.threads} thread(s)")
    print(f"{'tower':<36} {'acc':>7} {'F1':>7} {'Spearman':>8} {'params':>10} {'train ex/s':>10} {'encode/s':>9}")
    for name, m in results["bq"].items():
        print(f"{name:<36} {m['accuracy']:7.4f} {m['f1']:7.4f} {m['spearman']:8.4f} {m['parameters']:10,d} "
              f"{m['train_examples_per_s']:10.0f} {m['encode_per_s']:9.0f}")
    print(f"\nWikiQA test, {args.wikiqa_minutes:g} min per tower")
    print(f"{'tower':<36} {'NDCG@3':>7} {'NDCG@5':>7} {'MAP':>7} {'MRR':>7}")
    for name, m in results["wikiqa"].items():
        print(f"{name:<36} {m['ndcg@3']:7.4f} {m['ndcg@5']:7.4f} {m['map']:7.4f} {m['mrr']:7.4f}")
    for name, (n3, n5, ap) in MATCHZOO.items():
        print(f"{'MatchZoo ' + name + ' (published)':<36} {n3:7.3f} {n5:7.3f} {ap:7.3f} {'':>7}")
    save()


if __name__ == "__main__":
    main()
