"""An incremental WebSocket frame-header scanner, for relaying bytes unchanged.

The byte relay forwards what it receives as it receives it; this scanner tells
it where frames begin and end without ever reading a data payload. It keeps a
handful of ints per direction, plus at most one incomplete frame head (≤ 14
bytes) or one incomplete control frame (≤ 14 + 125 bytes) in ``tail``, which
the caller prepends to the next chunk.

:meth:`FrameScanner.scan` walks a chunk from ``pos`` and stops at the first
thing the relay must act on, returning an event:

- ``DONE``: the chunk is consumed. ``data[pos:end]`` is forwardable; anything
  after ``end`` was held in ``tail`` (a head or control frame cut by the read).
- ``CONTROL``: a complete control frame. Forward ``data[pos:end]`` first (the
  data frames before it), then decide what to do with ``control_frame`` (the
  raw bytes, unchanged) whose unmasked payload is ``control_payload``.
  Go on scanning at ``resume``.
- ``BOUNDARY``: a data frame just ended and ``stop_at_boundary`` was set (the
  relay has a ping or close waiting to be injected into this stream). Forward
  ``data[pos:end]``, inject, go on at ``resume``.
- ``VIOLATION``: the frame at ``end`` breaks the protocol (``error_code`` 1002)
  or makes its message larger than ``max_size`` or longer than ``max_fragments``
  frames (1009, decided from the head alone, before any of the payload is read). ``data[pos:end]`` holds only
  frames that were fine.

Control frames are never handed out in pieces: they are held until complete,
so the relay can drop the pongs that answer its own pings. Data-frame heads are
held until complete too, so a bad head is never forwarded and the forwarded
stream is always at a frame boundary unless a data payload is in flight
(``remaining > 0``).
"""

from __future__ import annotations

import os

from websockets.exceptions import ProtocolError
from websockets.frames import Close, apply_mask

DONE = 0
CONTROL = 1
BOUNDARY = 2
VIOLATION = 3

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

_NO_LIMIT = 1 << 63


class FrameScanner:
    """Frame boundaries, message counts and protocol checks for one direction of a relay.

    ``masked`` is True for frames sent by a client (they must be masked) and
    False for frames sent by a server (they must not be).
    """

    __slots__ = (
        "_mask_bit",
        "max_size",
        "max_fragments",
        "fragments",
        "remaining",
        "_final",
        "in_message",
        "message_size",
        "messages",
        "payload_bytes",
        "tail",
        "stop_at_boundary",
        "end",
        "resume",
        "control_opcode",
        "control_payload",
        "control_frame",
        "error_code",
        "error_reason",
    )

    def __init__(self, *, masked: bool, max_size: int | None = None, max_fragments: int | None = None) -> None:
        self._mask_bit = 0x80 if masked else 0
        self.max_size = _NO_LIMIT if max_size is None else max_size
        self.max_fragments = _NO_LIMIT if max_fragments is None else max_fragments
        self.fragments = 0  # frames of the current fragmented message so far
        self.remaining = 0  # payload bytes of the current data frame still to come
        self._final = False  # the current data frame ends its message
        self.in_message = False  # a fragmented message is in progress
        self.message_size = 0  # payload bytes announced so far for the current message
        self.messages = 0  # complete data messages seen
        self.payload_bytes = 0  # payload bytes of those messages
        self.tail = b""
        self.stop_at_boundary = False
        self.end = 0
        self.resume = 0
        self.control_opcode = 0
        self.control_payload = b""
        self.control_frame = b""
        self.error_code = 0
        self.error_reason = ""

    @property
    def at_boundary(self) -> bool:
        """Whether everything forwarded so far ends at a frame boundary."""
        return self.remaining == 0

    def _violation(self, pos: int, code: int, reason: str) -> int:
        self.end = pos
        self.error_code = code
        self.error_reason = reason
        return VIOLATION

    def scan(self, data: bytes, pos: int = 0) -> int:
        """Scan ``data`` from ``pos``; see the module docstring for the events."""
        n = len(data)
        remaining = self.remaining
        if remaining:
            available = n - pos
            if remaining > available:
                self.remaining = remaining - available
                self.end = n
                return DONE
            pos += remaining
            self.remaining = 0
            if self._final:
                self.messages += 1
                self.payload_bytes += self.message_size
                self.message_size = 0
            if self.stop_at_boundary:
                self.end = self.resume = pos
                return BOUNDARY
        mask_bit = self._mask_bit
        base_head = 6 if mask_bit else 2
        # Hot loop: locals where possible, attributes stored only when they change.
        while pos < n:
            if n - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            if b1 & 0x80 != mask_bit or b0 & 0x70:
                if b0 & 0x70:
                    return self._violation(pos, PROTOCOL_ERROR, "reserved bits must be 0")
                reason = "unmasked frame from client" if mask_bit else "masked frame from server"
                return self._violation(pos, PROTOCOL_ERROR, reason)
            length = b1 & 0x7F
            if length < 126:
                head = base_head
                if n - pos < head:
                    break
            elif length == 126:
                head = base_head + 2
                if n - pos < head:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
            else:
                head = base_head + 8
                if n - pos < head:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    return self._violation(pos, PROTOCOL_ERROR, "invalid frame length")
            opcode = b0 & 0x0F
            if opcode & 0x8:
                if opcode > OP_PONG:
                    return self._violation(pos, PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
                if not b0 & 0x80:
                    return self._violation(pos, PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    return self._violation(pos, PROTOCOL_ERROR, "control frame too long")
                frame_end = pos + head + length
                if frame_end > n:
                    break
                payload = data[pos + head : frame_end]
                if mask_bit:
                    payload = apply_mask(payload, data[pos + head - 4 : pos + head])
                self.control_opcode = opcode
                self.control_payload = payload
                self.control_frame = data[pos:frame_end]
                self.end = pos
                self.resume = frame_end
                return CONTROL
            if opcode:
                if opcode > OP_BINARY:
                    return self._violation(pos, PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
                if self.in_message:
                    return self._violation(pos, PROTOCOL_ERROR, "expected a continuation frame")
                size = length  # a new message
                self.fragments = 1
            else:
                if not self.in_message:
                    return self._violation(pos, PROTOCOL_ERROR, "unexpected continuation frame")
                size = self.message_size + length
                # Empty continuation frames cost a head each and add no size: only a count stops a flood.
                self.fragments += 1
                if self.fragments > self.max_fragments:
                    return self._violation(pos, MESSAGE_TOO_BIG, f"message in over {self.max_fragments} frames")
            if size > self.max_size:
                return self._violation(pos, MESSAGE_TOO_BIG, f"message over {self.max_size} bytes")
            pos += head
            if b0 & 0x80:
                if not opcode:
                    self.in_message = False
                if length > n - pos:
                    self.message_size = size
                    self.remaining = length - (n - pos)
                    self._final = True
                    self.end = n
                    return DONE
                pos += length
                self.messages += 1
                self.payload_bytes += size
                if not opcode:
                    self.message_size = 0
            else:
                self.in_message = True
                self.message_size = size
                if length > n - pos:
                    self.remaining = length - (n - pos)
                    self._final = False
                    self.end = n
                    return DONE
                pos += length
            if self.stop_at_boundary:
                self.end = self.resume = pos
                return BOUNDARY
        self.end = pos
        if pos < n:
            self.tail = data[pos:]
        return DONE


def parse_close(payload: bytes) -> tuple[int, str]:
    """Code and reason of a close frame's payload (1005 when empty).

    Raises ``ValueError(code, reason)`` with the close code the sender
    deserves: 1002 for a bad length or code, 1007 for a reason that is not UTF-8.
    """
    try:
        close = Close.parse(payload)
    except ProtocolError as exc:
        raise ValueError(PROTOCOL_ERROR, str(exc)) from None
    except UnicodeDecodeError:
        raise ValueError(INVALID_DATA, "invalid UTF-8 in close reason") from None
    return int(close.code), close.reason


def close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame, its reason cut to fit a control frame."""
    encoded = reason.encode()[:123]
    # Cutting may split a multi-byte character; drop the broken end.
    encoded = encoded.decode(errors="ignore").encode()
    return code.to_bytes(2, "big") + encoded


def build_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame (control frames only: payload ≤ 125 bytes), masked with a random key if asked."""
    if len(payload) > 125:
        raise ValueError("control frame payload over 125 bytes")
    if masked:
        mask = os.urandom(4)
        return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + apply_mask(payload, mask)
    return bytes((0x80 | opcode, len(payload))) + payload


# The message relay's common-frame path (gateway/relay/message.py) reads heads with these two: it relays final
# data frames itself and hands every other frame to websockets whole.
RESERVED_OPCODES = frozenset((3, 4, 5, 6, 7, 11, 12, 13, 14, 15))


def read_head(data: bytes | bytearray, pos: int, end: int) -> tuple[int, bool, int, int] | None:
    """The frame head at ``data[pos:end]``: (first byte, masked, payload length, where the payload starts, past
    the mask key); None while the length is not all there. The mask key itself may still be missing: the
    payload's end (start + length) past ``end`` says the frame is incomplete."""
    if pos + 2 > end:
        return None
    b1 = data[pos + 1]
    length = b1 & 0x7F
    at = pos + 2
    if length == 126:
        if at + 2 > end:
            return None
        length = (data[at] << 8) | data[at + 1]
        at += 2
    elif length == 127:
        if at + 8 > end:
            return None
        length = int.from_bytes(data[at:at + 8], "big")
        at += 8
    masked = bool(b1 & 0x80)
    return data[pos], masked, length, at + 4 if masked else at


def head_violation(b0: int, masked: bool, masked_in: bool) -> str | None:
    """Why a head breaks the protocol on a leg without extensions (the close reason), None if it does not:
    reserved bits, a frame masked the wrong way (``masked_in``: the sender must mask), a reserved opcode."""
    if b0 & 0x70:
        return "reserved bits must be 0"
    if masked is not masked_in:
        return "unmasked frame from client" if masked_in else "masked frame from server"
    if (b0 & 0x0F) in RESERVED_OPCODES:
        return f"invalid opcode {b0 & 0x0F:#x}"
    return None

