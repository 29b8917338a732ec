"""The reference the hand-written parsers in gateway/wire/ are held against: what websockets makes of the same bytes."""

from __future__ import annotations

from websockets.http11 import Request
from websockets.server import ServerProtocol

from gateway.common.log import PROTOCOL_LOG


def websockets_request(head: bytes) -> tuple[str, list[tuple[str, str]], str] | None:
    """What websockets' parser and handshake checks make of ``head``: target, headers, key; None if refused."""
    ws = ServerProtocol(max_size=None, logger=PROTOCOL_LOG)
    ws.receive_data(head)
    events = ws.events_received()
    if not events or not isinstance(events[0], Request):
        return None
    request = events[0]
    try:
        ws.process_request(request)
    except Exception:
        return None
    return request.path, list(request.headers.raw_items()), request.headers["Sec-WebSocket-Key"]
