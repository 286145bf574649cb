"""``deepsem recommend ...``: the two-tower recommender: train, evaluate, predict, item2vec, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from deepsem.data.interactions import Interactions
    from deepsem.tasks.recommendation import Recommender

from deepsem.cli.errors import fail
from deepsem.cli.options import (
    API_KEY_ENV,
    API_KEY_HELP,
    BodyTimeout,
    Device,
    EmaDecay,
    Epochs,
    HeaderTimeout,
    Host,
    KeepAlive,
    LearningRate,
    MaxBodyBytes,
    MaxHeaderBytes,
    MaxHeaders,
    MaxInFlight,
    MaxK,
    MaxMinutes,
    Port,
    Precision,
    PrecisionName,
    Progress,
    RecommendNegatives,
    RecurrentEncoder,
    Resume,
    Seed,
    SkipBadRows,
    Threads,
    api_key_kwargs,
    check_precision,
    column_spec,
    cutoffs,
    data_file,
    data_file_or_dir,
    guard_limits,
    load_task,
    not_negative,
    out_dir,
    out_file,
)

recommend_app = typer.Typer(help="Two-tower recommendation from interaction logs: train, evaluate, predict, "
                            "item2vec, serve.", no_args_is_help=True)


def _interactions(data: Path, items: Path | None, users: Path | None, columns: str, rating_col: str | None,
                  min_rating: float | None, skip_bad_rows: bool) -> Interactions:
    """A MovieLens folder, or a log file with --columns user,item,time (+ optional item / user feature files);
    what reading left out is reported on stderr."""
    from deepsem.data.interactions import load_interactions

    log_columns: tuple[int | str, ...] = (0, 1, 2)
    if not data.is_dir():  # --columns applies to a log file only
        parts = [p.strip() for p in columns.split(",")]
        if len(parts) != 3:
            raise typer.BadParameter(f"--columns: expected user,item,time, got {columns!r}")
        log_columns = tuple(column_spec(p) for p in parts)
    loaded = load_interactions(data, columns=log_columns, rating_col=column_spec(rating_col) if rating_col else None,
                               items=items, users=users, min_rating=min_rating, skip_bad_rows=skip_bad_rows)
    if loaded.skipped.count:
        typer.echo(f"{data}: {loaded.skipped}", err=True)
    if loaded.duplicates:
        typer.echo(f"{data}: dropped {loaded.duplicates} repeated (user, item, time) rows", err=True)
    return loaded


def _load_recommender(model: Path) -> Recommender:
    from deepsem.tasks.recommendation import Recommender

    return load_task(model, Recommender, "not a recommender (train one with 'deepsem recommend train')")


_DATA_HELP = ("Interactions: a MovieLens folder (ml-100k, ml-1m, ml-latest) or a CSV/TSV/JSONL/Parquet log with "
              "user, item and time columns.")


@recommend_app.command("train")
def recommend_train(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP, callback=data_file_or_dir)],
    out: Annotated[Path, typer.Option(help="Model directory to write.", callback=out_dir)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file (index or header name).")
                       ] = "0,1,2",
    rating_col: Annotated[str | None, typer.Option(help="Rating column of a log file.")] = None,
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    items: Annotated[Path | None, typer.Option(help="Item features: item id, title, '|'-separated categories.",
                                               callback=data_file)] = None,
    users: Annotated[Path | None, typer.Option(help="User features: user id, then one feature column.",
                                               callback=data_file)] = None,
    skip_bad_rows: SkipBadRows = False,
    n_test: Annotated[int, typer.Option(help="Last items per user held out for the test.", min=0)] = 1,
    n_valid: Annotated[int, typer.Option(help="Items before them held out for validation (early stopping).",
                                         min=0)] = 1,
    encoder: Annotated[RecurrentEncoder, typer.Option(help="User tower.")] = RecurrentEncoder.lstm_peephole,
    embedding_dim: Annotated[int, typer.Option(help="Item (and feature) embedding size.", min=1)] = 64,
    hidden: Annotated[int, typer.Option(help="User tower hidden size.", min=1)] = 128,
    layers: Annotated[int, typer.Option(help="User tower layers.", min=1)] = 1,
    dim: Annotated[int, typer.Option(help="User / item vector size.", min=1)] = 64,
    dropout: Annotated[float, typer.Option(help="Dropout.")] = 0.2,
    max_history: Annotated[int, typer.Option(help="Most recent items the user tower reads.", min=1)] = 50,
    title_encoder: Annotated[str, typer.Option(help="Item titles in the item tower: bag (mean word embedding), a "
                             "text tower (dssm, cnn, gru, lstm, lstm-peephole...) or none.")] = "bag",
    item_features: Annotated[bool, typer.Option(help="Use item titles and categories.")] = True,
    user_features: Annotated[bool, typer.Option(help="Use user features.")] = True,
    negatives: Annotated[RecommendNegatives, typer.Option(help="Softmax over all items, the batch's targets, or "
                         "those plus popularity-sampled items.")] = RecommendNegatives.full,
    num_negatives: Annotated[int, typer.Option(help="Sampled items per batch (--negatives sampled).", min=1)
                             ] = 256,
    logq: Annotated[bool, typer.Option(help="Log-Q correction of in-batch / sampled negatives.")] = True,
    item2vec_init: Annotated[bool, typer.Option(help="Start the item embeddings from Item2Vec (needs gensim).")
                             ] = False,
    epochs: Epochs = 60,
    batch_size: Annotated[int, typer.Option(help="History windows per step.", min=1)] = 64,
    lr: LearningRate = 2e-3,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a better validation "
                        "NDCG@10.", min=1)] = 5,
    max_minutes: MaxMinutes = None,
    ema_decay: EmaDecay = None,
    seed: Seed = 13,
    threads: Threads = None,
    resume: Resume = True,
    progress: Progress = None,
    device: Device = "cpu",
    precision: Precision = PrecisionName.fp32,
) -> None:
    """Train the two-tower recommender (user tower over the history, item tower over id + features)."""
    from deepsem.tasks.recommendation import train_recommender

    precision_name = check_precision(precision, device)  # before the data is read
    loaded = _interactions(data, items, users, columns, rating_col, min_rating, skip_bad_rows)
    config = {"encoder": encoder.value, "embedding_dim": embedding_dim, "hidden_size": hidden, "num_layers": layers,
              "output_dim": dim, "dropout": dropout, "max_history": max_history,
              "title_encoder": title_encoder}
    training = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience, "seed": seed,
                "max_minutes": max_minutes, "threads": threads, "weight_decay": 0.0, "precision": precision_name,
                "ema_decay": ema_decay}
    # progress None (auto) goes through to the trainer
    rec, result = train_recommender(loaded, out, config=config, training=training, negatives=negatives.value,
                                    num_negatives=num_negatives, logq=logq, n_test=n_test, n_valid=n_valid,
                                    use_item_features=item_features, use_user_features=user_features,
                                    item2vec_init=item2vec_init, resume=resume, progress=progress,
                                    device=device)
    typer.echo(f"stopped: {result.stopped} after {result.steps} steps ({result.seconds:.0f} s)")
    if "valid_metrics" in rec.info:
        typer.echo("best validation: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.info["valid_metrics"].items()))
    typer.echo(f"model directory: {out}")


@recommend_app.command("evaluate")
def recommend_evaluate(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    data: Annotated[Path, typer.Argument(help=_DATA_HELP + " Split as at training time.",
                                         callback=data_file_or_dir)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file.")] = "0,1,2",
    rating_col: Annotated[str | None, typer.Option(help="Rating column of a log file.")] = None,
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    users: Annotated[Path | None, typer.Option(help="User features file.", callback=data_file)] = None,
    n_test: Annotated[int, typer.Option(help="Last items per user held out for the test.", min=0)] = 1,
    n_valid: Annotated[int, typer.Option(help="Items before them held out for validation.", min=0)] = 1,
    stage: Annotated[str, typer.Option(help="test or valid.")] = "test",
    k: Annotated[str, typer.Option(help="Comma-separated cut-offs.", callback=cutoffs)] = "10,50",
    baselines: Annotated[bool, typer.Option(help="Also evaluate most-popular and Item2Vec on the same split.")
                         ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """HitRate@k, Recall@k, NDCG@k, MRR and coverage, every target ranked among all items (history excluded)."""
    from deepsem.data.interactions import split_sequences
    from deepsem.tasks.recommendation import evaluate_ranking_over_items

    rec = _load_recommender(model)
    if stage not in ("test", "valid"):
        fail(f"--stage must be test or valid, got {stage!r}")
    loaded = _interactions(data, None, users, columns, rating_col, min_rating, False)
    split = split_sequences(loaded, n_test=n_test, n_valid=n_valid)
    ks = [int(x) for x in k.split(",")]
    # the model's catalogue decides the item positions; items it never saw cannot be recommended
    split, n_unknown_targets = split.aligned_to(rec.catalogue.ids)
    if n_unknown_targets:
        typer.echo(f"{n_unknown_targets} test targets are items the model never saw", err=True)
    results = {"deepsem": evaluate_ranking_over_items(rec.scorer(split, loaded.user_features), split, stage, ks)}
    if baselines:
        from deepsem.tasks.recommendation import evaluate_baselines

        results.update(evaluate_baselines(split, stage, ks))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    names = list(next(iter(results.values())))
    typer.echo(f"{'method':<14}" + "".join(f"{n:>13}" for n in names))
    for method, metrics in results.items():
        typer.echo(f"{method:<14}" + "".join(f"{metrics[n]:>13.4f}" for n in names))


@recommend_app.command("predict")
def recommend_predict(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    history: Annotated[list[str] | None, typer.Argument(help="The user's item ids, oldest first.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Items to return.", min=1)] = 10,
    include_seen: Annotated[bool, typer.Option(help="Also return items of the history.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recommend k items for a history given on the command line (an empty one gets the most popular)."""
    rec = _load_recommender(model)
    answer = rec.recommend_many([history or []], k, exclude_seen=not include_seen)[0]
    if answer.unknown:
        typer.echo(f"unknown item ids ignored: {' '.join(answer.unknown)}", err=True)
    if answer.fallback:
        typer.echo("no known item in the history: the most popular items", err=True)
    titles = rec.catalogue.titles
    rows = [{"id": i, "title": titles[rec.catalogue.index[i]], "score": round(s, 6)} for i, s in answer.items]
    if as_json:
        typer.echo(json.dumps({"items": rows, "fallback": answer.fallback, "unknown": answer.unknown},
                              ensure_ascii=False))
        return
    for row in rows:
        typer.echo(f"{row['id']}\t{row['score']:.4f}\t{row['title']}")


@recommend_app.command("item2vec")
def recommend_item2vec(
    data: Annotated[Path, typer.Argument(help=_DATA_HELP, callback=data_file_or_dir)],
    out: Annotated[Path, typer.Option(help="Vector file to write (word2vec text format, one item id per line).",
                                      callback=out_file)],
    columns: Annotated[str, typer.Option(help="user,item,time columns of a log file.")] = "0,1,2",
    min_rating: Annotated[float | None, typer.Option(help="Keep only interactions rated at least this.")] = None,
    dim: Annotated[int, typer.Option(help="Vector size.", min=1)] = 64,
    window: Annotated[int, typer.Option(help="Skip-gram window (items).", min=1)] = 5,
    epochs: Annotated[int, typer.Option(help="Passes over the sequences.", min=1)] = 10,
    seed: Seed = 13,
) -> None:
    """Item2Vec: skip-gram over each user's items in time order (all of them: no split)."""
    from deepsem.embeddings import write_vectors
    from deepsem.item2vec import train_item2vec

    loaded = _interactions(data, None, None, columns, None, min_rating, False)
    vectors = train_item2vec([s.tolist() for s in loaded.sequences()], dim=dim, window=window, epochs=epochs,
                             seed=seed)
    write_vectors(out, [loaded.items[int(i)] for i in vectors.items], vectors.matrix)
    typer.echo(f"{len(vectors.items)} item vectors of dimension {vectors.matrix.shape[1]} -> {out}")


@recommend_app.command("serve")
def recommend_serve(
    model: Annotated[Path, typer.Option(help="Recommender model directory.")],
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_k: MaxK = 100,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait to share a user-tower call.",
                                               callback=not_negative)] = 0.0,
    threads: Annotated[int, typer.Option(help="Torch threads.", min=1)] = 1,
    api_key: Annotated[str | None, typer.Option(envvar=API_KEY_ENV, show_envvar=True, help=API_KEY_HELP)
                       ] = None,
    max_body_bytes: MaxBodyBytes = 1 << 20,
    body_timeout: BodyTimeout = 10.0,
    max_in_flight: MaxInFlight = 256,
    header_timeout: HeaderTimeout = 10.0,
    max_header_bytes: MaxHeaderBytes = 16 << 10,
    max_headers: MaxHeaders = 100,
    keep_alive: KeepAlive = 5.0,
) -> None:
    """Serve POST /recommend (history in, items out, seen items excluded) over HTTP."""
    import torch

    from deepsem.serve import Limits, create_app, run

    torch.set_num_threads(threads)
    auth = api_key_kwargs(api_key)
    rec = _load_recommender(model)
    rec.index()
    limits = Limits(max_k=max_k, **guard_limits(max_body_bytes, body_timeout, max_in_flight, header_timeout,
                                                max_header_bytes, max_headers, keep_alive))
    app_ = create_app(recommender=rec, limits=limits, max_wait_ms=max_wait_ms, **auth)
    typer.echo(f"serving {rec!r} on http://{host}:{port}/recommend  (API docs: http://{host}:{port}/docs)")
    run(app_, host=host, port=port)
