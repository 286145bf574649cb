"""Score fusion over HTTP: POST /search's ``rerank_weight`` (and the server's default, create_app(rerank_weight=))
answers what Index.search(..., rerank_weight=...) of the library answers; the field is in the published schema,
its bad values are a clear 422, a server without a re-ranker accepts and ignores it as it does rerank_top, and the
contract fuzz still passes with a default weight set."""

from __future__ import annotations

import numpy as np
import pytest
import test_rerank_service as two_stage
from fastapi.testclient import TestClient
from test_contract import fuzz

from deepsem.errors import ConfigError
from deepsem.serve import Limits, create_app

LIMITS, TOP = two_stage.LIMITS, two_stage.TOP
QUERIES = ["银行卡余额", "火车站车票"]
# the same server as the two-stage tests: their tiny re-ranker, index and client (fixtures, used by name)
reranker, index, client = two_stage.reranker, two_stage.index, two_stage.client


def same_hits(got: list[dict], want: list) -> None:
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-6)
    assert [h["first_rank"] for h in got] == [h.first_rank for h in want]
    np.testing.assert_allclose([h["first_score"] for h in got], [h.first_score for h in want], atol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize("w", [0, 0.3, 0.7, 1])
def test_rerank_weight_matches_the_library(client, index, reranker, mode, w):
    r = client.post("/search", json={"queries": QUERIES, "k": 5, "mode": mode, "rerank_weight": w})
    assert r.status_code == 200, r.text
    assert r.json()["reranked"] is True
    want = index.search(QUERIES, k=5, mode=mode, rerank=reranker, rerank_top=TOP, rerank_weight=w)
    for got, hits in zip(r.json()["results"], want, strict=True):
        same_hits(got, hits)


def test_the_servers_default_weight_and_a_request_overriding_it(index, reranker):
    with TestClient(create_app(index, limits=LIMITS, reranker=reranker, rerank_top=TOP, rerank_weight=0.3)) as c:
        body = c.post("/search", json={"queries": QUERIES, "k": 4}).json()
        fused = index.search(QUERIES, k=4, rerank=reranker, rerank_top=TOP, rerank_weight=0.3)
        for got, hits in zip(body["results"], fused, strict=True):
            same_hits(got, hits)
        body = c.post("/search", json={"queries": QUERIES, "k": 4, "rerank_weight": 1.0, "rerank_top": 6}).json()
        alone = index.search(QUERIES, k=4, rerank=reranker, rerank_top=6)
        for got, hits in zip(body["results"], alone, strict=True):
            same_hits(got, hits)
        plain = c.post("/search", json={"queries": QUERIES[0], "k": 4, "rerank": False}).json()
        assert plain["reranked"] is False
        assert [h["id"] for h in plain["results"][0]] == [h.id for h in index.search(QUERIES[0], k=4)[0]]
        assert c.get("/stats").json()["reranker"]["rerank_weight"] == 0.3


@pytest.mark.parametrize(("body", "message"), [
    ({"queries": "a", "rerank_weight": 1.5}, "rerank_weight must be between 0 and 1, got 1.5"),
    ({"queries": "a", "rerank_weight": -0.2}, "rerank_weight must be between 0 and 1, got -0.2"),
    ({"queries": "a", "rerank_weight": True}, "rerank_weight"),
    ({"queries": "a", "rerank_weight": "0.5"}, "rerank_weight"),
])
def test_bad_rerank_weights_are_a_clear_422(client, body, message):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]


def test_the_schema_declares_rerank_weight_and_a_server_without_re_ranker_ignores_it(client, index):
    props = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]
    assert props["rerank_weight"]["anyOf"] == [{"type": "number", "minimum": 0.0, "maximum": 1.0}, {"type": "null"}]
    assert "rerank_weight" not in client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"].get(
        "required", [])
    with TestClient(create_app(index, limits=LIMITS)) as c:
        schema = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]
        assert schema["rerank_weight"] == props["rerank_weight"]  # as rerank_top: declared, not used
        r = c.post("/search", json={"queries": QUERIES[0], "k": 3, "rerank_weight": 0.5})
        assert r.status_code == 200 and r.json()["reranked"] is False
        assert [h["id"] for h in r.json()["results"][0]] == [h.id for h in index.search(QUERIES[0], k=3)[0]]
        assert c.post("/search", json={"queries": "a", "rerank_weight": 2}).status_code == 422


def test_bad_server_weights(index, reranker):
    with pytest.raises(ValueError, match=r"create_app\(index, reranker=\.\.\., rerank_weight"):
        create_app(index, limits=LIMITS, rerank_weight=0.5)
    for bad in (1.2, -1, float("nan"), True):
        with pytest.raises(ConfigError, match="rerank_weight must be a number from 0 to 1"):
            create_app(index, limits=LIMITS, reranker=reranker, rerank_top=TOP, rerank_weight=bad)


def test_the_fused_service_keeps_its_contract(index, reranker):
    app = create_app(index, limits=Limits(max_chars=40, max_texts=4, max_k=8, max_rerank_top=12), reranker=reranker,
                     rerank_top=6, rerank_weight=0.4)
    assert "POST /search" in fuzz(app, max_examples=10)
