"""The HTTP service: FastAPI over an index (search) and its model (similarity, embeddings), plus a web page.

    POST /search      {"queries": "怎么还款" | [...], "k": 10, "filter": {"lang": "zh"}, "mode": "hybrid",
                       "rerank": true, "rerank_top": 50, "rerank_weight": 0.7}
                                        (rerank: a server with a re-ranker, create_app(reranker=))
    POST /similarity  {"pairs": [["text a", "text b"], ...]}
    POST /embed       {"texts": ["...", ...]}
    POST /classify    {"texts": ["...", ...], "k": 1}   (a classifier model: create_app(classifier=...))
    POST /recommend   {"history": ["50", "172"], "k": 10}  (a recommender: create_app(recommender=...))
    POST /admin/reload (an index: load the version INDEX/CURRENT names now)
    GET  /healthz, GET /stats, GET / (the search page), GET /docs (OpenAPI)

Only the routes a service has are published, each with every status it can answer and that status's body:
200, 400 (body not JSON), 401 (API key set and missing), 408 (body too slow), 413 (body too large), 422
(request outside the schema: ``{"detail": [<= 20 errors], "error_count": n, "message": "..."}``), 503 (too
many requests in flight, with Retry-After). Every limit of :class:`Limits` is part of the request schema
(maxLength, maxItems, minimum/maximum, a pattern for "not blank"), so the schema and the validator agree.
Concurrent requests are micro-batched into one encoder call. Any other failure answers 500 with a short
message, never a traceback. An index service follows ``INDEX/CURRENT``: ``deepsem index add`` / ``delete``
by another process are served within about a second (see :class:`ServedIndex`).

With a re-ranker (``create_app(index, reranker=CrossEncoder)``, ``deepsem serve --rerank DIR``) a search is two
stages: the index's top ``rerank_top`` documents re-scored by the cross-encoder (on by default, ``"rerank":
false`` turns it off per request); every search answer says how long each stage took (``timings_ms``).
``"rerank_weight"`` (0 to 1; default the server's, ``create_app(rerank_weight=)``, else 1: the re-ranker alone)
mixes the re-ranker's probability with the first stage's score (score fusion, see :mod:`deepsem.index.vector_index`).
"""

import asyncio
import gc
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from deepsem.errors import ConfigError, QueryError
from deepsem.index import Hit, Index
from deepsem.index.vector_index import RERANK_TOP, check_rerank_weight, rerank_hits
from deepsem.serve.batcher import MicroBatcher
from deepsem.serve.guard import Guard, GuardSettings, protocol_class
from deepsem.tasks.classification import Classifier
from deepsem.tasks.matching import SemanticModel
from deepsem.tasks.recommendation import Recommender
from deepsem.tasks.rerank import CrossEncoder
from deepsem.version import __version__

log = logging.getLogger("deepsem.serve")

#: JSON Schema pattern (and validator rule, the same regex) for a text that is not empty or blank: one character
#: that is not whitespace as Python's str.isspace() / str.strip() see it. Spelled out, not "\S": ECMA-262 regexes
#: (the JSON Schema dialect clients validate with) and Python's disagree on \x1c-\x1f, \x85 and \ufeff.
NOT_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
MAX_FILTER_FIELDS = 32
MAX_KEY_CHARS = 200


@dataclass
class Limits:
    """What one request may ask for, and what the server reads before it refuses.

    ``max_chars``, ``max_texts``, ``max_k``, ``max_rerank_top`` are part of the published request schema (422
    beyond them).
    ``max_body_bytes`` (413), ``body_timeout_s`` (408: the whole body must arrive within it),
    ``max_in_flight`` (503 with Retry-After), ``max_headers`` / ``max_header_bytes`` / ``header_timeout_s``
    (the request head) and ``keep_alive_s`` (an idle connection) guard the server itself. ``max_errors``:
    validation errors listed in a 422 (the rest are counted).
    """

    max_chars: int = 1000
    max_texts: int = 256
    max_k: int = 100
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0
    max_in_flight: int = 256
    max_errors: int = 20
    max_headers: int = 100
    max_header_bytes: int = 16 << 10
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_rerank_top: int = 200

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ConfigError(f"serve limit {name} must be positive, got {value!r}")


# -- error bodies (published in the schema for every status a route can answer) ---------------------------------
class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: 'body', then field names and list positions.")
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue] = Field(description="The first errors found (at most Limits.max_errors).")
    error_count: int = Field(description="How many errors the request had in all.")
    message: str = Field(description="The first errors, in one line.")


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {400: "The body is not JSON.", 401: "Missing or wrong API key.", 408: "The body arrived too slowly.",
           413: "The body is too large.", 422: "The request does not match the schema.",
           503: "Too many requests in flight; retry after Retry-After seconds."}
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ValidationErrorBody if status == 422 else ErrorBody, "description": why[status]}
        if status == 503:
            out[status]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
    return out


# -- responses --------------------------------------------------------------------------------------------------
class HitModel(BaseModel):
    id: str
    text: str
    score: float = Field(description="The first stage's score (cosine, BM25 or hybrid), or the re-ranker's "
                         "relevance probability when the search was re-ranked.")
    metadata: dict[str, Any]
    first_score: float | None = Field(None, description="Re-ranked hits only: the first stage's score.")
    first_rank: int | None = Field(None, description="Re-ranked hits only: the rank (1-based) the first stage "
                                   "gave the document.")


class StageTimings(BaseModel):
    encode: float = Field(description="Milliseconds of the query-tower call this request shared (0 when only "
                          "lexical).")
    first_stage: float = Field(description="Milliseconds of the first stage: vector, BM25 or hybrid search and "
                               "fetching the documents, for the batch this request shared.")
    rerank: float = Field(description="Milliseconds the re-ranker spent on this request's queries (0 when not "
                          "re-ranked).")
    total: float = Field(description="Milliseconds of the whole search, waiting for its batch included (took_ms).")


class SearchResponse(BaseModel):
    results: list[list[HitModel]]
    took_ms: float
    reranked: bool = Field(description="Whether the hits were re-ranked by the server's cross-encoder.")
    timings_ms: StageTimings


class SimilarityResponse(BaseModel):
    scores: list[float]
    threshold: float | None
    took_ms: float


class EmbedResponse(BaseModel):
    vectors: list[list[float]]
    dim: int
    took_ms: float


class LabelProb(BaseModel):
    label: str
    prob: float


class ClassifyResponse(BaseModel):
    predictions: list[list[LabelProb]]
    took_ms: float


class ItemScore(BaseModel):
    id: str
    title: str
    score: float


class RecommendResponse(BaseModel):
    items: list[ItemScore]
    fallback: bool = Field(description="True when the history had no known item: the most popular items.")
    unknown: list[str] = Field(description="History ids the model does not know (ignored).")
    took_ms: float


class HealthResponse(BaseModel):
    status: str
    version: str | None = Field(None, description="The index version served (INDEX/CURRENT), for an index.")


class ReloadResponse(BaseModel):
    version: str | None = Field(description="The index version served now.")
    reloaded: bool = Field(description="True when a new version was loaded by this call.")


# -- requests: built per service, with its limits (and its index's search modes) in the schema -------------------
def _integer(value: Any) -> Any:
    """JSON Schema's integer: an int or an integral finite number (``6.0``); never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be an integer")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("Input should be a finite integer")
        return int(value)
    return value


def integer(ge: int | None = None, le: int | None = None) -> Any:
    """An integer field in [ge, le] (see :func:`_integer`), the bounds published as minimum / maximum."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integer)]


class _Request(BaseModel):
    # Python's regular expressions (NOT_BLANK reads the same in Python's and ECMA-262's)
    model_config = ConfigDict(regex_engine="python-re")


def _boolean(value: Any) -> Any:
    """JSON's true / false only (not 0 or "false"), checked before a ``Literal[False]``, which takes 0."""
    if not isinstance(value, bool):
        raise ValueError("Input should be a valid boolean")
    return value


def request_models(limits: Limits, modes: tuple[str, ...] = ("dense",), rerank: bool = False
                   ) -> dict[str, type[BaseModel]]:
    """The request models of a service with these ``limits``: every bound and type rule is in the schema.
    ``rerank``: the service has a re-ranker (else a search's ``rerank`` may only be false).

    Numbers are strict: ``true`` is not 1, ``1.5`` or ``"2"`` is not an integer (``2.0`` is, as in JSON Schema),
    NaN and infinities are refused."""
    text = Annotated[str, StringConstraints(max_length=limits.max_chars, pattern=NOT_BLANK)]
    text_list = Annotated[list[text], Field(min_length=1, max_length=limits.max_texts)]
    k_field = integer(1, limits.max_k)
    key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS)]
    finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    scalar = Annotated[str, StringConstraints(max_length=limits.max_chars)] | Annotated[int, Field(strict=True)] \
        | finite | Annotated[bool, Field(strict=True)]
    mode_type = Literal[modes]  # type: ignore[valid-type]
    rerank_type = Annotated[bool, Field(strict=True)] if rerank else \
        Annotated[Literal[False], BeforeValidator(_boolean)]

    class SearchRequest(_Request):
        queries: text | text_list = Field(description="One query or a list of queries (not blank).")
        k: k_field = Field(min(10, limits.max_k), description="Results per query.")  # type: ignore[valid-type]
        filter: Annotated[dict[key, scalar], Field(max_length=MAX_FILTER_FIELDS)] | None = Field(
            None, description="Keep documents whose metadata has these values.")
        mode: mode_type | None = Field(None, description="dense, lexical (BM25) or hybrid; default: hybrid if the "
                                       "index was built with a lexical part, else dense.")
        rerank: rerank_type | None = Field(  # type: ignore[valid-type]
            None, description="Re-rank the first stage's best rerank_top documents with the server's "
            "cross-encoder; default: true when the server has one (false is the only value otherwise).")
        rerank_top: integer(1, limits.max_rerank_top) | None = Field(  # type: ignore[valid-type]
            None, description="First-stage documents the re-ranker scores per query (at least k are); default: the "
            "server's. Not used when not re-ranking.")
        rerank_weight: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
            None, description="Score fusion: rank by rerank_weight * minmax(re-ranker probability) + (1 - "
            "rerank_weight) * minmax(first-stage score) over the candidates; 1 is the re-ranker alone, 0 the first "
            "stage's order. Default: the server's (else 1). Not used when not re-ranking.")

    class SimilarityRequest(_Request):
        pairs: Annotated[list[tuple[text, text]], Field(min_length=1, max_length=limits.max_texts)] = Field(
            description="Pairs of texts [query side, document side].")

    class EmbedRequest(_Request):
        texts: text_list
        side: Literal["query", "doc"] = Field("query", description="Which tower: query or doc.")

    class ClassifyRequest(_Request):
        texts: text_list
        k: k_field = Field(1, description="Labels per text, most probable first.")  # type: ignore[valid-type]
        threshold: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
            None, description="Keep only labels at least this probable.")

    item_id = Annotated[str, StringConstraints(max_length=limits.max_chars)] \
        | integer()

    class RecommendRequest(_Request):
        history: Annotated[list[item_id], Field(max_length=limits.max_chars)] = Field(  # type: ignore[valid-type]
            description="The user's item ids, oldest first (may be empty).")
        k: k_field = Field(min(10, limits.max_k), description="Items to return.")  # type: ignore[valid-type]
        exclude_seen: Annotated[bool, Field(strict=True)] = Field(True, description="Leave out the items of the "
                                                                  "history.")
        user_features: Annotated[list[text], Field(max_length=limits.max_texts)] | None = Field(
            None, description="User features as the model knows them, e.g. ['gender=F', 'age=25-34'].")

    return {m.__name__: m for m in (SearchRequest, SimilarityRequest, EmbedRequest, ClassifyRequest,
                                    RecommendRequest)}


# -- the served index, following INDEX/CURRENT ------------------------------------------------------------------
def current_version(directory: Path) -> str:
    """The version folder ``directory/CURRENT`` names (:meth:`Index.current_version`: checked to be one of the
    index's own version folders)."""
    return str(Index.current_version(directory))


class ServedIndex:
    """The index a service answers from; swapped whole when ``INDEX/CURRENT`` names another version.

    A request looks at CURRENT at most every ``interval_s`` seconds (None: never; 0: every request). When it
    names another version, the new :class:`Index` is loaded in a worker thread (the event loop keeps serving
    the old one meanwhile) and then replaces the old one in one assignment; searches already running finish
    on the old one. A failed load keeps the old index and is reported in ``/stats`` (``reload_error``)."""

    def __init__(self, index: Index, interval_s: float | None = 1.0) -> None:
        self.index, self.interval_s = index, interval_s
        self.checked = time.monotonic()
        self.reloads = 0
        self.error: str | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def version(self) -> str | None:
        return getattr(self.index, "version", None)

    async def maybe_reload(self) -> None:
        if self.interval_s is None or time.monotonic() - self.checked < self.interval_s:
            return
        await self.reload()

    async def reload(self) -> bool:
        """Load the version CURRENT names if it is not the one served; True when it was swapped in."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self.checked = time.monotonic()
            directory = Path(self.index.directory)
            try:
                name = current_version(directory)
            except (OSError, ValueError) as exc:
                self.error = f"CURRENT unreadable: {exc}"
                return False
            if name == self.version:
                return False
            try:
                fresh = await asyncio.to_thread(Index.load, directory, **self.index.load_options)
            except Exception as exc:  # a version removed meanwhile, a damaged file: keep serving the old one
                self.error = f"loading {name}: {type(exc).__name__}: {exc}"
                log.warning("index reload failed, still serving %s: %s", self.version, self.error)
                return False
            self.index, self.error = fresh, None
            self.reloads += 1
            return True


_UNION_TAG = re.compile(r"^(constrained-)?(str|int|float|bool|list\[.*\]|dict\[.*\]|tuple\[.*\]|function-.*)$")
_NOUNS = {"queries": "query", "texts": "text", "pairs": "pair", "history": "history item",
          "user_features": "user feature"}


def _clean(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors with union branch tags taken out of ``loc``; where a union's branches all failed, the
    branch the input was meant for (the one that looked inside it) is kept, else one error names every type."""
    groups: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    plain: list[tuple[int, dict[str, Any]]] = []
    for n, e in enumerate(errors):
        loc = tuple(e.get("loc", ()))
        tag = next((i for i, x in enumerate(loc) if isinstance(x, str) and _UNION_TAG.match(x)), None)
        if tag is None:
            plain.append((n, e))
        else:
            groups.setdefault(loc[:tag], []).append((n, {**e, "loc": loc[:tag] + loc[tag + 1:]}))
    for prefix, members in groups.items():
        deep = [(n, e) for n, e in members if len(e["loc"]) > len(prefix) or (not e["type"].endswith("_type")
                and e["type"] not in ("finite_number", "value_error"))]
        if deep:
            plain += deep
        else:
            n, first = members[0]
            msg = " or ".join(dict.fromkeys(e["msg"] for _, e in members))
            plain.append((n, {**first, "msg": msg, "type": "union_type"}))
    return [e for _, e in sorted(plain, key=lambda x: x[0])]


def _sentence(e: dict[str, Any], limits: Limits) -> str:
    """One error as a user reads it: 'query 0 has 1200 characters; the limit is 1000'."""
    loc = [x for x in e["loc"][1:]]
    field = str(loc[0]) if loc else "body"
    noun = _NOUNS.get(field, field)
    ctx, value, kind = e.get("ctx") or {}, e.get("input"), e["type"]
    index = next((x for x in loc[1:] if isinstance(x, int)), None)
    which = f"{noun} {index}" if index is not None else noun
    if kind == "string_too_long" and isinstance(value, str):
        return f"{which} has {len(value)} characters; the limit is {ctx.get('max_length')}"
    if kind == "string_pattern_mismatch":
        return f"{which} is empty"
    if kind == "too_long" and len(loc) == 1:
        return f"{ctx.get('actual_length')} {field} in one request; the limit is {ctx.get('max_length')}"
    if kind == "too_short" and len(loc) == 1:
        return f"no {field} given"
    if field == "mode" and kind == "literal_error":
        if value in ("lexical", "hybrid"):
            return (f"mode {value!r} needs the index's lexical (BM25) part: this index was built without it "
                    "(Index.build(..., lexical=True), deepsem index build --lexical)")
        return f"mode must be one of {ctx.get('expected')}, got {str(value)[:50]!r}"
    if field == "k" and kind in ("greater_than_equal", "less_than_equal"):
        return f"k must be between 1 and {limits.max_k}, got {value}"
    if field == "rerank" and kind == "literal_error":
        return ("re-ranking needs a re-ranker: this server was started without one (deepsem serve --rerank DIR, "
                "create_app(reranker=...))")
    if field == "rerank_top" and kind in ("greater_than_equal", "less_than_equal"):
        return f"rerank_top must be between 1 and {limits.max_rerank_top}, got {value}"
    if field == "rerank_weight" and kind in ("greater_than_equal", "less_than_equal"):
        return f"rerank_weight must be between 0 and 1, got {value}"
    return f"{'.'.join(str(x) for x in loc) or 'body'}: {str(e.get('msg', '')).removeprefix('Value error, ')}"


def _summary(errors: list[dict[str, Any]], limits: Limits, shown: int = 3) -> str:
    parts = [_sentence(e, limits)[:300] for e in errors[:shown]]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more


def _issue(e: dict[str, Any], limits: Limits) -> dict[str, Any]:
    loc = [x if isinstance(x, int) else str(x)[:MAX_KEY_CHARS] for x in e.get("loc", ())]
    return {"loc": loc, "msg": _sentence(e, limits)[:500], "type": str(e.get("type", ""))}


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` with uvicorn (uvloop + httptools), as ``deepsem serve`` does, with the app's
    :class:`Limits` on the request head (size, field count, time) and on idle keep-alive connections.

    First the garbage collector's current objects are frozen: everything loaded so far (model, index, the
    libraries) lives as long as the process, so its full passes may skip it. Unfrozen, each full pass walked
    it all and stalled every request in flight for 50-90 ms, about once every two seconds under load (p99 at
    8 clients: 60-70 ms; frozen: 9 ms).
    """
    import uvicorn

    limits: Limits = getattr(app.state, "limits", None) or Limits()
    try:
        import httptools  # noqa: F401

        http: Any = protocol_class(limits.max_header_bytes, limits.max_headers, limits.header_timeout_s)
        extra: dict[str, Any] = {}
    except ImportError:  # h11 bounds the head's size itself (no time limit before the head is complete)
        http, extra = "h11", {"h11_max_incomplete_event_size": limits.max_header_bytes}
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=http,
                timeout_keep_alive=max(1, round(limits.keep_alive_s)), **extra)


def api_key_from_env(api_key: str | None = None) -> str | None:
    """``api_key`` if given, else ``$DEEPSEM_API_KEY`` (None when unset or empty)."""
    return api_key or os.environ.get("DEEPSEM_API_KEY") or None


def create_app(index: Index | None = None, model: SemanticModel | None = None, limits: Limits | None = None,
               max_wait_ms: float = 0.0, classifier: Classifier | None = None,
               recommender: Recommender | None = None, encoder_thread: bool = False, *,
               api_key: str | None = None, reload_interval_s: float | None = 1.0,
               reranker: CrossEncoder | None = None, rerank_top: int = RERANK_TOP,
               rerank_weight: float | None = None) -> FastAPI:
    """The service for ``index`` (its model encodes queries) or, without an index, for ``model`` alone; with
    ``classifier`` also ``POST /classify``, with ``recommender`` also ``POST /recommend``.
    ``encoder_thread``: run the micro-batched model calls in a worker thread (else in the event loop; see
    :mod:`deepsem.serve.batcher`). ``api_key``: required on every route but the page, /healthz and the API
    docs (as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; the value is not read from the
    environment here, see :func:`api_key_from_env`). ``reload_interval_s``: how often a request looks at
    ``INDEX/CURRENT`` for a new version (None: serve the index loaded now, until ``POST /admin/reload``).
    ``reranker``: a cross-encoder that re-scores each search's best ``rerank_top`` first-stage documents (a request
    may turn it off, or ask for another ``rerank_top`` up to ``limits.max_rerank_top``). ``rerank_weight``: the
    score-fusion weight of a request that gives none (None: the re-ranker's probability alone)."""
    if index is None and model is None and classifier is None and recommender is None:
        raise ValueError("create_app needs an index, a model, a classifier or a recommender")
    if reranker is not None and index is None:
        raise ValueError("a re-ranker re-scores an index's search results: create_app(index, reranker=...)")
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty: give a non-empty --api-key / DEEPSEM_API_KEY, or none")
    served = ServedIndex(index, reload_interval_s) if index is not None else None
    limits = limits or Limits()
    if reranker is not None and not 1 <= rerank_top <= limits.max_rerank_top:
        raise ConfigError(f"rerank_top must be between 1 and the limit max_rerank_top ({limits.max_rerank_top}), "
                          f"got {rerank_top}")
    if rerank_weight is not None:
        if reranker is None:
            raise ValueError("rerank_weight mixes a re-ranker's probability with the first stage's score: "
                             "create_app(index, reranker=..., rerank_weight=...)")
        try:
            rerank_weight = check_rerank_weight(rerank_weight)
        except QueryError as exc:
            raise ConfigError(str(exc)) from None
    started = time.time()

    def took(t0: float, t1: float | None = None) -> float:
        """Milliseconds from ``t0`` to ``t1`` (default: now)."""
        return round(((time.perf_counter() if t1 is None else t1) - t0) * 1000, 2)

    counters = {"search": 0, "similarity": 0, "embed": 0, "classify": 0, "recommend": 0, "errors": 0}
    modes = ("dense", "lexical", "hybrid") if index is not None and index.lexical is not None else ("dense",)
    models = request_models(limits, modes, rerank=reranker is not None)

    def two_tower() -> SemanticModel:
        # an index's model is a two-tower model (Index checks it encodes texts on both sides)
        semantic = cast(SemanticModel, served.index.model) if served is not None else model
        assert semantic is not None
        return semantic

    def run_search(items: list[tuple[str, int, dict[str, Any] | None, str, int | None, float | None]]
                   ) -> list[dict[str, Any]]:
        """One encoder call for every waiting query (mode already resolved), then one first-stage search per mode
        (and per candidate count of re-ranked queries), then the re-ranker on each re-ranked query's candidates
        (``rerank_top`` not None, fused with the first stage's scores by its weight); all on the index served when
        the call starts. Each query's hits come back with the stages' milliseconds (the encoder and first stage of
        the whole batch)."""
        assert served is not None
        idx = served.index
        semantic = idx.model
        texts = [q for q, *_ in items]
        t0 = time.perf_counter()
        dense = [i for i, item in enumerate(items) if item[3] != "lexical"]
        vectors = np.zeros((len(items), semantic.dim), np.float32)
        if dense:
            vectors[dense] = semantic.encode([texts[i] for i in dense], side="query")
        t1 = time.perf_counter()
        fetch = [k if top is None else max(k, top) for _, k, _, _, top, _ in items]
        found: list[list[Hit]] = [[] for _ in items]
        groups: dict[tuple[str, int | None], list[int]] = {}
        for i, (_, _, f, mode, top, _) in enumerate(items):
            if not f:  # one search per mode; re-ranked queries also per candidate count (hybrid's pool depends on it)
                groups.setdefault((mode, None if top is None else fetch[i]), []).append(i)
        for (mode, _), plain in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or 0)):
            hits_of = idx.search_encoded(vectors[plain], max(fetch[i] for i in plain),
                                         texts=[texts[i] for i in plain], mode=mode)
            for i, hits in zip(plain, hits_of, strict=True):
                found[i] = hits[: fetch[i]]
        for i, (q, _, f, mode, _, _) in enumerate(items):
            if f:
                found[i] = idx.search_encoded(vectors[i : i + 1], fetch[i], f, [q], mode)[0]
        t2 = time.perf_counter()
        out = []
        for i, (q, k, _, _, top, weight) in enumerate(items):
            t3 = time.perf_counter()
            hits = found[i][:k] if top is None or reranker is None else rerank_hits(reranker, q, found[i], k, weight)
            spent = took(t3) if top is not None else 0.0
            out.append({"hits": [h.to_dict() for h in hits], "encode": took(t0, t1) if dense else 0.0,
                        "first_stage": took(t1, t2), "rerank": spent})
        return out

    batching: dict[str, Any] = {"max_wait_ms": max_wait_ms, "threaded": encoder_thread}
    search_batcher = MicroBatcher(run_search, max_batch=limits.max_texts, **batching)
    def encode_side(side: str) -> Callable[[list[str]], Any]:
        return lambda texts: two_tower().encode(texts, side=side)

    encode_batchers = {side: MicroBatcher(encode_side(side), max_batch=limits.max_texts * 2, **batching)
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
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for batcher in (search_batcher, *encode_batchers.values(), classify_batcher, recommend_batcher):
            await batcher.close()

    app = FastAPI(title="deepsem", description="Semantic search and matching with LSTM-DSSM.",
                  version=__version__, lifespan=lifespan)
    app.state.limits = limits
    guard_settings = GuardSettings(api_key=api_key, max_in_flight=limits.max_in_flight,
                                   max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s,
                                   max_headers=limits.max_headers)
    guards: list[Guard] = []

    def guarded(asgi: Any) -> Guard:
        guards.append(Guard(asgi, guard_settings))
        return guards[-1]

    app.add_middleware(guarded)

    # the key itself is checked by the Guard before the body is read; these only publish the scheme
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    async def _declares_key(_b: Any = Depends(bearer), _h: Any = Depends(header_key)) -> None:
        return None

    secured = [Depends(_declares_key)] if api_key is not None else []
    auth = (401,) if api_key is not None else ()
    post_errors = _error_responses(400, *auth, 408, 413, 422, 503)
    get_errors = _error_responses(*auth, 503)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        counters["errors"] += 1
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.exception_handler(QueryError)
    async def on_query_error(request: Request, exc: QueryError) -> JSONResponse:
        """A query the index refuses (the schema's rules already keep most out): 422 in the published shape."""
        loc: list[str | int] = ["body", "queries"] + ([exc.position] if exc.position is not None else [])
        return JSONResponse({"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}], "error_count": 1,
                             "message": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            reason = errors[0].get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"the body is not valid JSON: {reason}".rstrip(": ")}, status_code=400)
        errors = _clean(errors)
        return JSONResponse({"detail": [_issue(e, limits) for e in errors[: limits.max_errors]],
                             "error_count": len(errors), "message": _summary(errors, limits)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("deepsem.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        if reranker is not None:  # the page shows its re-rank checkbox
            html = html.replace('<body data-reranker="">', f'<body data-reranker="{rerank_top}">', 1)
        return HTMLResponse(html)

    @app.get("/healthz", response_model=HealthResponse, response_model_exclude_none=True)
    async def healthz() -> dict[str, Any]:
        """Open without the API key: answers while the service is up, with the index version served."""
        if served is None:
            return {"status": "ok"}
        await served.maybe_reload()
        return {"status": "ok", "version": served.version}

    @app.get("/stats", dependencies=secured, responses=get_errors)
    async def stats() -> dict[str, Any]:
        info: dict[str, Any] = {
            "uptime_s": round(time.time() - started, 1), "requests": counters,
            "model": repr(two_tower() if index is not None or model is not None else classifier),
            "limits": asdict(limits), "in_flight": guards[0].in_flight if guards else 0,
            "refused": guards[0].refused if guards else {},
            "batching": (recommend_batcher if recommender is not None and index is None
                         else search_batcher).stats.to_dict()}
        if served is not None:
            info["index"] = served.index.stats()
            info["reranker"] = None if reranker is None else {"model": repr(reranker), "backend": reranker.backend,
                                                              "rerank_top": rerank_top, "rerank_weight": rerank_weight,
                                                              "document_cache": reranker.document_cache}
            info["reloads"] = served.reloads
            info["reload_error"] = served.error
        if classifier is not None:
            info["classifier"] = repr(classifier)
        if recommender is not None:
            info["recommender"] = repr(recommender)
        return info

    if served is not None:
        search_model = models["SearchRequest"]

        @app.post("/search", response_model=SearchResponse, dependencies=secured, responses=post_errors)
        async def search(req: search_model) -> Any:  # type: ignore[valid-type]
            await served.maybe_reload()
            queries = [req.queries] if isinstance(req.queries, str) else req.queries
            mode = served.index.resolve_mode(req.mode)
            reranked = reranker is not None and req.rerank is not False
            top = (req.rerank_top or rerank_top) if reranked else None
            weight = (rerank_weight if req.rerank_weight is None else req.rerank_weight) if reranked else None
            t0 = time.perf_counter()
            answers = await search_batcher([(q, req.k, req.filter, mode, top, weight) for q in queries])
            counters["search"] += 1
            total = took(t0)
            timings = {"encode": answers[0]["encode"], "first_stage": answers[0]["first_stage"],
                       "rerank": round(sum(a["rerank"] for a in answers), 2), "total": total}
            # the hits are built by deepsem with the response's types already: a JSONResponse skips FastAPI's
            # re-validation of every hit against SearchResponse (the schema in /docs is unchanged)
            return JSONResponse({"results": [a["hits"] for a in answers], "took_ms": total, "reranked": reranked,
                                 "timings_ms": timings})

        @app.post("/admin/reload", response_model=ReloadResponse, dependencies=secured,
                  responses=_error_responses(*auth, 503))
        async def admin_reload() -> dict[str, Any]:
            """Load the version INDEX/CURRENT names now (a service also does so by itself within
            ``reload_interval_s``)."""
            reloaded = await served.reload()
            return {"version": served.version, "reloaded": reloaded}

    if served is not None or model is not None:
        similarity_model, embed_model = models["SimilarityRequest"], models["EmbedRequest"]

        @app.post("/similarity", response_model=SimilarityResponse, dependencies=secured, responses=post_errors)
        async def similarity(req: similarity_model) -> dict[str, Any]:  # type: ignore[valid-type]
            if served is not None:
                await served.maybe_reload()
            model_ = two_tower()
            t0 = time.perf_counter()
            a = await encode_batchers["query"]([p[0] for p in req.pairs])
            b = await encode_batchers["doc"]([p[1] for p in req.pairs])
            counters["similarity"] += 1
            return {"scores": np.asarray((a * b).sum(1), dtype=float).tolist(), "threshold": model_.threshold,
                    "took_ms": took(t0)}

        @app.post("/embed", response_model=EmbedResponse, dependencies=secured, responses=post_errors)
        async def embed(req: embed_model) -> dict[str, Any]:  # type: ignore[valid-type]
            if served is not None:
                await served.maybe_reload()
            model_ = two_tower()
            t0 = time.perf_counter()
            vectors = await encode_batchers[req.side](req.texts)
            counters["embed"] += 1
            return {"vectors": np.asarray(vectors, dtype=float).tolist(), "dim": model_.dim, "took_ms": took(t0)}

    if classifier is not None:
        classify_model = models["ClassifyRequest"]

        @app.post("/classify", response_model=ClassifyResponse, dependencies=secured, responses=post_errors)
        async def classify(req: classify_model) -> dict[str, Any]:  # type: ignore[valid-type]
            t0 = time.perf_counter()
            probs = await classify_batcher(req.texts)
            counters["classify"] += 1
            top = classifier.top_k(np.asarray(probs), req.k, req.threshold)
            return {"predictions": [[{"label": y, "prob": p} for y, p in row] for row in top], "took_ms": took(t0)}

    if recommender is not None:
        recommend_model = models["RecommendRequest"]

        @app.post("/recommend", response_model=RecommendResponse, dependencies=secured, responses=post_errors)
        async def recommend(req: recommend_model) -> dict[str, Any]:  # type: ignore[valid-type]
            history = [str(item) for item in req.history]
            t0 = time.perf_counter()
            if req.exclude_seen:  # the common case: shares a batch with concurrent requests
                (answer,) = await recommend_batcher([(history, req.k, req.user_features)])
            else:
                answer = recommender.recommend_many([history], req.k, exclude_seen=False,
                                                    user_features=[req.user_features] if req.user_features
                                                    else None)[0]
            counters["recommend"] += 1
            titles = recommender.catalogue.titles
            index_of = recommender.catalogue.index
            items = [{"id": i, "title": titles[index_of[i]], "score": s} for i, s in answer.items[: req.k]]
            return {"items": items, "fallback": answer.fallback, "unknown": answer.unknown, "took_ms": took(t0)}

    return app
