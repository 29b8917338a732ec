"""The upgrade decision, sans-I/O: from the bytes of a request head to a refusal or an accepted upgrade.

As websockets' ``ServerProtocol`` decides a handshake from bytes, this module decides a gateway upgrade with
no socket and no event loop, so every answer is tested as bytes in, bytes out (tests/test_upgrade_decision.py).
The listener (gateway/edge/listener.py) is the driver: it reads the head, calls these functions, writes what
they return, and runs the I/O they ask for (a policy's verdict that must wait, the upstream handshake).

- :func:`head_end`: where the head ends in what was read so far, or the refusal a head earns before it ends
  (a bare LF, too large).
- :func:`decide`: the head -> :class:`Refuse` (400, 404, 405, 426, 431, 505; ``.response()`` is its bytes)
  or :class:`Accept` (the route, the path the upstream gets, the negotiated extensions, the
  Sec-WebSocket-Accept; ``.response(subprotocol)`` is the 101).
- :class:`PolicyChain`: the route's upgrade policies in chain order. A verdict that needs I/O (a hostname
  lookup, a slow hash off the loop, a Redis throttle) comes back as a :class:`Pending` step the driver
  awaits and hands back with :meth:`PolicyChain.resume`; no await happens in here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHandshake,
    InvalidMethod,
    InvalidProtocol,
    InvalidUpgrade,
    RequestLineTooLong,
    SecurityError,
)
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.utils import accept_key

from ..build.routes import CompiledAPI, MalformedHost, RouteTable, request_host
from ..common.http_response import Header, refusal, switching_protocols
from ..common.redaction import redact_query
from ..policies.base import ClientCertificate, ConnectionContext, Policy, Rejection, UpgradeRequest, parse_query
from ..wire.protocols import QUIET
from ..wire.request_head import has_dot_segment, plain_upgrade

MAX_REQUEST_HEAD = 16 * 1024
# Headers the connection's metadata keeps (transforms and log-invocation see them): nothing that can hold a credential.
METADATA_HEADERS = ("User-Agent", "Origin")
# Headers RFC 9110/6455 define with one value: a request carrying one of them twice is malformed (400), and
# refusing it here means no later stage (the upstream request, the log) meets two values where it reads one.
# Authorization and x-Gateway-APIKey are not here: the identify policy reads every value and answers two sets
# of credentials itself (401 with its challenge).
SINGLE_VALUED_HEADERS = (
    "Host", "User-Agent", "Origin", "Upgrade", "Content-Length", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
)
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the upgrade before any policy saw it; ``path`` (when known) goes into the log."""

    status: int
    error: str
    reason: str
    headers: tuple[Header, ...] = ()
    path: str | None = None

    def response(self) -> bytes:
        """The refusal's bytes: the status line, the JSON error body, ``Connection: close``."""
        return refusal(self.status, self.error, self.reason, self.headers)


@dataclass(frozen=True, slots=True)
class Accept:
    """A valid WebSocket upgrade to ``route``: what the policies, the upstream request and the 101 need."""

    route: CompiledAPI
    suffix: str  # the path part a prefix route passes on to the upstream
    path: str
    query: str  # raw, as the client sent it
    headers: Headers
    extensions: list[Extension]  # negotiated with the client (permessage-deflate); empty on the plain path
    accept: str  # the Sec-WebSocket-Accept answering the client's key
    extensions_header: str | None  # the Sec-WebSocket-Extensions of the 101

    def response(self, subprotocol: str | None) -> bytes:
        """The 101 completing this upgrade, with the subprotocol the upstream chose."""
        return switching_protocols(self.accept, self.extensions_header, subprotocol)

    def offered_subprotocols(self) -> list[Subprotocol]:
        """The client's Sec-WebSocket-Protocol offer, in its order (passed on to the upstream)."""
        return [Subprotocol(token) for value in self.headers.get_all("Sec-WebSocket-Protocol")
                for token in _tokens(value)]


BARE_LF = Refuse(400, "bad_request", "malformed HTTP request: a line ends in a bare LF")
HEAD_TOO_LARGE = Refuse(431, "request_too_large", "request head too large")
MALFORMED = Refuse(400, "bad_request", "malformed HTTP request")


def head_end(buffer: bytes | bytearray, scanned: int = 0) -> int | Refuse | None:
    """The length of the request head at the start of ``buffer`` (through its CRLF CRLF); None while it is not
    complete; a :class:`Refuse` for a head that is malformed or too large before it ends.

    ``scanned``: how far earlier calls already looked for a bare LF (the buffer only grows between calls).
    """
    end = buffer.find(b"\r\n\r\n")
    # A line ending in a bare LF is malformed: answer now rather than wait for a CRLF CRLF that may never
    # come (the handshake timeout).
    if _BARE_LF.search(buffer, scanned, len(buffer) if end < 0 else end + 4) is not None:
        return BARE_LF
    if end < 0:
        return HEAD_TOO_LARGE if len(buffer) > MAX_REQUEST_HEAD else None
    return end + 4


def decide(head: bytes, port: str, table: RouteTable) -> Accept | Refuse:
    """Route and check the upgrade request ``head`` (ending in CRLF CRLF) that arrived on ``port``.

    Order: the path's dot segments and the Host (400), the route (404), then the WebSocket handshake
    (426, 405, 505, 400). An ordinary head takes one pass (``plain_upgrade``); any other goes through
    websockets' parser and checks, which word the refusal.
    """
    plain = plain_upgrade(head)
    if plain is None:
        return _decide_unusual(head, port, table)
    path, _, query = plain.target.partition("?")
    found = _route(table, port, path, plain.headers, query)
    if isinstance(found, Refuse):
        return found
    route, suffix = found
    if route.api.compression and "Sec-WebSocket-Extensions" in plain.headers:
        return _decide_unusual(head, port, table)  # negotiating permessage-deflate is websockets' job
    return Accept(route, suffix, path, query, plain.headers, [], accept_key(plain.key), None)


def _decide_unusual(head: bytes, port: str, table: RouteTable) -> Accept | Refuse:
    """Any head ``plain_upgrade`` does not take: websockets parses and checks it."""
    ws = ServerProtocol(max_size=None, logger=QUIET)
    ws.receive_data(head)
    events = ws.events_received()
    if not events or not isinstance(events[0], Request):
        if isinstance(ws.handshake_exc, (SecurityError, RequestLineTooLong)):
            return Refuse(431, "request_too_large", "request line or headers too large or too many")
        return MALFORMED
    request: Request = events[0]
    for name in SINGLE_VALUED_HEADERS:
        if len(request.headers.get_all(name)) > 1:
            return Refuse(400, "bad_request", f"malformed HTTP request: more than one {name} header")
    path, _, query = request.path.partition("?")
    # More than one Host (RFC 9112, 3.2) was refused above with the other single-valued headers.
    found = _route(table, port, path, request.headers, query)
    if isinstance(found, Refuse):
        return found
    route, suffix = found
    if route.api.compression:
        ws.available_extensions = [ServerPerMessageDeflateFactory()]
    try:
        accept, extensions_header, _ = ws.process_request(request)
    except InvalidUpgrade:
        return Refuse(426, "upgrade_required", "this path serves WebSocket upgrades only", path=path)
    except InvalidMethod:
        return Refuse(405, "method_not_allowed", "WebSocket upgrades use GET", path=path)
    except InvalidProtocol:
        return Refuse(505, "http_version_not_supported", "WebSocket upgrades use HTTP/1.1", path=path)
    except InvalidHandshake as exc:
        return Refuse(400, "bad_request", f"invalid WebSocket handshake: {exc}", path=path)
    # Only the negotiated extensions outlive this call: the parser, request and response objects go now.
    return Accept(route, suffix, path, query, request.headers, ws.extensions, accept, extensions_header)


def _route(table: RouteTable, port: str, path: str, headers: Headers,
           query: str) -> tuple[CompiledAPI, str] | Refuse:
    """The route for ``path`` on ``port`` (by Host, then `match_headers`/`match_query`) and the path part the
    upstream gets; else the refusal: 400 for a dot segment or a malformed Host, 404 for no route."""
    if has_dot_segment(path):
        return Refuse(400, "bad_request", "the path holds a '.' or '..' segment", path=path)
    try:
        name = request_host(headers.get("Host"))
    except MalformedHost as exc:
        return Refuse(400, "bad_request", str(exc), path=path)
    found = table.match(port, path, name, headers, query)
    if found is None:
        return Refuse(404, "not_found", "no API at this path", path=path)
    return found


def connection_context(accepted: Accept, port: str, peer: tuple[str, int], secure: bool) -> ConnectionContext:
    """The new connection's context: what policies, relays and logs know of it (no credential in any part)."""
    headers = accepted.headers
    route = accepted.route
    return ConnectionContext(
        api=route.name,
        api_version=route.api.version,
        port_name=port,
        peer=peer,
        path=accepted.path,
        metadata={
            "path": accepted.path,
            "query": redact_query(accepted.query),  # what the logs and log-invocation keep: no key in any spelling
            "peer": peer[0],
            "secure": secure,
            "headers": {name: headers[name] for name in METADATA_HEADERS if name in headers},
        },
    )


def upgrade_request(accepted: Accept, port: str, peer: tuple[str, int], secure: bool,
                    client_cert: ClientCertificate | None) -> UpgradeRequest:
    """The read-only view of the request the upgrade policies judge."""
    return UpgradeRequest(path=accepted.path, query=parse_query(accepted.query), headers=accepted.headers,
                          peer=peer, port_name=port, secure=secure, client_cert=client_cert)


@dataclass(frozen=True, slots=True)
class Pending:
    """``policy``'s verdict needs I/O: the driver awaits ``verdict`` and hands the result to
    :meth:`PolicyChain.resume` (or a raised exception to :meth:`PolicyChain.failed`)."""

    policy: Policy
    verdict: Awaitable[Rejection | None]


@dataclass(frozen=True, slots=True)
class PolicyFailed:
    """``policy`` raised: a bug, not a decision. The upgrade gets :attr:`rejection` (500); the log names it."""

    policy: Policy
    error: BaseException

    @property
    def rejection(self) -> Rejection:
        return Rejection(500, "internal_error", f"policy {self.policy.type} failed")


Step = Pending | PolicyFailed | Rejection | None  # None: every policy let the upgrade through


class PolicyChain:
    """The upgrade policies of a route, asked in chain order until one refuses; no awaits inside.

    ``run()`` asks from the start; each :class:`Pending` it returns is resumed with ``resume(verdict)``.
    """

    __slots__ = ("policies", "request", "conn", "at")

    def __init__(self, policies: Sequence[Policy], request: UpgradeRequest, conn: ConnectionContext) -> None:
        self.policies = policies
        self.request = request
        self.conn = conn
        self.at = 0

    def run(self) -> Step:
        policies = self.policies
        while self.at < len(policies):
            policy = policies[self.at]
            self.at += 1
            try:
                verdict = policy.on_upgrade(self.request, self.conn)
            except Exception as exc:
                return PolicyFailed(policy, exc)
            if inspect.isawaitable(verdict):
                return Pending(policy, verdict)
            if verdict is not None:
                return verdict
        return None

    def resume(self, verdict: Rejection | None) -> Step:
        """The awaited verdict of the last :class:`Pending`: a refusal ends the chain, None asks the next policy."""
        return verdict if verdict is not None else self.run()

    @staticmethod
    def failed(pending: Pending, error: BaseException) -> PolicyFailed:
        """The awaited verdict of ``pending`` raised ``error``."""
        return PolicyFailed(pending.policy, error)


def _tokens(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]
