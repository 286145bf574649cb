"""LSTM-DSSM on BQ (bank question pairs) against a sentence-transformers siamese BiLSTM, same time budget.

    python bench/bq.py --minutes 15                      # both, one after the other
    python bench/bq.py --which ours --minutes 15 --set tower.bidirectional=true --set training.lr=3e-3

Both models see the same training pairs (``bq/train.tsv``), the same character vocabulary (deepsem's
``char`` tokenizer) and the same wall-clock budget; both are scored on ``bq/dev.tsv`` with the decision
threshold chosen on dev (BQ's test split is kept apart). The peer is what a sentence-transformers user
would build without a pretrained model: ``WordEmbeddings`` (random, trained) + ``LSTM`` (bidirectional) +
mean ``Pooling``, trained with ``OnlineContrastiveLoss`` on the labelled pairs (benchmark environment only:
``pip install sentence-transformers``).
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
from deepsem.metrics import pair_metrics
from deepsem.tasks.matching import TextPairs, as_pairs, evaluate_pairs
from deepsem.text import build_tokenizer

# the settings that gave the best BQ dev result (see bench/notes_bq.md); --set overrides any of them.
# epochs=5 makes the linear decay span a 15-minute budget on 2 cores (~180 s an epoch with evaluation)
OURS: dict[str, dict[str, Any]] = {
    "tokenizer": {"name": "char", "min_count": 1, "max_length": 48},
    "model": {"tower": {"encoder": "lstm-peephole", "embedding_dim": 128, "hidden_size": 128,
                        "bidirectional": True, "pooling": "last+max", "output_dim": 128, "dropout": 0.2,
                        "embedding_dropout": 0.2}},
    "training": {"loss": "pointwise+softmax", "negatives": "in-batch", "epochs": 5, "batch_size": 128,
                 "lr": 3e-3, "patience": 2},
}


def _set(config: dict[str, Any], assignment: str) -> None:
    key, _, raw = assignment.partition("=")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def run_ours(train: TextPairs, dev: TextPairs, minutes: float, out: Path, settings: dict[str, Any],
             pretrained: Path | None = None) -> dict:
    tok = dict(settings["tokenizer"])
    name = tok.pop("name")
    training = {**settings["training"], "max_minutes": minutes}
    t0 = time.perf_counter()
    model, result = deepsem.train(train, out, dev, tokenizer=name, tokenizer_options=tok, model=settings["model"],
                                  training=training, resume=False, progress=sys.stderr.isatty(),
                                  pretrained=pretrained)
    seconds = time.perf_counter() - t0
    metrics = evaluate_pairs(model, dev, threshold=model.threshold)
    t1 = time.perf_counter()
    model.encode(dev.text_a + dev.text_b)
    encode_rate = 2 * len(dev.text_a) / (time.perf_counter() - t1)
    params = sum(p.numel() for p in model.model.parameters())
    return {"model": "deepsem LSTM-DSSM", "settings": settings, "train_seconds": round(result.seconds, 1),
            "total_seconds": round(seconds, 1), "epochs": round(result.epochs_run, 2), "stopped": result.stopped,
            "parameters": params, "encode_per_s": round(encode_rate), **metrics,
            "history": result.history}


def run_peer(train: TextPairs, dev: TextPairs, minutes: float, seed: int = 13, batch_size: int = 128,
             lr: float = 2e-3, hidden: int = 256, dim: int = 128) -> dict:
    """sentence-transformers siamese BiLSTM from scratch, trained for ``minutes`` with its own loss."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss
    from sentence_transformers.sentence_transformer.modules import LSTM, Pooling, WordEmbeddings
    from sentence_transformers.sentence_transformer.modules.tokenizer import WhitespaceTokenizer

    torch.manual_seed(seed)
    chars = build_tokenizer("char", list(train.text_a) + list(train.text_b), min_count=1, max_length=48)

    def spaced(texts: list[str]) -> list[str]:
        return [" ".join(chars.tokenize(t)) for t in texts]

    vocab = [chars.id_to_token(i) for i in range(chars.vocab_size)]
    weights = np.random.default_rng(seed).normal(0, dim**-0.5, (len(vocab), dim)).astype(np.float32)
    words = WordEmbeddings(WhitespaceTokenizer(vocab, stop_words=[]), weights, update_embeddings=True)
    lstm = LSTM(dim, hidden, bidirectional=True)
    pooling = Pooling(lstm.get_sentence_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[words, lstm, pooling], device="cpu")
    loss_fn = OnlineContrastiveLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    a, b, y = spaced(train.text_a), spaced(train.text_b), torch.tensor(train.labels, dtype=torch.float32)
    dev_a, dev_b = spaced(dev.text_a), spaced(dev.text_b)
    rng = np.random.default_rng(seed)
    history, best, best_metrics, t0, epoch = [], -1.0, {}, time.perf_counter(), 0
    budget = minutes * 60
    while time.perf_counter() - t0 < budget:
        model.train()
        order = rng.permutation(len(a))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            features = [model.tokenize([a[i] for i in idx]), model.tokenize([b[i] for i in idx])]
            loss = loss_fn(features, y[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if time.perf_counter() - t0 > budget:
                break
        epoch += 1
        model.eval()
        with torch.inference_mode():
            ea = model.encode(dev_a, batch_size=512, normalize_embeddings=True)
            eb = model.encode(dev_b, batch_size=512, normalize_embeddings=True)
        metrics = pair_metrics((ea * eb).sum(1), dev.labels)
        history.append({"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1), **metrics})
        print(f"peer epoch {epoch}: {metrics}", file=sys.stderr)
        if metrics["accuracy"] > best:
            best, best_metrics = metrics["accuracy"], metrics
    t1 = time.perf_counter()
    with torch.inference_mode():
        model.encode(dev_a + dev_b, batch_size=512)
    encode_rate = 2 * len(dev_a) / (time.perf_counter() - t1)
    return {"model": "sentence-transformers BiLSTM (OnlineContrastiveLoss)", "train_seconds": round(budget, 1),
            "epochs": epoch, "parameters": sum(p.numel() for p in model.parameters()),
            "encode_per_s": round(encode_rate), **best_metrics, "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    parser.add_argument("--which", choices=["ours", "peer", "both"], default="both")
    parser.add_argument("--set", action="append", default=[], help="override our settings: tower.hidden_size=384")
    parser.add_argument("--pretrained", type=Path, help="character vectors (.vec, `deepsem embeddings train`) to "
                        "start our embeddings from")
    parser.add_argument("--out", type=Path, default=Path("runs/bq"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = json.loads(json.dumps(OURS))
    for assignment in args.set:
        key = assignment.split("=", 1)[0]
        section = "model" if key.startswith("tower.") or key.split(".")[0] in ("gamma", "shared_towers") else None
        _set(settings[section] if section else settings, assignment)
    train = as_pairs(args.data_dir / "bq" / "train.tsv")
    dev = as_pairs(args.data_dir / "bq" / "dev.tsv")
    rows = []
    if args.which in ("ours", "both"):
        rows.append(run_ours(train, dev, args.minutes, args.out, settings, args.pretrained))
    if args.which in ("peer", "both"):
        rows.append(run_peer(train, dev, args.minutes))
    print(f"\nBQ dev ({len(dev.text_a):,} pairs), {args.minutes:g} min training budget each, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'model':<52} {'acc':>6} {'F1':>6} {'AUC':>6} {'Spear':>6} {'epochs':>6} {'train s':>8} {'enc/s':>7}")
    for r in rows:
        print(f"{r['model']:<52} {r['accuracy']:6.4f} {r['f1']:6.4f} {r['roc_auc']:6.4f} {r['spearman']:6.4f} "
              f"{r['epochs']:6} {r['train_seconds']:8.0f} {r['encode_per_s']:7}")
    if len(rows) == 2:
        print(f"accuracy difference (ours - peer): {rows[0]['accuracy'] - rows[1]['accuracy']:+.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False, default=float), encoding="utf-8")


if __name__ == "__main__":
    main()
