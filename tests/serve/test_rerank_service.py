"""Two-stage search over HTTP: POST /search with the server's cross-encoder, answers checked against
Index.search(..., rerank=...) of the library, the published contract fuzzed with the re-ranker on, the 4xx of a
server without one, and the page's re-rank checkbox and stage timings in a real browser (where Chromium is)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from conftest import make_pairs
from fastapi.testclient import TestClient
from test_contract import fuzz
from test_web_page import CHROMIUM, FLAGS, MISSING

from deepsem.errors import ConfigError
from deepsem.index import Document, Index
from deepsem.serve import Limits, create_app
from deepsem.tasks.rerank import CrossEncoder

LIMITS = Limits(max_chars=50, max_texts=4, max_k=5, max_rerank_top=20)
TOP = 8


@pytest.fixture(scope="module")
def reranker(tiny_reranker: tuple[CrossEncoder, Path]) -> CrossEncoder:
    return tiny_reranker[0]


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    texts = list(dict.fromkeys(a for a, _, _ in make_pairs(60, 9)))[:30]
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(texts)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("svc-rerank") / "idx", lexical=True)


@pytest.fixture(scope="module")
def client(index: Index, reranker: CrossEncoder):
    with TestClient(create_app(index, limits=LIMITS, reranker=reranker, rerank_top=TOP)) as c:
        yield c


def same_hits(got: list[dict], want: list) -> None:
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
    assert [h.get("first_rank") for h in got] == [h.first_rank for h in want]
    np.testing.assert_allclose([h.get("first_score") or 0.0 for h in got], [h.first_score or 0.0 for h in want],
                               atol=1e-6)


def check_timings(body: dict, reranked: bool) -> None:
    t = body["timings_ms"]
    assert set(t) == {"encode", "first_stage", "rerank", "total"} and all(v >= 0 for v in t.values())
    assert body["reranked"] is reranked and t["total"] == body["took_ms"]
    assert (t["rerank"] > 0) == reranked


@pytest.mark.parametrize(("request_body", "library"), [
    ({}, {"rerank_top": TOP}),  # on by default, the server's rerank_top
    ({"rerank": True, "rerank_top": 3}, {"rerank_top": 3}),  # fewer candidates than k
    ({"rerank_top": 20, "mode": "lexical"}, {"rerank_top": 20, "mode": "lexical"}),  # more than there are
    ({"mode": "dense", "filter": {"group": 1}}, {"rerank_top": TOP, "mode": "dense", "filter": {"group": 1}}),
])
def test_reranked_search_matches_the_library(client, index, reranker, request_body, library):
    queries = ["银行卡余额", "火车站车票"]
    r = client.post("/search", json={"queries": queries, "k": 5, **request_body})
    assert r.status_code == 200, r.text
    body = r.json()
    want = index.search(queries, k=5, rerank=reranker, **library)
    for got, hits in zip(body["results"], want, strict=True):
        same_hits(got, hits)
        assert all(h["metadata"]["group"] == 1 for h in got) or "filter" not in request_body
    check_timings(body, reranked=True)


def test_rerank_false_is_the_one_stage_search(client, index):
    r = client.post("/search", json={"queries": "银行卡余额", "k": 4, "rerank": False, "rerank_top": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    same_hits(body["results"][0], index.search("银行卡余额", k=4)[0])
    assert all(set(h) == {"id", "text", "score", "metadata"} for h in body["results"][0])
    check_timings(body, reranked=False)


@pytest.mark.parametrize(("body", "message"), [
    ({"queries": "a", "rerank_top": 21}, "rerank_top must be between 1 and 20"),
    ({"queries": "a", "rerank_top": 0}, "rerank_top must be between 1 and 20"),
    ({"queries": "a", "rerank": "yes"}, "rerank"),
    ({"queries": "a", "rerank": 1}, "rerank"),
])
def test_bad_rerank_fields_are_a_clear_422(client, body, message):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]


def test_without_a_re_ranker_asking_for_one_is_a_4xx(index):
    with TestClient(create_app(index, limits=LIMITS)) as c:
        r = c.post("/search", json={"queries": "银行", "rerank": True})
        assert r.status_code == 422
        assert "re-ranking needs a re-ranker: this server was started without one" in r.json()["message"]
        r = c.post("/search", json={"queries": "银行", "rerank": False, "k": 3})
        assert r.status_code == 200 and r.json()["reranked"] is False
        check_timings(r.json(), reranked=False)
        schema = c.get("/openapi.json").json()["components"]["schemas"]
        assert schema["SearchRequest"]["properties"]["rerank"]["anyOf"][0] == {"const": False, "type": "boolean"}
        assert 'data-reranker=""' in c.get("/").text


def test_the_schema_describes_the_rerank_fields_and_timings(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    props = schemas["SearchRequest"]["properties"]
    assert props["rerank"]["anyOf"][0] == {"type": "boolean"}
    assert props["rerank_top"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 20}
    assert set(schemas["SearchResponse"]["required"]) == {"results", "took_ms", "reranked", "timings_ms"}
    assert set(schemas["StageTimings"]["required"]) == {"encode", "first_stage", "rerank", "total"}
    assert {"first_score", "first_rank"} <= set(schemas["HitModel"]["properties"])
    stats = client.get("/stats").json()
    assert stats["reranker"]["rerank_top"] == TOP and "CrossEncoder" in stats["reranker"]["model"]
    assert stats["reranker"]["backend"] == "torch"
    assert f'data-reranker="{TOP}"' in client.get("/").text


def test_serve_keeps_a_document_cache_and_answers_as_the_library(index, tiny_reranker, served_app):
    directory = tiny_reranker[1]
    result, served = served_app(["serve", "--index", str(index.directory), "--rerank", str(directory),
                                 "--rerank-top", str(TOP)])
    assert result.exit_code == 0, result.output
    assert "a document cache of 256 MB" in result.output
    want = index.search("银行卡余额", k=3, rerank=directory, rerank_top=TOP)[0]
    with TestClient(served) as c:
        assert c.get("/stats").json()["reranker"]["document_cache"] == {
            "documents": 0, "mb": 0.0, "max_mb": 256.0, "hits": 0, "misses": 0}
        for _ in range(2):  # the second search re-ranks the same documents from the cache
            body = c.post("/search", json={"queries": "银行卡余额", "k": 3}).json()
            np.testing.assert_allclose([h["score"] for h in body["results"][0]], [h.score for h in want], atol=1e-6)
            assert [h["id"] for h in body["results"][0]] == [h.id for h in want]
        cache = c.get("/stats").json()["reranker"]["document_cache"]
    assert cache["documents"] == TOP and cache["misses"] == TOP and cache["hits"] == TOP
    result, served = served_app(["serve", "--index", str(index.directory), "--rerank", str(directory),
                                 "--rerank-cache-mb", "0"])
    assert result.exit_code == 0 and "document cache" not in result.output
    with TestClient(served) as c:
        assert c.get("/stats").json()["reranker"]["document_cache"] is None
    refused = served_app(["serve", "--index", str(index.directory), "--rerank", str(directory),
                          "--rerank-cache-mb", "-1"])[0]
    assert refused.exit_code == 2 and "--rerank-cache-mb" in refused.output


def test_the_reranking_service_keeps_its_contract(index, reranker):
    app = create_app(index, limits=Limits(max_chars=40, max_texts=4, max_k=8, max_rerank_top=12), reranker=reranker,
                     rerank_top=6)
    assert "POST /search" in fuzz(app, max_examples=10)


def test_bad_service_settings(index, reranker):
    with pytest.raises(ValueError, match="create_app\\(index, reranker"):
        create_app(model=index.model, reranker=reranker)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rerank_top must be between 1 and the limit max_rerank_top \\(20\\)"):
        create_app(index, limits=LIMITS, reranker=reranker, rerank_top=21)


@pytest.mark.skipif(MISSING, reason="needs Debian's chromium and the playwright package")
def test_the_page_shows_the_stages_and_turns_re_ranking_off(index, reranker):
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(index, reranker=reranker, rerank_top=TOP)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            assert page.is_checked("#rerank")
            page.fill("#q", "银行卡余额")
            page.press("#q", "Enter")
            page.wait_for_selector("#results li")
            stages = page.inner_text("#stages")
            assert f"re-ranked (top {TOP})" in stages and "first stage" in stages and "rerank" in stages
            want = index.search("银行卡余额", k=10, rerank=reranker, rerank_top=TOP)[0]
            assert page.locator("#results li .text").all_inner_texts() == [h.text for h in want]
            assert page.locator("#results li .first").all_inner_texts() == [f"#{h.first_rank}" for h in want]
            page.uncheck("#rerank")  # searches again, first stage only
            page.wait_for_function("document.getElementById('stages').textContent.startsWith('first stage only')")
            plain = index.search("银行卡余额", k=10)[0]  # the list and the stages line change together
            assert page.locator("#results li .text").all_inner_texts() == [h.text for h in plain]
            assert page.locator("#results li .first").count() == 0
            assert "rerank" not in page.inner_text("#stages").replace("re-rank", "")
            browser.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
