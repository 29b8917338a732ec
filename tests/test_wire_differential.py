"""Differential properties: each fast parser in gateway/wire/ against websockets, on the same random bytes.

The hand-written parsers exist only to make the common case cheaper; websockets stays the judge. Whatever
bytes hypothesis makes, a fast parser either declines (and the bytes go to websockets) or reaches exactly
websockets' result: the same request fields, the same 101 verdict and subprotocol, the same frames (opcode,
FIN, payload) and the same close code for a stream that breaks the protocol. A websockets upgrade that changes
its parsers or limits fails here first. The example-based tests of each parser stay beside it
(tests/test_request_head.py, tests/test_frames.py); the upgrade-level fuzz with a running gateway is
tests/test_request_heads.py.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, apply_mask
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol
from websockets.uri import parse_uri
from websockets.utils import accept_key
from wire_support import websockets_request

from gateway.common.log import PROTOCOL_LOG
from gateway.wire.frames import (
    CONTROL,
    DONE,
    OP_CLOSE,
    VIOLATION,
    FrameScanner,
    head_violation,
    parse_close,
    read_head,
)
from gateway.wire.request_head import plain_upgrade
from gateway.wire.upstream_response import Invalid101, check_101, plain_101

EXAMPLES = int(os.environ.get("WSGATE_DIFFERENTIAL_EXAMPLES", "200"))  # more for a deeper run
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
URI = parse_uri("ws://upstream.test/chat")
NOISE = st.sampled_from([b" ", b"\t", b"\n", b"\r", b":", b",", b"\x00", b"\x7f", b"\xff", b"A", b"=", b"/", b"?",
                         b"%", b"\r\n", b"websocket", b"Upgrade", b"13", b"chat"])


def mutated(lines: list[bytes], data: st.DataObject) -> bytes:
    """``lines`` (each ending in CRLF, then the empty line) with a few drawn edits: noise inserted, a line
    dropped or repeated, a header's case changed."""
    lines = list(lines)
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(lines) - 1))
        edit = data.draw(st.sampled_from(["noise", "drop", "repeat", "case"]))
        if edit == "noise":
            cut = data.draw(st.integers(0, max(len(lines[at]) - 2, 0)))
            lines[at] = lines[at][:cut] + b"".join(data.draw(st.lists(NOISE, min_size=1, max_size=3))) + lines[at][cut:]
        elif edit == "drop" and at > 0:
            del lines[at]
        elif edit == "repeat" and at > 0:
            lines.insert(at, lines[at])
        elif edit == "case":
            lines[at] = lines[at].swapcase() if at > 0 else lines[at]
    return b"".join(lines) + b"\r\n"


# Request heads ------------------------------------------------------------------------------------------------
REQUEST = [
    b"GET /chat/1?room=a&x=%20 HTTP/1.1\r\n",
    b"Host: example.com:8080\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: keep-alive, Upgrade\r\n",
    f"Sec-WebSocket-Key: {KEY}\r\n".encode(),
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Protocol: chat, superchat\r\n",
    b"User-Agent: test/1.0\r\n",
    b"Origin: https://app.example\r\n",
]


@SETTINGS
@given(st.data())
def test_a_request_head_the_fast_reader_takes_websockets_takes_with_the_same_fields(data: st.DataObject) -> None:
    """Mutated upgrade heads: when the one-pass reader accepts one, websockets accepts it too, with the same
    target, headers (order and case) and key; the untouched head is accepted by both."""
    head = mutated(REQUEST, data)
    plain = plain_upgrade(head)
    if plain is not None:
        assert (plain.target, list(plain.headers.raw_items()), plain.key) == websockets_request(head)


def test_the_ordinary_request_head_is_taken_by_both() -> None:
    """The browser-like head the properties mutate is accepted by the fast reader and by websockets alike."""
    head = b"".join(REQUEST) + b"\r\n"
    plain = plain_upgrade(head)
    assert plain is not None
    assert (plain.target, list(plain.headers.raw_items()), plain.key) == websockets_request(head)


# Upstream 101 responses ---------------------------------------------------------------------------------------
RESPONSE = [
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n",
    f"Sec-WebSocket-Accept: {accept_key(KEY)}\r\n".encode(),
    b"Sec-WebSocket-Protocol: chat\r\n",
    b"Server: upstream/1.0\r\n",
]
OFFERS = st.sampled_from([[], [Subprotocol("chat")], [Subprotocol("superchat"), Subprotocol("chat")]])


def websockets_101(head: bytes, offer: list[Subprotocol]) -> Subprotocol | None | bool:
    """websockets' client verdict on ``head``: the chosen subprotocol (or None), False when it refuses."""
    protocol = ClientProtocol(URI, subprotocols=offer or None, extensions=None, max_size=None, logger=PROTOCOL_LOG)
    protocol.key = KEY
    protocol.receive_data(head)
    events = protocol.events_received()
    if protocol.handshake_exc is not None or not events or not isinstance(events[0], Response):
        return False
    return protocol.subprotocol


@SETTINGS
@given(st.data(), OFFERS)
def test_an_upstream_101_gets_websockets_verdict(data: st.DataObject, offer: list[Subprotocol]) -> None:
    """Mutated 101s: the fast check accepts only what websockets' client accepts, choosing the same
    subprotocol, and check_101 (fast check, then websockets) always reaches websockets' verdict."""
    head = mutated(RESPONSE, data)
    expected = websockets_101(head, offer)
    fast = plain_101(head, KEY, offer)
    if fast is not False:
        assert fast == expected
    try:
        assert check_101(head, URI, KEY, offer) == expected
    except Invalid101:
        assert expected is False


def test_the_ordinary_101_is_taken_by_both() -> None:
    """The upstream answer the properties mutate passes the fast check and websockets alike."""
    head = b"".join(RESPONSE) + b"\r\n"
    assert plain_101(head, KEY, [Subprotocol("chat")]) == websockets_101(head, [Subprotocol("chat")]) == "chat"


# Frames -------------------------------------------------------------------------------------------------------
def frame_bytes(fin: bool, rsv: int, opcode: int, payload: bytes, mask: bytes | None, length: int | None) -> bytes:
    """One frame as a peer could send it, valid or not; ``length`` overrides the announced payload length."""
    announced = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask is not None else 0
    if announced < 126:
        head.append(bit | announced)
    elif announced < 1 << 16:
        head += struct.pack("!BH", bit | 126, announced)
    else:
        head += struct.pack("!BQ", bit | 127, announced)
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


@st.composite
def frame_streams(draw: st.DrawFn, masked: bool) -> bytes:
    """A stream of mostly plausible frames from a client (``masked``) or a server, with drawn faults: reserved
    bits, reserved opcodes, wrong masking, long or fragmented control frames, wrong announced lengths."""
    frames = []
    for _ in range(draw(st.integers(1, 8))):
        opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x2, 0x9, 0xA, 0x8, 0x3, 0xB]))
        if opcode == 0x8:
            code = draw(st.sampled_from([1000, 1001, 1011, 3000, 999, 1005, 5000]))
            payload = struct.pack("!H", code) + draw(st.sampled_from([b"", b"bye", b"\xff\xfe"]))
        elif opcode == 0x1:
            payload = draw(st.text(max_size=40)).encode()
        else:
            size = draw(st.sampled_from([None, None, 125, 126, 127, 300]))  # around the length encodings' edges
            payload = draw(st.binary(max_size=60) if size is None else st.binary(min_size=size, max_size=size))
        right_mask = draw(st.integers(0, 15)) > 0
        mask = draw(st.binary(min_size=4, max_size=4)) if masked == right_mask else None
        rsv = draw(st.sampled_from([0] * 12 + [1, 2, 4]))
        length = draw(st.sampled_from([None] * 12 + [0, 5, 130, 1 << 63]))
        frames.append(frame_bytes(draw(st.booleans()) or opcode >= 0x8, rsv, opcode, payload, mask, length))
        if opcode == 0x8:
            break  # nothing is read after a close frame
    return b"".join(frames)


def websockets_frames(stream: bytes, masked: bool) -> tuple[list[tuple[int, bool, bytes]], int | None]:
    """The frames websockets' protocol reads from ``stream`` and the close code it fails the connection with."""
    protocol: ServerProtocol | ClientProtocol
    if masked:
        protocol = ServerProtocol(state=OPEN, max_size=None, logger=PROTOCOL_LOG)
    else:
        protocol = ClientProtocol(URI, state=OPEN, max_size=None, logger=PROTOCOL_LOG)
    protocol.receive_data(stream)
    frames = [(int(f.opcode), f.fin, bytes(f.data)) for f in protocol.events_received() if isinstance(f, Frame)]
    failed = protocol.close_sent.code if protocol.close_sent is not None and protocol.close_rcvd is None else None
    return frames, failed


def scanned(stream: bytes, masked: bool) -> tuple[bytes, int | None, int]:
    """The bytes the byte relay's scanner lets through, the close code of the violation it (or the relay's
    ``parse_close`` of a close frame) found, if any, and where the offending frame starts."""
    scanner = FrameScanner(masked=masked)
    out = bytearray()
    pos = 0
    while True:
        event = scanner.scan(stream, pos)
        out += stream[pos:scanner.end]
        if event == DONE:
            return bytes(out), None, len(stream)
        if event == VIOLATION:
            return bytes(out), scanner.error_code, scanner.end
        if event == CONTROL:
            if scanner.control_opcode == OP_CLOSE:
                try:
                    parse_close(scanner.control_payload)  # as the byte relay does with a close frame
                except ValueError as exc:
                    return bytes(out), exc.args[0], scanner.end
                # The relay reads nothing after a close frame (websockets neither).
                return bytes(out + scanner.control_frame), None, len(stream)
            out += scanner.control_frame
        pos = scanner.resume


@SETTINGS
@given(st.data(), st.booleans())
def test_the_frame_scanner_reads_frames_as_websockets_does(data: st.DataObject, masked: bool) -> None:
    """The frames the scanner lets through are the frames websockets reads (opcode, FIN, payload), and the
    scanner finds a violation exactly when websockets fails the connection, with the same close code."""
    stream = data.draw(frame_streams(masked))
    expected, failed = websockets_frames(stream, masked)
    forwarded, violation, at = scanned(stream, masked)
    assert websockets_frames(forwarded, masked)[0] == expected
    if violation is not None and failed is None:
        # The scanner judges a frame from its head alone; websockets waits for the payload first. Give it the
        # payload the head announced (when that is a sane size): it must then fail alike.
        completed = completed_frame(stream, at)
        if completed is None:
            return  # a length no peer can send (2**63 and up, or more than a test holds): the head decides
        failed = websockets_frames(completed, masked)[1]
    assert violation == failed


def completed_frame(stream: bytes, at: int) -> bytes | None:
    """``stream`` up to the end of the frame starting at ``at``, its payload padded to the announced length."""
    length = stream[at + 1] & 0x7F
    size = 2
    if length == 126:
        length, size = struct.unpack_from("!H", stream, at + 2)[0], 4
    elif length == 127:
        length, size = struct.unpack_from("!Q", stream, at + 2)[0], 10
    if length > 1 << 20:
        return None
    size += 4 if stream[at + 1] & 0x80 else 0
    payload = stream[at + size:at + size + length]
    return stream[:at + size] + payload + bytes(length - len(payload))


def websockets_frame(data: bytes, masked: bool) -> Frame | str | None:
    """websockets' reading of the one frame at the start of ``data``: the frame, why it is refused, or None
    while incomplete."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=masked, max_size=None, extensions=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    except ProtocolError as exc:
        return str(exc)
    return None


@SETTINGS
@given(st.data(), st.booleans())
def test_the_message_relay_reads_frame_heads_as_websockets_does(data: st.DataObject, masked: bool) -> None:
    """``read_head`` finds the opcode, FIN, length and payload websockets' Frame.parse reads from the same bytes,
    and every head ``head_violation`` refuses websockets refuses too (the relay hands the rest to websockets)."""
    stream = data.draw(frame_streams(masked))
    head = read_head(stream, 0, len(stream))
    theirs = websockets_frame(stream, masked)
    if head is None:
        assert theirs is None
        return
    b0, is_masked, length, at = head
    why = head_violation(b0, is_masked, masked)
    if why is not None:
        assert isinstance(theirs, str) or (theirs is None and at + length > len(stream)), why
        return
    if at + length > len(stream):
        assert theirs is None  # the payload has not all arrived
        return
    payload = stream[at:at + length]
    if is_masked:
        payload = apply_mask(payload, stream[at - 4:at])
    if isinstance(theirs, str):
        assert b0 & 0x0F >= 0x8, theirs  # only a control frame's own rules (length, FIN) are left to websockets
        return
    assert theirs is not None
    assert (int(theirs.opcode), theirs.fin, bytes(theirs.data)) == (b0 & 0x0F, bool(b0 & 0x80), payload)
