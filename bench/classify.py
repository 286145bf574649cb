"""Text classification: deepsem's towers against fastText on THUCNews (Chinese titles) and AG News (English).

    python bench/classify.py --minutes 5 --json bench/results/classify.json
    python bench/classify.py --limit 2000 --minutes 0.2 --fasttext-grid quick     # a smoke run

Data (``--data-dir``, default ``../shared/datasets``; see each folder's SOURCE.txt):

- THUCNews: ``train.txt`` (the first 45,000 of the published 180,000 titles), ``dev.txt``, ``test.txt``
  (10,000 each), ``title TAB label-id``; ``class.txt`` names the ids.
- AG News: ``train.csv`` (the first 10,429 of 120,000 rows), ``test.csv`` (7,600), ``"class","title",
  "description"`` without a header; the text is title + description (the backslashes that stand for line
  breaks become spaces). There is no dev split: the last 10 % of ``train.csv`` is the dev set of every
  system, and all train on the other 90 %.

Systems, on the same splits (``--limit N`` trains on a seeded random sample of N texts of each set):

- deepsem classifiers (``--models``): ``bilstm`` (peephole BiLSTM 2 x 128, last+max pooling; characters for
  Chinese, words for English), ``bilstm-small`` (the same with 2 x 64), ``bilstm+ngrams`` (2 x 32 with a
  fastText-style bag of token uni- and bigrams beside it, 100,000 hash rows x 32, and stronger regularisation:
  dropout 0.4, label smoothing 0.1, English words seen at least twice), ``bigru`` (torch's fused GRU
  2 x 128), ``cnn`` (CLSM convolution over letter trigrams), ``dssm`` (bag of letter trigrams -> tanh
  layers), ``cnn+ngrams`` / ``dssm+ngrams`` (those towers with a bag of hashed token n-grams of orders 2-3
  beside them, 200,000 rows x 32: over trigram tokens that is Chinese character bigrams), ``cnn+ngrams-reg``
  (the same with dropout 0.4, head dropout 0.3 and label smoothing 0.1), ``cnn100+ngrams-reg`` (that with 100
  feature maps instead of 300: a third of the gather per token). Each trains for at most ``--minutes``
  (``--epochs`` epochs, early stopping on dev accuracy with patience 3).
- fastText (the ``fasttext`` package, ``pip install fasttext-wheel``; benchmark only, not a deepsem
  dependency): unigrams and ``wordNgrams=2``; Chinese as characters and as jieba words; English lower-cased
  words and punctuation. lr and epochs are picked on dev accuracy from a grid (``--fasttext-grid``).

Reported on the test set: accuracy, macro-F1, training wall time (deepsem: the whole ``train_classifier``
call, tokenizer and dev evaluations included; fastText: the chosen setting's training, the grid's total in
the JSON) and predictions/s: one process, the whole test set predicted in one call from raw text
(tokenisation included), after a warm-up, with ``--threads`` torch threads (fastText predicts on one
thread).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepsem.tasks.classification import LabelledTexts, classification_metrics, evaluate_classifier, train_classifier

#: deepsem presets: tower settings, the tokenizer for Chinese / English, other train_classifier options.
MODELS: dict[str, dict[str, Any]] = {
    "bilstm": {"tower": {"encoder": "lstm-peephole", "hidden_size": 128}, "zh": "char", "en": "word"},
    "bilstm-small": {"tower": {"encoder": "lstm-peephole", "hidden_size": 64}, "zh": "char", "en": "word"},
    "bilstm+ngrams": {"tower": {"encoder": "lstm-peephole", "hidden_size": 32, "dropout": 0.4,
                                "embedding_dropout": 0.4}, "zh": "char", "en": "word", "min_count_en": 2,
                      "options": {"ngram_buckets": 100_000, "ngram_dim": 32, "label_smoothing": 0.1,
                                  "head_dropout": 0.3}},
    "bigru": {"tower": {"encoder": "gru", "hidden_size": 128}, "zh": "char", "en": "word"},
    "cnn": {"tower": {"encoder": "cnn"}, "zh": "trigram", "en": "trigram"},
    "dssm": {"tower": {"encoder": "dssm"}, "zh": "trigram", "en": "trigram"},
    # the CLSM tower with a fastText-style bag beside it; over trigram tokens an n-gram of order 3 spans a word
    # separator: Chinese character bigrams, English letter-trigram pairs across a word boundary
    "cnn+ngrams": {"tower": {"encoder": "cnn"}, "zh": "trigram", "en": "trigram",
                   "options": {"ngram_buckets": 200_000, "ngram_order": 3, "ngram_dim": 32}},
    "cnn+ngrams-reg": {"tower": {"encoder": "cnn", "dropout": 0.4, "embedding_dropout": 0.2}, "zh": "trigram",
                       "en": "trigram", "options": {"ngram_buckets": 200_000, "ngram_order": 3, "ngram_dim": 32,
                                                    "head_dropout": 0.3, "label_smoothing": 0.1}},
    "cnn100+ngrams-reg": {"tower": {"encoder": "cnn", "hidden_size": 100, "dropout": 0.4, "embedding_dropout": 0.2},
                          "zh": "trigram", "en": "trigram",
                          "options": {"ngram_buckets": 200_000, "ngram_order": 3, "ngram_dim": 32,
                                      "head_dropout": 0.3, "label_smoothing": 0.1}},
    "dssm+ngrams": {"tower": {"encoder": "dssm"}, "zh": "trigram", "en": "trigram",
                    "options": {"ngram_buckets": 200_000, "ngram_order": 3, "ngram_dim": 32}},
}
#: Longest input in tokens, per tokenizer (above the 99th percentile of both test sets).
MAX_LENGTH = {"char": 64, "word": 128, "trigram": 512}
FASTTEXT_GRIDS = {"full": ([0.1, 0.25, 0.5, 1.0], [5, 10, 25]), "quick": ([0.5], [5])}
_EN_TOKEN = re.compile(r"\w+|[^\w\s]")


# -- data ----------------------------------------------------------------------------------------------------
def load_thucnews(data_dir: Path) -> dict[str, LabelledTexts]:
    root = data_dir / "thucnews"
    names = (root / "class.txt").read_text("utf-8").split()

    def split(name: str) -> LabelledTexts:
        texts, labels = [], []
        for line in (root / f"{name}.txt").read_text("utf-8").splitlines():
            text, label = line.rsplit("\t", 1)
            texts.append(text)
            labels.append(names[int(label)])
        return LabelledTexts(texts, labels, source=str(root / f"{name}.txt"))

    return {"train": split("train"), "dev": split("dev"), "test": split("test")}


def load_ag_news(data_dir: Path) -> dict[str, LabelledTexts]:
    root = data_dir / "ag_news"
    names = (root / "classes.txt").read_text("utf-8").split("\n")

    def rows(name: str) -> tuple[list[str], list[str]]:
        texts, labels = [], []
        with open(root / name, encoding="utf-8", newline="") as fh:
            for label, title, description in csv.reader(fh):
                texts.append(re.sub(r"\s+", " ", f"{title} {description}".replace("\\", " ")).strip())
                labels.append(names[int(label) - 1])
        return texts, labels

    texts, labels = rows("train.csv")
    cut = len(texts) - len(texts) // 10
    test = rows("test.csv")
    return {"train": LabelledTexts(texts[:cut], labels[:cut], source=str(root / "train.csv")),
            "dev": LabelledTexts(texts[cut:], labels[cut:], source=str(root / "train.csv")),
            "test": LabelledTexts(*test, source=str(root / "test.csv"))}


DATASETS = {"thucnews": ("zh", load_thucnews), "ag_news": ("en", load_ag_news)}


def limited(data: LabelledTexts, limit: int | None, seed: int) -> LabelledTexts:
    """A seeded random sample of ``limit`` texts, in file order (the files' first rows hold few classes)."""
    if limit is None or limit >= len(data):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    return LabelledTexts([data.texts[i] for i in keep], [data.labels[i] for i in keep], source=data.source)


# -- deepsem ---------------------------------------------------------------------------------------------------
def run_deepsem(name: str, language: str, splits: dict[str, LabelledTexts], args: argparse.Namespace,
                dataset: str) -> dict[str, Any]:
    preset = MODELS[name]
    tokenizer = preset[language]
    tokenizer_options = {"max_length": MAX_LENGTH[tokenizer], "min_count": preset.get(f"min_count_{language}", 1)}
    t0 = time.perf_counter()
    clf, result = train_classifier(
        splits["train"], args.out / f"{dataset}-{name}", splits["dev"], tokenizer=tokenizer,
        tokenizer_options=tokenizer_options, tower=dict(preset["tower"]),
        training={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "patience": 3,
                  "max_minutes": args.minutes, "seed": args.seed, "threads": args.threads},
        resume=False, progress=args.progress, **preset.get("options", {}))
    train_seconds = time.perf_counter() - t0
    test = splits["test"]
    clf.predict_proba(test.texts[:1000])  # warm up
    t0 = time.perf_counter()
    clf.predict_proba(test.texts)
    rate = len(test) / (time.perf_counter() - t0)
    metrics = evaluate_classifier(clf, test)
    return {"system": f"deepsem {name} ({tokenizer})", "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "train_seconds": train_seconds, "predict_per_s": rate,
            "dev_accuracy": clf.info.get("dev_metrics", {}).get("accuracy"), "epochs": result.epochs_run,
            "stopped": result.stopped, "parameters": sum(p.numel() for p in clf.model.parameters()),
            "most_confused": metrics["most_confused"][:3]}


# -- fastText ----------------------------------------------------------------------------------------------------
def fasttext_tokens(text: str, how: str) -> str:
    if how == "chars":
        return " ".join(c for c in text if not c.isspace())
    if how == "jieba":
        import jieba

        return " ".join(w for w in jieba.lcut(text) if w.strip())
    return " ".join(_EN_TOKEN.findall(text.lower()))


def run_fasttext(how: str, ngrams: int, splits: dict[str, LabelledTexts], args: argparse.Namespace
                 ) -> dict[str, Any]:
    import fasttext

    labels = splits["train"].label_set()
    index = {y: i for i, y in enumerate(labels)}
    work = Path(tempfile.mkdtemp(prefix="ft-", dir=args.out))
    train_file = work / "train.txt"
    train_file.write_text("".join(f"__label__{index[y[0]]} {fasttext_tokens(t, how)}\n"
                                  for t, y in zip(splits["train"].texts, splits["train"].labels, strict=True)),
                          encoding="utf-8")
    dev_texts = [fasttext_tokens(t, how) for t in splits["dev"].texts]
    dev_truth = np.array([index[y[0]] for y in splits["dev"].labels])

    def predict(model: Any, texts: list[str]) -> np.ndarray:
        predicted, _ = model.predict(texts, k=1)
        return np.array([int(p[0].removeprefix("__label__")) for p in predicted])

    rates, epochs = FASTTEXT_GRIDS[args.fasttext_grid]
    best: tuple[float, float, int, float, Any] | None = None
    grid_t0 = time.perf_counter()
    for lr in rates:
        for epoch in epochs:
            t0 = time.perf_counter()
            model = fasttext.train_supervised(str(train_file), lr=lr, epoch=epoch, wordNgrams=ngrams, dim=100,
                                              minCount=1, bucket=2_000_000 if ngrams > 1 else 0,
                                              thread=args.threads, seed=args.seed, verbose=0)
            seconds = time.perf_counter() - t0
            acc = float((predict(model, dev_texts) == dev_truth).mean())
            if best is None or acc > best[0]:
                best = (acc, lr, epoch, seconds, model)
    grid_seconds = time.perf_counter() - grid_t0
    assert best is not None
    dev_acc, lr, epoch, seconds, model = best
    test = splits["test"]
    predict(model, [fasttext_tokens(t, how) for t in test.texts[:1000]])  # warm up
    t0 = time.perf_counter()
    predicted = predict(model, [fasttext_tokens(t, how) for t in test.texts])
    rate = len(test) / (time.perf_counter() - t0)
    truth = np.array([index[y[0]] for y in test.labels])
    metrics = classification_metrics(truth, np.eye(len(labels))[predicted], labels)
    name = {"chars": "characters", "jieba": "jieba words", "words": "words"}[how]
    return {"system": f"fastText {name}{' + bigrams' if ngrams > 1 else ''}", "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "train_seconds": seconds, "predict_per_s": rate,
            "dev_accuracy": dev_acc, "lr": lr, "epochs": epoch, "grid_seconds": grid_seconds}


# -- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("runs/classify"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="*", default=["bilstm-small", "bilstm+ngrams", "cnn", "dssm"],
                        choices=list(MODELS))
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget per deepsem model")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit", type=int, help="train on a random sample of N texts (smoke runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--no-fasttext", dest="fasttext", action="store_false")
    parser.add_argument("--fasttext-grid", choices=list(FASTTEXT_GRIDS), default="full")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                            if k != "json"}}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")

    for dataset in args.datasets:
        language, loader = DATASETS[dataset]
        splits = loader(args.data_dir)
        splits["train"] = limited(splits["train"], args.limit, args.seed)
        rows: list[dict[str, Any]] = []
        results[dataset] = {"train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(splits["test"]),
                            "systems": rows}
        for name in args.models:
            rows.append(run_deepsem(name, language, splits, args, dataset))
            print(dataset, rows[-1], flush=True)
            save()
        if args.fasttext:
            for how in ("chars", "jieba") if language == "zh" else ("words",):
                for ngrams in (1, 2):
                    rows.append(run_fasttext(how, ngrams, splits, args))
                    print(dataset, rows[-1], flush=True)
                    save()

    for dataset in args.datasets:
        info = results[dataset]
        print(f"\n{dataset}: train {info['train']:,}, dev {info['dev']:,}, test {info['test']:,}; "
              f"{args.threads} thread(s)")
        print(f"{'system':<40} {'accuracy':>8} {'macro-F1':>8} {'train s':>8} {'pred/s':>9}")
        for row in info["systems"]:
            print(f"{row['system']:<40} {row['accuracy']:8.4f} {row['macro_f1']:8.4f} {row['train_seconds']:8.1f} "
                  f"{row['predict_per_s']:9,.0f}")
    save()


if __name__ == "__main__":
    main()
