"""The frame-header scanner of the byte relay, on hand-made byte streams."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from relay_harness import make_frame
from websockets.frames import Close, Frame, Opcode

from gateway.wire.frames import (
    BOUNDARY,
    CONTROL,
    DONE,
    VIOLATION,
    FrameScanner,
    build_frame,
    close_payload,
    parse_close,
)

MAX_TAIL = 14 + 125


def relay(scanner: FrameScanner, chunks: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]], tuple[int, str] | None]:
    """Feed chunks the way the relay does; return forwarded bytes, control frames (opcode, payload), violation."""
    out = bytearray()
    controls: list[tuple[int, bytes]] = []
    for chunk in chunks:
        data = chunk
        if scanner.tail:
            data = scanner.tail + data
            scanner.tail = b""
        pos = 0
        while True:
            event = scanner.scan(data, pos)
            out += data[pos : scanner.end]
            assert len(scanner.tail) <= MAX_TAIL
            if event == DONE:
                break
            pos = scanner.resume
            if event == CONTROL:
                controls.append((scanner.control_opcode, scanner.control_payload))
                out += scanner.control_frame
            elif event == VIOLATION:
                return bytes(out), controls, (scanner.error_code, scanner.error_reason)
    return bytes(out), controls, None


def client_stream() -> tuple[bytes, int, int]:
    """A masked stream mixing every kind of frame and length encoding: (bytes, messages, payload bytes)."""
    frames = [
        make_frame(0x1, b"hello", masked=True),
        make_frame(0x2, b"", masked=True),
        make_frame(0x2, b"ab", fin=False, masked=True),
        make_frame(0x9, b"ping!", masked=True),  # control frames may sit inside a fragmented message
        make_frame(0x0, b"c" * 300, fin=False, masked=True),
        make_frame(0xA, b"", masked=True),
        make_frame(0x0, b"d", masked=True),
        make_frame(0x1, b"x" * 125, masked=True),
        make_frame(0x2, b"y" * 126, masked=True),
        make_frame(0x2, b"z" * 65536, masked=True),
        make_frame(0x8, close_payload(1000, "bye"), masked=True),
    ]
    payload = 5 + 0 + (2 + 300 + 1) + 125 + 126 + 65536
    return b"".join(frames), 6, payload


def test_whole_stream_passes_unchanged() -> None:
    """A valid masked stream in one chunk comes out byte for byte, with messages and bytes counted."""
    stream, messages, payload = client_stream()
    scanner = FrameScanner(masked=True)
    out, controls, violation = relay(scanner, [stream])
    assert violation is None
    assert out == stream
    assert [op for op, _ in controls] == [0x9, 0xA, 0x8]
    assert controls[0][1] == b"ping!"  # unmasked for the relay to read
    assert parse_close(controls[2][1]) == (1000, "bye")
    assert (scanner.messages, scanner.payload_bytes) == (messages, payload)


def test_every_split_point() -> None:
    """Cutting the stream in two at any byte gives the same bytes, controls and counts."""
    stream, messages, payload = client_stream()
    expected = relay(FrameScanner(masked=True), [stream])
    # The big frame's payload is long; every split around heads and control frames is what matters,
    # but every point is cheap enough to try.
    for cut in range(len(stream) + 1):
        scanner = FrameScanner(masked=True)
        assert relay(scanner, [stream[:cut], stream[cut:]]) == expected, cut
        assert (scanner.messages, scanner.payload_bytes) == (messages, payload)


def test_one_byte_at_a_time() -> None:
    """Feeding one byte per read gives the same result and never holds more than a control frame."""
    stream, messages, payload = client_stream()
    scanner = FrameScanner(masked=True)
    out, controls, violation = relay(scanner, [stream[i : i + 1] for i in range(len(stream))])
    assert violation is None and out == stream
    assert [op for op, _ in controls] == [0x9, 0xA, 0x8]
    assert (scanner.messages, scanner.payload_bytes) == (messages, payload)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0x1, 0x2, 0x9]), st.binary(max_size=300), st.integers(1, 4)),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.integers(1, 400), min_size=1, max_size=40),
)
def test_random_streams_and_chunkings(spec: list[tuple[int, bytes, int]], cuts: list[int]) -> None:
    """Random unmasked server streams (some fragmented) survive random chunking unchanged."""
    frames: list[bytes] = []
    messages = payload = 0
    for opcode, data, pieces in spec:
        if opcode == 0x9:
            frames.append(make_frame(opcode, data[:125], masked=False))
            continue
        step = max(1, len(data) // pieces)
        parts = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        for index, part in enumerate(parts):
            frames.append(
                make_frame(opcode if index == 0 else 0x0, part, fin=index == len(parts) - 1, masked=False)
            )
        messages += 1
        payload += len(data)
    stream = b"".join(frames)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos : pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    scanner = FrameScanner(masked=False)
    out, _, violation = relay(scanner, chunks)
    assert violation is None and out == stream
    assert (scanner.messages, scanner.payload_bytes) == (messages, payload)


@pytest.mark.parametrize(
    ("masked", "frame", "code"),
    [
        (True, make_frame(0x1, b"hi", masked=False), 1002),  # unmasked client frame
        (False, make_frame(0x1, b"hi", masked=True), 1002),  # masked server frame
        (True, make_frame(0x1, b"hi", masked=True, rsv=4), 1002),  # RSV1 without an extension
        (True, make_frame(0x1, b"hi", masked=True, rsv=1), 1002),  # RSV3
        (True, make_frame(0x3, b"hi", masked=True), 1002),  # reserved data opcode
        (True, make_frame(0xB, b"hi", masked=True), 1002),  # reserved control opcode
        (True, make_frame(0x9, b"p" * 126, masked=True), 1002),  # control frame too long
        (True, make_frame(0x9, b"p", fin=False, masked=True), 1002),  # fragmented control frame
        (True, make_frame(0x0, b"p", masked=True), 1002),  # continuation without a message
        (False, make_frame(0x2, b"", masked=False, length=1 << 63), 1002),  # length's top bit set
        (True, make_frame(0x2, b"", masked=True, length=1 << 40), 1009),  # announces a terabyte
    ],
)
def test_violations(masked: bool, frame: bytes, code: int) -> None:
    """A bad frame after a good one: the good one is forwarded, the bad one not, with the right code."""
    good = make_frame(0x1, b"ok", masked=masked)
    scanner = FrameScanner(masked=masked, max_size=1 << 20)
    # Only the head of the bad frame is given: the decision never needs the payload.
    out, _, violation = relay(scanner, [good + frame[:14]])
    assert out == good
    assert violation is not None and violation[0] == code


def test_new_message_inside_fragmented_one() -> None:
    """A text frame while a fragmented message is open is a protocol error."""
    stream = make_frame(0x1, b"a", fin=False, masked=True) + make_frame(0x1, b"b", masked=True)
    _, _, violation = relay(FrameScanner(masked=True), [stream])
    assert violation == (1002, "expected a continuation frame")


def test_size_limit_counts_across_fragments() -> None:
    """Fragments are summed: the frame that pushes the message past the limit is refused, before its payload."""
    first = make_frame(0x2, b"a" * 600, fin=False, masked=True)
    second = make_frame(0x0, b"b" * 500, fin=False, masked=True)
    scanner = FrameScanner(masked=True, max_size=1000)
    out, _, violation = relay(scanner, [first + second[:8]])
    assert out == first
    assert violation is not None and violation[0] == 1009


def test_thousands_of_tiny_fragments_hold_nothing() -> None:
    """10,000 one-byte fragments pass with only ints of state, and a limit stops them at the right one."""
    fragments = [make_frame(0x2 if i == 0 else 0x0, b"x", fin=i == 9999, masked=True) for i in range(10000)]
    scanner = FrameScanner(masked=True)
    out, _, violation = relay(scanner, fragments)
    assert violation is None and len(out) == sum(map(len, fragments))
    assert (scanner.messages, scanner.payload_bytes) == (1, 10000)
    assert scanner.tail == b""

    limited = FrameScanner(masked=True, max_size=5000)
    out, _, violation = relay(limited, fragments)
    assert violation is not None and violation[0] == 1009
    assert len(out) == sum(map(len, fragments[:5000]))


def test_fragment_limit_counts_frames_not_bytes() -> None:
    """Empty continuation frames add no size, yet the frame past ``max_fragments`` is refused with 1009 before
    it is forwarded; the count restarts with each message."""
    def message(frames: int) -> list[bytes]:
        return [make_frame(0x2 if i == 0 else 0x0, b"", fin=i == frames - 1, masked=True) for i in range(frames)]

    scanner = FrameScanner(masked=True, max_fragments=3)
    out, _, violation = relay(scanner, message(3) + message(3))
    assert violation is None and scanner.messages == 2
    flood = message(5)
    out, _, violation = relay(FrameScanner(masked=True, max_fragments=3), flood)
    assert violation == (1009, "message in over 3 frames")
    assert out == b"".join(flood[:3])


def test_boundary_event_when_asked() -> None:
    """With stop_at_boundary set mid-frame, scanning stops exactly where the frame in flight ends."""
    first = make_frame(0x2, b"a" * 1000, masked=False)
    second = make_frame(0x1, b"next", masked=False)
    stream = first + second
    scanner = FrameScanner(masked=False)
    assert scanner.scan(stream[:100]) == DONE and not scanner.at_boundary
    scanner.stop_at_boundary = True
    rest = stream[100:]
    assert scanner.scan(rest) == BOUNDARY
    assert scanner.end == scanner.resume == len(first) - 100
    assert scanner.at_boundary and scanner.messages == 1


def test_control_frame_held_until_complete() -> None:
    """A ping cut in three reads is handed out once, whole, never in pieces."""
    ping = make_frame(0x9, b"0123456789", masked=True)
    scanner = FrameScanner(masked=True)
    out, controls, _ = relay(scanner, [ping[:1], ping[1:7], ping[7:]])
    assert out == ping
    assert controls == [(0x9, b"0123456789")]


def test_parse_close_errors() -> None:
    """Close payloads: empty is 1005, one byte or a bad code is 1002, a bad reason is 1007."""
    assert parse_close(b"") == (1005, "")
    assert parse_close(struct.pack("!H", 4000) + "ça".encode()) == (4000, "ça")
    for payload, code in [(b"\x03", 1002), (struct.pack("!H", 1005), 1002), (struct.pack("!H", 1000) + b"\xff", 1007)]:
        with pytest.raises(ValueError) as info:
            parse_close(payload)
        assert info.value.args[0] == code


def test_build_frame_parses_back() -> None:
    """Frames the gateway injects are valid for the websockets parser, masked or not."""
    for masked in (True, False):
        frame = build_frame(0x8, close_payload(1001, "é" * 100), masked=masked)
        reader = _reader(frame)
        parsed = _parse(reader, mask=masked)
        assert parsed.opcode is Opcode.CLOSE and parsed.fin
        close = Close.parse(parsed.data)
        assert close.code == 1001 and len(parsed.data) <= 125 and close.reason.startswith("é")


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    buffer = bytearray(data)

    def read_exact(n: int):  # type: ignore[no-untyped-def]
        chunk = bytes(buffer[:n])
        del buffer[:n]
        return chunk
        yield  # pragma: no cover

    return read_exact


def _parse(read_exact, *, mask: bool) -> Frame:  # type: ignore[no-untyped-def]
    generator = Frame.parse(read_exact, mask=mask)
    try:
        next(generator)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("parser wanted more bytes")
