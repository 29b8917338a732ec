"""The message relay: message by message, through the chain's message-stage policies.

Used when an API has message-stage policies or offers compression. Each leg
is an asyncio Protocol driving a websockets sans-I/O protocol (the client leg
a ``ServerProtocol``, the upstream leg a ``ClientProtocol``, both already
OPEN). Messages of a direction are handled strictly in order: synchronously
while every policy answers synchronously; when one returns an awaitable, a
consumer task takes over that direction until its bounded backlog is empty.
Nothing is logged per message.

The per-frame work of the websockets protocol objects is the largest cost
of this path, so on a leg without extensions the relay takes the common case
itself: :meth:`MessageRelay.parse` reads final, unfragmented data frames
(their heads with ``gateway.wire.frames.read_head``, checked against websockets
in tests/test_wire_differential.py; every other frame goes to the protocol
whole, so its parser stays at a frame boundary), and :func:`_frame` serialises outgoing data frames straight into
the protocol's write list, in order with its own frames. Writes go out once
per read, whatever the number of messages in it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections import deque
from collections.abc import Callable, Sequence
from struct import pack
from time import monotonic
from typing import TYPE_CHECKING, Any

import structlog
from websockets.client import ClientProtocol
from websockets.extensions.base import Extension
from websockets.frames import Close as CloseFrame
from websockets.frames import (
    Opcode,
    apply_mask,  # the C version when websockets has its speedups
)
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from ..common.log import PROTOCOL_LOG
from ..policies.base import DROP, Close, ConnectionContext, Delay, Message, Policy, Reply
from ..wire.frames import RESERVED_OPCODES, head_violation, read_head
from .base import CLOSE_TIMEOUT, peer_close

if TYPE_CHECKING:
    from ..build.routes import CompiledAPI
    from .keepalive import KeepaliveSweeper

log = structlog.get_logger("wsgate.relay")

TEXT, BINARY, CONT, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE


class _Masks:
    """Frame mask keys from the OS's strong randomness, drawn 1,024 at a time instead of one syscall each."""

    __slots__ = ("pool", "at")

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def next(self) -> bytes:
        at = self.at
        if at >= len(self.pool):
            self.pool, at = os.urandom(4096), 0
        self.at = at + 4
        return self.pool[at:at + 4]


_masks = _Masks()
_SMALL_HEADS = {opcode: [bytes((0x80 | opcode, n)) for n in range(126)] for opcode in (1, 2)}
_SMALL_MASKED_HEADS = {opcode: [bytes((0x80 | opcode, 0x80 | n)) for n in range(126)] for opcode in (1, 2)}


def _frame(writes: list[bytes], opcode: int, data: bytes, masked: bool) -> None:
    """Append one final, uncompressed data frame to ``writes``, as ``Frame.serialize`` would make it."""
    length = len(data)
    if masked:
        key = _masks.next()
        if length < 126:
            head = _SMALL_MASKED_HEADS[opcode][length]
        elif length < 65536:
            head = pack("!BBH", 0x80 | opcode, 0xFE, length)
        else:
            head = pack("!BBQ", 0x80 | opcode, 0xFF, length)
        writes.append(head + key + apply_mask(data, key))
    elif length < 126:
        writes.append(_SMALL_HEADS[opcode][length] + data)
    else:
        writes.append(pack("!BBH", 0x80 | opcode, 126, length) if length < 65536
                       else pack("!BBQ", 0x80 | opcode, 127, length))
        writes.append(data)  # no copy of a large payload


def _gone(leg: _Leg) -> CloseFrame:
    """What the other leg is told when ``leg`` failed or vanished (see :func:`peer_close`)."""
    return CloseFrame(*peer_close(leg.is_client))


class _Leg(asyncio.Protocol):
    """One side of a proxied connection."""

    __slots__ = (
        "relay",
        "transport",
        "ws",
        "is_client",
        "policies",
        "fragments",
        "fragment_text",
        "backlog",
        "pauses",
        "ended",
        "lost",
        "last_rx",
        "ka_sent",
        "peer",
        "sync",
        "plain",
        "buf",
        "max_size",
        "max_fragments",
        "fragment_count",
    )

    def __init__(self, relay: MessageRelay, transport: asyncio.Transport, ws: Any, is_client: bool,
                 policies: Sequence[Policy], max_fragments: int | None = None) -> None:
        self.relay = relay
        self.transport = transport
        self.ws = ws
        self.is_client = is_client
        self.policies = policies  # message-stage policies for what THIS leg sends
        self.fragments: bytearray | None = None  # one buffer: a list of tiny fragments costs ~40 bytes each
        self.fragment_text = False
        self.backlog: deque[Any] | None = None  # not None while a consumer task owns this direction
        self.pauses = 0
        self.ended = False  # this leg will send nothing more (close frame, error or EOF)
        self.lost = False  # its transport is closed
        self.last_rx = 0.0
        self.ka_sent = 0.0
        self.peer: _Leg = self  # set by the relay
        # Every policy says its on_message never returns an awaitable: no per-message check needed.
        self.sync = all(getattr(p, "sync_messages", False) for p in policies)
        # No extension: the relay parses this leg's common frames and serialises its data frames itself.
        # Parsing goes back to the protocol for good once the leg ends or sends a frame over the size limit.
        self.plain = not ws.extensions
        self.buf = bytearray()  # an incomplete frame the relay's own parser holds (plain legs only)
        self.max_size: int = ws.max_message_size if ws.max_message_size is not None else 1 << 62
        self.max_fragments: int = max_fragments if max_fragments is not None else 1 << 62
        self.fragment_count = 0  # frames of the message in ``fragments`` so far

    # asyncio callbacks -------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_rx = monotonic()
        if self.plain:
            self.relay.parse(self, data)
            return
        self.ws.receive_data(data)
        self.relay.handle_events(self)

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self.relay.handle_events(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if not self.ws.reader.eof:
            self.ws.receive_eof()
        self.relay.handle_events(self)
        self.relay.leg_lost(self)

    def pause_writing(self) -> None:
        self.relay.pause(self.peer)

    def resume_writing(self) -> None:
        self.relay.resume(self.peer)

    # keepalive hooks (KeepaliveSweeper) ---------------------------------
    @property
    def reading_paused(self) -> bool:
        return self.pauses > 0

    def keepalive_ping(self, payload: bytes) -> None:
        if self.ws.state is OPEN and not self.lost:
            self.ws.send_ping(payload)
            self.relay.flush(self)

    def keepalive_dead(self) -> None:
        """No traffic for interval + timeout: treat the peer as gone."""
        self.relay.vanished(self)


class MessageRelay:
    """Relays messages between a client and an upstream; see the module docstring."""

    __slots__ = ("client", "upstream", "route", "conn", "on_closed", "keepalive", "done", "_pending",
                 "_deadline", "_finished", "_tasks", "_max_queue", "on_writable")

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
        client_extensions: Sequence[Extension] = (),
    ) -> None:
        api = route.api
        loop = asyncio.get_running_loop()
        max_size = api.limits.max_message_size
        server = ServerProtocol(state=OPEN, max_size=max_size, logger=PROTOCOL_LOG)
        server.extensions = list(client_extensions)
        uri = route.endpoints[0].uri
        upstream_ws = ClientProtocol(uri, state=OPEN, max_size=max_size, logger=PROTOCOL_LOG)
        max_fragments = api.limits.max_fragments
        self.client = _Leg(self, client, server, True, route.client_policies, max_fragments)
        self.upstream = _Leg(self, upstream, upstream_ws, False, route.server_policies, max_fragments)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.route = route
        self.conn = conn
        self.on_closed = on_closed
        self.keepalive = keepalive
        self.done: asyncio.Future[None] = loop.create_future()
        self._pending = (client_pending, upstream_pending)
        self._deadline: asyncio.TimerHandle | None = None
        self._finished = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_queue = api.limits.max_queue
        # Called when the server-to-client direction takes messages again (gateway/push/session.py's queue).
        self.on_writable: Callable[[], None] | None = None

    # lifecycle ------------------------------------------------------------
    def start(self) -> None:
        limit = self.route.api.limits.write_buffer
        now = monotonic()
        loop = asyncio.get_running_loop()
        for leg in (self.client, self.upstream):
            leg.last_rx = now
            transport = leg.transport
            transport.set_write_buffer_limits(high=limit)
            transport.set_protocol(leg)
            if transport.is_closing():
                # Lost under the handshake's protocol: that one told nobody.
                loop.call_soon(leg.connection_lost, None)
        keepalive = self.route.api.keepalive
        if self.keepalive is not None and keepalive.interval is not None:
            self.keepalive.register(self.client, keepalive.interval, keepalive.timeout)
            self.keepalive.register(self.upstream, keepalive.interval, keepalive.timeout)
        client_pending, upstream_pending = self._pending
        self._pending = (b"", b"")
        if upstream_pending:
            self.upstream.data_received(upstream_pending)
        if client_pending and not self.client.ended:
            self.client.data_received(client_pending)
        for leg in (self.client, self.upstream):
            if not leg.lost and leg.pauses == 0 and not leg.transport.is_closing():
                leg.transport.resume_reading()

    def close(self, code: int, reason: str) -> None:
        """Gateway-initiated close (drain, revocation): a close frame to both legs, abort after a deadline."""
        for leg in (self.client, self.upstream):
            leg.ended = True
            self._send_close(leg, code, reason)
        self._arm_deadline()

    # flow control -----------------------------------------------------------
    def pause(self, leg: _Leg) -> None:
        leg.pauses += 1
        if leg.pauses == 1 and not leg.lost:
            leg.transport.pause_reading()

    def resume(self, leg: _Leg) -> None:
        if leg.pauses == 0:
            return
        leg.pauses -= 1
        if leg.pauses == 0 and not leg.lost:
            leg.transport.resume_reading()
        if leg.pauses == 0 and leg is self.upstream and self.on_writable is not None:
            self.on_writable()

    # pushed messages (gateway/push) --------------------------------------------
    @property
    def accepts_push(self) -> bool:
        """Whether a pushed message would reach the client now: it is open and the server-to-client direction
        is not held back (a full client write buffer or a policy's backlog pauses the upstream leg)."""
        return self.upstream.pauses == 0 and not self.client.ended and self.client.ws.state is OPEN

    @property
    def client_open(self) -> bool:
        return not self.client.ended and self.client.ws.state is OPEN

    def inject(self, is_text: bool, data: bytes) -> None:
        """A message the gateway pushes: through the server-to-client chain (transforms, validate-messages, rate
        limits, log-invocation) and counters exactly as if the upstream had sent it, in order with its messages."""
        self._message(self.upstream, is_text, data)
        self.flush(self.client)

    # incoming --------------------------------------------------------------
    def parse(self, leg: _Leg, data: bytes | bytearray) -> None:
        """The common frames of a plain leg without the protocol's generator parser; the rest goes to it.

        A final, unfragmented text or binary frame with the right masking and
        within the size limit is relayed from here. Any other frame (control,
        fragment, reserved bits, wrong masking, too big) is handed to the
        websockets protocol whole, so its parser only ever sees complete
        frames and stays at a frame boundary between them; it answers pings,
        runs the closing handshake and fails the connection exactly as before.
        """
        buf = leg.buf
        if buf:
            buf += data
            data = buf
        end = len(data)
        pos = 0
        masked_in = leg.is_client  # clients mask, servers don't
        max_size = leg.max_size
        too_big = False
        while pos + 2 <= end:
            if leg.ended:
                break  # closing or failed: the protocol takes the rest (it answers the peer's close frame)
            head = read_head(data, pos, end)
            if head is None:
                break
            b0, masked, length, at = head
            if length > max_size:
                too_big = True
                break  # the protocol fails it from the head alone (1009)
            if b0 & 0x70 or masked is not masked_in or (b0 & 0x0F) in RESERVED_OPCODES:
                # Reserved bits on a leg without extensions, wrong masking or an unknown opcode: fail it from
                # the head (websockets would wait for the payload first, which garbage may never complete).
                self._fail(leg, 1002, head_violation(b0, masked, masked_in) or "invalid frame")
                break
            stop = at + length
            if stop > end:
                break  # incomplete: at most max_size + 14 bytes wait in leg.buf
            opcode = b0 & 0x0F
            # Reserved bits and masking were checked above: FIN, a data opcode and no message in fragments.
            if b0 & 0x80 and (opcode == 1 or opcode == 2) and leg.fragments is None:
                payload = apply_mask(data[at:stop], data[at - 4:at]) if masked else bytes(data[at:stop])
                pos = stop
                self._message(leg, opcode == 1, payload)
            else:
                if opcode == 8 and leg.fragments is not None:
                    # RFC 6455 5.4 lets a close frame arrive between the fragments of a message; websockets
                    # fails that with 1002. The unfinished message was never relayed, so drop it and let the
                    # closing handshake run (Autobahn 7.1.5).
                    leg.fragments = None
                    leg.ws.current_size = None
                leg.ws.receive_data(bytes(data[pos:stop]))
                pos = stop
                self.handle_events(leg)
        if leg.ended or too_big:
            # From a frame boundary on, the protocol owns this leg's stream.
            leg.plain = False
            leg.buf = bytearray()
            if pos < end:
                leg.ws.receive_data(bytes(data[pos:]))
                self.handle_events(leg)
                return
        elif data is buf:
            del buf[:pos]
        elif pos < end:
            leg.buf = bytearray(data[pos:])
        self.flush(leg)
        self.flush(leg.peer)

    def handle_events(self, leg: _Leg) -> None:
        ws = leg.ws
        for frame in ws.events_received():
            if leg.ended:
                break  # failed, closed, or its peer is gone: nothing more from it is relayed
            opcode = frame.opcode
            if opcode is TEXT or opcode is BINARY:
                if frame.fin:
                    self._message(leg, opcode is TEXT, frame.data)
                else:
                    leg.fragments = bytearray(frame.data)
                    leg.fragment_text = opcode is TEXT
                    leg.fragment_count = 1
            elif opcode is CONT:
                fragments = leg.fragments
                if fragments is None:
                    continue  # the protocol already failed the leg
                leg.fragment_count += 1
                if leg.fragment_count > leg.max_fragments:
                    # Empty continuation frames add no size: only a count stops a flood of them.
                    leg.fragments = None
                    self._fail(leg, 1009, f"message in over {leg.max_fragments} frames")
                    break
                fragments += frame.data
                if frame.fin:
                    leg.fragments = None
                    self._message(leg, leg.fragment_text, bytes(fragments))
            elif opcode is CLOSE:
                leg.ended = True
                self._forward(leg, ws.close_rcvd)
        self.flush(leg)
        self.flush(leg.peer)
        if not leg.ended and ws.parser_exc is not None:
            leg.ended = True
            if isinstance(ws.parser_exc, EOFError):
                self.vanished(leg)
            else:
                # The protocol already sent this leg its close (1002, 1007, 1009). A client's peer goes away; a
                # client whose upstream broke the protocol is told so (1014).
                self._forward(leg, _gone(leg))
                self._arm_deadline()

    def vanished(self, leg: _Leg) -> None:
        """A leg went away without a close frame: the other gets 1014 (upstream gone) or 1001 (client gone)."""
        leg.ended = True
        if not leg.lost:
            leg.transport.abort()
        self._forward(leg, _gone(leg))
        self._arm_deadline()

    def _message(self, leg: _Leg, is_text: bool, data: bytes) -> None:
        counters = self.conn.counters
        if leg.is_client:
            counters.messages_in += 1
            counters.bytes_in += len(data)
        else:
            counters.messages_out += 1
            counters.bytes_out += len(data)
        payload: str | bytes = data
        if is_text:
            try:
                payload = data.decode()
            except UnicodeDecodeError:
                self._fail(leg, 1007, "invalid UTF-8")
                return
        if not leg.policies:
            self._send(leg.peer, is_text, data)
            return
        message = Message("client" if leg.is_client else "server", is_text, payload)
        if leg.backlog is not None:
            leg.backlog.append(message)
            if len(leg.backlog) == self._max_queue:
                self.pause(leg)
            return
        self._run_sync(leg, message, data)

    def _run_sync(self, leg: _Leg, message: Message, data: bytes) -> None:
        """The chain, synchronously; a policy that answers with an awaitable hands this direction to a task.

        A leg whose policies all declare ``sync_messages`` skips the awaitable check. A message no policy
        replaced or changed goes out as the bytes it came in as (``data``), without re-encoding.
        """
        conn = self.conn
        original, payload, is_text = message, message.payload, message.is_text
        may_await = not leg.sync
        for index, policy in enumerate(leg.policies):
            try:
                decision = policy.on_message(message, conn)
            except Exception:
                self._policy_failed(policy)
                return
            if type(decision) is Message:  # the common answer first: the awaitable check costs ~0.4 µs
                message = decision
                continue
            if decision is DROP:
                return
            if may_await and inspect.isawaitable(decision):
                self._hand_off(leg, decision, index, message)
                return
            self._decided(leg, policy, decision, index, message)
            return
        if message is original and message.payload is payload and message.is_text is is_text:
            self._send(leg.peer, is_text, data)
        else:
            self._deliver(leg, message)

    def _decided(self, leg: _Leg, policy: Policy, decision: Any, index: int, message: Message) -> None:
        """A decision other than pass or drop, on the synchronous path."""
        kind = type(decision)
        if kind is Close:
            self.close(decision.code, decision.reason)
        elif kind is Reply:
            self._reply(leg, decision.text)
        elif kind is Delay:
            self._hand_off(leg, decision, index, message)  # the task waits out the delay with the sender unread
        else:
            self._policy_failed(policy, decision)  # not a decision: a bug in the policy, like an exception (1011)

    def _hand_off(self, leg: _Leg, pending: Any, index: int, message: Message) -> None:
        """Hold this message and everything after it while a task owns this direction (an awaitable or a
        delay from the policy at ``index``)."""
        leg.backlog = deque()
        task = asyncio.get_running_loop().create_task(self._consume(leg, pending, index, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume(self, leg: _Leg, first: Any, index: int, message: Message) -> None:
        """Own one direction while a policy is asynchronous; then hand it back to the synchronous path."""
        try:
            if not await self._run_async(leg, message, first, index):
                return
            backlog = leg.backlog
            while backlog:
                item = backlog.popleft()
                if len(backlog) == self._max_queue - 1:
                    self.resume(leg)
                if isinstance(item, CloseFrame):
                    self._forward_now(leg, item)
                    continue
                if not await self._run_async(leg, item, None, 0):
                    return
        finally:
            backlog = leg.backlog
            leg.backlog = None
            if backlog and len(backlog) >= self._max_queue:
                self.resume(leg)

    async def _run_async(self, leg: _Leg, message: Message, pending: Any, index: int) -> bool:
        conn = self.conn
        policies = leg.policies
        for i in range(index, len(policies)):
            policy = policies[i]
            decision: Any
            try:
                if i == index and pending is not None:
                    decision = pending if type(pending) is Delay else await pending
                else:
                    decision = policy.on_message(message, conn)
                    if inspect.isawaitable(decision):
                        decision = await decision
                while type(decision) is Delay:
                    self.pause(leg)  # backpressure: the sender is not read while its message waits
                    try:
                        await asyncio.sleep(decision.seconds)
                    finally:
                        self.resume(leg)
                    decision = policy.on_message(message, conn)
                    if inspect.isawaitable(decision):
                        decision = await decision
            except Exception:
                self._policy_failed(policy)
                return False
            if decision is DROP:
                return True
            kind = type(decision)
            if kind is Close:
                self.close(decision.code, decision.reason)
                return False
            if kind is Reply:
                self._reply(leg, decision.text)
                self.flush(leg)
                return True
            if kind is not Message:
                self._policy_failed(policy, decision)  # not a decision, as on the synchronous path
                return False
            message = decision
        self._deliver(leg, message)
        self.flush(leg.peer)
        return True

    def _reply(self, leg: _Leg, text: str) -> None:
        """A policy's :class:`Reply`: a text message back to the sender ``leg`` (the routed relay overrides it)."""
        self._send(leg, True, text.encode())

    def _deliver(self, leg: _Leg, message: Message) -> None:
        payload = message.payload
        if message.is_text:
            data = payload.encode() if isinstance(payload, str) else payload
        else:
            data = payload if isinstance(payload, (bytes, bytearray)) else payload.encode()
        self._send(leg.peer, message.is_text, data)

    def _send(self, target: _Leg, is_text: bool, data: bytes) -> None:
        ws = target.ws
        if ws.state is not OPEN:
            return
        if target.plain:
            # Into the same list data_to_send() drains, so frames stay in order with the protocol's own.
            _frame(ws.writes, 1 if is_text else 2, data, not target.is_client)
        elif is_text:
            ws.send_text(data)
        else:
            ws.send_binary(data)
        # Written by flush(): once per received chunk on the synchronous path, so a burst costs one syscall.

    # closing ----------------------------------------------------------------
    def _forward(self, sender: _Leg, close: CloseFrame | None) -> None:
        """Pass a close from ``sender`` to its peer, after the messages still in the sender's backlog."""
        if close is None:
            close = CloseFrame(1005, "")
        if sender.backlog is not None:
            sender.backlog.append(close)
            return
        self._forward_now(sender, close)

    def _forward_now(self, sender: _Leg, close: CloseFrame) -> None:
        target = sender.peer
        if close.code == 1005:
            if target.ws.state is OPEN:
                target.ws.send_close()
                self.flush(target)
        else:
            self._send_close(target, close.code, close.reason)
        target.ended = True
        self._arm_deadline()

    def _send_close(self, leg: _Leg, code: int, reason: str) -> None:
        if leg.ws.state is OPEN and not leg.lost:
            leg.ws.send_close(code, reason)
            self.flush(leg)

    def _fail(self, leg: _Leg, code: int, reason: str) -> None:
        leg.ended = True
        if leg.ws.state is OPEN:
            leg.ws.fail(code, reason)
            self.flush(leg)
        self._forward(leg, _gone(leg))
        self._arm_deadline()

    def _policy_failed(self, policy: Policy, returned: Any = None) -> None:
        """A policy raised (logged with its traceback) or returned something that is no decision (``returned``)."""
        if returned is None:
            log.error("policy_failed", api=self.conn.api, policy=policy.type, connection=self.conn.id, exc_info=True)
        else:
            log.error("policy_failed", api=self.conn.api, policy=policy.type, connection=self.conn.id,
                      returned=type(returned).__name__)
        self.close(1011, "internal error")

    def flush(self, leg: _Leg) -> None:
        chunks = leg.ws.data_to_send()
        if not chunks or leg.lost:
            return
        if chunks[-1]:
            leg.transport.writelines(chunks)
        else:  # SEND_EOF: after the close handshake, write what is left, then close TCP
            leg.transport.writelines(chunks[:-1])
            leg.transport.close()

    def _arm_deadline(self) -> None:
        if self._deadline is None and not self._finished:
            self._deadline = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        for leg in (self.client, self.upstream):
            if not leg.lost:
                leg.transport.abort()

    def leg_lost(self, leg: _Leg) -> None:
        if not leg.ended:
            self.vanished(leg)
        peer = leg.peer
        if not peer.lost:
            # The peer may still be waiting for a close handshake; give it the deadline. Its reading may be paused
            # because this leg read slowly (backpressure): resume it, or its close reply and its EOF are never read
            # and the deadline always runs out (as the byte relay does: _lost unpauses the peer).
            if peer.pauses:
                peer.pauses = 0
                if not peer.transport.is_closing():
                    peer.transport.resume_reading()
            self._arm_deadline()
            return
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self.keepalive is not None and self.route.api.keepalive.interval is not None:
            self.keepalive.unregister(self.client)
            self.keepalive.unregister(self.upstream)
        for task in self._tasks:
            task.cancel()
        ws = self.client.ws
        close = ws.close_sent or ws.close_rcvd  # what the client and the gateway agreed on
        if close is None:
            code, reason = 1006, ""
        else:
            code, reason = close.code, close.reason
        if not self.done.done():
            self.done.set_result(None)
        self.on_closed(code, reason)
