"""The upstream's answer to the gateway's upgrade request: its status line, and whether it is a valid 101.

``plain_101`` is the fast check for the common case; it accepts a subset of what websockets' client
(``ClientProtocol``) accepts, with the same chosen subprotocol, and ``check_101`` sends every other head
through websockets, which accepts it or words the refusal. Pure functions of the head's bytes: the edge
(gateway/edge/upstream.py) reads the head from the socket and turns a refusal into a 502.
"""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Response
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI
from websockets.utils import accept_key

from .protocols import QUIET
from .request_head import HEADER_TOKEN, HEADER_VALUE, header_field


class Invalid101(ValueError):
    """The head is not a 101 the gateway can relay; the message says why (websockets' words)."""


def response_status(head: bytes) -> tuple[int, str] | None:
    """The status code and reason phrase of the response head ``head``; None when its status line is invalid."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    # isascii: str.isdigit() also accepts Latin-1 superscripts ("1\xb21"), which int() refuses.
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def plain_101(head: bytes, key: str, offer: list[Subprotocol]) -> Subprotocol | None | bool:
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
    if (not status.startswith(b"HTTP/1.1 101 ") or len(status) > MAX_LINE_LENGTH
            or not HEADER_VALUE.fullmatch(status, 13)):
        return False
    upgrade = accept = protocol = None
    upgrade_named = False
    for line in lines[1:-2]:
        if len(line) > MAX_LINE_LENGTH:
            return False
        field = header_field(line)
        if field is None:
            return False
        name, value = field
        lower = name.lower()
        if lower == b"upgrade":
            if upgrade is not None:
                return False
            upgrade = value
        elif lower == b"connection":
            for token in value.split(b","):
                token = token.strip(b" \t")
                if not HEADER_TOKEN.fullmatch(token):
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
    if not HEADER_TOKEN.fullmatch(protocol):
        return False
    chosen = Subprotocol(protocol.decode())
    return chosen if chosen in offer else False


def check_101(head: bytes, uri: WebSocketURI, key: str, offer: list[Subprotocol]) -> Subprotocol | None:
    """The subprotocol the valid 101 ``head`` (answering ``key``, to the offer ``offer``) chose, or None for none.

    Raises :class:`Invalid101` for a head websockets' client would refuse (Upgrade, Connection,
    Sec-WebSocket-Accept for ``key``, a subprotocol not offered, an extension not asked for).
    """
    chosen = plain_101(head, key, offer)
    if chosen is not False:
        # mypy does not narrow `Subprotocol | None | bool` by `is not False` (True is never returned).
        return chosen  # type: ignore[return-value]
    protocol = ClientProtocol(uri, subprotocols=offer or None, extensions=None, max_size=None, logger=QUIET)
    protocol.key = key
    protocol.receive_data(head)
    events = protocol.events_received()
    if protocol.handshake_exc is not None or not events or not isinstance(events[0], Response):
        raise Invalid101(str(protocol.handshake_exc or "no response"))
    return protocol.subprotocol
