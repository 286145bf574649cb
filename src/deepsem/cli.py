"""The ``deepsem`` command: train, evaluate, encode, demo."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="deepsem",
    help="Learn what text means from weak signals: LSTM-DSSM two-tower models for search and matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Encoder(StrEnum):
    lstm = "lstm"
    lstm_peephole = "lstm-peephole"
    lstm_coupled = "lstm-coupled"


class Pooling(StrEnum):
    last = "last"
    mean = "mean"
    max = "max"
    last_max = "last+max"


class Loss(StrEnum):
    softmax = "softmax"
    pointwise = "pointwise"
    hinge = "hinge"
    pointwise_softmax = "pointwise+softmax"


class Negatives(StrEnum):
    in_batch = "in-batch"
    random = "random"
    both = "both"


class TokenizerName(StrEnum):
    char = "char"
    word = "word"
    trigram = "trigram"
    subword = "subword"


def _columns(spec: str) -> tuple[int | str | None, ...]:
    """"0,1,2" or "q,d,label" or "0,1,-" (no label: every pair positive) -> a column spec per field."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3:
        raise typer.BadParameter(f"expected three comma-separated columns (text_a,text_b,label), got {spec!r}")
    return tuple(None if p in ("-", "") else int(p) if p.isdigit() else p for p in parts)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training pairs: TSV/CSV/JSONL/Parquet with text_a, text_b[, label].")],
    out: Annotated[Path, typer.Option(help="Model directory to write (config.json, tokenizer, weights).")],
    dev: Annotated[Path | None, typer.Option(help="Dev pairs: chooses the best epoch and the threshold.")] = None,
    columns: Annotated[str, typer.Option(help="Columns of text_a,text_b,label by index or header name; "
                                         "'-' for label means every pair is a positive.")] = "0,1,2",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted) instead of stopping.")] = False,
    clicks: Annotated[bool, typer.Option(help="DATA (and --dev) are click logs: --columns name query,doc,clicks "
                      "('-' for clicks: each row is one click); rows are summed per (query, doc); clicked "
                      "pairs are positives, shown-but-unclicked pairs (with --impressions) negatives.")] = False,
    impressions: Annotated[str | None, typer.Option(help="Impressions column of a click log (index or name).")
                           ] = None,
    tokenizer: Annotated[TokenizerName, typer.Option(help="char: Chinese characters + whole Latin words; word: "
                         "jieba; trigram: DSSM letter trigrams; subword: WordPiece.")] = TokenizerName.char,
    min_count: Annotated[int, typer.Option(help="Drop tokens seen fewer times in the training text.")] = 1,
    max_vocab: Annotated[int | None, typer.Option(help="Keep at most this many tokens.")] = None,
    max_length: Annotated[int, typer.Option(help="Truncate texts to this many tokens.")] = 64,
    encoder: Annotated[Encoder, typer.Option(help="Recurrent tower.")] = Encoder.lstm_peephole,
    embedding_dim: Annotated[int, typer.Option(help="Token embedding size.")] = 128,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size (per direction).")] = 128,
    layers: Annotated[int, typer.Option(help="Stacked LSTM layers.")] = 1,
    bidirectional: Annotated[bool, typer.Option(help="Read the text both ways.")] = True,
    pooling: Annotated[Pooling, typer.Option(help="Sentence vector: last state, mean, max, or last+max.")
                       ] = Pooling.last_max,
    dim: Annotated[int, typer.Option(help="Semantic vector size (the tanh layer).")] = 128,
    dropout: Annotated[float, typer.Option(help="Dropout before the semantic layer and between layers.")] = 0.2,
    embedding_dropout: Annotated[float, typer.Option(help="Dropout on token embeddings.")] = 0.2,
    separate_towers: Annotated[bool, typer.Option(help="Separate query and document towers.")] = False,
    gamma: Annotated[float, typer.Option(help="Initial softmax smoothing factor gamma.")] = 10.0,
    loss: Annotated[Loss, typer.Option(help="softmax: DSSM -log P(D+|Q) over negatives; pointwise: BCE on 0/1 "
                    "labels; hinge: pairwise margin; pointwise+softmax: both.")] = Loss.pointwise_softmax,
    negatives: Annotated[Negatives, typer.Option(help="Negatives for softmax/hinge: in-batch, K random "
                         "documents, or both.")] = Negatives.in_batch,
    num_negatives: Annotated[int, typer.Option(help="K random negatives per query.")] = 4,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 3e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    schedule: Annotated[str, typer.Option(help="linear, cosine or constant decay after warm-up.")] = "linear",
    clip_norm: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).")] = 1.0,
    patience: Annotated[int, typer.Option(help="Stop after this many dev evaluations without gain.")] = 3,
    eval_every: Annotated[int | None, typer.Option(help="Steps between dev evaluations (default: epoch).")
                          ] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop training after this many minutes; the learning "
                           "rate decay then follows the elapsed time when that ends training first.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (data order, initialisation, dropout).")] = 13,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the run's last checkpoint if there is one.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train an LSTM-DSSM two-tower model on text pairs and save the best model directory.

    The defaults are the settings that gave the best BQ result on a 2-core CPU (bench/RESULTS.md): character
    tokens, peephole BiLSTM 2 x 128, last+max pooling, dropout 0.2, pointwise + in-batch softmax loss.
    """
    from deepsem.config import ConfigError, ModelConfig, TowerConfig, TrainConfig
    from deepsem.data.errors import DataError
    from deepsem.matching import train as train_pairs

    try:
        tower = TowerConfig(encoder=encoder.value, embedding_dim=embedding_dim, hidden_size=hidden,
                            num_layers=layers, bidirectional=bidirectional, pooling=pooling.value, output_dim=dim,
                            dropout=dropout, embedding_dropout=embedding_dropout)
        model_cfg = ModelConfig(tower=tower, shared_towers=not separate_towers, gamma=gamma)
        model_cfg.validate()
        train_cfg = TrainConfig(loss=loss.value, negatives=negatives.value, num_negatives=num_negatives,
                                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                schedule=schedule, clip_norm=clip_norm or None, patience=patience,
                                eval_every=eval_every, max_minutes=max_minutes, seed=seed, threads=threads)
        train_cfg.validate()
        model, result = train_pairs(
            data, out, dev, tokenizer=tokenizer.value,
            tokenizer_options={"min_count": min_count, "max_size": max_vocab, "max_length": max_length},
            model=model_cfg, training=train_cfg, columns=_columns(columns), skip_bad_rows=skip_bad_rows,
            clicks=clicks, impressions=int(impressions) if impressions and impressions.isdigit() else impressions,
            resume=resume, progress=progress,
        )
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "dev_metrics" in model.info:
        typer.echo("best dev: " + ", ".join(f"{k} {v:.4f}" for k, v in model.info["dev_metrics"].items()))
    typer.echo(f"model directory: {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    data: Annotated[Path | None, typer.Argument(help="Labelled pairs (TSV/CSV/JSONL/Parquet).")] = None,
    retrieval: Annotated[Path | None, typer.Option(help="A BEIR-style folder (corpus.jsonl, queries.jsonl, "
                         "qrels/SPLIT.tsv) to rank instead of pairs.")] = None,
    split: Annotated[str, typer.Option(help="qrels split of --retrieval.")] = "test",
    columns: Annotated[str, typer.Option(help="Columns text_a,text_b,label of DATA.")] = "0,1,2",
    threshold: Annotated[float | None, typer.Option(help="Cosine threshold for accuracy/F1 (default: the "
                         "one chosen on dev at training time).")] = None,
    dev: Annotated[Path | None, typer.Option(help="Choose the threshold on these pairs instead.")] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows (counted).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Score a model: accuracy, F1, ROC-AUC, Spearman on pairs; MRR, MAP, NDCG, recall on retrieval."""
    from deepsem.config import ConfigError
    from deepsem.data.errors import DataError
    from deepsem.data.readers import read_retrieval
    from deepsem.encoder import load
    from deepsem.matching import as_pairs, evaluate_pairs, evaluate_retrieval
    from deepsem.metrics import best_threshold

    if (data is None) == (retrieval is None):
        _fail(ValueError("give either DATA (pairs) or --retrieval DIR"))
    try:
        semantic = load(model)
        if retrieval is not None:
            rs = read_retrieval(retrieval, split=split)
            metrics = evaluate_retrieval(semantic, rs.queries, rs.corpus, rs.qrels, ks=(1, 10, 100))
        else:
            assert data is not None
            pairs = as_pairs(data, _columns(columns), skip_bad_rows)
            chosen = threshold
            if dev is not None:
                dev_pairs = as_pairs(dev, _columns(columns), skip_bad_rows)
                assert dev_pairs.labels is not None
                chosen = best_threshold(semantic.similarity(dev_pairs.text_a, dev_pairs.text_b), dev_pairs.labels)
            if chosen is None:
                chosen = semantic.threshold
            metrics = evaluate_pairs(semantic, pairs, threshold=chosen)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>12}  {value:.4f}")


@app.command()
def encode(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    out: Annotated[Path, typer.Option(help="Where to write the vectors (.npy, float32, one row per text).")],
    texts: Annotated[Path | None, typer.Argument(help="A text file, one text per line; stdin when absent or '-'.")
                     ] = None,
    side: Annotated[str, typer.Option(help="Tower to use: query or doc.")] = "query",
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 512,
    chunk: Annotated[int, typer.Option(help="Texts read and encoded at a time (bounds memory).")] = 100_000,
) -> None:
    """Encode texts (one per line) into L2-normalised vectors saved as a .npy file."""
    import numpy as np

    from deepsem.encoder import load
    from deepsem.fileio import atomic_write

    try:
        semantic = load(model)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    stream = sys.stdin if texts is None or str(texts) == "-" else open(texts, encoding="utf-8")  # noqa: SIM115
    parts: list[np.ndarray] = []
    batch: list[str] = []
    try:
        for number, line in enumerate(stream, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                _fail(ValueError(f"{texts or 'stdin'}, line {number}: empty text"))
            batch.append(text)
            if len(batch) >= chunk:
                parts.append(semantic.encode(batch, batch_size=batch_size, side=side))
                batch = []
    except UnicodeDecodeError as exc:
        _fail(ValueError(f"{texts or 'stdin'}: not UTF-8 text after line {len(batch)}: {exc}"))
    finally:
        if stream is not sys.stdin:
            stream.close()
    if batch:
        parts.append(semantic.encode(batch, batch_size=batch_size, side=side))
    vectors = np.concatenate(parts) if parts else np.zeros((0, semantic.dim), np.float32)
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            np.save(fh, vectors)

    atomic_write(out, write)
    typer.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} vectors to {out}", err=True)


index_app = typer.Typer(help="Build and change a vector index (Faiss + document store + model).",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")


def _load_index(path: Path):
    from deepsem.index import Index

    try:
        return Index.load(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
        raise


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Model directory whose document tower encodes the corpus.")],
    corpus: Annotated[Path, typer.Option(help="Documents: JSONL ({id, text, ...metadata}), TSV/CSV with a "
                      "header (id, text, ...), or a text file with one document per line.")],
    index: Annotated[Path, typer.Option(help="Index directory to write (replaced atomically).")],
    factory: Annotated[str, typer.Option(help="Faiss factory string: Flat (exact), HNSW32, IVF4096,Flat, "
                       "IVF1024,PQ32 ...")] = "Flat",
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed documents (counted).")] = False,
    check_recall: Annotated[bool, typer.Option(help="Report recall@10 of the index against exact search on "
                            "a sample of 200 documents used as queries.")] = False,
    search_params: Annotated[str | None, typer.Option(help="Faiss search parameters kept with the index, e.g. "
                             "'efSearch=256' (HNSW) or 'nprobe=64' (IVF); default efSearch=128 / nprobe=32.")
                             ] = None,
    vectors: Annotated[Path | None, typer.Option(help="Precomputed document vectors (.npy from `deepsem encode "
                       "--side doc`, one row per document in corpus order): skips encoding.")] = None,
) -> None:
    """Encode every document of a corpus and index the vectors."""
    import time

    from deepsem.data.errors import DataError
    from deepsem.index import Index

    t0 = time.perf_counter()
    try:
        import numpy as np

        given = np.load(vectors, allow_pickle=False) if vectors is not None else None
        built = Index.build(model, corpus, index, factory, id_field=id_field, text_field=text_field,
                            skip_bad_rows=skip_bad_rows, vectors=given, search_params=search_params,
                            progress=True)
    except (DataError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    typer.echo(f"indexed {len(built):,} documents with {factory} in {time.perf_counter() - t0:.1f} s -> {index}")
    if check_recall:
        typer.echo(f"recall@10 against exact search: {built.check_recall(k=10):.4f}")


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    corpus: Annotated[Path, typer.Option(help="Documents to add (same formats as build); ids must be new.")],
    id_field: Annotated[str, typer.Option(help="Column / key holding the document id.")] = "id",
    text_field: Annotated[str, typer.Option(help="Column / key holding the document text.")] = "text",
) -> None:
    """Add documents to an existing index."""
    from deepsem.data.errors import DataError
    from deepsem.index import iter_corpus

    idx = _load_index(index)
    try:
        added = idx.add(iter_corpus(corpus, id_field=id_field, text_field=text_field))
    except (DataError, ValueError) as exc:
        _fail(exc)
        return
    typer.echo(f"added {added:,} documents; {len(idx):,} in the index")


@index_app.command("delete")
def index_delete(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    ids: Annotated[list[str], typer.Argument(help="Document ids to delete.")],
) -> None:
    """Delete documents by id."""
    idx = _load_index(index)
    typer.echo(f"deleted {idx.delete(ids):,} of {len(ids):,} ids; {len(idx):,} in the index")


@index_app.command("rebuild")
def index_rebuild(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    factory: Annotated[str | None, typer.Option(help="A new factory string (default: keep).")] = None,
) -> None:
    """Re-encode the live documents into a fresh index, reclaiming deleted ones."""
    idx = _load_index(index)
    try:
        idx.rebuild(factory)
    except ValueError as exc:
        _fail(exc)
    typer.echo(f"rebuilt: {idx.stats()}")


@index_app.command("stats")
def index_stats(index: Annotated[Path, typer.Option(help="Index directory.")]) -> None:
    """Print the number of documents, the factory and the version."""
    typer.echo(json.dumps(_load_index(index).stats(), indent=2))


@app.command()
def search(
    index: Annotated[Path, typer.Option(help="Index directory.")],
    query: Annotated[list[str] | None, typer.Argument(help="Query text(s).")] = None,
    queries: Annotated[Path | None, typer.Option(help="A file of queries, one per line.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per query, for scripts.")] = False,
) -> None:
    """Search an index: ranked documents with their cosine scores."""
    texts = list(query or [])
    if queries is not None:
        try:
            lines = queries.read_text(encoding="utf-8").splitlines()
            texts += [line for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            _fail(ValueError(f"{queries}: {exc}"))
    if not texts:
        _fail(ValueError("give a query text or --queries FILE"))
    if k < 1:
        _fail(ValueError(f"-k must be >= 1, got {k}"))
    idx = _load_index(index)
    for text, hits in zip(texts, idx.search(texts, k=k), strict=True):
        if as_json:
            typer.echo(json.dumps({"query": text, "results": [h.to_dict() for h in hits]}, ensure_ascii=False))
        else:
            typer.echo(f"> {text}")
            for rank, h in enumerate(hits, 1):
                typer.echo(f"{rank:3d}. {h.score:.4f}  [{h.id}] {h.text}")


@app.command()
def serve(
    index: Annotated[Path | None, typer.Option(help="Index directory to search (its model encodes queries).")
                     ] = None,
    model: Annotated[Path | None, typer.Option(help="Serve only /similarity and /embed for this model.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_chars: Annotated[int, typer.Option(help="Longest text accepted (characters).")] = 1000,
    max_texts: Annotated[int, typer.Option(help="Most texts (queries, pairs) in one request.")] = 256,
    max_k: Annotated[int, typer.Option(help="Largest k accepted.")] = 100,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait for others to share its encoder "
                           "call (requests that queued meanwhile always share it).")] = 0.0,
    threads: Annotated[int, typer.Option(help="Torch threads for encoding. 1 leaves the other cores to the "
                       "HTTP loop; small micro-batches gain nothing from more.")] = 1,
) -> None:
    """Serve search, similarity and embeddings over HTTP, with a search page at /."""
    import torch
    import uvicorn

    torch.set_num_threads(threads)

    from deepsem.encoder import load
    from deepsem.serve import Limits, create_app

    if (index is None) == (model is None):
        _fail(ValueError("give --index DIR (search and more) or --model DIR (similarity and embeddings)"))
    try:
        idx = _load_index(index) if index is not None else None
        semantic = load(model) if model is not None else None
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
        return
    app_ = create_app(idx, semantic, Limits(max_chars, max_texts, max_k), max_wait_ms=max_wait_ms)
    typer.echo(f"serving on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Keep the model and index directories here (default: a "
                   "temporary directory).")] = None,
    serve: Annotated[bool, typer.Option(help="Serve the search page after training (--no-serve stops after "
                     "the example searches).")] = True,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.")] = 1.8,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train LSTM-DSSM on the shipped Tatoeba English–Chinese pairs, index every sentence, serve a search page."""
    from deepsem.demo import run_demo

    _, index_dir, _ = run_demo(out=out, minutes=minutes, progress=progress)
    if serve:
        import uvicorn

        from deepsem.index import Index
        from deepsem.serve import create_app

        typer.echo(f"\nsearch page: http://{host}:{port}/   (Ctrl-C to stop)")
        uvicorn.run(create_app(Index.load(index_dir)), host=host, port=port, log_level="warning")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
