"""The one-pass upgrade head reader (gateway/wire/request_head.py) takes only what websockets would accept, alike.

Examples here; the differential property on random heads is in tests/test_wire_differential.py."""

from __future__ import annotations

import pytest
from wire_support import websockets_request

from gateway.wire.request_head import plain_upgrade

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = (
    "GET /chat/1?room=a&x=%20 HTTP/1.1\r\n"
    "Host: example.com:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "User-Agent: test/1.0\r\n"
    "\r\n"
).encode()


def test_an_ordinary_head_is_read_as_websockets_reads_it():
    """A browser-like upgrade comes back with the same target, headers (order and case) and key as websockets'."""
    plain = plain_upgrade(PLAIN)
    assert plain is not None
    assert (plain.target, list(plain.headers.raw_items()), plain.key) == websockets_request(PLAIN)
    assert plain.headers["connection"] == "keep-alive, Upgrade"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ((b"Host: example.com:8080\r\n", b"Host: a\r\nHost: b\r\n"), "a header twice"),
        ((b"GET ", b"POST "), "not GET"),
        ((b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"), "HTTP/1.0"),
        ((b"Upgrade: websocket", b"Upgrade: h2c"), "another protocol"),
        ((b"keep-alive, Upgrade", b"keep-alive"), "Connection without upgrade"),
        ((b"Version: 13", b"Version: 8"), "old version"),
        ((KEY.encode(), b"short"), "a key that is not 16 bytes"),
        ((b"User-Agent: test/1.0\r\n", b"User-Agent: test/1.0\r\nContent-Length: 0\r\n"), "a body length"),
        ((b"User-Agent: test/1.0\r\n", b"User-Agent: test/1.0\r\nTransfer-Encoding: chunked\r\n"), "a coding"),
        ((b"User-Agent: test/1.0\r\n", b"User-Agent: test\n/1.0\r\n"), "a bare LF in a value"),
        ((b"User-Agent: test/1.0\r\n", b"User Agent: test/1.0\r\n"), "a space in a name"),
        ((b"/chat/1", b"/chat\x001"), "a control byte in the target"),
        ((b"/chat/1", b"http://example.com/chat/1"), "absolute form"),
        ((b"chat, superchat", b"chat,,superchat"), "an empty subprotocol"),
        ((b"Sec-WebSocket-Version: 13\r\n", b""), "no version"),
    ],
)
def test_unusual_heads_go_the_long_way(change, why):
    """Each unusual shape returns None, so websockets' parser judges it (and words any refusal)."""
    head = PLAIN.replace(*change)
    assert head != PLAIN, why
    assert plain_upgrade(head) is None, why


def test_a_head_at_the_header_limit_goes_the_long_way():
    """More headers than websockets allows is websockets' 431 to give, not this reader's to accept."""
    many = b"".join(f"X-H{i}: v\r\n".encode() for i in range(200))
    assert plain_upgrade(PLAIN.replace(b"\r\n\r\n", b"\r\n" + many + b"\r\n")) is None
