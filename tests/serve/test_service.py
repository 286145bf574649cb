"""The HTTP service, driven with FastAPI's test client; answers checked against the library's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import deepsem
from deepsem.index import Document, Index
from deepsem.serve import Limits, create_app
from deepsem.serve.batcher import MicroBatcher

TEXTS = ["银行卡账户余额", "还款利息逾期", "火车站车票", "医院医生看病", "手机电话号码", "天气下雨"]


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(TEXTS)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("svc") / "idx")


@pytest.fixture(scope="module")
def client(index: Index):
    with TestClient(create_app(index, limits=Limits(max_chars=50, max_texts=4, max_k=5))) as c:
        yield c


def test_search_matches_the_library(client: TestClient, index: Index):
    r = client.post("/search", json={"queries": ["火车票", "看病"], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = index.search(["火车票", "看病"], k=3)
    for got, want in zip(body["results"], expected, strict=True):
        assert [h["id"] for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-6)
    assert body["took_ms"] >= 0
    one = client.post("/search", json={"queries": "火车票", "k": 2, "filter": {"group": 1}}).json()
    assert len(one["results"]) == 1 and all(h["metadata"]["group"] == 1 for h in one["results"][0])


def test_similarity_and_embed_match_the_model(client: TestClient, index: Index):
    pairs = [["银行卡余额", "账户余额"], ["火车站", "医院"]]
    r = client.post("/similarity", json={"pairs": pairs})
    assert r.status_code == 200, r.text
    want = index.model.similarity([p[0] for p in pairs], [p[1] for p in pairs])
    np.testing.assert_allclose(r.json()["scores"], want, atol=1e-6)
    r = client.post("/embed", json={"texts": ["天气", "手机"], "side": "doc"})
    vectors = np.array(r.json()["vectors"])
    np.testing.assert_allclose(vectors, index.model.encode(["天气", "手机"], side="doc"), atol=1e-6)
    assert r.json()["dim"] == index.model.dim


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/search", {"queries": "x" * 51}, 422, "has 51 characters; the limit is 50"),
        ("/search", {"queries": ["a", "b", "c", "d", "e"]}, 422, "5 queries in one request"),
        ("/search", {"queries": "a", "k": 6}, 422, "k must be between 1 and 5"),
        ("/search", {"queries": "a", "k": 0}, 422, "k must be between 1 and 5"),
        ("/search", {"queries": "   "}, 422, "query is empty"),
        ("/search", {"queries": ["a", " \t"]}, 422, "query 1 is empty"),
        ("/search", {"queries": []}, 422, "no queries given"),
        ("/search", {"k": 3}, 422, "queries"),
        ("/similarity", {"pairs": [["a"]]}, 422, "pairs"),
        ("/embed", {"texts": ["a"], "side": "left"}, 422, "side"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, path, body, status, message):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text and "Traceback" not in r.text


def test_not_json_and_health_stats_page(client: TestClient, index: Index):
    r = client.post("/search", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "detail" in r.json() and "Traceback" not in r.text
    assert client.get("/healthz").json() == {"status": "ok", "version": index.version}
    stats = client.get("/stats").json()
    assert stats["index"]["documents"] == len(TEXTS) and stats["requests"]["search"] >= 0
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'charset="utf-8"' in page.text and "/search" in page.text
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/search", "/similarity", "/embed"}


def test_model_only_service(index: Index):
    with TestClient(create_app(model=index.model)) as c:
        assert c.post("/search", json={"queries": "a"}).status_code == 404
        assert c.post("/embed", json={"texts": ["a"]}).status_code == 200


def test_concurrent_requests_share_one_encoder_call():
    calls: list[int] = []

    def fn(items):
        calls.append(len(items))
        return np.array([[len(x)] for x in items])

    async def main():
        batcher = MicroBatcher(fn, max_batch=64, max_wait_ms=50)
        results = await asyncio.gather(*(batcher(["a" * i, "b"]) for i in range(1, 9)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert [r[:, 0].tolist() for r in results] == [[i, 1] for i in range(1, 9)]
    assert sum(calls) == 16 and len(calls) < 8  # batched, not one call per request


def test_batcher_error_reaches_every_waiter_and_worker_survives():
    def fn(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return list(items)

    async def main():
        batcher = MicroBatcher(fn, max_wait_ms=20)
        bad = await asyncio.gather(batcher(["boom"]), batcher(["x"]), return_exceptions=True)
        good = await batcher(["y"])
        await batcher.close()
        return bad, good

    bad, good = asyncio.run(main())
    assert all(isinstance(b, RuntimeError) for b in bad) and good == ["y"]


def test_internal_error_is_500_without_traceback(index: Index, monkeypatch):
    app = create_app(index)
    monkeypatch.setattr(index, "search_encoded", lambda *a, **k: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/search", json={"queries": "a"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error: ZeroDivisionError"}
    assert deepsem.__version__


def test_without_waiting_requests_queued_meanwhile_share_the_next_call():
    import time as _time

    calls: list[int] = []

    def slow(items):
        calls.append(len(items))
        _time.sleep(0.05)
        return list(items)

    async def main():
        batcher = MicroBatcher(slow, max_wait_ms=0, threaded=True)  # the call runs while requests arrive
        first = asyncio.ensure_future(batcher(["a"]))
        await asyncio.sleep(0.01)  # the first call is running now
        rest = await asyncio.gather(*(batcher([str(i)]) for i in range(7)))
        await first
        await batcher.close()
        return rest

    assert asyncio.run(main()) == [[str(i)] for i in range(7)]
    assert calls == [1, 7]


def test_inline_batcher_runs_in_the_loop_thread_and_still_batches():
    import threading

    calls: list[tuple[int, int]] = []

    def fn(items):
        calls.append((len(items), threading.get_ident()))
        return [x.upper() for x in items]

    async def main():
        batcher = MicroBatcher(fn, threaded=False)
        # the eight requests are queued before the worker first runs: one call for all of them
        results = await asyncio.gather(*(batcher([f"q{i}"]) for i in range(8)))
        lone = await batcher(["z"])
        await batcher.close()
        return results, lone, threading.get_ident()

    results, lone, loop_thread = asyncio.run(main())
    assert results == [[f"Q{i}"] for i in range(8)] and lone == ["Z"]
    assert [n for n, _ in calls] == [8, 1] and {t for _, t in calls} == {loop_thread}


def test_inline_service_answers_as_the_threaded_one(index: Index):
    body = {"queries": ["银行", "火车"], "k": 3}
    answers = []
    for threaded in (True, False):
        with TestClient(create_app(index, encoder_thread=threaded)) as c:
            answers.append(c.post("/search", json=body).json()["results"])
    assert answers[0] == answers[1]
