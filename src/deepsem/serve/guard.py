"""What stands between the network and the service: API key, concurrency limit, body size and read deadline,
header limits, and a deadline for a request's headers.

:class:`Guard` is a plain ASGI middleware, so it answers before FastAPI reads or parses anything:

* more than ``max_headers`` header fields: 431;
* an API key set and not given (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant
  time): 401 with ``WWW-Authenticate`` (the page, ``/healthz`` and the API docs stay open);
* ``max_in_flight`` requests already running: 503 with ``Retry-After``;
* a ``Content-Length`` above ``max_body_bytes``: 413 at once, without reading the body; a chunked body is
  counted as it streams in and refused the moment it passes the limit;
* a body not complete within ``body_timeout_s`` of the request's start: 408.

Every refusal is ``{"detail": "..."}`` (the error shape the OpenAPI schema publishes) and, where the body was
not read to its end, closes the connection.

:func:`protocol_class` bounds what uvicorn itself reads before the app sees a request: the size and count of
the request line and headers, and the time they may take (a client that sends a byte now and then holds no
connection longer than ``header_timeout_s``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

#: Paths open without the API key: the page (it asks for the key itself), health checks, the API docs.
OPEN_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


@dataclass
class GuardSettings:
    api_key: str | None
    max_in_flight: int
    max_body_bytes: int
    body_timeout_s: float
    max_headers: int
    retry_after_s: int = 1


async def _answer(send: Any, status: int, detail: str, headers: dict[str, str] | None = None,
                  close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def key_matches(scope: Scope, key: bytes) -> bool:
    """The request carries ``key`` as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (constant time)."""
    given = _header(scope, b"x-api-key")
    auth = _header(scope, b"authorization")
    ok = given is not None and hmac.compare_digest(given.strip(), key)
    if auth is not None:
        scheme, _, token = auth.strip().partition(b" ")
        ok |= scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)
    return ok


class Guard:
    """ASGI middleware applying :class:`GuardSettings` before the app; counts requests in flight."""

    def __init__(self, app: Any, settings: GuardSettings) -> None:
        self.app, self.settings = app, settings
        self.key = settings.api_key.encode() if settings.api_key else None
        self.in_flight = 0
        self.refused = {"unauthorized": 0, "busy": 0, "too_large": 0, "timeout": 0, "headers": 0}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.settings
        if len(scope["headers"]) > s.max_headers:
            self.refused["headers"] += 1
            await _answer(send, 431, f"{len(scope['headers'])} header fields; the limit is {s.max_headers}",
                          close=True)
            return
        path = scope["path"]
        if self.key is not None and path not in OPEN_PATHS and not key_matches(scope, self.key):
            self.refused["unauthorized"] += 1
            await _answer(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY' or "
                          "'X-API-Key: KEY'", {"WWW-Authenticate": 'Bearer realm="deepsem"'}, close=True)
            return
        counted = path != "/healthz"  # a health check answers even when the service is saturated
        if counted and self.in_flight >= s.max_in_flight:
            self.refused["busy"] += 1
            await _answer(send, 503, f"busy: {self.in_flight} requests in flight (the limit is {s.max_in_flight}); "
                          "retry shortly", {"Retry-After": str(s.retry_after_s)}, close=True)
            return
        if counted:
            self.in_flight += 1
        try:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: http.disconnect

            await self.app(scope, replay, send)
        finally:
            if counted:
                self.in_flight -= 1

    async def _read_body(self, scope: Scope, receive: Any, send: Any) -> bytes | None:
        """The whole body, or None once a refusal (400/408/413) is sent or the client went away."""
        s = self.settings
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
                if declared < 0:
                    raise ValueError
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number", close=True)
                return None
            if declared > s.max_body_bytes:
                self.refused["too_large"] += 1
                await _answer(send, 413, f"the body has {declared} bytes; the limit is {s.max_body_bytes}",
                              close=True)
                return None
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + s.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # http.disconnect: nobody to answer
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > s.max_body_bytes:
                        self.refused["too_large"] += 1
                        await _answer(send, 413, f"the body is longer than the limit of {s.max_body_bytes} bytes",
                                      close=True)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self.refused["timeout"] += 1
            await _answer(send, 408, f"the request body did not arrive within {s.body_timeout_s:g} s", close=True)
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def protocol_class(max_header_bytes: int, max_headers: int, header_timeout_s: float) -> type:
    """uvicorn's httptools protocol with bounded request heads: at most ``max_header_bytes`` bytes (request line
    and headers), ``max_headers`` fields, and ``header_timeout_s`` seconds from a request's first byte (or the
    connection's start) to its last header; past any of them the connection answers 431 / closes.

    httptools itself buffers a request line or header of any length, and uvicorn starts no timer before a
    request's headers are complete, so a client trickling bytes kept its connection for ever."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_bytes = 0
            self._head_fields = self._head_parsed = 0
            self._refusal: str | None = None
            self._in_head = True
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()  # no request yet on a new connection, or one whose headers never end

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # uvicorn's own data_received, plus the head's bounds (a refusal raised from a parser callback)
            import httptools

            self._unset_keepalive_if_required()
            if self._in_head:
                if not self._head_bytes:
                    self._arm_head_timer()  # a new request head starts with these bytes
                self._head_bytes += len(data)
            self._refusal = None
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            except httptools.HttpParserError:
                if self._refusal is not None:
                    self._refuse_head(self._refusal)
                else:
                    self.send_400_response("Invalid HTTP request received.")
                return
            if self._in_head and self._head_bytes > max_header_bytes and not self.transport.is_closing():
                self._refuse_head(f"the request line and headers pass {max_header_bytes} bytes")

        def _refuse_head(self, why: str) -> None:
            body = json.dumps({"detail": why}).encode()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
            self.transport.close()

        def _refuse(self, why: str) -> None:
            self._refusal = why
            raise ValueError(why)  # httptools stops parsing: HttpParserCallbackError

        def on_message_begin(self) -> None:
            self._head_fields = self._head_parsed = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_parsed += len(url)
            if self._head_parsed > max_header_bytes:
                self._refuse(f"the request line and headers pass {max_header_bytes} bytes")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_fields += 1
            self._head_parsed += len(name) + len(value) + 4
            if self._head_fields > max_headers:
                self._refuse(f"more than {max_headers} header fields")
            if self._head_parsed > max_header_bytes:
                self._refuse(f"the request line and headers pass {max_header_bytes} bytes")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

    return BoundedHttpTools
