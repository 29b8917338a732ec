"""The fast path: relay a WebSocket connection as bytes, frames untouched.

After both handshakes, client frames are already masked as the upstream needs
and upstream frames unmasked as the client needs, so the relay forwards every
received ``bytes`` object as is. A :class:`~gateway.wire.frames.FrameScanner`
per direction reads only frame heads (and ≤125-byte control frames) to count
messages, enforce the size limit, check the protocol, follow the closing
handshake and find the frame boundaries where the gateway may inject its own
pings and closes.

Per connection there is one :class:`ByteRelay` and two :class:`_Leg` protocols
(each its direction's scanner), all with ``__slots__``; no task and no timer while the connection
is open (keepalive is the shared :class:`~gateway.relay.keepalive.KeepaliveSweeper`).
A single timer exists only while a connection is closing, to bound the wait
for peers that do not finish the closing handshake.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from gateway.policies.base import ConnectionContext
from gateway.relay.base import peer_close
from gateway.relay.keepalive import PING_PREFIX
from gateway.wire.frames import (
    BOUNDARY,
    CONTROL,
    DONE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameScanner,
    build_frame,
    close_payload,
    parse_close,
)

if TYPE_CHECKING:
    from gateway.build.routes import CompiledAPI
    from gateway.relay.keepalive import KeepaliveSweeper

log = structlog.get_logger("wsgate.relay.fast")

_monotonic = time.monotonic

ABNORMAL = 1006
CLOSE_TIMEOUT = 3.0  # seconds a closing connection waits for its peers before aborting them

# close_state of a leg: has the gateway written a close frame to it?
_NONE, _QUEUED, _WRITTEN = 0, 1, 2


class _Leg(FrameScanner, asyncio.Protocol):
    """One side of the relay: the protocol of its transport, and what was said to and by it.

    A leg *is* the scanner of the frames it receives (one object per side instead of two:
    fewer objects touched per read, less memory per connection).
    """

    __slots__ = (
        "relay",
        "transport",
        "peer",
        "is_client",
        "counters",
        "last_rx",
        "ka_sent",
        "reading_paused",
        "accepting",  # bytes may still be written to this leg
        "silenced",  # bytes from this leg are ignored (it closed, broke the protocol, or died)
        "close_rcvd",  # this leg sent a close frame
        "close_state",  # the gateway's close frame to this leg: none, queued, written
        "fail_after_close",  # close the transport once our close frame is written
        "pending",  # frames to inject into this leg's stream at the next boundary
        "eof",  # this leg half-closed its TCP connection
        "lost",
    )

    def __init__(self, relay: ByteRelay, transport: asyncio.Transport, is_client: bool, max_size: int | None,
                 max_fragments: int | None = None) -> None:
        self.relay = relay
        self.transport = transport
        self.peer: _Leg = self
        # Frames *from* a client are masked; frames from the upstream server are not.
        FrameScanner.__init__(self, masked=is_client, max_size=max_size, max_fragments=max_fragments)
        self.is_client = is_client
        self.counters = relay.conn.counters
        self.last_rx = _monotonic()
        self.ka_sent = 0.0
        self.reading_paused = False
        self.accepting = True
        self.silenced = False
        self.close_rcvd = False
        self.close_state = _NONE
        self.fail_after_close = False
        self.pending = b""
        self.eof = False
        self.lost = False

    # ------------------------------------------------------------ hot path

    def data_received(self, data: bytes) -> None:
        self.last_rx = _monotonic()
        if self.silenced:
            return
        if self.tail:
            data = self.tail + data
            self.tail = b""
        out = self.peer
        n = len(data)
        pos = 0
        while True:
            event = self.scan(data, pos)
            end = self.end
            if end > pos and out.accepting:
                out.transport.write(data if end - pos == n else data[pos:end])
            if event == DONE:
                break
            pos = self.resume
            if event == BOUNDARY:
                out.flush_pending()
            elif event == CONTROL:
                if not self.relay._control(self, self.control_opcode, self.control_payload, self.control_frame):
                    break
            else:
                self.relay._violation(self, self.error_code, self.error_reason)
                break
        counters = self.counters
        if self.is_client:
            counters.messages_in = self.messages
            counters.bytes_in = self.payload_bytes
        else:
            counters.messages_out = self.messages
            counters.bytes_out = self.payload_bytes

    # --------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        # This leg reads too slowly: stop reading what its peer sends it.
        peer = self.peer
        if not peer.reading_paused and not peer.lost:
            peer.reading_paused = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.unpause()

    def unpause(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            # Its silence while paused was ours, not its own.
            self.last_rx = _monotonic()
            if not self.lost:
                self.transport.resume_reading()

    # ----------------------------------------------------------- injection

    def flush_pending(self) -> None:
        """Write the injected frames now that this leg's stream is at a frame boundary."""
        frames, self.pending = self.pending, b""
        self.peer.stop_at_boundary = False
        if not self.accepting or not frames:
            return
        self.transport.write(frames)
        if self.close_state == _QUEUED:
            self.close_state = _WRITTEN
            self.accepting = False
            if self.fail_after_close:
                self.transport.close()
            self.relay._progress()

    def inject(self, frame: bytes, is_close: bool) -> None:
        """Write ``frame`` to this leg at the next frame boundary of what its peer sends it."""
        self.pending += frame
        source = self.peer
        if source.remaining == 0:
            self.flush_pending()
        elif source.lost:
            # The frame in flight will never end: the stream can only be cut.
            self.pending = b""
            if is_close:
                self.relay._abort(self)
        else:
            source.stop_at_boundary = True

    def keepalive_ping(self, payload: bytes) -> None:
        if self.accepting and self.close_state == _NONE:
            self.inject(build_frame(OP_PING, payload, masked=not self.is_client), False)

    def keepalive_dead(self) -> None:
        self.relay._dead(self)

    # ------------------------------------------------------------ lifecycle

    def eof_received(self) -> bool | None:
        self.eof = True
        # A peer that half-closes after its close frame still gets the answer; _progress closes then.
        return self.close_rcvd and self.close_state != _WRITTEN

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._lost(self)


class ByteRelay:
    """Relays one proxied connection as bytes; see the module docstring."""

    __slots__ = (
        "conn",
        "_done",
        "_client",
        "_upstream",
        "_client_pending",
        "_upstream_pending",
        "_on_closed",
        "_keepalive",
        "_keepalive_params",
        "_write_buffer",
        "_close_timeout",
        "_timer",
        "_client_code",
        "_client_reason",
        "_finished",
    )

    def __init__(
        self,
        *,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        client_pending: bytes,
        upstream_pending: bytes,
        route: CompiledAPI,
        conn: ConnectionContext,
        on_closed: Callable[[int | None, str], None],
        keepalive: KeepaliveSweeper | None,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        api = route.api
        self.conn = conn
        self._done: asyncio.Future[None] | None = None  # made on demand: most relays are never awaited
        max_size = api.limits.max_message_size
        max_fragments = api.limits.max_fragments
        self._client = _Leg(self, client, True, max_size, max_fragments)
        self._upstream = _Leg(self, upstream, False, max_size, max_fragments)
        self._client.peer = self._upstream
        self._upstream.peer = self._client
        self._client_pending = client_pending
        self._upstream_pending = upstream_pending
        self._on_closed = on_closed
        self._keepalive = keepalive
        interval = api.keepalive.interval
        self._keepalive_params = None if interval is None or keepalive is None else (interval, api.keepalive.timeout)
        self._write_buffer = api.limits.write_buffer
        self._close_timeout = close_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._client_code: int | None = None
        self._client_reason = ""
        self._finished = False

    @property
    def done(self) -> asyncio.Future[None]:
        """A future resolved once both legs are closed and ``on_closed`` ran."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            if self._finished:
                self._done.set_result(None)
        return self._done

    def start(self) -> None:
        """Take over both transports and relay what was read past the handshakes."""
        loop = asyncio.get_running_loop()
        for leg in (self._client, self._upstream):
            transport = leg.transport
            transport.set_protocol(leg)
            transport.set_write_buffer_limits(high=self._write_buffer)
            if transport.is_closing():
                # It may have been lost under the handshake's protocol; _lost is idempotent.
                loop.call_soon(leg.connection_lost, None)
        if self._keepalive_params is not None and self._keepalive is not None:
            for leg in (self._client, self._upstream):
                self._keepalive.register(leg, *self._keepalive_params)
        client_pending, self._client_pending = self._client_pending, b""
        upstream_pending, self._upstream_pending = self._upstream_pending, b""
        if upstream_pending:
            self._upstream.data_received(upstream_pending)
        if client_pending:
            self._client.data_received(client_pending)
        for leg in (self._client, self._upstream):
            transport = leg.transport
            if not leg.lost and not leg.reading_paused and not transport.is_closing() and not transport.is_reading():
                transport.resume_reading()

    def close(self, code: int, reason: str) -> None:
        """Close both legs with ``code`` and ``reason`` (drain 1001, revocation 1008), bounded by a deadline."""
        if self._finished:
            return
        self._close_leg(self._client, code, reason)
        self._close_leg(self._upstream, code, reason)
        self._closing()
        self._progress()

    # ------------------------------------------------------------ internals

    def _close_leg(self, leg: _Leg, code: int, reason: str, fail: bool = False) -> None:
        if leg.lost or leg.close_state != _NONE:
            return
        if leg.is_client:
            self._client_code, self._client_reason = code, reason
        leg.close_state = _QUEUED
        leg.fail_after_close = fail
        leg.inject(build_frame(OP_CLOSE, close_payload(code, reason), masked=not leg.is_client), True)

    def _control(self, leg: _Leg, opcode: int, payload: bytes, frame: bytes) -> bool:
        """A control frame from ``leg``; False stops reading its chunk."""
        peer = leg.peer
        if opcode == OP_PONG and payload.startswith(PING_PREFIX):
            return True  # the answer to our keepalive ping: not the other peer's business
        if opcode != OP_CLOSE:
            if peer.accepting:
                peer.transport.write(frame)
            return True
        try:
            code, reason = parse_close(payload)
        except ValueError as exc:
            self._violation(leg, *exc.args)
            return False
        leg.close_rcvd = True
        leg.silenced = True  # nothing may follow a close frame
        if peer.accepting and peer.close_state == _NONE:
            # The close frame sits between frames, so the peer's stream is at a boundary.
            peer.transport.write(frame)
            peer.close_state = _WRITTEN
            peer.accepting = False
            if peer.is_client:
                self._client_code, self._client_reason = code, reason
        if leg.is_client and self._client_code is None:
            # Until an answer reaches the client, its own close is what it knows.
            self._client_code, self._client_reason = code, reason
        self._closing()
        self._progress()
        return False

    def _violation(self, leg: _Leg, code: int, reason: str) -> None:
        log.info(
            "relay_protocol_violation",
            conn=self.conn.id,
            side="client" if leg.is_client else "upstream",
            code=code,
            reason=reason,
        )
        leg.silenced = True
        self._close_leg(leg, code, reason, fail=True)
        # The client is told what happened to it: its peer broke (1014), or it is the one closed.
        self._close_leg(leg.peer, *peer_close(leg.is_client))
        self._closing()
        self._progress()

    def _dead(self, leg: _Leg) -> None:
        log.info("relay_keepalive_timeout", conn=self.conn.id, side="client" if leg.is_client else "upstream")
        leg.silenced = True
        self._abort(leg)

    def _abort(self, leg: _Leg) -> None:
        leg.accepting = False
        if not leg.lost:
            leg.transport.abort()

    def _lost(self, leg: _Leg) -> None:
        if leg.lost:
            return
        leg.lost = True
        leg.accepting = False
        leg.silenced = True
        leg.pending = b""
        if self._keepalive is not None:
            self._keepalive.unregister(leg)
        peer = leg.peer
        # Its peer may be paused because this leg read slowly; the peer's close reply must get through.
        peer.unpause()
        if not leg.close_rcvd:
            self._close_leg(peer, *peer_close(leg.is_client))
        self._closing()
        self._progress()

    def _closing(self) -> None:
        if self._timer is None and not self._finished:
            self._timer = asyncio.get_running_loop().call_later(self._close_timeout, self._deadline)

    def _deadline(self) -> None:
        for leg in (self._client, self._upstream):
            if not leg.lost:
                log.info("relay_close_timeout", conn=self.conn.id, side="client" if leg.is_client else "upstream")
                self._abort(leg)

    def _progress(self) -> None:
        client, upstream = self._client, self._upstream
        if client.lost and upstream.lost:
            self._finish()
            return
        if client.close_rcvd and client.close_state == _WRITTEN and not client.lost:
            # Both close frames went: as the server of this leg, the gateway closes TCP.
            client.transport.close()
        if upstream.close_rcvd and upstream.close_state == _WRITTEN and upstream.eof and not upstream.lost:
            upstream.transport.close()
        # Otherwise the upstream, the server of its leg, closes its TCP itself; the deadline covers it not doing so.

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._client_code is not None:
            code, reason = self._client_code, self._client_reason
        else:
            code, reason = ABNORMAL, "connection lost"
        try:
            self._on_closed(code, reason)
        except Exception:
            log.exception("relay_on_closed_failed", conn=self.conn.id)
        finally:
            if self._done is not None and not self._done.done():
                self._done.set_result(None)
