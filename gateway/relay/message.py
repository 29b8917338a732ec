"""The message relay: message by message, through the chain's message-stage policies.

Used when an API has message-stage policies or offers compression. Each leg
is an asyncio Protocol driving a websockets sans-I/O protocol (the client leg
a ``ServerProtocol``, the upstream leg a ``ClientProtocol``, both already
OPEN). Messages of a direction are handled strictly in order: synchronously
while every policy answers synchronously; when one returns an awaitable, a
consumer task takes over that direction until its bounded backlog is empty.
Nothing is logged or serialised per message.
"""

from __future__ import annotations

import asyncio
import inspect
from time import monotonic
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

import structlog
from websockets.client import ClientProtocol
from websockets.extensions.base import Extension
from websockets.frames import Close as CloseFrame
from websockets.frames import Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from ..policies.base import DROP, Close, ConnectionContext, Message, Policy
from ..upstream import _quiet

if TYPE_CHECKING:
    from ..routes import CompiledAPI

log = structlog.get_logger("wsgate.relay")

TEXT, BINARY, CONT, CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
CLOSE_TIMEOUT = 5.0  # seconds both peers get to finish a closing handshake before the gateway aborts


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
    )

    def __init__(self, relay: "MessageRelay", transport: asyncio.Transport, ws: Any, is_client: bool,
                 policies: Sequence[Policy]) -> None:
        self.relay = relay
        self.transport = transport
        self.ws = ws
        self.is_client = is_client
        self.policies = policies  # message-stage policies for what THIS leg sends
        self.fragments: list[bytes] | None = None
        self.fragment_text = False
        self.backlog: deque[Any] | None = None  # not None while a consumer task owns this direction
        self.pauses = 0
        self.ended = False  # this leg will send nothing more (close frame, error or EOF)
        self.lost = False  # its transport is closed
        self.last_rx = 0.0
        self.ka_sent = 0.0
        self.peer: _Leg = self  # set by the relay

    # asyncio callbacks -------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_rx = monotonic()
        ws = self.ws
        ws.receive_data(data)
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
                 "_deadline", "_finished", "_tasks", "_max_queue")

    def __init__(
        self,
        *,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        client_pending: bytes,
        upstream_pending: bytes,
        route: "CompiledAPI",
        conn: ConnectionContext,
        on_closed: Callable[[int | None, str], None],
        keepalive: Any,
        client_extensions: Sequence[Extension] = (),
    ) -> None:
        api = route.api
        loop = asyncio.get_running_loop()
        max_size = api.limits.max_message_size
        server = ServerProtocol(state=OPEN, max_size=max_size, logger=_quiet)
        server.extensions = list(client_extensions)
        uri = route.endpoints[0]
        upstream_ws = ClientProtocol(uri, state=OPEN, max_size=max_size, logger=_quiet)
        self.client = _Leg(self, client, server, True, route.client_policies)
        self.upstream = _Leg(self, upstream, upstream_ws, False, route.server_policies)
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

    # incoming --------------------------------------------------------------
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
                    leg.fragments = [frame.data]
                    leg.fragment_text = opcode is TEXT
            elif opcode is CONT:
                fragments = leg.fragments
                if fragments is None:
                    continue  # the protocol already failed the leg
                fragments.append(frame.data)
                if frame.fin:
                    leg.fragments = None
                    self._message(leg, leg.fragment_text, b"".join(fragments))
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
                # The protocol already sent this leg its close (1002, 1007, 1009); the other leg goes away.
                self._forward(leg, CloseFrame(1001, "going away"))
                self._arm_deadline()

    def vanished(self, leg: _Leg) -> None:
        """A leg went away without a close frame: the other gets 1014 (upstream gone) or 1001 (client gone)."""
        leg.ended = True
        if not leg.lost:
            leg.transport.abort()
        self._forward(leg, CloseFrame(1001, "going away") if leg.is_client else CloseFrame(1014, "bad gateway"))
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
        self._run_sync(leg, message)

    def _run_sync(self, leg: _Leg, message: Message) -> None:
        conn = self.conn
        policies = leg.policies
        for index, policy in enumerate(policies):
            try:
                decision = policy.on_message(message, conn)
            except Exception:
                self._policy_failed(policy)
                return
            if inspect.isawaitable(decision):
                leg.backlog = deque()
                task = asyncio.get_running_loop().create_task(self._consume(leg, decision, index, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            if decision is DROP:
                return
            if type(decision) is Close:
                self.close(decision.code, decision.reason)
                return
            message = decision  # type: ignore[assignment]
        self._deliver(leg, message)

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
            try:
                if i == index and pending is not None:
                    decision = await pending
                else:
                    decision = policy.on_message(message, conn)
                    if inspect.isawaitable(decision):
                        decision = await decision
            except Exception:
                self._policy_failed(policy)
                return False
            if decision is DROP:
                return True
            if type(decision) is Close:
                self.close(decision.code, decision.reason)
                return False
            message = decision
        self._deliver(leg, message)
        self.flush(leg.peer)
        return True

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
        if is_text:
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
        self._forward(leg, CloseFrame(1001, "going away"))
        self._arm_deadline()

    def _policy_failed(self, policy: Policy) -> None:
        log.error("policy failed", api=self.conn.api, policy=policy.type, connection=self.conn.id, exc_info=True)
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
            # The peer may still be waiting for a close handshake; give it the deadline.
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
