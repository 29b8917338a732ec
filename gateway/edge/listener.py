"""The upgrade stage: one asyncio Protocol per client connection until the relay takes over.

Order: read the request head (bounded, within the port's
handshake timeout) -> route by port and exact path (404) -> a valid WebSocket
upgrade (426/400) -> the API's policies in chain order (their Rejection) ->
the upstream handshake (502/504) -> only then 101 to the client. Bytes the
client sent after its head stay here, unread by anyone, until both
handshakes succeeded: nothing is smuggled to the upstream ahead of a 101.

This module is the driver: what to answer is decided without I/O in
gateway/edge/upgrade.py (the head, the route, the refusal, the policies' verdicts, the 101's bytes);
here are the socket, the timers, the awaits a policy asks for, the upstream connect, and the hand-over to a relay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.extensions.base import Extension

from ..build.tls import client_certificate
from ..common.http_response import Header, switching_protocols
from ..common.redaction import forwarded_query
from ..policies.base import ConnectionContext, Rejection, UpgradeRequest
from ..push.groups import join_at_upgrade
from ..relay.fast import ByteRelay
from ..relay.integrations import close_upstream, connect_event, disconnect_event, open_route_upstream
from ..relay.message import MessageRelay
from ..relay.routed import RoutedRelay
from . import lifetime
from .upgrade import (
    MALFORMED,
    Accept,
    Pending,
    PolicyChain,
    PolicyFailed,
    Refuse,
    connection_context,
    decide,
    head_end,
    upgrade_request,
)
from .upstream import UpstreamError, open_with_failover, prepare_upgrade

if TYPE_CHECKING:
    from websockets.typing import Subprotocol

    from ..build.message_routes import CompiledRoutes
    from ..build.routes import CompiledAPI, RouteTable
    from ..push.hub import PushHub
    from ..relay.base import Relay
    from ..relay.keepalive import KeepaliveSweeper

log = structlog.get_logger("wsgate.listener")

MAX_PIPELINED = 64 * 1024  # bytes read past the head before the 101; more pauses reading
LINGER = 2.0  # seconds a refused client's further bytes are read and dropped, so it gets the answer, not a RST
# A port at its max_connections answers 503 with this Retry-After: the same 5 s the throttle's and the upstream's
# 503s default to, so a client backs off alike whichever limit refused it.
PORT_FULL = Refuse(503, "unavailable", "too many connections on this port", (("Retry-After", "5"),))
CONNECTION_ID_HEADER = "X-Gateway-Connection-Id"


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every proxied connection holds two files.

    Returns (soft before, soft after); logs when it changed. Not available (Windows): nothing happens.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return (soft, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open_files_limit_unchanged", soft=soft, hard=hard, error=str(exc))
        return (soft, soft)
    log.info("open_files_limit_raised", soft_before=soft, soft=hard, max_connections_about=hard // 2)
    return (soft, hard)


class Connection:
    """What the connection registry tracks about one client connection (stop, drain, admin counts)."""

    __slots__ = ("listener", "port_name", "client", "conn", "route", "relay", "upstream", "task", "expiry", "span")

    def __init__(self, listener: PortListener, client: asyncio.Transport) -> None:
        self.listener = listener  # the registry counts open connections per listener
        self.port_name = listener.name
        self.client = client
        self.conn: ConnectionContext | None = None
        self.route: CompiledAPI | None = None
        self.relay: Relay | None = None
        self.upstream: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None  # closes the connection when its credential expires
        self.span: ConnectionSpan | None = None  # tracing on: this connection's span

    def close(self, code: int, reason: str) -> None:
        """Close a relayed connection with a close frame; drop one still in its upgrade."""
        if self.relay is not None:
            self.relay.close(code, reason)
        else:
            if self.task is not None:
                self.task.cancel()
            self.client.abort()

    def abort(self) -> None:
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()


# What the listener reports to. The connection registry (serving), the metrics and the tracer (operations) sit
# above the edge, so the edge names them by the calls it makes: gateway.serving.connections.ConnectionRegistry,
# gateway.operations.metrics.Metrics and gateway.operations.tracing.ConnectionTracer are the implementations.
class Registry(Protocol):
    def track(self, record: Connection) -> None: ...
    def untrack(self, record: Connection) -> None: ...
    def routed(self, record: Connection, route: CompiledAPI) -> None: ...
    def open_on(self, listener: PortListener) -> int: ...


class UpgradeMetrics(Protocol):
    def upgrade(self, port: str, api: str, status: int, reason: str | None = None) -> None: ...
    def stage(self, api: str, stage: str, seconds: float) -> None: ...
    def upstream_failed(self, api: str, url: str, status: int, reason: str) -> None: ...
    def opened(self, port: str, api: str, application: str) -> None: ...
    def closed(self, port: str, conn: ConnectionContext, code: int | None, seconds: float) -> None: ...
    def integration_error(self, api: str, route: str, reason: str) -> None: ...


class ConnectionSpan(Protocol):
    def begin(self, name: str) -> None: ...
    def upstream_headers(self) -> list[tuple[str, str]]: ...
    def accepted(self, application: str | None) -> None: ...
    def refused(self, status: int, error: str | None, application: str | None) -> None: ...
    def closed(self, code: int | None) -> None: ...


class ConnectionTracer(Protocol):
    def start(self, headers: Iterable[tuple[str, str]], *, api: str, port: str, path: str,
              connection: str = "") -> ConnectionSpan: ...


@dataclass(frozen=True, slots=True)
class ListenerServices:
    """What every port's client handshakes share: where to register, what to route by, what to count."""

    registry: Registry
    table: Callable[[], RouteTable]  # the route table new upgrades use (swapped by a reload)
    metrics: UpgradeMetrics
    keepalive: KeepaliveSweeper | None
    tracer: ConnectionTracer | None = None  # tracing on: starts each upgrade's span
    push: PushHub | None = None  # the connections of APIs with `push`, for the push API


class PortListener:
    """Per-Port settings and the services the client handshakes need."""

    __slots__ = ("name", "secure", "handshake_timeout", "max_connections", "services")

    def __init__(self, name: str, secure: bool, handshake_timeout: float, max_connections: int | None,
                 services: ListenerServices) -> None:
        self.name = name
        self.secure = secure
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.services = services

    @property
    def count(self) -> int:
        """Connections made on this listener that have not ended yet."""
        return self.services.registry.open_on(self)

    def protocol_factory(self) -> ClientHandshake:
        return ClientHandshake(self)


class ClientHandshake(asyncio.Protocol):
    """Reads and answers one client's upgrade, then hands the transport to a relay."""

    __slots__ = ("listener", "transport", "buffer", "timer", "record", "head_done", "lost", "refused")

    def __init__(self, listener: PortListener) -> None:
        self.listener = listener
        # Set by connection_made, which asyncio calls before any other callback; never None after that.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.record: Connection | None = None
        self.head_done = False
        self.lost = False
        self.refused = False

    # asyncio callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio types the argument as BaseTransport; a TCP server always hands a Transport.
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if listener.max_connections is not None and listener.count >= listener.max_connections:
            self._refuse_early(PORT_FULL, linger=False)
            return
        self.record = Connection(listener, self.transport)
        listener.services.registry.track(self.record)
        self.timer = asyncio.get_running_loop().call_later(listener.handshake_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after a refusal: drop what the client still sends
        buffer = self.buffer
        scanned = max(len(buffer) - 1, 0)  # what earlier calls already searched for a bare LF
        buffer += data
        if self.head_done:
            # Pipelined bytes: kept, never sent before both handshakes succeeded. Reading goes on (bounded)
            # so that a client leaving during the upgrade is noticed.
            if len(buffer) > MAX_PIPELINED:
                self.transport.pause_reading()
            return
        end = head_end(buffer, scanned)
        if end is None:
            return
        if isinstance(end, Refuse):
            self._refuse_early(end)
            return
        self.head_done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        head = bytes(buffer[:end])
        del buffer[:end]
        listener = self.listener
        try:
            decision = decide(head, listener.name, listener.services.table())
            if isinstance(decision, Refuse):
                self._refuse_early(decision)
            else:
                self._start_upgrade(decision)
        except Exception as exc:
            # A head that gets past the parser and the checks but trips the code reading it is still a
            # bad request from the client's side: answer 400, never a dropped connection. The log keeps the
            # exception's class and text (no traceback: a client can trigger this at will).
            log.warning("upgrade_head_failed", port=listener.name, error=f"{exc.__class__.__name__}: {exc}")
            if self.record is not None and self.record.task is None and not self.transport.is_closing():
                self._refuse_early(MALFORMED)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        record = self.record
        if record is None or record.relay is not None:
            return
        if record.task is not None:
            record.task.cancel()  # stop policies and the upstream connect; the task releases and untracks
        else:
            self.listener.services.registry.untrack(record)

    # the upgrade stage --------------------------------------------------------
    def _handshake_timeout(self) -> None:
        self.timer = None
        log.info("upgrade_refused", status=408, reason="handshake timeout", port=self.listener.name,
                 peer=self._peer()[0])
        self.transport.abort()

    def _peer(self) -> tuple[str, int]:
        peer = self.transport.get_extra_info("peername") or ("", 0)
        return (peer[0], peer[1])

    def _refuse_early(self, refused: Refuse, linger: bool = True) -> None:
        """Refuse before any API is involved (no policies saw the request)."""
        self.listener.services.metrics.upgrade(self.listener.name, "", refused.status, refused.error)
        log.info("upgrade_refused", status=refused.status, error=refused.error, reason=refused.reason,
                 port=self.listener.name, path=refused.path, peer=self._peer()[0])
        transport = self.transport
        transport.write(refused.response())
        if not linger or not transport.can_write_eof():  # past max_connections: free the socket at once
            transport.close()
            return
        # Closing with unread input would send a RST that can destroy the answer before the client reads
        # it (a large head still arriving): half-close instead and drop input until the client closes.
        self.refused = True
        self.buffer = bytearray()
        transport.write_eof()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def _start_upgrade(self, accepted: Accept) -> None:
        """A valid upgrade: build its context and run its policies and upstream connect."""
        listener = self.listener
        peer = self._peer()
        route = accepted.route
        conn = connection_context(accepted, listener.name, peer, listener.secure)
        upgrade = upgrade_request(accepted, listener.name, peer, listener.secure,
                                  client_certificate(self.transport) if listener.secure else None)
        record = self.record
        assert record is not None
        record.conn = conn
        listener.services.registry.routed(record, route)  # holds the route's table until the connection ends
        tracer = listener.services.tracer
        if tracer is not None:
            record.span = tracer.start(accepted.headers.raw_items(), api=route.name, port=listener.name,
                                       path=accepted.path, connection=conn.id)
        record.task = asyncio.get_running_loop().create_task(
            # Only what the 101 needs goes on, not the Accept: the parsed request is freed while the upstream answers.
            self._upgrade(route, conn, upgrade, accepted.extensions, accepted.accept, accepted.extensions_header,
                          forwarded_query(accepted.query),  # no part of a credential the gateway consumes
                          accepted.offered_subprotocols(), accepted.suffix)
        )

    async def _upgrade(self, route: CompiledAPI, conn: ConnectionContext, upgrade: UpgradeRequest,
                       extensions: list[Extension], accept: str, extensions_header: str | None, query: str,
                       offered: list[Subprotocol], suffix: str = "") -> None:
        record = self.record
        assert record is not None
        relayed = False
        metrics = self.listener.services.metrics
        began = time.monotonic()
        span = record.span
        try:
            if span is not None:
                span.begin("policies")
            chain = PolicyChain(route.upgrade_policies, upgrade, conn)
            step = chain.run()
            while isinstance(step, Pending):  # a verdict that needs I/O: await it here, the chain goes on
                pending = step
                try:
                    step = chain.resume(await pending.verdict)
                except Exception as exc:
                    step = chain.failed(pending, exc)
            if isinstance(step, PolicyFailed):
                log.error("policy_failed", api=conn.api, policy=step.policy.type, connection=conn.id,
                          exc_info=step.error)
                step = step.rejection
            if step is not None:
                self._refuse(route, conn, step.status, step.error, step.reason, step.headers)
                return
            groups: tuple[str, ...] = ()
            if route.api.push is not None:  # groups joined at the upgrade: a bad value is refused like any field
                joined = join_at_upgrade(route.api.push, upgrade, conn)
                if isinstance(joined, Rejection):
                    self._refuse(route, conn, joined.status, joined.error, joined.reason)
                    return
                groups = joined
            connecting = time.monotonic()
            metrics.stage(conn.api, "policies", connecting - began)
            application = conn.application.name if conn.application else None
            if route.routes is not None:
                del upgrade
                relayed = await self._upgrade_routed(route, route.routes, conn, accept, extensions,
                                                     extensions_header, began)
                return
            trace_headers: list[tuple[str, str]] = []
            if span is not None:
                span.begin("upstream connect")
                trace_headers = span.upstream_headers()
            prepared = prepare_upgrade(
                client_headers=upgrade.headers,
                query=query,
                subprotocols=offered,
                peer_ip=conn.peer[0],
                secure=upgrade.secure,
                application=application,
                suffix=suffix,
                # The API's headers, the gateway's traceparent when tracing and the connection's id (what the
                # upstream names it by in the push API): all replace the client's.
                configured=(*route.upstream_headers, *trace_headers, (CONNECTION_ID_HEADER, conn.id)),
            )
            hash_key = route.hash_key(upgrade, conn)
            # The parsed client request is not needed past this point: free it while the upstream answers.
            del upgrade
            try:
                leg = await open_with_failover(route, prepared, hash_key, on_failure=lambda endpoint, exc: metrics
                                               .upstream_failed(conn.api, endpoint.url, exc.status, exc.reason))
            except UpstreamError as exc:
                self._refuse(route, conn, exc.status, exc.error, exc.reason, exc.headers)
                return
            connected = time.monotonic()
            metrics.stage(conn.api, "upstream_connect", connected - connecting)
            if self.lost:
                leg.transport.abort()
                self._outcome(route, conn, 499, "client_gone", "client went away during the upgrade")
                return
            record.upstream = leg.transport
            health = leg.endpoint.health if leg.endpoint is not None else None
            if health is not None:  # least-connections counts it until the connection ends
                health.open += 1
                conn.defer(health.closed_one)
            self.transport.write(switching_protocols(accept, extensions_header, leg.subprotocol))
            self._outcome(route, conn, 101, None, None)
            metrics.stage(conn.api, "total", time.monotonic() - began)
            metrics.opened(self.listener.name, conn.api, application or "")
            # One info record per connection, at its end (connection_closed, with the upstream): a JSON log
            # record costs ~30 µs, about 5 % of an upgrade. The moment of the 101 stays visible at debug level.
            log.debug("upgrade_accepted", status=101, api=conn.api, app=application, peer=conn.peer[0],
                      connection=conn.id, upstream=leg.url, subprotocol=leg.subprotocol)
            services = self.listener.services
            closed = _Closer(services, record, route, conn, leg.url, leg.subprotocol)
            relay: Relay
            if route.fast_path and not extensions:
                relay = ByteRelay(client=self.transport, upstream=leg.transport, client_pending=bytes(self.buffer),
                                  upstream_pending=leg.pending, route=route, conn=conn, on_closed=closed,
                                  keepalive=services.keepalive)
            else:
                relay = MessageRelay(client=self.transport, upstream=leg.transport,
                                     client_pending=bytes(self.buffer), upstream_pending=leg.pending, route=route,
                                     conn=conn, on_closed=closed, keepalive=services.keepalive,
                                     client_extensions=extensions)
            self.buffer = bytearray()
            record.relay = relay
            relay.start()  # takes both transports over and resumes reading them
            relayed = True
            if route.api.push is not None and services.push is not None and isinstance(relay, MessageRelay):
                services.push.opened(conn, relay, route.api.push, groups)
            limits = route.api.limits
            lifetime.watch(conn, record.close, limits.idle_timeout, limits.max_lifetime)
            expires_at = conn.identity.expires_at if conn.identity is not None else None
            if expires_at is not None:
                record.expiry = asyncio.get_running_loop().call_later(
                    max(0.0, expires_at - time.time()), record.close, 1008, "credential expired")
        except asyncio.CancelledError:
            self._outcome(route, conn, 499, "client_gone", "connection dropped during the upgrade")
            log.info("upgrade_refused", status=499, error="client_gone", reason="connection dropped during the upgrade",
                     api=conn.api, peer=conn.peer[0], connection=conn.id)
        except Exception:
            # A bug, not a decision: never leave a client hanging on a connection that nobody relays.
            log.exception("upgrade_failed", api=conn.api, connection=conn.id)
            record.relay = None
            if record.upstream is None:
                self._refuse(route, conn, 500, "internal_error", "the gateway failed to set up the connection")
            else:  # the 101 is out: drop both legs
                self.transport.abort()
                record.upstream.abort()
        finally:
            record.task = None
            if not relayed:
                if span is not None:
                    span.closed(None)  # ended already unless the failure came after the 101
                conn.release()
                self.listener.services.registry.untrack(record)

    async def _upgrade_routed(self, route: CompiledAPI, routes: CompiledRoutes, conn: ConnectionContext, accept: str,
                              extensions: list[Extension], extensions_header: str | None, began: float) -> bool:
        """The upgrade of an API with message routes: ``$connect``, the routes opened at the upgrade, the 101 and
        the routed relay. True once the relay runs."""
        record = self.record
        assert record is not None
        metrics = self.listener.services.metrics
        connecting = time.monotonic()
        if routes.connect is not None and routes.connect.http is not None:
            answer = await connect_event(routes, conn)
            if answer is not None:
                metrics.integration_error(conn.api, "$connect", answer.error or f"status_{answer.status}")
                status = routes.connect.http.refuse_status
                why = answer.error or f"the $connect backend answered {answer.status}"
                self._refuse(route, conn, status, "connect_refused", why)
                return False
        # Routes opened at the upgrade (`connect: at-upgrade`), all at once: the 101 waits for the slowest only.
        wanted = [c for c in routes.all() if c.websocket is not None and c.websocket.connect == "at-upgrade"]
        keepalive = route.api.keepalive
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(open_route_upstream(c, conn, max_size=route.api.limits.max_message_size,
                                                      ping_interval=keepalive.interval, ping_timeout=keepalive.timeout))
                 for c in wanted]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:  # cancelled (the client went away): none of them may outlive the upgrade
            for task in tasks:
                if not task.done():
                    task.cancel()
                elif not task.cancelled() and task.exception() is None:
                    close_upstream(task.result())
            raise
        opened: dict[str, Any] = {}
        failed: tuple[str, BaseException] | None = None
        for compiled, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or (compiled.key, result)
            else:
                opened[compiled.key] = result
        if failed is not None:
            for upstream in opened.values():
                close_upstream(upstream)
            key, exc = failed
            if not isinstance(exc, (OSError, TimeoutError, InvalidHandshake, InvalidURI)):
                raise exc  # cancelled (the client went away) or a bug: the caller's handlers answer it
            timeout = isinstance(exc, TimeoutError)
            metrics.integration_error(conn.api, key, "timeout" if timeout else "unreachable")
            if timeout:
                self._refuse(route, conn, 504, "gateway_timeout", f"route {key}: upstream timed out")
            else:
                self._refuse(route, conn, 502, "bad_gateway", f"route {key}: upstream failed: {exc.__class__.__name__}")
            return False
        metrics.stage(conn.api, "upstream_connect", time.monotonic() - connecting)
        if self.lost:
            for upstream in opened.values():
                close_upstream(upstream)
            self._outcome(route, conn, 499, "client_gone", "client went away during the upgrade")
            return False
        self.transport.write(switching_protocols(accept, extensions_header, None))
        self._outcome(route, conn, 101, None, None)
        metrics.stage(conn.api, "total", time.monotonic() - began)
        application = conn.application.name if conn.application else None
        metrics.opened(self.listener.name, conn.api, application or "")
        log.debug("upgrade_accepted", status=101, api=conn.api, app=application, peer=conn.peer[0],
                  connection=conn.id, upstream="routes")
        services = self.listener.services
        closed = _Closer(services, record, route, conn, "routes", None)
        relay = RoutedRelay(client=self.transport, client_pending=bytes(self.buffer), route=route, conn=conn,
                            on_closed=closed, keepalive=services.keepalive, client_extensions=extensions,
                            on_error=metrics.integration_error, opened=opened)
        self.buffer = bytearray()
        record.relay = relay
        relay.start()
        expires_at = conn.identity.expires_at if conn.identity is not None else None
        if expires_at is not None:
            record.expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - time.time()), record.close, 1008, "credential expired")
        return True

    def _refuse(self, route: CompiledAPI, conn: ConnectionContext, status: int, error: str, reason: str,
                headers: tuple[Header, ...] = ()) -> None:
        self._outcome(route, conn, status, error, reason)
        # A refusal of the gateway's own making (upstream down, a failing policy) is an operator's concern.
        emit = log.warning if status >= 500 else log.info
        emit("upgrade_refused", status=status, error=error, reason=reason, api=conn.api,
             app=conn.application.name if conn.application else None, peer=conn.peer[0], connection=conn.id)
        if not self.lost:
            self.transport.write(Refuse(status, error, reason, headers).response())
            self.transport.close()

    def _outcome(self, route: CompiledAPI, conn: ConnectionContext, status: int, error: str | None,
                 reason: str | None) -> None:
        self.listener.services.metrics.upgrade(self.listener.name, conn.api, status, error)
        span = self.record.span if self.record is not None else None
        if span is not None:
            application = conn.application.name if conn.application else None
            if status == 101:
                span.accepted(application)
            else:
                span.refused(status, error, application)
        for policy in route.chain:
            try:
                policy.on_outcome(conn, status, error, reason)
            except Exception:
                log.error("policy_failed", api=conn.api, policy=policy.type, connection=conn.id, exc_info=True)


class _Closer:
    """The relay's on_closed callback: log, tell the policies, release, untrack — once."""

    __slots__ = ("services", "record", "route", "conn", "upstream", "subprotocol")

    def __init__(self, services: ListenerServices, record: Connection | None, route: CompiledAPI,
                 conn: ConnectionContext, upstream: str, subprotocol: str | None) -> None:
        self.services = services
        self.record = record
        self.route = route
        self.conn = conn
        self.upstream = upstream  # the endpoint that answered: the connection's one log record names it
        self.subprotocol = subprotocol

    def __call__(self, code: int | None, reason: str) -> None:
        if self.record is None:
            return
        record, self.record = self.record, None
        self.services.metrics.closed(record.port_name, self.conn, code, time.monotonic() - self.conn.started)
        if record.span is not None:
            record.span.closed(code)
        if record.expiry is not None:
            record.expiry.cancel()
            record.expiry = None
        conn = self.conn
        counters = conn.counters
        log.info("connection_closed", api=conn.api, app=conn.application.name if conn.application else None,
                 peer=conn.peer[0], connection=conn.id, upstream=self.upstream, subprotocol=self.subprotocol,
                 code=code, reason=reason,
                 duration=round(time.monotonic() - conn.started, 3), messages_in=counters.messages_in,
                 messages_out=counters.messages_out, bytes_in=counters.bytes_in, bytes_out=counters.bytes_out)
        for policy in self.route.all_policies:
            try:
                policy.on_close(conn, code, reason)
            except Exception:
                log.error("policy_failed", api=conn.api, policy=policy.type, connection=conn.id, exc_info=True)
        routes = self.route.routes
        if routes is not None and routes.disconnect is not None:
            metrics = self.services.metrics
            disconnect_event(routes, conn, code, reason,
                             on_failed=lambda why: metrics.integration_error(conn.api, "$disconnect", why))
        conn.release()
        self.services.registry.untrack(record)
