"""The running gateway: listeners, echo servers, admin, keepalive, and the route table swap.

``Gateway`` is the in-process object (tests and ``run`` use it); ``run`` is
what ``wsgate run PATH`` calls after the config was checked.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections import Counter
from typing import Any, Callable, Mapping

import structlog

from .admin import AdminServer
from .apps import AppIndex
from .policies.state import PolicyState
from .config.tree import Config
from .listener import Connection, PortListener
from .routes import RouteTable

log = structlog.get_logger("wsgate.runtime")


def _policy_state() -> PolicyState:
    return PolicyState()


def _app_index(config: Config, env: Mapping[str, str] | None) -> AppIndex:
    return AppIndex.build(config, env)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class Gateway:
    """Every listener of one config, and the route table they read.

    ``admin``: None uses the config's Gateway resource settings; ``False``
    disables the admin listener; ``(host, port)`` overrides it.
    """

    shutdown_timeout: float

    def __init__(self, config: Config, *, admin: tuple[str, int] | None | bool = None,
                 env: Mapping[str, str] | None = None, echo: bool = True,
                 build_chain: Callable[..., list[Any]] | None = None) -> None:
        self.config = config
        self.env = env
        self.shutdown_timeout = config.settings.shutdown_timeout
        self._admin_override = admin
        self._start_echo = echo
        self._build_chain = build_chain  # None: gateway.policies.build_chain
        self.state: Any = None
        self._table: RouteTable | None = None
        self.keepalive: Any = None
        self.live: set[Connection] = set()
        self.servers: dict[str, asyncio.Server] = {}
        self.listeners: dict[str, PortListener] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.echo_services: list[Any] = []
        self.admin: AdminServer | None = None
        self.ready = False
        self.stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ table
    @property
    def table(self) -> RouteTable:
        assert self._table is not None, "the gateway is not started"
        return self._table

    def compile(self, config: Config, generation: int) -> RouteTable:
        return RouteTable.compile(config, _app_index(config, self.env), self.state, generation=generation,
                                  build_chain=self._build_chain)

    def swap(self, config: Config) -> RouteTable:
        """Compile ``config`` and make it the table new upgrades use (raises, changing nothing, if it fails).

        Live connections keep the route they were accepted with; listeners
        are not touched here (the reload issue adds and drains ports).
        """
        table = self.compile(config, self.table.generation + 1)
        self._table, self.config = table, config
        log.info("config_swapped", digest=table.digest, generation=table.generation)
        return table

    # ------------------------------------------------------------ connections
    def track(self, record: Connection) -> None:
        self.live.add(record)
        self._idle.clear()

    def untrack(self, record: Connection) -> None:
        """Forget a connection that ended (idempotent)."""
        if record not in self.live:
            return
        self.live.remove(record)
        record.listener.count -= 1
        if not self.live:
            self._idle.set()

    def connection_counts(self) -> dict[str, Any]:
        """Live relayed connections per port, API and application, plus upgrades in progress."""
        ports: Counter[str] = Counter()
        apis: Counter[str] = Counter()
        apps: Counter[str] = Counter()
        upgrading = 0
        for record in self.live:
            if record.relay is None:
                upgrading += 1
                continue
            ports[record.port_name] += 1
            conn = record.conn
            if conn is not None:
                apis[conn.api] += 1
                if conn.application is not None:
                    apps[conn.application.name] += 1
        return {
            "total": sum(ports.values()),
            "upgrading": upgrading,
            "ports": dict(ports),
            "apis": dict(apis),
            "applications": dict(apps),
        }

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start echo servers, then listeners and admin; on failure stop what started and raise."""
        self.state = _policy_state()
        self._table = self.compile(self.config, 1)
        try:
            from .relay.keepalive import KeepaliveSweeper

            self.keepalive = KeepaliveSweeper()
        except ImportError:  # pragma: no cover - only while the relay package is incomplete
            self.keepalive = None
        try:
            if self._start_echo and self.config.echo_servers:
                from echo.server import serve_echo_servers

                self.echo_services = await serve_echo_servers(self.config)
            for name, loaded in self.table.enabled_ports().items():
                await self._start_port(name, loaded)
            admin_settings = self.config.settings.admin
            if self._admin_override is None and admin_settings.enabled:
                self.admin = AdminServer(self, admin_settings.host, admin_settings.port)
            elif isinstance(self._admin_override, tuple):
                self.admin = AdminServer(self, *self._admin_override)
            if self.admin is not None:
                await self.admin.start()
        except BaseException:
            await self.stop()
            raise
        self.ready = True

    async def _start_port(self, name: str, loaded: Any) -> None:
        port = loaded.model
        context = None
        if port.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(loaded.resolve(port.tls.cert), loaded.resolve(port.tls.key))
        listener = PortListener(name, context is not None, port.limits.handshake_timeout,
                                port.limits.max_connections, self)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            listener.protocol_factory,
            port.host,
            port.port,
            ssl=context,
            ssl_handshake_timeout=port.limits.handshake_timeout if context else None,
            backlog=1024,
        )
        self.servers[name] = server
        self.listeners[name] = listener
        host, bound = server.sockets[0].getsockname()[:2]
        self.addresses[name] = (host, bound)
        log.info("listening", name=name, host=host, port=bound, tls=context is not None)

    async def stop(self) -> None:
        """Stop accepting, close every connection with 1001, wait up to shutdown_timeout, then abort."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        for server in self.servers.values():
            server.close()
        for record in list(self.live):
            record.close(1001, "going away")
        if self.live:
            try:
                async with asyncio.timeout(self.shutdown_timeout):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("shutdown timeout; aborting connections", remaining=len(self.live))
                for record in list(self.live):
                    record.abort()
                # Aborted transports report connection_lost on the next loop turns; let the relays finish.
                try:
                    async with asyncio.timeout(1.0):
                        await self._idle.wait()
                except TimeoutError:
                    log.error("connections still open after abort", remaining=len(self.live))
        if self.admin is not None:
            await self.admin.stop()
        if self.echo_services:
            await asyncio.gather(*(service.stop() for service in self.echo_services), return_exceptions=True)
        if self.keepalive is not None:
            self.keepalive.close()
        if self._table is not None:
            self._table.close()
        if self.state is not None:
            self.state.close()
        log.info("stopped")


def _configure_logging(config: Config, args: Any) -> None:
    from .log import configure_logging

    configure_logging(getattr(args, "log_format", None) or config.settings.log_format)


async def serve(config: Config, admin: tuple[str, int] | None = None) -> int:
    """Run a gateway until SIGINT or SIGTERM, then stop it cleanly."""
    gateway = Gateway(config, admin=admin)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        await gateway.start()
        await stopping.wait()
        log.info("stopping")
    finally:
        await gateway.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0


def run(config: Config, args: Any = None) -> int:
    """``wsgate run PATH`` after the config was checked: serve until a signal; 0 on a clean stop."""
    _configure_logging(config, args)
    admin_text = getattr(args, "admin", None)
    admin = parse_address(admin_text) if isinstance(admin_text, str) else admin_text
    return asyncio.run(serve(config, admin))
