"""The HTTP service: FastAPI over an index (search) and its model (similarity, embeddings), plus a web page.

    POST /search      {"queries": "怎么还款" | [...], "k": 10, "filter": {"lang": "zh"}, "mode": "hybrid"}
    POST /similarity  {"pairs": [["text a", "text b"], ...]}
    POST /embed       {"texts": ["...", ...]}
    POST /classify    {"texts": ["...", ...], "k": 1}   (a classifier model: create_app(classifier=...))
    POST /recommend   {"history": ["50", "172"], "k": 10}  (a recommender: create_app(recommender=...))
    GET  /healthz, GET /stats, GET / (the search page), GET /docs (OpenAPI)

Concurrent requests are micro-batched into one encoder call. Every limit (text length, texts per request,
k) answers a 4xx with a message; any other failure answers 500 with a short message, never a traceback.
"""

from __future__ import annotations

import gc
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from deepsem.classification import Classifier
from deepsem.encoder import SemanticModel
from deepsem.index import Index
from deepsem.recommend import Recommender
from deepsem.serve.batcher import MicroBatcher

Scalar = str | int | float | bool


@dataclass
class Limits:
    max_chars: int = 1000
    max_texts: int = 256
    max_k: int = 100


class SearchRequest(BaseModel):
    queries: str | list[str] = Field(description="One query or a list of queries.")
    k: int = Field(10, description="Results per query.")
    filter: dict[str, Scalar] | None = Field(None, description="Keep documents whose metadata has these values.")
    mode: str | None = Field(None, description="dense, lexical (BM25) or hybrid; default: hybrid if the index "
                             "was built with a lexical part, else dense.")


class HitModel(BaseModel):
    id: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[list[HitModel]]
    took_ms: float


class SimilarityRequest(BaseModel):
    pairs: list[tuple[str, str]] = Field(description="Pairs of texts [query side, document side].")


class SimilarityResponse(BaseModel):
    scores: list[float]
    threshold: float | None
    took_ms: float


class EmbedRequest(BaseModel):
    texts: list[str]
    side: str = Field("query", pattern="^(query|doc)$", description="Which tower: query or doc.")


class EmbedResponse(BaseModel):
    vectors: list[list[float]]
    dim: int
    took_ms: float


class ClassifyRequest(BaseModel):
    texts: list[str]
    k: int = Field(1, description="Labels per text, most probable first.")
    threshold: float | None = Field(None, description="Keep only labels at least this probable.")


class LabelProb(BaseModel):
    label: str
    prob: float


class ClassifyResponse(BaseModel):
    predictions: list[list[LabelProb]]
    took_ms: float


class RecommendRequest(BaseModel):
    history: list[str | int] = Field(description="The user's item ids, oldest first (may be empty).")
    k: int = Field(10, description="Items to return.")
    exclude_seen: bool = Field(True, description="Leave out the items of the history.")
    user_features: list[str] | None = Field(None, description="User features as the model knows them, e.g. "
                                            "['gender=F', 'age=25-34'].")


class ItemScore(BaseModel):
    id: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ItemScore]
    fallback: bool = Field(description="True when the history had no known item: the most popular items.")
    unknown: list[str] = Field(description="History ids the model does not know (ignored).")
    took_ms: float


def _check_texts(texts: list[str], limits: Limits, what: str = "text") -> None:
    if not texts:
        raise HTTPException(422, f"no {what}s given")
    if len(texts) > limits.max_texts:
        raise HTTPException(413, f"{len(texts)} {what}s in one request; the limit is {limits.max_texts}")
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"{what} {i} is empty")
        if len(text) > limits.max_chars:
            raise HTTPException(413, f"{what} {i} has {len(text)} characters; the limit is {limits.max_chars}")


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn (uvloop + httptools where installed), as ``deepsem serve`` does.

    First the garbage collector's current objects are frozen: everything loaded so far (model, index, the
    libraries) lives as long as the process, so its full passes may skip it. Unfrozen, each full pass walked
    it all and stalled every request in flight for 50-90 ms, about once every two seconds under load (p99 at
    8 clients: 60-70 ms; frozen: 9 ms).
    """
    import uvicorn

    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def create_app(index: Index | None = None, model: SemanticModel | None = None, limits: Limits | None = None,
               max_wait_ms: float = 0.0, classifier: Classifier | None = None,
               recommender: Recommender | None = None, encoder_thread: bool = False) -> FastAPI:
    """The service for ``index`` (its model encodes queries) or, without an index, for ``model`` alone; with
    ``classifier`` also ``POST /classify``, with ``recommender`` also ``POST /recommend``.
    ``encoder_thread``: run the micro-batched model calls in a worker thread (else in the event loop; see
    :mod:`deepsem.serve.batcher`)."""
    if index is None and model is None and classifier is None and recommender is None:
        raise ValueError("create_app needs an index, a model, a classifier or a recommender")
    semantic = index.model if index is not None else model
    limits = limits or Limits()
    started = time.time()
    counters = {"search": 0, "similarity": 0, "embed": 0, "classify": 0, "recommend": 0, "errors": 0}

    def two_tower() -> SemanticModel:
        if semantic is None:
            raise HTTPException(404, "this service has no two-tower model: start it with --index or with --model "
                                "of a two-tower model")
        return semantic

    def run_search(items: list[tuple[str, int, dict[str, Scalar] | None, str]]) -> list[list[dict[str, Any]]]:
        """One encoder call for every waiting query (mode already resolved), then one search per mode."""
        assert index is not None
        texts = [q for q, _, _, _ in items]
        dense = [i for i, item in enumerate(items) if item[3] != "lexical"]
        vectors = np.zeros((len(items), semantic.dim), np.float32)
        if dense:
            vectors[dense] = semantic.encode([texts[i] for i in dense], side="query")
        out: list[list[dict[str, Any]] | None] = [None] * len(items)
        for mode in sorted({item[3] for item in items}):
            plain = [i for i, (_, _, f, m) in enumerate(items) if not f and m == mode]
            if plain:
                k = max(items[i][1] for i in plain)
                found = index.search_encoded(vectors[plain], k, texts=[texts[i] for i in plain], mode=mode)
                for i, hits in zip(plain, found, strict=True):
                    out[i] = [h.to_dict() for h in hits[: items[i][1]]]
        for i, (q, k, f, mode) in enumerate(items):
            if f:
                out[i] = [h.to_dict() for h in index.search_encoded(vectors[i : i + 1], k, f, [q], mode)[0]]
        return out  # type: ignore[return-value]

    batching = {"max_wait_ms": max_wait_ms, "threaded": encoder_thread}
    search_batcher = MicroBatcher(run_search, max_batch=limits.max_texts, **batching)
    encode_batchers = {side: MicroBatcher(lambda texts, side=side: two_tower().encode(texts, side=side),
                                          max_batch=limits.max_texts * 2, **batching)
                       for side in ("query", "doc")}
    classify_batcher = MicroBatcher(lambda texts: classifier.predict_proba(texts),  # type: ignore[union-attr]
                                    max_batch=limits.max_texts * 2, **batching)
    def run_recommend(items: list[tuple[list[str], int, list[str] | None]]) -> list[Any]:
        """One user-tower call for the (history, k, user features) of every waiting request."""
        assert recommender is not None
        features = [f or [] for _, _, f in items] if any(f for _, _, f in items) else None
        return recommender.recommend_many([h for h, _, _ in items], max(k for _, k, _ in items),
                                          user_features=features)

    recommend_batcher = MicroBatcher(run_recommend, max_batch=limits.max_texts, **batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for batcher in (search_batcher, *encode_batchers.values(), classify_batcher, recommend_batcher):
            await batcher.close()

    app = FastAPI(title="deepsem", description="Semantic search and matching with LSTM-DSSM.",
                  version=__import__("deepsem").__version__, lifespan=lifespan)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        counters["errors"] += 1
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("deepsem.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        info: dict[str, Any] = {"uptime_s": round(time.time() - started, 1), "requests": counters,
                                "model": repr(semantic if semantic is not None else classifier),
                                "limits": limits.__dict__,
                                "batching": (recommend_batcher if recommender is not None and index is None
                                             else search_batcher).stats.to_dict()}
        if index is not None:
            info["index"] = index.stats()
        if classifier is not None:
            info["classifier"] = repr(classifier)
        if recommender is not None:
            info["recommender"] = repr(recommender)
        return info

    @app.post("/search", response_model=SearchResponse)
    async def search(req: SearchRequest) -> Any:
        if index is None:
            raise HTTPException(404, "this service has no index: start it with --index")
        queries = [req.queries] if isinstance(req.queries, str) else req.queries
        _check_texts(queries, limits, "query")
        if not 1 <= req.k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}, got {req.k}")
        try:
            mode = index.resolve_mode(req.mode)
        except ValueError as exc:
            raise HTTPException(422, str(exc).replace(str(index.directory), "this index")) from None
        t0 = time.perf_counter()
        results = await search_batcher([(q, req.k, req.filter, mode) for q in queries])
        counters["search"] += 1
        # the hits are built by deepsem with the response's types already: a JSONResponse skips FastAPI's
        # re-validation of every hit against SearchResponse (the schema in /docs is unchanged)
        return JSONResponse({"results": results, "took_ms": round((time.perf_counter() - t0) * 1000, 2)})

    @app.post("/similarity", response_model=SimilarityResponse)
    async def similarity(req: SimilarityRequest) -> dict[str, Any]:
        model_ = two_tower()
        _check_texts([t for pair in req.pairs for t in pair], limits)
        if len(req.pairs) > limits.max_texts:
            raise HTTPException(413, f"{len(req.pairs)} pairs in one request; the limit is {limits.max_texts}")
        t0 = time.perf_counter()
        a = await encode_batchers["query"]([p[0] for p in req.pairs])
        b = await encode_batchers["doc"]([p[1] for p in req.pairs])
        counters["similarity"] += 1
        return {"scores": np.asarray((a * b).sum(1), dtype=float).tolist(), "threshold": model_.threshold,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.post("/embed", response_model=EmbedResponse)
    async def embed(req: EmbedRequest) -> dict[str, Any]:
        model_ = two_tower()
        _check_texts(req.texts, limits)
        t0 = time.perf_counter()
        vectors = await encode_batchers[req.side](req.texts)
        counters["embed"] += 1
        return {"vectors": np.asarray(vectors, dtype=float).tolist(), "dim": model_.dim,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.post("/classify", response_model=ClassifyResponse)
    async def classify(req: ClassifyRequest) -> dict[str, Any]:
        if classifier is None:
            raise HTTPException(404, "this service has no classifier: start it with --model of a classifier")
        _check_texts(req.texts, limits)
        if not 1 <= req.k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}, got {req.k}")
        if req.threshold is not None and not 0.0 <= req.threshold <= 1.0:
            raise HTTPException(422, f"threshold must be between 0 and 1, got {req.threshold}")
        t0 = time.perf_counter()
        probs = await classify_batcher(req.texts)
        counters["classify"] += 1
        top = classifier.top_k(np.asarray(probs), req.k, req.threshold)
        return {"predictions": [[{"label": y, "prob": p} for y, p in row] for row in top],
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest) -> dict[str, Any]:
        if recommender is None:
            raise HTTPException(404, "this service has no recommender: start it with --model of a recommender")
        if not 1 <= req.k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}, got {req.k}")
        if len(req.history) > limits.max_chars:
            raise HTTPException(413, f"a history of {len(req.history)} items; the limit is {limits.max_chars}")
        history = [str(item) for item in req.history]
        t0 = time.perf_counter()
        if req.exclude_seen:  # the common case: shares a batch with concurrent requests
            (answer,) = await recommend_batcher([(history, req.k, req.user_features)])
        else:
            answer = recommender.recommend_many([history], req.k, exclude_seen=False,
                                                user_features=[req.user_features] if req.user_features else None)[0]
        counters["recommend"] += 1
        titles = recommender.catalogue.titles
        index_of = recommender.catalogue.index
        items = [{"id": i, "title": titles[index_of[i]], "score": s} for i, s in answer.items[: req.k]]
        return {"items": items, "fallback": answer.fallback, "unknown": answer.unknown,
                "took_ms": round((time.perf_counter() - t0) * 1000, 2)}

    return app
