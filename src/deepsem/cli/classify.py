"""``deepsem classify ...``: train, evaluate and apply a text classifier."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from deepsem.tasks.classification import Classifier

from deepsem.cli.options import (
    Bidirectional,
    ClipNorm,
    Device,
    EmaDecay,
    EmbeddingDim,
    Encoder,
    Epochs,
    LearningRate,
    MaxLength,
    MaxMinutes,
    MaxSteps,
    MinCount,
    Patience,
    Pooling,
    Precision,
    PrecisionName,
    Progress,
    Resume,
    Seed,
    ShuffleBuffer,
    SkipBadRows,
    Threads,
    TokenizerName,
    VocabSample,
    check_precision,
    column_spec,
    data_file,
    data_file_or_shards,
    load_task,
    out_dir,
    out_file,
    text_file_or_stdin,
    text_lines,
)

classify_app = typer.Typer(help="Text classification with the towers: train, evaluate, predict.",
                           no_args_is_help=True)


def _class_weights(spec: str | None) -> str | dict[str, float] | None:
    """None, "balanced", or "label=weight,label=weight"."""
    if spec is None or spec in ("", "none"):
        return None
    if spec == "balanced":
        return spec
    weights: dict[str, float] = {}
    for part in spec.split(","):
        label, sep, value = part.rpartition("=")
        try:
            if not sep or not label.strip():
                raise ValueError
            weights[label.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--class-weights: expected 'balanced' or label=weight,..., got {spec!r}"
                                     ) from None
    return weights


def _load_classifier(model: Path) -> Classifier:
    from deepsem.tasks.classification import Classifier

    return load_task(model, Classifier, "not a classifier (train one with 'deepsem classify train')")


@classify_app.command("train")
def classify_train(
    data: Annotated[Path, typer.Argument(help="Training texts with labels: TSV/CSV/JSONL/Parquet; a folder or glob "
                                         "of shards is streamed (see --shuffle-buffer).",
                                         callback=data_file_or_shards)],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=out_dir)],
    dev: Annotated[Path | None, typer.Option(help="Dev texts: choose the best epoch, stop early.",
                                             callback=data_file)] = None,
    text_col: Annotated[str, typer.Option(help="Text column: 0-based index or header name.")] = "0",
    label_col: Annotated[str, typer.Option(help="Label column: 0-based index or header name.")] = "1",
    header: Annotated[bool | None, typer.Option(help="The first TSV/CSV line is a header (--no-header: it is "
                      "data). Default: detected from column names such as text/label (the decision is printed).")
                      ] = None,
    multi_label: Annotated[bool, typer.Option(help="Several labels per text (a sigmoid per label, BCE loss).")
                           ] = False,
    label_sep: Annotated[str, typer.Option(help="Separator of the labels of one text (--multi-label).")] = ",",
    class_weights: Annotated[str | None, typer.Option(help="'balanced' (rare classes weigh more) or "
                             "label=weight,label=weight. Multi-label: the positives' weight per label.")] = None,
    encoder: Annotated[Encoder, typer.Option(help="Tower: lstm-peephole, lstm, lstm-coupled, gru, rnn (recurrent); "
                       "dssm (bag of letter trigrams); cnn (CLSM convolution).")] = Encoder.lstm_peephole,
    tokenizer: Annotated[TokenizerName | None, typer.Option(help="char, word (jieba), trigram or subword. "
                         "Default: trigram for the dssm and cnn encoders, char otherwise.")] = None,
    min_count: MinCount = 1,
    max_length: MaxLength = 64,
    embedding_dim: EmbeddingDim = 128,
    hidden: Annotated[int | None, typer.Option(help="Hidden size per direction; dssm: layer width; cnn: feature "
                      "maps. Default: 128 (recurrent), 300 (dssm, cnn).", min=1)] = None,
    layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers; dssm: hidden layers.", min=1)
                      ] = None,
    bidirectional: Bidirectional = True,
    pooling: Annotated[Pooling, typer.Option(help="Sentence vector: last state, mean, max, or last+max.")
                       ] = Pooling.last_max,
    dim: Annotated[int, typer.Option(help="Size of the tower's output vector.", min=1)] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout in the tower and on token embeddings.")] = 0.2,
    ngram_buckets: Annotated[int, typer.Option(help="Add a fastText-style bag of token n-grams next to the tower, "
                             "hashed into this many rows (e.g. 100000; 0 = the tower alone).", min=0)] = 0,
    ngram_order: Annotated[int, typer.Option(help="Longest n-gram of the bag (2 = bigrams).")] = 2,
    epochs: Epochs = 10,
    batch_size: Annotated[int, typer.Option(help="Texts per step.", min=1)] = 64,
    lr: LearningRate = 3e-3,
    patience: Patience = 3,
    max_minutes: MaxMinutes = None,
    max_steps: MaxSteps = None,
    clip_norm: ClipNorm = 1.0,
    seed: Seed = 13,
    threads: Threads = None,
    ema_decay: EmaDecay = None,
    skip_bad_rows: SkipBadRows = False,
    resume: Resume = True,
    progress: Progress = None,
    device: Device = "cpu",
    precision: Precision = PrecisionName.fp32,
    shuffle_buffer: ShuffleBuffer = 100_000,
    vocab_sample: VocabSample = None,
) -> None:
    """Train a text classifier (any tower -> linear layer) and save the best model directory."""
    from deepsem.config import TowerConfig, TrainConfig
    from deepsem.tasks.classification import train_classifier
    from deepsem.towers import default_tokenizer

    precision_name = check_precision(precision, device)
    if tokenizer is None:  # the tokenizer the tower needs (trigram for dssm and cnn), else char
        tokenizer = TokenizerName(default_tokenizer(encoder.value))
    tower = TowerConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                        num_layers=layers, bidirectional=bidirectional, pooling=pooling.value, output_dim=dim,
                        dropout=dropout, embedding_dropout=dropout)
    tower.validate()
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, clip_norm=clip_norm or None,
                            patience=patience, max_minutes=max_minutes, max_steps=max_steps, seed=seed,
                            threads=threads, precision=precision_name, ema_decay=ema_decay)
    train_cfg.validate()
    clf, result = train_classifier(
        data, out, dev, tokenizer=tokenizer.value,
        tokenizer_options={"min_count": min_count, "max_length": max_length}, tower=tower, training=train_cfg,
        multi_label=multi_label, class_weights=_class_weights(class_weights), text_col=column_spec(text_col),
        label_col=column_spec(label_col), label_sep=label_sep, header=header, skip_bad_rows=skip_bad_rows,
        resume=resume, ngram_buckets=ngram_buckets, ngram_order=ngram_order,
        progress=progress, device=device,  # progress None (auto) through to the trainer
        shuffle_buffer=shuffle_buffer, vocab_sample=vocab_sample,
    )
    if os.environ.get("RANK", "0").strip() not in ("", "0"):  # torchrun: rank 0 reports, as only it writes
        return
    typer.echo(f"{len(clf.labels)} labels; stopped: {result.stopped} after {result.steps} steps "
               f"({result.seconds:.0f} s)")
    if "dev_metrics" in clf.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in clf.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


@classify_app.command("evaluate")
def classify_evaluate(
    model: Annotated[Path, typer.Option(help="Classifier model directory.")],
    data: Annotated[Path, typer.Argument(help="Labelled texts (TSV/CSV/JSONL/Parquet).", callback=data_file)],
    text_col: Annotated[str, typer.Option(help="Text column: 0-based index or header name.")] = "0",
    label_col: Annotated[str, typer.Option(help="Label column: 0-based index or header name.")] = "1",
    label_sep: Annotated[str | None, typer.Option(help="Separator of multi-label labels (default: the one the "
                         "model was trained with).")] = None,
    header: Annotated[bool | None, typer.Option(help="The first TSV/CSV line is a header (--no-header: it is "
                      "data). Default: detected from column names such as text/label (the decision is printed).")
                      ] = None,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG here.",
                                                   callback=out_file)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every metric as JSON.")] = False,
) -> None:
    """Accuracy, macro/micro F1, per-class precision/recall/F1 and the most confused classes."""
    from deepsem.tasks.classification import evaluate_classifier

    clf = _load_classifier(model)
    metrics = evaluate_classifier(clf, data, text_col=column_spec(text_col), label_col=column_spec(label_col),
                                  label_sep=label_sep, header=header, skip_bad_rows=skip_bad_rows,
                                  confusion_png=confusion)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
        return
    for key in ("examples", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "log_loss", "hamming_loss"):
        if key in metrics:
            value = metrics[key]
            typer.echo(f"{key:>12}  {value}" if isinstance(value, int) else f"{key:>12}  {value:.4f}")
    width = max(8, *(len(y) for y in clf.labels))
    typer.echo(f"\n{'label':<{width}}  precision  recall      f1  support")
    for label, row in metrics["per_class"].items():
        typer.echo(f"{label:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  "
                   f"{row['support']:7d}")
    if metrics.get("most_confused"):
        typer.echo("\nmost confused (true -> predicted):")
        for pair in metrics["most_confused"]:
            typer.echo(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    if "confusion_png" in metrics:
        typer.echo(f"\nconfusion matrix: {metrics['confusion_png']}")


@classify_app.command("predict")
def classify_predict(
    model: Annotated[Path, typer.Option(help="Classifier model directory.")],
    texts: Annotated[Path | None, typer.Argument(help="A text file, one text per line; stdin when absent or '-'.",
                                                 callback=text_file_or_stdin)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Labels per text, most probable first.", min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per text.")] = False,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 1024,
    chunk: Annotated[int, typer.Option(help="Texts read and classified at a time (bounds memory).", min=1)
                     ] = 100_000,
) -> None:
    """Print the k most probable labels of each text with their probabilities (tab-separated)."""
    clf = _load_classifier(model)

    def flush(batch: list[str]) -> None:
        for text, top in zip(batch, clf.predict(batch, k=k, batch_size=batch_size), strict=True):
            if as_json:
                typer.echo(json.dumps({"text": text, "predictions": [{"label": y, "prob": round(p, 6)}
                                                                     for y, p in top]}, ensure_ascii=False))
            else:
                typer.echo("\t".join(f"{y}\t{p:.4f}" for y, p in top))

    batch: list[str] = []
    for text in text_lines(texts):
        batch.append(text)
        if len(batch) >= chunk:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
