"""The upstream leg of an upgrade: connect, send the handshake, check the 101.

The request carries the client's end-to-end headers and subprotocol offer,
never its hop-by-hop headers, its Sec-WebSocket-* headers (regenerated) or
the credentials the gateway consumed. The response head is read raw and only
the head is parsed; bytes past it are the upstream's first frames and are
handed to the relay untouched.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from websockets.datastructures import Headers
from websockets.headers import build_authorization_basic, build_subprotocol
from websockets.typing import Subprotocol
from websockets.utils import generate_key

from ..build.routes import CompiledAPI, Endpoint, NoEndpoint
from ..common.redaction import api_key_like
from ..wire.protocols import QUIET
from ..wire.upstream_response import Invalid101, check_101, response_status
from .connect import open_connection

log = structlog.get_logger("wsgate.upstream")

API_KEY_NAME = "x-gateway-apikey"
MAX_RESPONSE_HEAD = 64 * 1024
MAX_EARLY_FRAMES = 256 * 1024  # bytes past the upstream's 101 read before the relay takes over; more pauses reading

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        API_KEY_NAME,
        # Set by the gateway only; a client must not be able to spoof them (X-Forwarded-For and Forwarded keep
        # the client's earlier hops, with the gateway's own appended last: see forwarded_headers).
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
        "x-gateway-application",
    }
)

_quiet = QUIET  # the name the listener and older tests know it by


class UpstreamError(Exception):
    """The upstream did not complete the handshake: the client gets ``status`` (502, 503 or 504).

    ``endpoint_fault`` is False when the endpoint answered, but refused this
    request (a 4xx): that says nothing about its health, and another endpoint
    would judge the same request the same way.
    """

    def __init__(self, status: int, error: str, reason: str, headers: tuple[tuple[str, str], ...] = (),
                 endpoint_fault: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = headers
        self.endpoint_fault = endpoint_fault


@dataclass(slots=True)
class UpstreamLeg:
    """A connected upstream after a valid 101."""

    transport: asyncio.Transport
    pending: bytes  # frames the upstream sent right after its 101
    subprotocol: Subprotocol | None
    url: str
    endpoint: Endpoint | None = None  # the endpoint that answered (failover may have moved past others)


def forwarded_headers(
    client_headers: Headers,
    *,
    peer_ip: str,
    secure: bool,
    application: str | None,
) -> list[tuple[str, str]]:
    """The headers the upstream gets from the client's request, plus the forwarding headers and the application.

    The gateway trusts no proxy in front of it, so what it vouches for is
    always the last entry: X-Forwarded-For and ``Forwarded`` (RFC 7239) keep
    the hops the client claims and get the gateway's own appended;
    X-Forwarded-Proto, X-Forwarded-Host and X-Real-IP hold only what the
    gateway saw. A client's ``Forwarded`` that does not parse is dropped: an
    open quote in it would swallow the gateway's element.
    """
    named_in_connection: set[str] = set()
    for value in client_headers.get_all("Connection"):
        named_in_connection.update(token.strip().lower() for token in value.split(","))
    out: list[tuple[str, str]] = []
    for name, value in client_headers.raw_items():
        lower = name.lower()
        if (lower in HOP_BY_HOP or lower in named_in_connection or lower.startswith("sec-websocket-")
                or api_key_like(lower)):  # an API key header in another spelling (X_Gateway_APIKey)
            continue
        out.append((name, value))
    prior = ", ".join(client_headers.get_all("X-Forwarded-For"))
    out.append(("X-Forwarded-For", f"{prior}, {peer_ip}" if prior else peer_ip))
    proto = "wss" if secure else "ws"
    out.append(("X-Forwarded-Proto", proto))
    host = client_headers.get("Host")
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("X-Real-IP", peer_ip))
    element = f"for={_forwarded_node(peer_ip)};proto={proto}" + (f";host={_forwarded_value(host)}" if host else "")
    earlier = [value for value in client_headers.get_all("Forwarded") if _FORWARDED.fullmatch(value)]
    out.append(("Forwarded", ", ".join([*earlier, element])))
    if application:
        out.append(("X-Gateway-Application", application))
    return out


# RFC 7239, 4: Forwarded = 1#forwarded-element; forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] );
# forwarded-pair = token "=" value; value = token / quoted-string. (Whitespace allowed around list commas only.)
_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PAIR = rf"{_TOKEN}=(?:{_TOKEN}|{_QUOTED})"
_ELEMENT = rf"(?:{_PAIR})?(?:;(?:{_PAIR})?)*"
_FORWARDED = re.compile(rf"{_ELEMENT}(?:[ \t]*,[ \t]*{_ELEMENT})*")
_TOKEN_VALUE = re.compile(_TOKEN)


def _forwarded_value(value: str) -> str:
    """``value`` as a Forwarded parameter value: a token as is, anything else a quoted-string."""
    if _TOKEN_VALUE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_node(ip: str) -> str:
    """A peer address as a Forwarded ``for=`` node: an IPv6 address bracketed and quoted (RFC 7239, 6)."""
    return f'"[{ip}]"' if ":" in ip else _forwarded_value(ip)


class _HandshakeReader(asyncio.Protocol):
    """Buffers the upstream's response head; pauses reading once it is complete."""

    __slots__ = ("transport", "buffer", "head")

    def __init__(self, head: asyncio.Future[tuple[bytes, bytes]]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head = head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio types the argument as BaseTransport; a TCP connection always hands a Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            # Past the head: the relay's first bytes. The upgrade resumes in the next loop turn and hands the
            # transport to the relay without awaiting anything, so at most one more read lands here; reading is not
            # paused for it (a pause and a resume are two epoll_ctl calls per upgrade), unless the upstream is
            # already sending more than a relay would buffer.
            self.buffer += data
            if len(self.buffer) > MAX_EARLY_FRAMES and self.transport is not None:
                self.transport.pause_reading()  # the relay's start resumes it
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
            self.head.set_result((bytes(self.buffer[:end]), b""))
            del self.buffer[:end]
        elif len(self.buffer) > MAX_RESPONSE_HEAD:
            self.head.set_exception(UpstreamError(502, "bad_gateway", "upstream response head too large"))

    def eof_received(self) -> bool:
        if not self.head.done():
            self.head.set_exception(
                UpstreamError(502, "bad_gateway", "upstream closed the connection without answering the upgrade")
            )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(
                UpstreamError(502, "bad_gateway", "upstream closed the connection without answering the upgrade")
            )


@dataclass(slots=True)
class UpstreamRequest:
    """The upstream handshake, serialized before any await so that the client's parsed request can be freed."""

    endpoint: Endpoint
    data: bytes
    key: str
    offer: list[Subprotocol]


@dataclass(slots=True)
class PreparedUpgrade:
    """The endpoint-independent part of the upstream request: query, subprotocol offer, forwarded headers.

    Serialized once from the client's request; ``for_endpoint`` adds the
    request line, Host and a fresh key for each endpoint failover tries.
    """

    query: str
    offer: list[Subprotocol]
    tail: list[str]  # header lines after Sec-WebSocket-*
    suffix: str = ""  # request path a prefix route passes on, joined to the endpoint's path
    own_authorization: bool = False  # upstream.headers sets Authorization: a URL's userinfo does not

    def for_endpoint(self, endpoint: Endpoint) -> UpstreamRequest:
        uri = endpoint.uri
        key = generate_key()
        path = uri.resource_name
        if self.suffix:
            path = join_path(uri.path, self.suffix) + (f"?{uri.query}" if uri.query else "")
        if self.query:
            path = f"{path}&{self.query}" if "?" in path else f"{path}?{self.query}"
        lines = [f"GET {path} HTTP/1.1", f"Host: {endpoint.host_header}"]
        if uri.user_info and not self.own_authorization:
            lines.append(f"Authorization: {build_authorization_basic(*uri.user_info)}")
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
        if self.offer:
            lines.append(f"Sec-WebSocket-Protocol: {build_subprotocol(self.offer)}")
        lines += self.tail
        lines.append("\r\n")
        return UpstreamRequest(endpoint, "\r\n".join(lines).encode(), key, self.offer)


def join_path(base: str, rest: str) -> str:
    """``/ws`` + ``/room1`` -> ``/ws/room1``; ``/ws/`` + ``/room1`` -> ``/ws/room1``; ``/`` + ``/a`` -> ``/a``."""
    if not rest:
        return base
    if not rest.startswith("/"):
        rest = "/" + rest
    return base.rstrip("/") + rest


def prepare_upgrade(
    *,
    client_headers: Headers,
    query: str,
    subprotocols: Iterable[Subprotocol],
    peer_ip: str,
    secure: bool,
    application: str | None,
    suffix: str = "",
    configured: tuple[tuple[str, str], ...] = (),
) -> PreparedUpgrade:
    """What every upstream request of this upgrade carries from the client (what websockets' client sends),
    plus the API's ``upstream.headers`` (``configured``), which replace the client's headers of those names."""
    replaced = {name.lower() for name, _ in configured}
    tail = [f"{name}: {value}" for name, value in
            forwarded_headers(client_headers, peer_ip=peer_ip, secure=secure, application=application)
            if name.lower() not in replaced]
    tail += [f"{name}: {value}" for name, value in configured]
    return PreparedUpgrade(query, list(subprotocols), tail, suffix, own_authorization="authorization" in replaced)


async def open_upstream(route: CompiledAPI, prepared: UpstreamRequest, timeout: float | None = None) -> UpstreamLeg:
    """Open the upstream connection and complete its handshake within ``timeout`` (the API's connect timeout).

    Raises :class:`UpstreamError` (502 refused or invalid answer, 504 timeout).
    """
    uri, url = prepared.endpoint.uri, prepared.endpoint.url
    upstream = route.api.upstream
    loop = asyncio.get_running_loop()
    head_future: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
    reader = _HandshakeReader(head_future)
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout if timeout is not None else upstream.connect_timeout):
            try:
                if uri.secure:
                    transport, _ = await loop.create_connection(
                        lambda: reader,
                        uri.host,
                        uri.port,
                        ssl=route.ssl_context,
                        server_hostname=upstream.tls.server_hostname or uri.host,
                    )
                else:
                    transport = await open_connection(loop, uri.host, uri.port, lambda: reader)
            except OSError as exc:  # refused, unreachable, TLS verification failure (ssl.SSLError is an OSError)
                reason = f"upstream connection failed: {exc.__class__.__name__}"
                raise UpstreamError(502, "bad_gateway", reason) from exc
            transport.write(prepared.data)
            head, _ = await head_future
    except BaseException as exc:  # timeout, refusal, or the client went away (cancelled): drop the upstream
        if transport is not None:
            transport.abort()
        if isinstance(exc, TimeoutError):
            raise UpstreamError(504, "gateway_timeout", "upstream did not complete the handshake in time") from exc
        raise

    answered = response_status(head)
    if answered is None:
        transport.abort()
        raise UpstreamError(502, "bad_gateway", "upstream sent an invalid HTTP response")
    status, phrase = answered
    if status != 101:
        transport.abort()
        raise UpstreamError(502, "bad_gateway", f"upstream answered {status} {phrase}".rstrip(),
                            endpoint_fault=not 400 <= status < 500)
    try:
        subprotocol = check_101(head, uri, prepared.key, prepared.offer)
    except Invalid101 as exc:
        transport.abort()
        raise UpstreamError(502, "bad_gateway", f"upstream sent an invalid 101: {exc}") from None
    return UpstreamLeg(transport, bytes(reader.buffer), subprotocol, url)


async def _candidates(route: CompiledAPI, hash_key: str | None, deadline: float) -> list[Endpoint]:
    """The endpoints to try; while the healthy ones are all at their pending cap, wait (oldest first) for a
    handshake in flight to end, until ``deadline``. A reconnect storm then queues behind the cap instead of
    getting 503s; only an upgrade still waiting at the deadline, or one with no healthy endpoint, gets 503."""
    loop = asyncio.get_running_loop()
    retry_after = (("Retry-After", str(route.api.upstream.retry_after)),)
    while True:
        try:
            return route.candidates(hash_key)
        except NoEndpoint as exc:
            remaining = deadline - loop.time()
            if not exc.at_capacity or remaining <= 0:
                raise UpstreamError(503, "unavailable", exc.reason, retry_after) from exc
            waiter: asyncio.Future[None] = loop.create_future()
            route.slot_waiters.append(waiter)
            try:
                # The timeout is a safety net (a slot freed through another route table after a reload wakes
                # only that table's waiters), not the ordinary wake-up.
                await asyncio.wait_for(waiter, min(remaining, 0.5))
            except TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()
                    # A waiter cancelled from outside (the client left) must not swallow a wake-up meant for
                    # the next one; a dead entry left in the deque is skipped by _wake_one.


def _wake_one(route: CompiledAPI) -> None:
    """A pending-handshake slot of ``route`` freed: let the oldest live waiter try again."""
    waiters = route.slot_waiters
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


async def open_with_failover(route: CompiledAPI, prepared: PreparedUpgrade, hash_key: str | None,
                             on_failure: Callable[[Endpoint, UpstreamError], None] | None = None) -> UpstreamLeg:
    """Try the route's endpoints in its strategy's order until one completes the handshake.

    Up to ``failover.retries`` further endpoints, within ``failover.budget``
    seconds in all (default ``connect_timeout``). Only the handshake is sent
    to each: the client's frames stay with the listener until a 101, so
    nothing the client sent reaches two endpoints. Each failure counts
    against its endpoint (passive health); a 4xx answer is the request's
    fault, not the endpoint's: it ends the upgrade at once. Raises :class:`UpstreamError`:
    503 with Retry-After when no endpoint may take a connection, else the
    last attempt's 502 or 504. ``on_failure`` hears of every failed attempt (the metrics count them per endpoint).
    """
    upstream = route.api.upstream
    budget = upstream.failover.budget or upstream.connect_timeout
    deadline = asyncio.get_running_loop().time() + budget
    candidates = await _candidates(route, hash_key, deadline)
    attempts = candidates[: upstream.failover.retries + 1]
    last: UpstreamError | None = None
    for endpoint in attempts:
        health = endpoint.health
        if health is not None and (not health.healthy or health.pending >= upstream.max_pending):
            continue  # went down, or filled up, while an earlier attempt ran
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        if health is not None:
            health.pending += 1
        try:
            leg = await open_upstream(route, prepared.for_endpoint(endpoint), min(remaining, upstream.connect_timeout))
        except UpstreamError as exc:
            if on_failure is not None:
                on_failure(endpoint, exc)
            if not exc.endpoint_fault:
                raise  # the endpoint refused this request (4xx): its health is fine and another would refuse too
            last = exc
            if health is not None and route.health is not None:
                route.health.upgrade_failed(health, exc.reason, upstream.passive,
                                            [e.health for e in route.endpoints if e.health is not None])
            log.info("upstream_attempt_failed", api=route.name, endpoint=endpoint.url, status=exc.status,
                     reason=exc.reason)
            continue
        finally:
            if health is not None:
                health.pending -= 1
                _wake_one(route)
        if health is not None and route.health is not None:
            route.health.upgrade_succeeded(health)
        leg.endpoint = endpoint
        return leg
    if last is None:
        out_of_time = deadline <= asyncio.get_running_loop().time()
        reason = ("no upstream endpoint could take the upgrade within the failover budget (pending handshakes)"
                  if out_of_time else "no healthy upstream endpoint")
        raise UpstreamError(503, "unavailable", reason, (("Retry-After", str(upstream.retry_after)),))
    raise last
