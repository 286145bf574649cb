"""The matching commands: ``train``, ``evaluate`` and ``encode`` (two-tower models on text pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    Backend,
    BackendName,
    Bidirectional,
    Device,
    EmbeddingDim,
    EncodePrecision,
    Encoder,
    Epochs,
    LearningRate,
    Loss,
    MaxLength,
    MaxSteps,
    MinCount,
    Negatives,
    OnnxFile,
    Patience,
    Pooling,
    Precision,
    PrecisionName,
    Progress,
    Resume,
    ShuffleBuffer,
    Side,
    SkipBadRows,
    Threads,
    TokenizerName,
    VocabSample,
    above_zero,
    backend_kwargs,
    check_precision,
    data_file,
    data_file_or_shards,
    existing_dir,
    not_negative,
    out_dir,
    out_file,
    pair_columns,
    text_file_or_stdin,
    text_lines,
)


def train(
    data: Annotated[Path, typer.Argument(help="Training pairs: TSV/CSV/JSONL/Parquet with text_a, text_b[, label]; "
                                         "a folder or a quoted glob of such shards is streamed, not loaded.",
                                         callback=data_file_or_shards)],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=out_dir)],
    dev: Annotated[Path | None, typer.Option(help="Dev pairs: chooses the best epoch and the threshold.",
                                             callback=data_file)] = None,
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    skip_bad_rows: SkipBadRows = False,
    clicks: Annotated[bool, typer.Option(help="DATA (and --dev) are click logs: --columns name query,doc,clicks "
                      "('-' for clicks: each row is one click); rows are summed per (query, doc); clicked "
                      "pairs are positives, shown-but-unclicked pairs (with --impressions) negatives. Streamed "
                      "shards are taken as summed upstream: one row per (query, doc).")] = False,
    impressions: Annotated[str | None, typer.Option(help="Impressions column of a click log (index or name).")
                           ] = None,
    tokenizer: Annotated[TokenizerName | None, typer.Option(help="char: Chinese characters + whole Latin words; "
                         "word: jieba; trigram: DSSM letter trigrams; subword: WordPiece. Default: trigram for "
                         "the dssm and cnn encoders, char otherwise.")] = None,
    min_count: MinCount = 1,
    max_vocab: Annotated[int | None, typer.Option(help="Keep at most this many tokens.", min=1)] = None,
    max_length: MaxLength = 64,
    encoder: Annotated[Encoder, typer.Option(help="Tower: lstm-peephole (LSTM-DSSM), lstm, lstm-coupled, gru, rnn "
                       "(recurrent); dssm (bag of letter trigrams -> tanh layers); cnn (CLSM convolution).")
                       ] = Encoder.lstm_peephole,
    embedding_dim: EmbeddingDim = 128,
    hidden: Annotated[int | None, typer.Option(help="Hidden size per direction; dssm: hidden layer width; cnn: "
                      "feature maps. Default: 128 (recurrent), 300 (dssm, cnn).", min=1)] = None,
    layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers; dssm: hidden tanh layers. "
                      "Default: 1; dssm 2.", min=1)] = None,
    orthogonal_init: Annotated[bool, typer.Option(help="Orthogonal recurrent matrices (else torch's uniform).")
                               ] = True,
    pretrained: Annotated[Path | None, typer.Option(help="Initialise the token embeddings from word vectors "
                          "(word2vec/fastText .vec/.txt, e.g. from 'deepsem embeddings train').",
                          callback=data_file)] = None,
    freeze_embeddings: Annotated[bool, typer.Option(help="Keep the --pretrained embeddings fixed.")] = False,
    bidirectional: Bidirectional = True,
    pooling: Annotated[Pooling, typer.Option(help="Sentence vector: last state, mean, max, or last+max.")
                       ] = Pooling.last_max,
    dim: Annotated[int, typer.Option(help="Semantic vector size (the tanh layer).", min=1)] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout before the semantic layer and between layers.")] = 0.2,
    embedding_dropout: Annotated[float, typer.Option(help="Dropout on token embeddings.")] = 0.2,
    separate_towers: Annotated[bool, typer.Option(help="Separate query and document towers.")] = False,
    gamma: Annotated[float, typer.Option(help="Initial softmax smoothing factor gamma.", callback=above_zero)
                     ] = 10.0,
    loss: Annotated[Loss, typer.Option(help="softmax: DSSM -log P(D+|Q) over negatives; pointwise: BCE on 0/1 "
                    "labels; hinge: pairwise margin; pointwise+softmax: both.")] = Loss.pointwise_softmax,
    negatives: Annotated[Negatives, typer.Option(help="Negatives for softmax/hinge: in-batch, K random "
                         "documents, both, or labelled: in-batch + K of the query's own label-0 documents (its "
                         "unclicked results, a question's wrong candidates).")] = Negatives.in_batch,
    num_negatives: Annotated[int, typer.Option(help="K random negatives per query.", min=0)] = 4,
    epochs: Epochs = 5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (the global batch: torchrun's processes split it).",
                                            min=1)] = 128,
    lr: LearningRate = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", callback=not_negative)] = 0.01,
    schedule: Annotated[str, typer.Option(help="linear, cosine or constant decay after warm-up.")] = "linear",
    clip_norm: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).",
                                             callback=not_negative)] = 1.0,
    clip_value: Annotated[float, typer.Option(help="Clip every gradient element to [-v, v] (0 = off).",
                                              callback=not_negative)] = 0.0,
    patience: Patience = 3,
    eval_every: Annotated[int | None, typer.Option(help="Steps between dev evaluations (default: epoch).", min=1)
                          ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes; the learning "
                           "rate decay then follows the elapsed time when that ends training first.",
                           callback=above_zero)] = None,
    max_steps: MaxSteps = None,
    seed: Annotated[int, typer.Option(help="Random seed (data order, initialisation, dropout).")] = 13,
    threads: Threads = None,
    length_buckets: Annotated[bool, typer.Option(help="Batches of pairs of similar lengths, in shuffled order: a "
                              "recurrent tower runs far fewer padding steps (BQ: 3x faster epochs).")] = True,
    gather_negatives: Annotated[bool, typer.Option(help="Under torchrun: in-batch negatives from every process's "
                                "documents (the global batch); --no-gather-negatives: each process's own.")] = True,
    resume: Resume = True,
    progress: Progress = None,
    device: Device = "cpu",
    precision: Precision = PrecisionName.fp32,
    shuffle_buffer: ShuffleBuffer = 100_000,
    vocab_sample: VocabSample = None,
) -> None:
    """Train an LSTM-DSSM two-tower model on text pairs and save the best model directory.

    The defaults are the settings that gave the best BQ result on a 2-core CPU (bench/RESULTS.md): character
    tokens, peephole BiLSTM 2 x 128, last+max pooling, dropout 0.2, pointwise + in-batch softmax loss.
    """
    from deepsem.config import ModelConfig, TowerConfig, TrainConfig
    from deepsem.tasks.matching import train as train_pairs
    from deepsem.towers import default_tokenizer

    precision_name = check_precision(precision, device)
    tower = TowerConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                        num_layers=layers, bidirectional=bidirectional, pooling=pooling.value, output_dim=dim,
                        dropout=dropout, embedding_dropout=embedding_dropout, orthogonal_init=orthogonal_init)
    if tokenizer is None:  # the tokenizer the tower needs (trigram for dssm and cnn), else char
        tokenizer = TokenizerName(default_tokenizer(encoder.value))
    model_cfg = ModelConfig(tower=tower, shared_towers=not separate_towers, gamma=gamma)
    model_cfg.validate()
    train_cfg = TrainConfig(loss=loss.value, negatives=negatives.value, num_negatives=num_negatives,
                            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                            schedule=schedule, clip_norm=clip_norm or None, clip_value=clip_value or None,
                            patience=patience,
                            eval_every=eval_every, max_minutes=max_minutes, max_steps=max_steps, seed=seed,
                            threads=threads,
                            length_buckets=length_buckets, precision=precision_name,
                            gather_negatives=gather_negatives)
    train_cfg.validate()
    # progress None (auto: a terminal only) goes through to the trainer, which owns the bar
    model, result = train_pairs(
        data, out, dev, tokenizer=tokenizer.value,
        tokenizer_options={"min_count": min_count, "max_size": max_vocab, "max_length": max_length},
        model=model_cfg, training=train_cfg, columns=pair_columns(columns), skip_bad_rows=skip_bad_rows,
        clicks=clicks, impressions=int(impressions) if impressions and impressions.isdigit() else impressions,
        resume=resume, progress=progress, pretrained=pretrained, freeze_embeddings=freeze_embeddings, device=device,
        shuffle_buffer=shuffle_buffer, vocab_sample=vocab_sample,
    )
    if os.environ.get("RANK", "0").strip() not in ("", "0"):  # torchrun: rank 0 reports, as only it writes
        return
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "dev_metrics" in model.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in model.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


def evaluate(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    data: Annotated[Path | None, typer.Argument(help="Labelled pairs (TSV/CSV/JSONL/Parquet).",
                                                callback=data_file)] = None,
    retrieval: Annotated[Path | None, typer.Option(help="A BEIR-style folder (corpus.jsonl, queries.jsonl, "
                         "qrels/SPLIT.tsv) to rank instead of pairs.", callback=existing_dir)] = None,
    split: Annotated[str, typer.Option(help="qrels split of --retrieval.")] = "test",
    columns: Annotated[str, typer.Option(help="Columns text_a,text_b,label of DATA.")] = "0,1,2",
    threshold: Annotated[float | None, typer.Option(help="Cosine threshold for accuracy/F1 (default: the "
                         "one chosen on dev at training time).")] = None,
    dev: Annotated[Path | None, typer.Option(help="Choose the threshold on these pairs instead.",
                                             callback=data_file)] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    precision: EncodePrecision = PrecisionName.fp32,
) -> None:
    """Score a model: accuracy, F1, ROC-AUC, Spearman on pairs; MRR, MAP, NDCG, recall on retrieval."""
    from deepsem.data.readers import read_retrieval
    from deepsem.tasks import load
    from deepsem.tasks.matching import as_pairs, evaluate_pairs, evaluate_retrieval

    if (data is None) == (retrieval is None):
        fail("give either DATA (pairs) or --retrieval DIR")
    semantic = load(model, check_precision(precision), **backend_kwargs(backend, onnx))
    if retrieval is not None:
        rs = read_retrieval(retrieval, split=split)
        metrics = evaluate_retrieval(semantic, rs.queries, rs.corpus, rs.qrels, ks=(1, 10, 100))
    else:
        assert data is not None
        pairs = as_pairs(data, pair_columns(columns), skip_bad_rows)
        if dev is not None:  # --dev wins over --threshold
            metrics = evaluate_pairs(semantic, pairs, dev=as_pairs(dev, pair_columns(columns), skip_bad_rows))
        else:  # no --threshold: the model's own, chosen on dev at training time (None: chosen on DATA)
            chosen = threshold if threshold is not None else semantic.threshold
            metrics = evaluate_pairs(semantic, pairs, threshold=chosen)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>12}  {value:.4f}")


def encode(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    out: Annotated[Path, typer.Option(help="Where to write the vectors (.npy, float32, one row per text).",
                                      callback=out_file)],
    texts: Annotated[Path | None, typer.Argument(help="A text file, one text per line; stdin when absent or '-'.",
                                                 callback=text_file_or_stdin)] = None,
    side: Annotated[Side, typer.Option(help="Tower to use: query or doc.")] = Side.query,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 512,
    chunk: Annotated[int, typer.Option(help="Texts read and encoded at a time (bounds memory).", min=1)] = 100_000,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    precision: EncodePrecision = PrecisionName.fp32,
) -> None:
    """Encode texts (one per line) into L2-normalised vectors saved as a .npy file."""
    from deepsem.fileio import atomic_write_npy
    from deepsem.tasks import load

    semantic = load(model, check_precision(precision), **backend_kwargs(backend, onnx))
    vectors = semantic.encode_stream(text_lines(texts), chunk=chunk, batch_size=batch_size, side=side.value)
    atomic_write_npy(out, vectors)
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}", err=True)
