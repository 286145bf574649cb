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
    api_key_kwargs,
    backend_kwargs,
    check_precision,
    guard_limits,
    not_negative,
    vector_model,
)


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
) -> None:
    """Serve search, similarity and embeddings over HTTP, with a search page at /."""
    import torch

    torch.set_num_threads(threads)

    from deepsem.serve import Limits, create_app, run
    from deepsem.tasks import load

    if (index is None) == (model is None):
        fail("give --index DIR (search and more) or --model DIR (similarity and embeddings)")
    auth = api_key_kwargs(api_key)
    how = {"precision": check_precision(precision), **backend_kwargs(backend, onnx)}
    idx = load_index(index, **how) if index is not None else None
    loaded = vector_model(load(model, **how), model, "be served") if model is not None else None
    from deepsem.tasks.classification import Classifier
    from deepsem.tasks.recommendation import Recommender

    classifier = loaded if isinstance(loaded, Classifier) else None  # a classifier directory: /classify
    recommender = loaded if isinstance(loaded, Recommender) else None  # a recommender directory: /recommend
    semantic = None if isinstance(loaded, Classifier | Recommender) else loaded
    limits = Limits(max_chars, max_texts, max_k, **guard_limits(max_body_bytes, body_timeout, max_in_flight,
                                                                header_timeout, max_header_bytes, max_headers,
                                                                keep_alive))
    app_ = create_app(idx, semantic, limits, max_wait_ms=max_wait_ms, classifier=classifier,
                      recommender=recommender, encoder_thread=encoder_thread,
                      reload_interval_s=reload_interval or None, **auth)
    typer.echo(f"serving on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    run(app_, host=host, port=port)
