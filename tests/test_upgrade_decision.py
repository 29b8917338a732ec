"""The upgrade decision without sockets or an event loop (gateway/edge/upgrade.py): request bytes in, response
bytes out, as websockets tests its ServerProtocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PORT, api_yaml

from gateway.build.pipeline import build
from gateway.build.routes import RouteTable
from gateway.common.http_response import reason_phrase, refusal, status_line, switching_protocols
from gateway.edge.upgrade import (
    Accept,
    Pending,
    PolicyChain,
    PolicyFailed,
    Refuse,
    connection_context,
    decide,
    head_end,
    upgrade_request,
)
from gateway.policies.base import ConnectionContext, Policy, Rejection, UpgradeRequest
from gateway.policies.state import PolicyState

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455, 1.3: the accept for KEY
ORIGIN = "  - type: origin\n    allow: ['https://app.example']\n"
ORIGIN_API = (
    "kind: API\nname: Guarded\npath: /guarded\nports: [default]\nupstream:\n  endpoints:\n"
    "    - url: ws://127.0.0.1:9/guarded\npolicies:\n" + ORIGIN
)
DEFLATE_API = (
    "kind: API\nname: Squeezed\npath: /squeezed\nports: [default]\ncompression: true\nupstream:\n  endpoints:\n"
    "    - url: ws://127.0.0.1:9/squeezed\n"
)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouteTable]:
    """The compiled table of a config with a plain API, a prefix API, one with an origin policy and one with
    compression: compiled as the runtime compiles it, never served."""
    root: Path = tmp_path_factory.mktemp("decision") / "config"
    root.mkdir()
    documents = [PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo"),
                 api_yaml("Rooms", "/rooms", "ws://127.0.0.1:9/rooms", extra="match: prefix\n"),
                 ORIGIN_API, DEFLATE_API]
    (root / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in documents))
    built = build([root])
    assert built.config is not None and built.artefacts is not None, built.diagnostics
    compiled = RouteTable.compile(built.config, built.artefacts.apps, PolicyState(),
                                  upstream_tls=built.artefacts.upstream_tls)
    yield compiled
    compiled.close()


def head(target: str = "/echo", *, method: str = "GET", version: str = "HTTP/1.1", extra: str = "",
         key: str = KEY, upgrade: str = "websocket") -> bytes:
    """An upgrade request head (a browser-like one unless told otherwise)."""
    return (f"{method} {target} {version}\r\nHost: gw\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def json_refusal(status: str, error: str, reason: str, *extra: str) -> bytes:
    """A refusal spelled out by hand, byte for byte (the expectation, not the code under test)."""
    body = f'{{"error": "{error}", "reason": "{reason}"}}'
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


REFUSALS = [
    (head("/nowhere"), json_refusal("404 Not Found", "not_found", "no API at this path")),
    (head("/echo/../admin"), json_refusal("400 Bad Request", "bad_request", "the path holds a '.' or '..' segment")),
    (head("/echo", method="POST"), json_refusal("405 Method Not Allowed", "method_not_allowed",
                                                "WebSocket upgrades use GET")),
    (head("/echo", upgrade="h2c"), json_refusal("426 Upgrade Required", "upgrade_required",
                                                "this path serves WebSocket upgrades only", "Upgrade: websocket")),
    (head("/echo", version="HTTP/1.0"), json_refusal("505 HTTP Version Not Supported", "http_version_not_supported",
                                                     "WebSocket upgrades use HTTP/1.1")),
    (head("/echo", extra="Host: other\r\n"), json_refusal("400 Bad Request", "bad_request",
                                                          "malformed HTTP request: more than one Host header")),
    (head("/echo", key="short"), json_refusal(
        "400 Bad Request", "bad_request", "invalid WebSocket handshake: invalid Sec-WebSocket-Key header: short")),
    (b"GET /echo HTTP/1.1\r\nHost gw\r\n\r\n", json_refusal("400 Bad Request", "bad_request",
                                                            "malformed HTTP request")),
    (b"GET /echo HTTP/1.1\r\n" + b"X-Filler: a\r\n" * 200 + b"\r\n", json_refusal(
        "431 Request Header Fields Too Large", "request_too_large", "request line or headers too large or too many")),
]


@pytest.mark.parametrize(("request_head", "response"), REFUSALS)
def test_a_refused_head_gets_exactly_these_bytes(table: RouteTable, request_head: bytes, response: bytes) -> None:
    """Each malformed, misrouted or non-WebSocket head is refused with exactly the expected response bytes."""
    decision = decide(request_head, "default", table)
    assert isinstance(decision, Refuse)
    assert decision.response() == response


def test_an_ordinary_head_is_accepted_with_the_rfc_accept_key(table: RouteTable) -> None:
    """The RFC 6455 sample key routes to /echo and its 101 carries the RFC's Sec-WebSocket-Accept."""
    decision = decide(head("/echo", extra="Sec-WebSocket-Protocol: chat, superchat\r\n"), "default", table)
    assert isinstance(decision, Accept)
    assert (decision.route.name, decision.path, decision.suffix) == ("Echo", "/echo", "")
    assert decision.offered_subprotocols() == ["chat", "superchat"]
    assert decision.response("chat") == (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n").encode()


def test_a_prefix_route_passes_the_rest_of_the_path_and_the_query(table: RouteTable) -> None:
    """A prefix route keeps the path after its prefix for the upstream, and the raw query for the policies."""
    decision = decide(head("/rooms/blue?x=1"), "default", table)
    assert isinstance(decision, Accept)
    assert (decision.route.name, decision.suffix, decision.query) == ("Rooms", "/rooms/blue", "x=1")


def test_compression_is_negotiated_by_websockets_and_named_in_the_101(table: RouteTable) -> None:
    """An API with compression takes the client's permessage-deflate offer and the 101 names what was agreed."""
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    decision = decide(head("/squeezed", extra=offer), "default", table)
    assert isinstance(decision, Accept) and decision.extensions
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate" in decision.response(None)


def test_a_port_without_the_route_is_a_404(table: RouteTable) -> None:
    """The same head on a port no API listens on is a 404."""
    assert decide(head("/echo"), "elsewhere", table) == Refuse(404, "not_found", "no API at this path", path="/echo")


@pytest.mark.parametrize(
    ("read", "scanned", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: gw\r\n", 0, None),
        (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\nfirst frame", 0, 28),
        (b"GET / HTTP/1.1\nHost: gw\r\n", 0, Refuse(400, "bad_request", "malformed HTTP request: a line ends in a "
                                                                          "bare LF")),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000, 0, Refuse(431, "request_too_large", "request head too large")),
    ],
)
def test_the_head_ends_where_the_bytes_say(read: bytes, scanned: int, expected: int | Refuse | None) -> None:
    """head_end finds the head's length, waits for more, or refuses a bare LF or a head past the limit."""
    assert head_end(read, scanned) == expected


def contexts(table: RouteTable, request_head: bytes) -> tuple[Accept, UpgradeRequest, ConnectionContext]:
    decision = decide(request_head, "default", table)
    assert isinstance(decision, Accept)
    peer = ("192.0.2.7", 50000)
    return (decision, upgrade_request(decision, "default", peer, False, None),
            connection_context(decision, "default", peer, False))


def test_the_origin_policy_refuses_through_the_chain_with_plain_values(table: RouteTable) -> None:
    """The compiled origin policy's verdict comes out of the chain as a 403 refusal, no loop involved."""
    _, request, conn = contexts(table, head("/guarded", extra="Origin: https://evil.example\r\n"))
    step = PolicyChain(table.apis["Guarded"].upgrade_policies, request, conn).run()
    assert step == Rejection(403, "forbidden", "origin https://evil.example is not allowed")
    _, request, conn = contexts(table, head("/guarded", extra="Origin: https://app.example\r\n"))
    assert PolicyChain(table.apis["Guarded"].upgrade_policies, request, conn).run() is None


class Waits(Policy):
    """An upgrade policy whose verdict needs I/O (a coroutine), refusing when told to."""

    type = "waits"

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    async def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        return Rejection(429, "throttled", "later") if self.refuse else None


class Breaks(Policy):
    """An upgrade policy with a bug."""

    type = "breaks"

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        raise RuntimeError("bug")


def settle(pending: Pending) -> Rejection | None:
    """What the driver's await would give, without an event loop: the coroutine runs to its return."""
    with pytest.raises(StopIteration) as stopped:
        pending.verdict.send(None)  # type: ignore[attr-defined]
    return stopped.value.value  # type: ignore[no-any-return]


def test_a_verdict_that_needs_io_is_a_pending_step_the_driver_resumes(table: RouteTable) -> None:
    """An async policy yields a Pending step; resumed with its verdict the chain goes on to the next policy,
    and a refusal there ends it: the core never awaits."""
    _, request, conn = contexts(table, head("/echo"))
    chain = PolicyChain([Waits(refuse=False), Waits(refuse=True), Breaks()], request, conn)
    first = chain.run()
    assert isinstance(first, Pending) and first.policy is chain.policies[0]
    second = chain.resume(settle(first))
    assert isinstance(second, Pending) and second.policy is chain.policies[1]
    assert chain.resume(settle(second)) == Rejection(429, "throttled", "later")


def test_a_failing_policy_is_named_and_becomes_a_500(table: RouteTable) -> None:
    """A policy that raises ends the chain with PolicyFailed naming it; its rejection is the 500 the client gets."""
    _, request, conn = contexts(table, head("/echo"))
    step = PolicyChain([Breaks(), Waits(refuse=True)], request, conn).run()
    assert isinstance(step, PolicyFailed) and isinstance(step.error, RuntimeError)
    assert step.rejection == Rejection(500, "internal_error", "policy breaks failed")


def test_the_connection_context_keeps_no_credential_of_the_query(table: RouteTable) -> None:
    """The context's metadata holds the query without the API key, and only the headers that are safe to show."""
    _, request, conn = contexts(table, head("/echo?apikey=secret-1&room=a", extra="User-Agent: t\r\n"
                                                                                   "Authorization: Basic eA==\r\n"))
    assert request.query == {"apikey": ["secret-1"], "room": ["a"]}
    assert "secret-1" not in conn.metadata["query"] and "room=a" in conn.metadata["query"]
    assert conn.metadata["headers"] == {"User-Agent": "t"}


@pytest.mark.parametrize("status", [101, 400, 401, 403, 404, 405, 426, 429, 431, 500, 502, 503, 504, 505])
def test_every_status_line_takes_its_phrase_from_the_standard(status: int) -> None:
    """Status lines carry the IANA reason phrase; the old fallback 'Error' never appears."""
    assert status_line(status) == f"HTTP/1.1 {status} {reason_phrase(status)}"
    assert reason_phrase(status) and reason_phrase(status) != "Error"
    assert not refusal(status, "e", "r").startswith(f"HTTP/1.1 {status} Error".encode())


def test_a_101_without_extension_or_subprotocol_has_four_lines() -> None:
    """The bare 101 is the status line, Upgrade, Connection and the accept key."""
    assert switching_protocols(ACCEPT) == (
        f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n").encode()
