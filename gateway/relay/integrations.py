"""The integrations of message routes: HTTP backends (aiohttp) and WebSocket upstreams (websockets' client).

A routed message reaches an HTTP backend as a POST: the payload is the body
(``text/plain; charset=utf-8`` for text, ``application/octet-stream`` for
binary), and headers name the connection, API, application and route. A 2xx
answer's body, if any, goes back to the client (text for ``text/*`` and JSON
content types, binary otherwise). ``$connect`` is POSTed before the client's
101 and ``$disconnect`` after the close, with a JSON body describing the
connection.

The HTTP client is aiohttp: one session (a keep-alive pool) per API and
process, made on first use, bounded by the API's ``limits.max_http_requests``
(benchmarks/http_clients.py measured it against httpx: docs/performance.md).
A route's WebSocket upstream is a websockets client connection opened per
client connection. Credentials from ``{env: ...}`` headers are sent, never logged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from websockets.asyncio.client import ClientConnection, connect

from ..build.message_routes import CompiledRoute, CompiledRoutes
from ..policies.base import ConnectionContext

log = structlog.get_logger("wsgate.integrations")

CONNECTION_ID_HEADER = "X-Gateway-Connection-Id"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
DISCONNECT_BACKOFF = 0.2  # seconds before the first retry of a $disconnect event; doubled for each further one
_background: set[asyncio.Task[Any]] = set()  # fire-and-forget tasks ($disconnect, closing pools), kept from GC


def connection_id(conn: ConnectionContext) -> str:
    """The id backends are told a connection by (``X-Gateway-Connection-Id``).

    The one place that says what it is: today the registry's id of the connection; the push API's ids
    (issue 23) fill this seam when they land, and every integration follows.
    """
    return conn.id


def integration_headers(conn: ConnectionContext, route: str) -> list[tuple[str, str]]:
    """What every integration request says about the connection it comes from."""
    headers = [(CONNECTION_ID_HEADER, connection_id(conn)), ("X-Gateway-API", conn.api), ("X-Gateway-Route", route)]
    if conn.application is not None:
        headers.append(("X-Gateway-Application", conn.application.name))
    if conn.peer and conn.peer[0]:
        headers.append(("X-Forwarded-For", conn.peer[0]))
    return headers


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP integration's answer: ``status`` 0 for a timeout or a connection failure (``error`` says which)."""

    status: int
    body: bytes = b""
    is_text: bool = True
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _spawn(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


class HTTPPool:
    """An API's HTTP integrations' keep-alive pool and in-flight bound (one per API and process)."""

    __slots__ = ("session", "slots", "max_answer")

    def __init__(self, limit: int, max_answer: int | None = None) -> None:
        # Connections per host are bounded by the semaphore below, not by the connector's own limit of 100.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))
        self.slots = asyncio.Semaphore(limit)
        self.max_answer = max_answer

    @classmethod
    def of(cls, routes: CompiledRoutes) -> HTTPPool:
        pool = routes.http_client
        if pool is None:
            pool = routes.http_client = cls(routes.max_http_requests, routes.max_answer)
        return pool

    async def post(self, route: CompiledRoute, body: bytes, content_type: str,
                   headers: Iterable[tuple[str, str]]) -> Answer:
        http = route.http
        assert http is not None
        sent = [("Content-Type", content_type), *headers, *route.headers]
        async with self.slots:
            try:
                async with asyncio.timeout(http.timeout):
                    async with self.session.post(http.url, data=body, headers=sent, ssl=route.ssl_context or True,
                                                 allow_redirects=False) as response:
                        data = await self._body(response)
                        if data is None:
                            return Answer(0, error="answer too large")
                        kind = response.headers.get("Content-Type", "").lower()
                        return Answer(response.status, data, kind.startswith(TEXT_TYPES) or not kind)
            except TimeoutError:
                return Answer(0, error="timeout")
            except (aiohttp.ClientError, OSError) as exc:
                return Answer(0, error=f"connection failed: {exc.__class__.__name__}")

    async def _body(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The answer's body, or None past the API's message size limit (read no further than that)."""
        limit = self.max_answer
        if limit is None:
            return await response.read()
        if response.content_length is not None and response.content_length > limit:
            return None
        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    def close_soon(self) -> None:
        """The API's table is gone: close the pool once the loop gets to it (nothing if no loop runs)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        _spawn(self.session.close())


async def post_message(routes: CompiledRoutes, route: CompiledRoute, conn: ConnectionContext, is_text: bool,
                       payload: bytes) -> Answer:
    """One routed message to its HTTP backend."""
    content_type = "text/plain; charset=utf-8" if is_text else "application/octet-stream"
    return await HTTPPool.of(routes).post(route, payload, content_type, integration_headers(conn, route.key))


def _event(conn: ConnectionContext, event: str, **extra: Any) -> bytes:
    """The JSON body of a $connect or $disconnect event: no credential (the query is the redacted one)."""
    body = {
        "event": event,
        "connection_id": connection_id(conn),
        "api": conn.api,
        "application": conn.application.name if conn.application is not None else None,
        "path": conn.path,
        "query": conn.metadata.get("query", ""),
        "peer": conn.peer[0] if conn.peer else "",
        **extra,
    }
    return json.dumps(body).encode()


async def connect_event(routes: CompiledRoutes, conn: ConnectionContext) -> Answer | None:
    """``$connect``: None when the backend allows the connection (2xx) or there is no such route, else its
    answer (the upgrade is refused with the route's ``refuse_status``)."""
    route = routes.connect
    if route is None or route.http is None:
        return None
    answer = await HTTPPool.of(routes).post(route, _event(conn, "connect"), "application/json",
                                            integration_headers(conn, route.key))
    return None if answer.ok else answer


def disconnect_event(routes: CompiledRoutes, conn: ConnectionContext, code: int | None, reason: str,
                     on_failed: Callable[[str], None] | None = None) -> None:
    """``$disconnect``, fire-and-forget: the close is over; up to ``retries`` further attempts, backing off."""
    route = routes.disconnect
    if route is None or route.http is None:
        return
    body = _event(conn, "disconnect", code=code, reason=reason)
    _spawn(_disconnect(routes, route, conn, body, on_failed))


async def _disconnect(routes: CompiledRoutes, route: CompiledRoute, conn: ConnectionContext, body: bytes,
                      on_failed: Callable[[str], None] | None) -> None:
    http = route.http
    assert http is not None
    pool = HTTPPool.of(routes)
    delay = DISCONNECT_BACKOFF
    answer = Answer(0)
    for attempt in range(http.retries + 1):
        if attempt:
            await asyncio.sleep(delay)
            delay *= 2
        answer = await pool.post(route, body, "application/json", integration_headers(conn, route.key))
        if answer.ok:
            return
        if 400 <= answer.status < 500:
            break  # the backend refused this event: asking again gets the same answer
    reason = answer.error or f"status {answer.status}"
    log.warning("disconnect_event_failed", api=conn.api, connection=conn.id, reason=reason)
    if on_failed is not None:
        on_failed(reason)


async def open_route_upstream(route: CompiledRoute, conn: ConnectionContext, *, max_size: int | None,
                              ping_interval: float | None, ping_timeout: float | None) -> ClientConnection:
    """Open a route's WebSocket upstream for one client connection (raises OSError, TimeoutError or websockets'
    InvalidHandshake / InvalidURI when it cannot be)."""
    ws = route.websocket
    assert ws is not None
    return await connect(
        ws.url,
        additional_headers=[*integration_headers(conn, route.key), *route.headers],
        ssl=route.ssl_context,
        open_timeout=ws.connect_timeout,
        max_size=max_size,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        compression=None,
        user_agent_header=None,
        max_queue=16,
    )


async def settle(timeout: float) -> None:
    """Let the fire-and-forget work finish (``$disconnect`` events, closing handshakes of route upstreams, pools
    closing), up to ``timeout`` seconds; what is left then is cancelled. The gateway's stop calls it last."""
    pending = set(_background)
    if not pending:
        return
    _done, left = await asyncio.wait(pending, timeout=timeout)
    for task in left:
        task.cancel()


def close_upstream(upstream: ClientConnection, code: int = 1000, reason: str = "") -> None:
    """Close a route's upstream in the background (its closing handshake is bounded by websockets)."""
    _spawn(upstream.close(code, reason))
