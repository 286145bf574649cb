"""Hostile requests: huge or wrong-typed bodies, non-finite numbers, slow or endless bodies and headers, missing
API keys, too many requests at once; and a running service following its index's new versions."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from deepsem.errors import ConfigError
from deepsem.index import Document, Index
from deepsem.serve import Limits, create_app
from deepsem.serve.app import NOT_BLANK, ValidationErrorBody, api_key_from_env
from deepsem.serve.guard import Guard, GuardSettings, protocol_class

TEXTS = ["银行卡账户余额", "还款利息逾期", "火车站车票", "医院医生看病", "手机电话号码", "天气下雨"]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def index(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Index:
    docs = [Document(f"d{i}", t, {"group": i % 2}) for i, t in enumerate(TEXTS)]
    return Index.build(trained_model_dir, docs, tmp_path_factory.mktemp("hard") / "idx")


@pytest.fixture(scope="module")
def client(index: Index):
    with TestClient(create_app(index, limits=Limits(max_chars=50, max_texts=300, max_k=5))) as c:
        yield c


def test_many_wrong_typed_queries_get_a_small_capped_422(client: TestClient):
    # 200,000 wrong-typed queries (0.6 MB): refused on the list's length, not item by item
    r = client.post("/search", content=json.dumps({"queries": [1] * 200_000}), headers=JSON)
    assert r.status_code == 422 and len(r.content) < 2000, r.text[:500]
    assert r.json()["message"] == "200000 queries in one request; the limit is 300"
    # 250 wrong items inside the limit: 20 listed, all counted, the published shape
    r = client.post("/search", json={"queries": list(range(250))})
    body = ValidationErrorBody.model_validate(r.json())
    assert r.status_code == 422 and len(body.detail) == 20 and body.error_count == 250
    assert body.detail[3].loc == ["body", "queries", 3] and "(and 247 more)" in body.message


@pytest.mark.parametrize("raw", [b'{"queries": "a", "k": 1e400}', b'{"queries": "a", "k": Infinity}',
                                 b'{"queries": "a", "k": NaN}', b'{"queries": "a", "k": true}',
                                 b'{"queries": "a", "k": "2"}', b'{"queries": "a", "k": 2.5}',
                                 b'{"queries": "a", "filter": {"group": NaN}}',
                                 b'{"queries": "a", "filter": {"group": -Infinity}}'])
def test_non_finite_bool_and_fractional_numbers_are_422(client: TestClient, raw: bytes):
    r = client.post("/search", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    ValidationErrorBody.model_validate(r.json())


def test_integral_numbers_are_integers_as_in_json_schema(client: TestClient, index: Index):
    r = client.post("/search", content='{"queries": "火车票", "k": 2.0}'.encode(), headers=JSON)
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"][0]] == [h.id for h in index.search("火车票", k=2)[0]]


def test_schema_carries_the_limits(client: TestClient):
    schema = client.get("/openapi.json").json()
    search = schema["components"]["schemas"]["SearchRequest"]["properties"]
    text, texts = search["queries"]["anyOf"]
    assert text == {"type": "string", "maxLength": 50, "pattern": NOT_BLANK}
    assert texts["maxItems"] == 300 and texts["minItems"] == 1 and texts["items"] == text
    assert (search["k"]["minimum"], search["k"]["maximum"], search["k"]["default"]) == (1, 5, 5)
    assert search["mode"]["anyOf"][0] == {"type": "string", "const": "dense"}  # no lexical part: dense only
    r = client.post("/search", json={"queries": "x", "mode": "lexical"})
    assert r.status_code == 422 and "built without it" in r.json()["message"]
    r = client.post("/search", json={"queries": "x", "mode": "sparse"})
    assert r.status_code == 422 and r.json()["message"] == "mode must be one of 'dense', got 'sparse'"
    responses = schema["paths"]["/search"]["post"]["responses"]
    assert set(responses) == {"200", "400", "408", "413", "422", "503"}
    assert "/classify" not in schema["paths"] and "/recommend" not in schema["paths"]


# -- the Guard (ASGI) --------------------------------------------------------------------------------------------
def test_api_key_bearer_or_header_and_open_paths(index: Index, monkeypatch: pytest.MonkeyPatch):
    with TestClient(create_app(index, api_key="s3cret")) as c:
        r = c.post("/search", json={"queries": "火车票"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert c.post("/search", json={"queries": "火车票"}, headers={"X-API-Key": "wrong"}).status_code == 401
        basic = {"Authorization": "Basic s3cret"}
        assert c.post("/search", json={"queries": "火车票"}, headers=basic).status_code == 401
        assert c.post("/search", json={"queries": "火车票"}, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/search", json={"queries": "火车票"},
                      headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/stats").status_code == 401 and c.post("/admin/reload").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        schema = c.get("/openapi.json").json()
        assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
        assert "401" in schema["paths"]["/search"]["post"]["responses"]
        assert schema["paths"]["/search"]["post"]["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    with TestClient(create_app(index)) as c:  # no key: nothing asked, nothing published
        assert c.get("/stats").status_code == 200
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})
    monkeypatch.setenv("DEEPSEM_API_KEY", "from-env")
    assert api_key_from_env(None) == "from-env" and api_key_from_env("given") == "given"
    monkeypatch.setenv("DEEPSEM_API_KEY", "")
    assert api_key_from_env(None) is None
    with pytest.raises(ConfigError, match="API key is empty"):
        create_app(index, api_key=" ")


@pytest.mark.parametrize("field", ["max_in_flight", "max_body_bytes", "body_timeout_s", "max_k"])
def test_limits_must_be_positive(field: str):
    with pytest.raises(ConfigError, match=field):
        Limits(**{field: 0})


def test_requests_beyond_max_in_flight_get_503_with_retry_after():
    release = asyncio.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(slow_app, GuardSettings(None, max_in_flight=2, max_body_bytes=100, body_timeout_s=5,
                                          max_headers=10))

    async def call(path: str = "/search") -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await guard({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
        return sent

    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        held = [asyncio.ensure_future(call()) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await call()
        health = asyncio.ensure_future(call("/healthz"))  # health checks are not counted
        await asyncio.sleep(0.01)
        release.set()
        return await asyncio.gather(*held), refused, await health

    held, refused, health = asyncio.run(main())
    assert [m[0]["status"] for m in held] == [200, 200] and health[0]["status"] == 200
    assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
    assert "busy" in json.loads(refused[1]["body"])["detail"] and guard.in_flight == 0


# -- over a real socket: uvicorn with the bounded protocol ------------------------------------------------------
@pytest.fixture(scope="module")
def server(index: Index):
    limits = Limits(max_body_bytes=10_000, body_timeout_s=1.0, header_timeout_s=1.0, max_header_bytes=4096,
                    max_headers=20, keep_alive_s=1)
    app = create_app(index, limits=limits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                            http=protocol_class(limits.max_header_bytes, limits.max_headers, limits.header_timeout_s),
                            timeout_keep_alive=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield port
    srv.should_exit = True
    thread.join(timeout=10)


def exchange(port: int, data: bytes, then: list[bytes] | None = None, pause: float = 0.0,
             timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` (then each of ``then`` after ``pause`` s); everything read until the server closes, and when."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            for chunk in then or []:
                time.sleep(pause)
                sock.sendall(chunk)
        except OSError:  # the server closed the connection: what it answered is read below
            pass
        try:
            while part := sock.recv(65536):
                out += part
        except OSError:
            pass
    return out, time.monotonic() - t0


def post_head(length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}{extra}\r\n").encode()


def test_declared_oversize_body_is_413_before_it_is_sent(server: int):
    out, _ = exchange(server, post_head(50 * 2**20))  # 50 MB announced, not one byte of it sent
    assert out.startswith(b"HTTP/1.1 413") and b"the limit is 10000" in out


def test_chunked_body_is_cut_off_at_the_limit(server: int):
    chunk = b"%x\r\n%s\r\n" % (4000, b"x" * 4000)
    out, _ = exchange(server, post_head(), [chunk] * 200, pause=0.0)  # 800 KB offered, 10 KB allowed
    assert out.startswith(b"HTTP/1.1 413") and b"longer than the limit of 10000" in out


def test_slow_body_is_408_at_the_deadline(server: int):
    body = json.dumps({"queries": "火车票"}).encode()
    out, took = exchange(server, post_head(len(body)) + body[:1], [bytes([b]) for b in body[1:]], pause=0.3)
    assert out.startswith(b"HTTP/1.1 408") and b"within 1 s" in out
    assert took < 4  # not the 0.3 s x 20 bytes the client would have taken


def test_request_heads_are_bounded_in_size_count_and_time(server: int):
    out, _ = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431") and b"pass 4096 bytes" in out
    many = "".join(f"X-H{i}: v\r\n" for i in range(30))
    out, _ = exchange(server, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert out.startswith(b"HTTP/1.1 431") and b"more than 20 header fields" in out
    # a head trickled in a byte at a time is cut off at header_timeout_s; one idle connection likewise
    out, took = exchange(server, b"GET /healthz HTTP/1.1\r\n", [b"X"] * 40, pause=0.1)
    assert out == b"" and took < 4
    out, took = exchange(server, b"")
    assert out == b"" and took < 3
    ok, _ = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


# -- following the index's versions -------------------------------------------------------------------------------
def test_running_service_sees_add_and_delete(trained_model_dir: Path, tmp_path: Path):
    docs = [Document(f"d{i}", t) for i, t in enumerate(TEXTS)]
    Index.build(trained_model_dir, docs, tmp_path / "idx")
    served = Index.load(tmp_path / "idx")
    with TestClient(create_app(served, reload_interval_s=0)) as c:
        def ids(query: str) -> list[str]:
            r = c.post("/search", json={"queries": query, "k": 10})
            assert r.status_code == 200, r.text
            return [h["id"] for h in r.json()["results"][0]]

        before = c.get("/healthz").json()["version"]
        assert "d2" in ids("火车站车票")
        writer = Index.load(tmp_path / "idx")  # another process's `deepsem index delete` / `add`
        writer.delete(["d2"])
        assert "d2" not in ids("火车站车票")
        writer.add([Document("new", "火车站车票时间")])
        assert ids("火车站车票时间")[0] == "new"
        assert c.get("/healthz").json()["version"] == writer.version != before
        # a CURRENT naming something outside the index: the last good version stays served
        (tmp_path / "idx" / "CURRENT").write_text("../../etc\n", encoding="utf-8")
        assert ids("火车站车票时间")[0] == "new"
        assert "CURRENT" in c.get("/stats").json()["reload_error"]


def test_admin_reload_without_watching(trained_model_dir: Path, tmp_path: Path):
    Index.build(trained_model_dir, [Document(f"d{i}", t) for i, t in enumerate(TEXTS)], tmp_path / "idx")
    with TestClient(create_app(Index.load(tmp_path / "idx"), reload_interval_s=None)) as c:
        Index.load(tmp_path / "idx").delete(["d0"])
        r = c.post("/search", json={"queries": "银行卡账户余额", "k": 10})
        assert "d0" in [h["id"] for h in r.json()["results"][0]]  # a snapshot until asked
        r = c.post("/admin/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is True
        assert c.post("/admin/reload").json()["reloaded"] is False
        r = c.post("/search", json={"queries": "银行卡账户余额", "k": 10})
        assert "d0" not in [h["id"] for h in r.json()["results"][0]]


def test_not_blank_pattern_means_the_same_to_python_and_to_json_schema_clients():
    """The published "not blank" pattern must accept exactly the texts the service accepts. Python's ``\\s`` and
    ECMA-262's (the JSON Schema dialect) differ (\\x1c-\\x1f, \\x85, \\ufeff), which Schemathesis found as "schema-
    valid request rejected": so the pattern spells its class out, with no class escapes, and rejects exactly the
    characters str.isspace() (hence str.strip()) treats as blank."""
    import re

    assert not re.search(r"\\[sSwWdD]", NOT_BLANK)
    for code in range(0x110000):
        char = chr(code)
        assert (re.fullmatch(NOT_BLANK, char) is None) == char.isspace(), hex(code)
