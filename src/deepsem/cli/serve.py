"""``deepsem serve``: search, similarity, embeddings (and /classify, /recommend) over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepsem.cli.errors import fail
from deepsem.cli.index import load_index
from deepsem.cli.options import (
    API_KEY_ENV,
    API_KEY_HELP,
    Backend,
    BackendName,
    BodyTimeout,
    EncodePrecision,
    HeaderTimeout,
    Host,
    KeepAlive,
    MaxBodyBytes,
    MaxHeaderBytes,
    MaxHeaders,
    MaxInFlight,
    MaxK,
    OnnxFile,
    Port,
    PrecisionName,
    RerankOnnxFile,
    api_key_kwargs,
    backend_kwargs,
    check_precision,
    guard_limits,
    not_negative,
    rerank_kwargs,
    vector_model,
)
from deepsem.errors import ConfigError
from deepsem.tasks.document_cache import DOCUMENT_CACHE_MB


def serve(
    index: Annotated[Path | None, typer.Option(help="Index directory to search (its model encodes queries).")
                     ] = None,
    model: Annotated[Path | None, typer.Option(help="Serve only /similarity and /embed for this model (/classify "
                     "for a classifier's directory, /recommend for a recommender's).")] = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_chars: Annotated[int, typer.Option(help="Longest text accepted (characters).", min=1)] = 1000,
    max_texts: Annotated[int, typer.Option(help="Most texts (queries, pairs) in one request.", min=1)] = 256,
    max_k: MaxK = 100,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait for others to share its encoder "
                           "call (requests that queued meanwhile always share it).", callback=not_negative)] = 0.0,
    threads: Annotated[int, typer.Option(help="Torch threads for encoding. 1 leaves the other cores to the "
                       "HTTP loop; small micro-batches gain nothing from more.", min=1)] = 1,
    encoder_thread: Annotated[bool, typer.Option(help="Run the model in a worker thread instead of in the event "
                              "loop between requests (slower here: the thread fights the loop for the GIL).")
                              ] = False,
    api_key: Annotated[str | None, typer.Option(envvar=API_KEY_ENV, show_envvar=True, help=API_KEY_HELP)
                       ] = None,
    reload_interval: Annotated[float, typer.Option(help="Seconds between looks at INDEX/CURRENT for the versions "
                               "'index add' / 'index delete' write (the new one is loaded and swapped in); 0: "
                               "serve the index as loaded, until POST /admin/reload.", callback=not_negative)
                               ] = 1.0,
    max_body_bytes: MaxBodyBytes = 1 << 20,
    body_timeout: BodyTimeout = 10.0,
    max_in_flight: MaxInFlight = 256,
    header_timeout: HeaderTimeout = 10.0,
    max_header_bytes: MaxHeaderBytes = 16 << 10,
    max_headers: MaxHeaders = 100,
    keep_alive: KeepAlive = 5.0,
    backend: Backend = BackendName.torch,
    onnx: OnnxFile = None,
    precision: EncodePrecision = PrecisionName.fp32,
    rerank: Annotated[Path | None, typer.Option(help="A cross-encoder's model directory (deepsem rerank train): "
                      "POST /search re-scores each query's best --rerank-top documents with it (a request may turn "
                      "it off with \"rerank\": false); needs --index.")] = None,
    rerank_top: Annotated[int, typer.Option(help="First-stage documents the re-ranker scores per query by "
                          "default (a request may ask for another, up to --max-rerank-top).", min=1)] = 50,
    max_rerank_top: Annotated[int, typer.Option(help="Largest rerank_top a request may ask for.", min=1)] = 200,
    rerank_weight: Annotated[float | None, typer.Option(help="Score fusion by default (a request may give its own "
                             "rerank_weight): W * the re-ranker's probability + (1 - W) * the first stage's score, "
                             "each min-max normalised over a query's candidates (1: the re-ranker alone, the "
                             "default; 0: the first stage's order); needs --rerank.", min=0.0, max=1.0)] = None,
    rerank_onnx: RerankOnnxFile = None,
    rerank_cache_mb: Annotated[float, typer.Option(help="MB for the re-ranker's document cache: each document's "
                               "encoder states, kept between requests (a third of its re-ranking cost; least "
                               "recently used dropped first); 0: none.", min=0.0)] = DOCUMENT_CACHE_MB,
) -> None:
    """Serve search, similarity and embeddings over HTTP, with a search page at /."""
    import torch

    torch.set_num_threads(threads)

    from deepsem.serve import Limits, create_app, run
    from deepsem.tasks import load

    if (index is None) == (model is None):
        fail("give --index DIR (search and more) or --model DIR (similarity and embeddings)")
    if rerank is not None and index is None:
        fail("--rerank re-scores an index's search results: give --index DIR too")
    if rerank is not None and rerank_top > max_rerank_top:
        fail(f"--rerank-top {rerank_top} is above --max-rerank-top {max_rerank_top}")
    if rerank_weight is not None and rerank is None:
        fail("--rerank-weight mixes the re-ranker's probability with the first stage's score: give --rerank DIR too")
    auth = api_key_kwargs(api_key)
    how = {"precision": check_precision(precision), **backend_kwargs(backend, onnx)}
    rerank_how = rerank_kwargs(backend, rerank, rerank_onnx, how["precision"])
    idx = load_index(index, **how) if index is not None else None
    loaded = vector_model(load(model, **how), model, "be served") if model is not None else None
    from deepsem.tasks.classification import Classifier
    from deepsem.tasks.recommendation import Recommender

    classifier = loaded if isinstance(loaded, Classifier) else None  # a classifier directory: /classify
    recommender = loaded if isinstance(loaded, Recommender) else None  # a recommender directory: /recommend
    semantic = None if isinstance(loaded, Classifier | Recommender) else loaded
    reranker = None
    if rerank is not None:
        from deepsem.index.vector_index import cross_encoder

        reranker = cross_encoder(load(rerank, **rerank_how))
        try:
            reranker.cache_documents(rerank_cache_mb)
        except ConfigError as exc:  # an export of an earlier deepsem: it still re-ranks, without the cache
            typer.echo(f"warning: {exc}", err=True)
    limits = Limits(max_chars, max_texts, max_k, **guard_limits(max_body_bytes, body_timeout, max_in_flight,
                                                                header_timeout, max_header_bytes, max_headers,
                                                                keep_alive), max_rerank_top=max_rerank_top)
    app_ = create_app(idx, semantic, limits, max_wait_ms=max_wait_ms, classifier=classifier,
                      recommender=recommender, encoder_thread=encoder_thread,
                      reload_interval_s=reload_interval or None, reranker=reranker, rerank_top=rerank_top,
                      rerank_weight=rerank_weight, **auth)
    if reranker is not None:
        fused = "" if rerank_weight is None else f" (score fusion, rerank_weight {rerank_weight:g})"
        runs_on = " on onnxruntime" if reranker.backend == "onnx" else ""
        cache = reranker.document_cache
        cached = "" if cache is None else f", a document cache of {cache['max_mb']:g} MB"
        typer.echo(f"re-ranking each search's best {rerank_top} documents with {rerank}{runs_on}{fused}{cached}")
    typer.echo(f"serving on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    run(app_, host=host, port=port)
