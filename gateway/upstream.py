"""The upstream leg of an upgrade: connect, send the handshake, check the 101.

The request carries the client's end-to-end headers and subprotocol offer,
never its hop-by-hop headers, its Sec-WebSocket-* headers (regenerated) or
the credentials the gateway consumed. The response head is read raw and only
the head is parsed; bytes past it are the upstream's first frames and are
handed to the relay untouched.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.headers import build_authorization_basic, build_subprotocol
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Response
from websockets.typing import Subprotocol
from websockets.utils import accept_key, generate_key

from .routes import CompiledAPI, Endpoint

API_KEY_NAME = "x-gateway-apikey"
# Query parameters that carry credentials (the API key; an RFC 6750 bearer token): never forwarded, never logged.
CONSUMED_QUERY = frozenset({API_KEY_NAME, "access_token"})
MAX_RESPONSE_HEAD = 64 * 1024

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
        # Set by the gateway only; a client must not be able to spoof them.
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-gateway-application",
    }
)

# The sans-I/O protocols log at INFO on every open and close; keep that off the hot path.
_quiet = logging.getLogger("wsgate.wsproto")
_quiet.setLevel(logging.WARNING)


class UpstreamError(Exception):
    """The upstream did not complete the handshake: the client gets ``status`` (502 or 504)."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


@dataclass(slots=True)
class UpstreamLeg:
    """A connected upstream after a valid 101."""

    transport: asyncio.Transport
    pending: bytes  # frames the upstream sent right after its 101
    subprotocol: Subprotocol | None
    url: str


def strip_api_key(query: str) -> str:
    """The raw query string minus every ``x-Gateway-APIKey`` and ``access_token`` parameter (others kept verbatim)."""
    if not query:
        return query
    kept = [part for part in query.split("&") if _query_name(part) not in CONSUMED_QUERY]
    return "&".join(kept)


def _query_name(part: str) -> str:
    name = part.partition("=")[0]
    if "%" in name or "+" in name:
        name = unquote_plus(name)
    return name.lower()


def forwarded_headers(
    client_headers: Headers,
    *,
    peer_ip: str,
    secure: bool,
    application: str | None,
) -> list[tuple[str, str]]:
    """The headers the upstream gets from the client's request, plus X-Forwarded-* and the application."""
    named_in_connection: set[str] = set()
    for value in client_headers.get_all("Connection"):
        named_in_connection.update(token.strip().lower() for token in value.split(","))
    out: list[tuple[str, str]] = []
    for name, value in client_headers.raw_items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named_in_connection or lower.startswith("sec-websocket-"):
            continue
        out.append((name, value))
    prior = ", ".join(client_headers.get_all("X-Forwarded-For"))
    out.append(("X-Forwarded-For", f"{prior}, {peer_ip}" if prior else peer_ip))
    out.append(("X-Forwarded-Proto", "wss" if secure else "ws"))
    host = client_headers.get("Host")
    if host:
        out.append(("X-Forwarded-Host", host))
    if application:
        out.append(("X-Gateway-Application", application))
    return out


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
            self.buffer += data  # past the head: the relay's first bytes
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
            assert self.transport is not None
            self.transport.pause_reading()
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


def _status_line(head: bytes) -> tuple[int, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    # isascii: str.isdigit() also accepts Latin-1 superscripts ("1\xb21"), which int() refuses.
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        raise UpstreamError(502, "bad_gateway", "upstream sent an invalid HTTP response")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


@dataclass(slots=True)
class UpstreamRequest:
    """The upstream handshake, serialized before any await so that the client's parsed request can be freed."""

    endpoint: Endpoint
    data: bytes
    key: str
    offer: list[Subprotocol]


def build_upstream_request(
    route: CompiledAPI,
    *,
    client_headers: Headers,
    query: str,
    subprotocols: Iterable[Subprotocol],
    peer_ip: str,
    secure: bool,
    application: str | None,
) -> UpstreamRequest:
    """Pick an endpoint and serialize the upgrade request the upstream gets (what websockets' client sends)."""
    endpoint = route.pick_endpoint()
    uri = endpoint.uri
    offer = list(subprotocols)
    key = generate_key()
    path = uri.resource_name
    if query:
        path = f"{path}&{query}" if "?" in path else f"{path}?{query}"
    lines = [f"GET {path} HTTP/1.1", f"Host: {endpoint.host_header}"]
    if uri.user_info:
        lines.append(f"Authorization: {build_authorization_basic(*uri.user_info)}")
    lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if offer:
        lines.append(f"Sec-WebSocket-Protocol: {build_subprotocol(offer)}")
    for name, value in forwarded_headers(client_headers, peer_ip=peer_ip, secure=secure, application=application):
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return UpstreamRequest(endpoint, "\r\n".join(lines).encode(), key, offer)


_TOKEN = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")


def _plain_101(head: bytes, key: str, offer: list[Subprotocol]) -> Subprotocol | None | bool:
    """The subprotocol of a plainly valid 101 answering ``key``; False for anything else.

    A fast check for the common case: it accepts a subset of what websockets' client accepts
    (same header grammar and limits, one Upgrade: websocket, Connection naming upgrade, the right
    Sec-WebSocket-Accept, no extension, at most one offered subprotocol). False sends the head
    through websockets, which accepts or words the refusal.
    """
    lines = head.split(b"\r\n")
    if len(lines) > MAX_NUM_HEADERS + 3 or lines[-2:] != [b"", b""]:
        return False
    status = lines[0]
    if not status.startswith(b"HTTP/1.1 101 ") or len(status) > MAX_LINE_LENGTH or not _VALUE.fullmatch(status, 13):
        return False
    upgrade = accept = protocol = None
    upgrade_named = False
    for line in lines[1:-2]:
        if len(line) > MAX_LINE_LENGTH:
            return False
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return False
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            return False
        lower = name.lower()
        if lower == b"upgrade":
            if upgrade is not None:
                return False
            upgrade = value
        elif lower == b"connection":
            for token in value.split(b","):
                token = token.strip(b" \t")
                if not _TOKEN.fullmatch(token):
                    return False
                upgrade_named = upgrade_named or token.lower() == b"upgrade"
        elif lower == b"sec-websocket-accept":
            if accept is not None:
                return False
            accept = value
        elif lower == b"sec-websocket-protocol":
            if protocol is not None:
                return False
            protocol = value
        elif lower == b"sec-websocket-extensions":
            return False
    if upgrade is None or upgrade.lower() != b"websocket" or not upgrade_named:
        return False
    if accept is None or accept != accept_key(key).encode():
        return False
    if protocol is None:
        return None
    if not _TOKEN.fullmatch(protocol):
        return False
    chosen = Subprotocol(protocol.decode())
    return chosen if chosen in offer else False


async def open_upstream(route: CompiledAPI, prepared: UpstreamRequest) -> UpstreamLeg:
    """Open the upstream connection and complete its handshake within the API's connect timeout.

    Raises :class:`UpstreamError` (502 refused or invalid answer, 504 timeout).
    """
    uri, url = prepared.endpoint.uri, prepared.endpoint.url
    upstream = route.api.upstream
    loop = asyncio.get_running_loop()
    head_future: asyncio.Future[tuple[bytes, bytes]] = loop.create_future()
    reader = _HandshakeReader(head_future)
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(upstream.connect_timeout):
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
                    transport, _ = await loop.create_connection(lambda: reader, uri.host, uri.port)
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

    try:
        status, phrase = _status_line(head)
    except UpstreamError:
        transport.abort()
        raise
    if status != 101:
        transport.abort()
        raise UpstreamError(502, "bad_gateway", f"upstream answered {status} {phrase}".rstrip())
    subprotocol = _plain_101(head, prepared.key, prepared.offer)
    if subprotocol is not False:
        # mypy does not narrow `Subprotocol | None | bool` by `is not False` (True is never returned).
        return UpstreamLeg(transport, bytes(reader.buffer), subprotocol, url)  # type: ignore[arg-type]
    # Anything unusual: the sans-I/O client checks the 101 (Upgrade, Connection, Sec-WebSocket-Accept for our
    # key, subprotocol) and words the refusal.
    protocol = ClientProtocol(uri, subprotocols=prepared.offer or None, extensions=None, max_size=None, logger=_quiet)
    protocol.key = prepared.key
    protocol.receive_data(head)
    events = protocol.events_received()
    if protocol.handshake_exc is not None or not events or not isinstance(events[0], Response):
        transport.abort()
        detail = protocol.handshake_exc or "no response"
        raise UpstreamError(502, "bad_gateway", f"upstream sent an invalid 101: {detail}")
    return UpstreamLeg(transport, bytes(reader.buffer), protocol.subprotocol, url)
