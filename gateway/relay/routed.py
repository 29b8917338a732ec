"""The message relay of an API with routes: one client, a route's integration per message.

:class:`RoutedRelay` is the message relay (gateway/relay/message.py) whose
upstream leg is a :class:`Router` instead of one native server. The client's
messages pass the API's message-stage policies as on any API; what the relay
would write upstream is routed instead: the selection value of the message
picks the route (one JSON parse, one dict lookup), the route's own policies
run, and its integration gets the message: a POST to an HTTP backend, or a
frame to the route's WebSocket upstream, opened for this connection when
first needed. Each route has its own queue and task, so what one route
answers reaches the client in the order it was sent, and a slow route holds
back only its own messages (until its queue is full: then the client is not
read). Answers go back through the API's server-stage policies, like an
upstream's messages.

A route's upstream that closes closes only that route (the next message
reopens it) unless the route says ``close_client``. Integration failures are
handled as the route's ``on_error`` says and reported through ``on_error``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.extensions.base import Extension
from websockets.frames import Close as CloseFrame
from websockets.protocol import CLOSED, OPEN
from websockets.server import ServerProtocol

from ..common.log import PROTOCOL_LOG
from ..policies.base import DROP, Close, ConnectionContext, Delay, Message, Policy, Reply
from .integrations import close_upstream, open_route_upstream, post_message
from .message import MessageRelay, _Leg

if TYPE_CHECKING:
    from ..build.message_routes import CompiledRoute, CompiledRoutes
    from ..build.routes import CompiledAPI
    from .keepalive import KeepaliveSweeper

log = structlog.get_logger("wsgate.relay")

# (api, route, reason): an integration failed (HTTP status, timeout, upstream unreachable, a route with no match).
ErrorReport = Callable[[str, str, str], None]


class _RouterTransport:
    """What the relay does to the upstream leg's transport, done to every route's upstream."""

    __slots__ = ("router",)

    def __init__(self, router: Router) -> None:
        self.router = router

    def pause_reading(self) -> None:
        self.router.reading.clear()

    def resume_reading(self) -> None:
        self.router.reading.set()

    def is_closing(self) -> bool:
        return self.router.state is not OPEN

    def abort(self) -> None:
        self.router.abort()

    def writelines(self, chunks: Sequence[bytes]) -> None:  # nothing is ever written through it
        pass

    def close(self) -> None:
        self.router.abort()


class Router:
    """Stands where the upstream's websockets protocol stands in the message relay: what the relay sends
    upstream is routed (``send_text``/``send_binary``), and what the routes answer comes back through the
    relay's server direction."""

    __slots__ = ("relay", "routes", "conn", "state", "reading", "lanes", "extensions", "max_message_size",
                 "close_rcvd", "close_sent", "on_error", "ping_interval", "ping_timeout", "max_queue")

    def __init__(self, relay: RoutedRelay, routes: CompiledRoutes, conn: ConnectionContext, api: Any,
                 on_error: ErrorReport | None, opened: dict[str, ClientConnection]) -> None:
        self.relay = relay
        self.routes = routes
        self.conn = conn
        self.state = OPEN
        self.reading = asyncio.Event()
        self.reading.set()
        self.lanes: dict[str, _Lane] = {}
        self.extensions: list[Extension] = []
        self.max_message_size = api.limits.max_message_size
        self.close_rcvd: CloseFrame | None = None
        self.close_sent: CloseFrame | None = None
        self.on_error = on_error
        self.ping_interval = api.keepalive.interval
        self.ping_timeout = api.keepalive.timeout
        self.max_queue = api.limits.max_queue
        for key, upstream in opened.items():  # opened at the upgrade (`connect: at-upgrade`)
            route = routes.by_key.get(key) or routes.default
            if route is not None:
                self._lane(route).attach(upstream)

    # what the relay calls on the upstream protocol ----------------------------
    def send_text(self, data: bytes) -> None:
        self.dispatch(True, data)

    def send_binary(self, data: bytes) -> None:
        self.dispatch(False, data)

    def send_close(self, code: int | None = None, reason: str = "") -> None:
        self.close(code or 1000, reason)

    def fail(self, code: int, reason: str = "") -> None:
        self.close(code, reason)

    def data_to_send(self) -> list[bytes]:
        return []

    # routing ----------------------------------------------------------------------
    def dispatch(self, is_text: bool, data: bytes) -> None:
        """One client message past the API's policies: to its route's lane, in order."""
        if self.state is not OPEN:
            return
        route = self.routes.route_for(data, is_text) if is_text else self.routes.default
        if route is None:
            self.no_route()
            return
        self._lane(route).push(is_text, data)

    def no_route(self) -> None:
        routes = self.routes
        self.report("", "no_route")
        if routes.no_route == "close":
            self.relay.close(1008, "no route for this message")
        elif routes.error_message is not None:
            self.relay.reply(routes.error_message)

    def _lane(self, route: CompiledRoute) -> _Lane:
        lane = self.lanes.get(route.key)
        if lane is None:
            lane = self.lanes[route.key] = _Lane(self, route)
            self.conn.used_route(route.key)  # what plan and reload ask when this route changes
        return lane

    def report(self, route: str, reason: str) -> None:
        if self.on_error is not None:
            self.on_error(self.conn.api, route, reason)

    # closing ------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """The client side is closing (or the gateway closes the connection): every route goes, then the leg."""
        if self.state is not OPEN:
            return
        self.state = CLOSED
        self.close_sent = CloseFrame(code, reason)
        for lane in self.lanes.values():
            lane.stop(1000 if code in (1005, 1006) else code, reason)
        self.reading.set()  # let waiting readers see the end
        asyncio.get_running_loop().call_soon(self.relay.router_gone)

    def abort(self) -> None:
        if self.state is OPEN:
            self.close(1001, "going away")


class _Lane:
    """One route of one connection: its queue, the task that works it, and its upstream when it has one."""

    __slots__ = ("router", "route", "queue", "task", "upstream", "reader", "paused")

    def __init__(self, router: Router, route: CompiledRoute) -> None:
        self.router = router
        self.route = route
        self.queue: deque[tuple[bool, bytes]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.upstream: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.paused = False  # this lane's full queue paused the client

    def push(self, is_text: bool, data: bytes) -> None:
        self.queue.append((is_text, data))
        router = self.router
        if len(self.queue) >= router.max_queue and not self.paused:
            self.paused = True
            router.relay.pause(router.relay.client)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._work())

    def attach(self, upstream: ClientConnection) -> None:
        self.upstream = upstream
        self.reader = asyncio.get_running_loop().create_task(self._read(upstream))

    async def _work(self) -> None:
        router, queue = self.router, self.queue
        try:
            while queue and router.state is OPEN:
                is_text, data = queue.popleft()
                if self.paused and len(queue) < router.max_queue // 2 + 1:
                    self.paused = False
                    router.relay.resume(router.relay.client)
                message = await self._policies(Message("client", is_text, data.decode() if is_text else data))
                if message is None:
                    continue
                payload = message.payload
                raw = payload.encode() if isinstance(payload, str) else payload
                if self.route.http is not None:
                    await self._post(message.is_text, raw)
                else:
                    await self._send(message.is_text, raw)
        except Exception:
            log.error("route_failed", api=router.conn.api, route=self.route.key, connection=router.conn.id,
                      exc_info=True)
            router.relay.close(1011, "internal error")
        finally:
            self.task = None
            if self.paused:
                self.paused = False
                router.relay.resume(router.relay.client)

    async def _policies(self, message: Message) -> Message | None:
        """The route's own client-stage policies (after the API's): the message, or None when it went no further."""
        router = self.router
        for policy in self.route.client_policies:
            decision = await _decide(policy, message, router.conn, router)
            if decision is DROP:
                return None
            kind = type(decision)
            if kind is Close:
                router.relay.close(decision.code, decision.reason)
                return None
            if kind is Reply:
                router.relay.reply(decision.text)
                return None
            if kind is not Message:
                router.relay.policy_failed(policy, decision)
                return None
            message = decision
        return message

    async def _post(self, is_text: bool, payload: bytes) -> None:
        router = self.router
        answer = await post_message(router.routes, self.route, router.conn, is_text, payload)
        if router.state is not OPEN:
            return
        if answer.ok:
            if answer.body:
                await self.answer(answer.is_text, answer.body)
            return
        self.failed(answer.status, answer.error or f"status {answer.status}")

    async def _send(self, is_text: bool, payload: bytes) -> None:
        data = payload.decode() if is_text else payload
        for _attempt in (1, 2):
            upstream = self.upstream
            if upstream is None:
                upstream = await self.open()
                if upstream is None:
                    return
            try:
                await upstream.send(data)
                return
            except ConnectionClosed:
                # It closed since the last message (its reader may not have noticed yet): one new connection.
                if self.upstream is upstream:
                    self.upstream = None
        self.failed(0, "upstream closed")

    async def open(self) -> ClientConnection | None:
        router = self.router
        try:
            upstream = await open_route_upstream(self.route, router.conn, max_size=router.max_message_size,
                                                 ping_interval=router.ping_interval,
                                                 ping_timeout=router.ping_timeout)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.failed(0, f"upstream connect failed: {exc.__class__.__name__}")
            return None
        if router.state is not OPEN:
            close_upstream(upstream)
            return None
        self.attach(upstream)
        return upstream

    async def _read(self, upstream: ClientConnection) -> None:
        """What the route's upstream sends: to the client, in order, through the route's and the API's server-stage
        policies; reading stops while the client is slow (the relay paused the router)."""
        router = self.router
        try:
            while True:
                if not router.reading.is_set():
                    await router.reading.wait()
                if router.state is not OPEN:
                    return
                received = await upstream.recv()
                if isinstance(received, str):
                    await self.answer(True, received.encode())
                else:
                    await self.answer(False, received)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("route_failed", api=router.conn.api, route=self.route.key, connection=router.conn.id,
                      exc_info=True)
        if self.upstream is upstream:
            self.upstream = None
        if router.state is OPEN and self.route.websocket is not None and self.route.websocket.close_client:
            router.relay.close(1014, f"route {self.route.key} upstream closed"[:120])

    async def answer(self, is_text: bool, data: bytes) -> None:
        """An answer of this route's integration: its server-stage policies, then the relay's server direction."""
        router = self.router
        policies = self.route.server_policies
        if policies:
            message: Message | None = Message("server", is_text, data.decode() if is_text else data)
            for policy in policies:
                assert message is not None
                decision = await _decide(policy, message, router.conn, router)
                if type(decision) is not Message:
                    if type(decision) is Close:
                        router.relay.close(decision.code, decision.reason)
                    return  # a drop, or a reply to the route's own upstream (it has nobody to answer it)
                message = decision
            assert message is not None
            payload = message.payload
            is_text, data = message.is_text, payload.encode() if isinstance(payload, str) else payload
        if router.state is OPEN:
            router.relay.from_route(is_text, data)

    def failed(self, status: int, reason: str) -> None:
        """The integration failed: what its ``on_error`` says, and counted."""
        router = self.router
        on_error = self.route.on_error
        router.report(self.route.key, _error_label(status, reason))
        log.info("integration_failed", api=router.conn.api, route=self.route.key, connection=router.conn.id,
                 status=status, reason=reason)
        if on_error.action == "close":
            router.relay.close(on_error.close_code, f"route {self.route.key} failed"[:120])
        elif on_error.action == "reply":
            router.relay.reply(on_error.message.replace("{status}", str(status)))

    def stop(self, code: int, reason: str) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.reader is not None:
            self.reader.cancel()
        if self.upstream is not None:
            close_upstream(self.upstream, code if 1000 <= code < 5000 and code not in (1005, 1006, 1015) else 1000,
                           reason)
            self.upstream = None
        self.queue.clear()


def _error_label(status: int, reason: str) -> str:
    """The metric's ``reason`` label of an integration failure: few values, never the backend's text."""
    if status:
        return f"status_{status}"
    if reason == "timeout":
        return "timeout"
    if "too large" in reason:
        return "too_large"
    return "unreachable" if "connect" in reason else "closed"


async def _decide(policy: Policy, message: Message, conn: ConnectionContext, router: Router) -> Any:
    """One policy's decision, awaited if it must be, with its delays waited out (the route's lane only)."""
    decision: Any = policy.on_message(message, conn)
    if inspect.isawaitable(decision):
        decision = await decision
    while type(decision) is Delay:
        await asyncio.sleep(decision.seconds)
        decision = policy.on_message(message, conn)
        if inspect.isawaitable(decision):
            decision = await decision
    return decision


class _RouterLeg(_Leg):
    """The message relay's upstream leg for an API with routes: no socket of its own, a :class:`Router`."""

    def __init__(self, relay: RoutedRelay, router: Router, policies: Sequence[Policy]) -> None:
        self.relay = relay
        self.transport = _RouterTransport(router)  # type: ignore[assignment]
        self.ws = router
        self.is_client = False
        self.policies = policies
        self.fragments = None
        self.fragment_text = False
        self.backlog = None
        self.pauses = 0
        self.ended = False
        self.lost = False
        self.last_rx = 0.0
        self.ka_sent = 0.0
        self.peer = self
        self.sync = all(getattr(p, "sync_messages", False) for p in policies)
        self.plain = False  # the relay hands it whole messages (send_text/send_binary), never frames
        self.buf = bytearray()
        self.max_size = 1 << 62
        self.max_fragments = 1 << 62
        self.fragment_count = 0


class RoutedRelay(MessageRelay):
    """The message relay with a router for its upstream leg (see the module docstring)."""

    __slots__ = ("router",)

    def __init__(
        self,
        *,
        client: asyncio.Transport,
        client_pending: bytes,
        route: CompiledAPI,
        conn: ConnectionContext,
        on_closed: Callable[[int | None, str], None],
        keepalive: KeepaliveSweeper | None,
        client_extensions: Sequence[Extension] = (),
        on_error: ErrorReport | None = None,
        opened: dict[str, ClientConnection] | None = None,
    ) -> None:
        routes = route.routes
        assert routes is not None
        api = route.api
        loop = asyncio.get_running_loop()
        server = ServerProtocol(state=OPEN, max_size=api.limits.max_message_size, logger=PROTOCOL_LOG)
        server.extensions = list(client_extensions)
        self.client = _Leg(self, client, server, True, route.client_policies, api.limits.max_fragments)
        self.router = Router(self, routes, conn, api, on_error, opened or {})
        self.upstream = _RouterLeg(self, self.router, route.server_policies)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.route = route
        self.conn = conn
        self.on_closed = on_closed
        self.keepalive = keepalive
        self.done: asyncio.Future[None] = loop.create_future()
        self._pending = (client_pending, b"")
        self._deadline = None
        self._finished = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_queue = api.limits.max_queue

    def start(self) -> None:
        client = self.client
        client.last_rx = monotonic()
        transport = client.transport
        transport.set_write_buffer_limits(high=self.route.api.limits.write_buffer)
        transport.set_protocol(client)
        if transport.is_closing():
            asyncio.get_running_loop().call_soon(client.connection_lost, None)
        keepalive = self.route.api.keepalive
        if self.keepalive is not None and keepalive.interval is not None:
            self.keepalive.register(client, keepalive.interval, keepalive.timeout)
        client_pending, _ = self._pending
        self._pending = (b"", b"")
        if client_pending and not client.ended:
            client.data_received(client_pending)
        if not client.lost and client.pauses == 0 and not transport.is_closing():
            transport.resume_reading()

    # what the router calls --------------------------------------------------------
    def from_route(self, is_text: bool, data: bytes) -> None:
        """A route's answer enters the server direction (the API's server-stage policies, then the client)."""
        leg = self.upstream
        if leg.ended:
            return
        self._message(leg, is_text, data)
        self.flush(self.client)

    def reply(self, text: str) -> None:
        """A text message from the gateway itself to the client (no route, an integration's failure)."""
        self._send(self.client, True, text.encode())
        self.flush(self.client)

    def _reply(self, leg: _Leg, text: str) -> None:
        if leg is self.upstream:
            # A server-stage policy answering what a route sent: there is no one upstream to answer, and the
            # router would take the reply for a client message. The route's message is dropped, as asked.
            return
        super()._reply(leg, text)

    def policy_failed(self, policy: Policy, returned: Any) -> None:
        self._policy_failed(policy, returned)

    def router_gone(self) -> None:
        """Every route was told to close: the upstream leg is over."""
        leg = self.upstream
        leg.ended = True
        if leg.lost:
            return
        leg.lost = True
        self.leg_lost(leg)
