"""The running gateway: lifecycle (start, stop) and reload orchestration.

``Gateway`` is the in-process object (tests and ``run`` use it); ``run`` is
what ``wsgate run PATH`` calls after the config was checked. The live
connections are kept by ``gateway.serving.connections.ConnectionRegistry``; what a
change does to one of them is decided by ``gateway.changes.impact``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..build.apps import AppIndex
from ..build.pipeline import Artefacts, Built
from ..build.routes import RouteTable
from ..build.tls import ServerTLS
from ..changes.impact import Action, Impact, accepted_from, listener_change
from ..changes.plan import diff, render_text
from ..common.log import configure_logging
from ..config.cache import CheckCache
from ..config.tree import Config, Loaded
from ..edge.accept import AcceptLoop
from ..edge.listener import ListenerServices, PortListener, raise_open_files_limit
from ..operations.metrics import FLUSH_INTERVAL, Metrics
from ..operations.tracing import ConnectionTracer, from_environment
from ..policies.state import PolicyState
from ..push.service import PushService
from ..relay.integrations import settle as settle_integrations
from ..relay.keepalive import KeepaliveSweeper
from .connections import ConnectionRegistry
from .health import HealthRegistry
from .reloader import Reloader, ReloadStatus
from .signals import stop_requested
from .view import (
    AdminFactory,
    AdminListener,
    ConfigSnapshot,
    ConnectionsSnapshot,
    ListedConnection,
    PlanCounts,
    Readiness,
    ReloadOutcome,
    ReloadStatusSnapshot,
    StartError,
    Status,
    UpstreamsSnapshot,
)
from .watch import ConfigWatcher

if TYPE_CHECKING:
    from echo.server import EchoService

    from ..config.models import API, Port
    from ..policies.base import Policy
    from ..push.dispatch import Remote

log = structlog.get_logger("wsgate.runtime")


async def _policy_state(config: Config, env: Mapping[str, str] | None) -> PolicyState:
    state = PolicyState()
    await _follow_shared_state(state, config, env)
    state.commit_shared()  # nothing counted in the default backend yet
    return state


async def _follow_shared_state(state: PolicyState, config: Config, env: Mapping[str, str] | None) -> bool:
    """Open the shared-state backend the Gateway resource names, if it is not the one in use (True: switched)."""

    settings = config.settings.state
    ca = getattr(settings, "ca", None)
    ca_file = str(config.gateway.resolve(ca)) if ca and config.gateway is not None else None
    return await state.use_shared(settings, os.environ if env is None else env, ca_file)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def start_echo_servers(config: Config) -> list[EchoService]:
    """The config's echo servers (``echo.server``); one that cannot bind is a StartError naming it."""
    from echo.server import serve_echo_servers

    try:
        return await serve_echo_servers(config)
    except OSError as exc:
        raise StartError(f"{exc.strerror or exc}",
                         "stop the other process, or change `port`/`host` in the EchoServer resource") from exc


class Gateway(ReloadStatus):
    """Every listener of one config, and the route table they read.

    ``admin``: None uses the config's Gateway resource settings; ``False``
    disables the admin listener; ``(host, port)`` overrides it. ``admin_server``
    makes the listener (``gateway.operations.admin.admin_server``: passed in by
    whoever runs the gateway, since the admin is a layer above this one).
    ``artefacts``: what ``gateway.build.pipeline`` compiled from ``config`` (TLS
    contexts, the application index), served as they are; without them
    ``start`` builds them once. ``decides_reloads``: False for a worker,
    whose supervisor decides (and counts) reloads and hands them over.
    """

    shutdown_timeout: float

    def __init__(self, config: Config, *, admin: tuple[str, int] | None | bool = None,
                 env: Mapping[str, str] | None = None, echo: bool = True,
                 build_chain: Callable[[Loaded[API], Config, AppIndex, PolicyState], list[Policy]] | None = None,
                 paths: Sequence[str | Path] | None = None, check_cache: CheckCache | None = None,
                 reuse_port: bool = False, port_numbers: Mapping[str, int] | None = None,
                 tracer_provider: Any = None, artefacts: Artefacts | None = None,
                 decides_reloads: bool = True, admin_server: AdminFactory | None = None,
                 push_remote: Remote | None = None) -> None:
        self.config = config
        # Workers of one supervisor each listen on every port with SO_REUSEPORT (the kernel spreads connections);
        # port_numbers holds the numbers the supervisor reserved for ports configured as 0.
        self.reuse_port = reuse_port
        self.port_numbers: Mapping[str, int] = port_numbers or {}
        self.env = env
        self.paths: list[Path] = [Path(p) for p in paths] if paths else [config.root]  # what reload re-reads
        self._artefacts = artefacts.for_config(config) if artefacts is not None else None  # used by start()
        self.drain_grace = config.settings.drain_grace
        self.shutdown_timeout = config.settings.shutdown_timeout
        self._admin_override = admin
        self._admin_server = admin_server
        self._start_echo = echo
        self._build_chain = build_chain  # None: gateway.policies.build_chain
        self.state: PolicyState | None = None
        self._table: RouteTable | None = None
        self.keepalive: KeepaliveSweeper | None = None
        self.registry = ConnectionRegistry()
        # (kind, a name a live connection was accepted under) -> that resource's name now, after renames
        # (`previous_names`): a renamed API's connections are decided, counted and listed under its new name.
        self.names: dict[tuple[str, str], str] = {}
        self._services: ListenerServices | None = None  # made by start(), with the keepalive sweeper
        self.servers: dict[str, AcceptLoop] = {}
        self.listeners: dict[str, PortListener] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.tls_contexts: dict[str, ServerTLS] = {}
        self.echo_services: list[EchoService] = []
        self.admin: AdminListener | None = None
        self.ready = False
        self.stopping = False
        self.loaded_at = time.time()
        self.metrics = Metrics(counts_reloads=decides_reloads)
        self.reloader = Reloader(self.paths, self._apply, self._serving, stopping=lambda: self.stopping, env=env,
                                 cache=check_cache, metrics=self.metrics.reloads, values=config.values_files)
        self.health = HealthRegistry()  # endpoint health, kept across reloads
        # Tracing: an OTel TracerProvider given (tests), else the OTEL_* environment decides; None is off.
        self.tracer: ConnectionTracer | None = None
        if tracer_provider is not None:
            self.tracer = ConnectionTracer(tracer_provider)
        else:
            self.tracer = from_environment(os.environ)
        self._flusher: asyncio.TimerHandle | None = None
        # The push API (gateway/push): the connections of APIs with `push`, and the listener backends call.
        self.push = PushService(lambda: self.table, env=env, remote=push_remote)

    # ------------------------------------------------------------------ table
    @property
    def table(self) -> RouteTable:
        assert self._table is not None, "the gateway is not started"
        return self._table

    def compile(self, config: Config, generation: int, artefacts: Artefacts) -> RouteTable:
        """The route table of ``config``, with the TLS contexts and application index built for it."""
        assert self.state is not None, "the gateway is not started"
        return RouteTable.compile(config, artefacts.apps, self.state, generation=generation,
                                  build_chain=self._build_chain, health=self.health, env=self.env,
                                  upstream_tls=artefacts.upstream_tls, compiled_routes=artefacts.routes)

    # ---------------------------------------------------------------- metrics
    def relayed(self) -> list[Any]:
        """The contexts of the connections being relayed now."""
        return [record.conn for record in self.registry.live if record.relay is not None and record.conn is not None]

    def flush_metrics(self) -> None:
        """Bring the series up to date: live connections' message counts, policy counts, endpoint and state health."""
        self.metrics.flush(self.relayed())
        self.metrics.flush_state(self.state)
        self.metrics.flush_push(self.push.hub)
        self.metrics.flush_health(self.health)

    def scrape(self) -> bytes:
        """The ``/metrics`` text, brought up to date first."""
        self.flush_metrics()
        return self.metrics.render()

    def _flush_periodically(self) -> None:
        # Multiprocess mode: another worker may answer the scrape, so this one moves its counts on its own.
        self.flush_metrics()
        self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_periodically)

    def _start_flushing(self) -> None:
        """Multiprocess mode: flush every FLUSH_INTERVAL (a scrape may reach another worker, or the supervisor)."""
        if self.metrics.multiprocess:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_periodically)

    # ----------------------------------------------------------------- reload
    @property
    def reloaded(self) -> asyncio.Condition:
        """Notified after every reload outcome."""
        return self.reloader.finished

    async def reload(self, trigger: str = "manual", checked: Config | None = None,
                     generation: int | None = None) -> ReloadOutcome:
        """Load → check → compile → swap; a failure changes nothing. Returns the outcome (``last_reload``).

        ``checked``: a config the caller already checked (a worker's supervisor did), applied as generation
        ``generation``. See ``gateway.serving.reloader`` for the sequence, shared with the supervisor's.
        """
        outcome = await self.reloader.reload(trigger, checked, generation)
        served = self.reloader.status()
        self.metrics.config_served(served.digest, served.commit, failed=not outcome.ok)
        return outcome

    def _serving(self) -> tuple[str, int]:
        if self._table is None:
            return self.config.digest(), 0
        return self._table.digest, self._table.generation

    async def _apply(self, result: Built, trigger: str, generation: int | None) -> ReloadOutcome:
        """Decide what the change does to live connections (once), compile, listen, swap, settle, log."""
        new = result.config
        assert new is not None and self.state is not None
        old_config, old_table = self.config, self.table
        switched = False
        try:
            switched = await _follow_shared_state(self.state, new, self.env)
            artefacts = result.artefacts.for_config(new) if result.artefacts is not None else None
            artefacts = artefacts or Artefacts.of(new, self.env)  # a worker: its supervisor built it elsewhere
            table = self.compile(new, generation or old_table.generation + 1, artefacts)
        except Exception as exc:
            if switched:
                await self.state.revert_shared()
            log.error("reload_failed", trigger=trigger, error=f"compile failed: {exc}", exc_info=True)
            return ReloadOutcome(ok=False, error=f"compile failed: {exc}")
        # The one decision of what this change does to live connections: the plan the log shows and the
        # closes below both read it.
        impact = Impact(old_config, new, table.apps)
        plan = diff(old_config, new, impact.all)
        try:
            started_ports = await self._start_new_ports(table, artefacts)
        except Exception as exc:
            table.close()
            if switched:
                await self.state.revert_shared()
            log.error("reload_failed", trigger=trigger, error=f"cannot listen: {exc}")
            return ReloadOutcome(ok=False, error=f"cannot listen: {exc}")
        # The swap: from here on new upgrades use the new table.
        self._table, self.config = table, new
        if switched:
            self.state.commit_shared()  # the backend switched from closes once no table compiled against it is open
        table.activate()
        self.health.sync(table)
        self.drain_grace = new.settings.drain_grace
        self.shutdown_timeout = new.settings.shutdown_timeout
        self.loaded_at = time.time()
        problems = await self._follow_ports(old_config, new, table, started_ports, artefacts)
        if self.admin is not None:
            problems += self.admin.refresh(new)  # its token file and certificate, re-read
        closed = self._settle_connections(impact)
        self._follow_renames(impact.moved)
        if self._start_echo:
            problems += await self._follow_echo_servers(new)
        self.registry.retire(old_table)
        self.metrics.declare(new, table.generation, table.digest)
        log.info("reload_applied", trigger=trigger, digest=table.digest, generation=table.generation,
                 old_digest=old_table.digest, plan=render_text(plan).rstrip("\n").splitlines(),
                 files_changed=sorted(k for k, v in new.file_fingerprints.items()
                                      if old_config.file_fingerprints.get(k) != v),
                 drained=closed["drained"], revoked=closed["revoked"],
                 seconds=round(time.monotonic() - self.reloader.started, 4))
        return ReloadOutcome(ok=True, old_digest=old_table.digest, problems=tuple(problems),
                             plan=PlanCounts(plan.count("create"), plan.count("update"), plan.count("destroy")),
                             drained=closed["drained"], revoked=closed["revoked"])

    async def _start_new_ports(self, table: RouteTable, artefacts: Artefacts) -> list[str]:
        """Listen on ports that are new or newly enabled (before the swap; on failure close them and raise)."""
        started: list[str] = []
        try:
            for name, loaded in table.enabled_ports().items():
                if name not in self.servers:
                    await self._start_port(name, loaded, artefacts, announce=True)
                    started.append(name)
        except BaseException:
            for name in started:
                self._stop_port(name)
            raise
        return started

    def _stop_port(self, name: str) -> None:
        server = self.servers.pop(name, None)
        if server is not None:
            server.close()  # stop accepting at once; live connections are drained separately
        self.listeners.pop(name, None)
        self.addresses.pop(name, None)
        self.tls_contexts.pop(name, None)
        log.info("stopped_listening", name=name)

    async def _follow_ports(self, old: Config, new: Config, table: RouteTable, started: list[str],
                            artefacts: Artefacts) -> list[str]:
        """Stop removed/disabled ports, re-listen changed ones, update limits of the rest (never re-bind those)."""
        problems: list[str] = []
        enabled = table.enabled_ports()
        for name in list(self.servers):
            if name in started:
                continue
            loaded = enabled.get(name)
            if loaded is None:
                self._stop_port(name)
            elif name in old.ports and listener_change(old, new, name):
                self._stop_port(name)
                try:
                    await self._start_port(name, loaded, artefacts, announce=True)
                except Exception as exc:
                    log.error("port_restart_failed", name=name, error=str(exc))
                    problems.append(f"port {name}: {exc}")
            else:
                listener = self.listeners[name]
                listener.handshake_timeout = loaded.model.limits.handshake_timeout
                listener.max_connections = loaded.model.limits.max_connections
                problem = self._renew_certificate(name, loaded, old, new)
                if problem:
                    problems.append(problem)
        return problems

    def _renew_certificate(self, name: str, loaded: Loaded[Port], old: Config, new: Config) -> str | None:
        """Renewed certificate or key files go into the port's live TLS contexts (the default one and each SNI
        one): new handshakes use them, the listening socket and the established connections stay as they are."""
        server_tls = self.tls_contexts.get(name)
        if server_tls is None or loaded.model.tls is None:
            return None
        problems = server_tls.renew(dict(old.file_fingerprints), dict(new.file_fingerprints))
        return "; ".join(problems) or None

    def _follow_renames(self, moved: dict[tuple[str, str], str]) -> None:
        """After a swap: every name a live connection knows a renamed resource by now means its new name."""
        for key, current in list(self.names.items()):
            self.names[key] = moved.get((key[0], current), current)
        for (kind, old), new in moved.items():
            self.names[(kind, old)] = new
            log.info("resource_renamed", kind=kind, old=old, new=new,
                     live_connections=sum(1 for r in self.registry.live if r.conn is not None and (
                         (kind == "API" and self.names.get(("API", r.conn.api), r.conn.api) == new)
                         or (kind == "Application" and r.conn.application is not None and self.names.get(
                             ("Application", r.conn.application.name), r.conn.application.name) == new))))

    def _settle_connections(self, impact: Impact) -> dict[str, int]:
        """Drain (1001 after the grace) or revoke (1008 now) as ``gateway.changes.impact`` says; the rest stay."""
        drained = revoked = 0
        for record in list(self.registry.live):
            accepted = accepted_from(record, self.names)
            if accepted is None:
                continue
            decision = impact.decide(accepted)
            connection = record.conn.id if record.conn else None
            if decision.action is Action.REVOKE:
                revoked += 1
                log.info("connection_revoked", connection=connection, api=accepted.api, app=accepted.application,
                         port=accepted.port, reason=decision.reason, close_code=decision.close_code)
                self.registry.revoke(record, decision.close_reason)
            elif decision.action is Action.DRAIN and record not in self.registry.draining:
                drained += 1
                log.info("connection_draining", connection=connection, api=accepted.api, app=accepted.application,
                         port=accepted.port, reason=decision.reason, close_code=decision.close_code,
                         grace=self.drain_grace)
                self.registry.drain(record, self.drain_grace, decision.close_reason)
        return {"drained": drained, "revoked": revoked}

    async def _follow_echo_servers(self, new: Config) -> list[str]:
        from echo.link import gateway_link
        from echo.server import EchoService

        problems: list[str] = []
        current = {service.model.name: service for service in self.echo_services}
        kept: list[EchoService] = []
        for name, loaded in new.echo_servers.items():
            service = current.pop(name, None)
            try:
                if service is not None:
                    try:
                        service.apply(loaded.model)
                        kept.append(service)
                        continue
                    except ValueError:
                        await service.stop()  # host/port changed: restart it
                service = EchoService(loaded.model)
                await service.start()
                kept.append(service)
            except Exception as exc:
                log.error("echo_server_reload_failed", server=name, error=str(exc))
                problems.append(f"echo server {name}: {exc}")
        for service in current.values():
            await service.stop()
        for service in kept:
            service.gateway = gateway_link(new, service.model)  # the demo page's "Use gateway" follows the config
        self.echo_services = kept
        return problems

    # ------------------------------------------------------------------- view
    # The admin reads this gateway through ``gateway.serving.view.GatewayView``, as it reads a supervisor's.

    def readiness(self) -> Readiness:
        # A state backend that is down does not make the gateway unready: each throttle's on_state_error decides.
        state = self.state.shared.health() if self.state is not None else None
        status: Status = "ready" if self.ready else "stopping" if self.stopping else "starting"
        if status == "ready" and self.reload_failing and self.config.settings.admin.unready_after_failed_reload:
            status = "reload-failed"  # the operator asked to leave rotation while the last reload failed
        generation = self._table.generation if self._table is not None else 0
        return Readiness(status, generation, state, config=self.config_status)

    def config_snapshot(self) -> ConfigSnapshot:
        table = self.table
        drift = {service.model.name: service.drift() for service in self.echo_services}
        return ConfigSnapshot(table.config, table.digest, table.generation, self.loaded_at,
                              {name: changes for name, changes in drift.items() if changes})

    async def connections_snapshot(self) -> ConnectionsSnapshot:
        listed: list[ListedConnection] = []
        for record in self.registry.live:
            accepted = accepted_from(record, self.names) if record.relay is not None else None
            if accepted is not None and record.conn is not None:
                connection = record.conn.id
                listed.append(ListedConnection(accepted, connection, tuple(self.push.hub.groups_of(connection))))
        return ConnectionsSnapshot(self.registry.counts(), tuple(listed))

    async def close_connection(self, id: str, code: int, reason: str) -> bool:
        for record in list(self.registry.live):
            if record.relay is not None and record.conn is not None and record.conn.id == id:
                log.info("connection_closed_by_operator", connection=id, api=record.conn.api, code=code)
                record.close(code, reason)
                return True
        return False

    async def upstreams_snapshot(self) -> UpstreamsSnapshot:
        return UpstreamsSnapshot(self.health.snapshot())

    async def metrics_text(self) -> bytes:
        return self.scrape()

    def reload_status(self) -> ReloadStatusSnapshot:
        return ReloadStatusSnapshot(self.reload_count, self.last_reload, tuple(self.reload_history),
                                    self._serving()[1], config=self.config_status)

    def accept_error(self, listener: str) -> None:
        self.metrics.accept_error(listener)

    # -------------------------------------------------------------- lifecycle
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin listens: the ``admin`` override, else the Gateway resource's (None: no admin)."""
        settings = self.config.settings.admin
        if self._admin_override is None:
            return (settings.host, settings.port) if settings.enabled else None
        return self._admin_override if isinstance(self._admin_override, tuple) else None

    def _make_admin(self, address: tuple[str, int] | None) -> AdminListener | None:
        """The admin listener for ``address`` (not started), made by ``admin_server``: a start its settings refuse
        (beyond loopback without a token, a token file or certificate that cannot be read) is a StartError here,
        before any listener binds."""
        if address is None:
            return None
        if self._admin_server is None:
            raise ValueError("an admin listener is configured but no admin_server was given to make it")
        return self._admin_server(self, *address, self.config, self.env)

    async def start(self, generation: int = 1) -> None:
        """Check what can be checked before binding (StartError), then start echo servers, listeners and admin;
        the ports say ``listening`` once every listener is bound. On failure stop what started and raise."""
        address = self.admin_address()
        admin = self._make_admin(address)  # its settings checked before anything binds or connects
        self.state = await _policy_state(self.config, self.env)
        artefacts = self._artefacts or Artefacts.of(self.config, self.env)
        self._artefacts = None  # served from now on; a reload brings its own
        self._table = self.compile(self.config, generation, artefacts)
        self._table.activate()
        self.keepalive = KeepaliveSweeper()
        self._services = ListenerServices(self.registry, lambda: self.table, self.metrics, self.keepalive, self.tracer,
                                          push=self.push.hub)
        self.metrics.declare(self.config, 1, self._table.digest)
        self.metrics.config_served(self._table.digest, self.reloader.commit, failed=False)
        if self.metrics.reloads is not None:
            self.metrics.reloads.loaded()
        self._start_flushing()
        try:
            if self._start_echo and self.config.echo_servers:
                self.echo_services = await start_echo_servers(self.config)
            for name, loaded in self.table.enabled_ports().items():
                await self._start_port(name, loaded, artefacts)
            # The push listener starts before the admin: the admin's /connections/close reaches connections
            # through the same hub the push listener serves.
            await self.push.start(self.config, self.port_numbers, self.reuse_port, self.state)
            if admin is not None and address is not None:
                self.admin = admin
                try:
                    await self.admin.start()
                except OSError as exc:
                    raise StartError.admin_cannot_listen(*address, exc) from exc
            self.health.sync(self.table)  # probes start once the config's own echo servers listen
        except BaseException:
            await self.stop()
            raise
        for name, (host, bound) in self.addresses.items():
            log.info("listening", name=name, host=host, port=bound, tls=name in self.tls_contexts)
        self.ready = True

    async def _start_port(self, name: str, loaded: Loaded[Port], artefacts: Artefacts, announce: bool = False) -> None:
        """Bind one port; ``announce``: log ``listening`` now (a reload), else ``start`` does once all are bound."""
        port = loaded.model
        context = None
        if port.tls is not None:
            server_tls = artefacts.server_tls[name]  # built with the config, never again here
            context = server_tls.context
            self.tls_contexts[name] = server_tls
        assert self._services is not None, "the gateway is not started"
        listener = PortListener(name, context is not None, port.limits.handshake_timeout,
                                port.limits.max_connections, self._services)
        number = self.port_numbers.get(name, port.port)
        try:
            server = await AcceptLoop.open(
                name, listener.protocol_factory, port.host, number, backlog=1024,
                ssl_context=context, reuse_port=self.reuse_port,
                ssl_handshake_timeout=port.limits.handshake_timeout if context else None,
                on_error=functools.partial(self.metrics.accept_error, name),
            )
        except OSError as exc:
            raise StartError.cannot_listen(name, port.host, number, exc) from exc
        self.servers[name] = server
        self.listeners[name] = listener
        host, bound = server.sockets[0].getsockname()[:2]
        self.addresses[name] = (host, bound)
        if announce:
            log.info("listening", name=name, host=host, port=bound, tls=context is not None)

    async def stop(self, grace: float = 0.0, hurry: asyncio.Event | None = None) -> None:
        """Unready at once, stop accepting, let live connections go on for ``grace`` seconds (or until ``hurry``
        is set), close the rest with 1001, wait up to shutdown_timeout, then abort."""
        if self.stopping:
            return
        self.stopping = True
        self.ready = False
        for server in self.servers.values():
            server.close()
        await self.push.stop()  # backends get no answer from a stopping gateway; their clients are closing
        live = self.registry.live
        if grace > 0 and live and not (hurry is not None and hurry.is_set()):
            log.info("shutdown_grace", connections=len(live), grace=grace)
            if not await self.registry.wait_idle(grace, hurry):
                log.info("shutdown_grace_over", remaining=len(live), cut_short=hurry is not None and hurry.is_set())
        await self.registry.close_all(self.shutdown_timeout)
        if self.admin is not None:
            await self.admin.stop()
        if self.echo_services:
            await asyncio.gather(*(service.stop() for service in self.echo_services), return_exceptions=True)
        if self.keepalive is not None:
            self.keepalive.close()
        self.health.close()
        self.registry.close()
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._table is not None:
            self._table.close()
        await settle_integrations(self.shutdown_timeout)  # $disconnect events, route upstreams, HTTP pools
        if self.state is not None:
            await self.state.aclose()
        if self.tracer is not None:
            self.tracer.shutdown()
        log.info("stopped")


def freeze_startup_heap() -> None:
    """Move every object start-up made (modules, the config, the route table) out of the collector's reach.

    They live as long as the process, yet each full collection would walk them again; connections then
    allocate and free in a heap the collector scans without them. Called once per process, by the process
    entry points only: a library caller (a test suite running many gateways) keeps its heap collectable.
    """
    gc.collect()
    gc.freeze()


async def serve(config: Config, admin: tuple[str, int] | None = None,
                paths: Sequence[str | Path] | None = None, watch: bool = True,
                check_cache: CheckCache | None = None, artefacts: Artefacts | None = None,
                admin_server: AdminFactory | None = None) -> None:
    """Run a gateway until SIGINT or SIGTERM, reloading when the tree under ``paths`` changes or on SIGHUP.

    Raises :class:`StartError` when a listener cannot be opened (the CLI logs it and picks the exit status)."""
    gateway = Gateway(config, admin=admin, paths=paths, check_cache=check_cache, artefacts=artefacts,
                      admin_server=admin_server)
    watcher: ConfigWatcher | None = None
    async with stop_requested() as stopping:
        try:
            await gateway.start()
            if watch:
                watcher = ConfigWatcher(gateway.paths, gateway.reload)
                await watcher.start()
            freeze_startup_heap()
            await stopping.wait()
            log.info("stopping", grace=gateway.config.settings.shutdown_grace, hint="a second signal stops at once")
        finally:
            # stop() first: /readyz answers 503 from its first line on; a reload meanwhile is refused (stopping).
            await gateway.stop(gateway.config.settings.shutdown_grace, stopping.hurry)
            if watcher is not None:
                await watcher.stop()


def run(config: Config, args: Any = None, check_cache: CheckCache | None = None,
        artefacts: Artefacts | None = None, admin_server: AdminFactory | None = None) -> None:
    """``wsgate run PATH`` after the config was built: serve (and follow PATH) until a signal; raises
    :class:`StartError` when a listener cannot be opened."""
    configure_logging(getattr(args, "log_format", None) or config.settings.log_format)
    raise_open_files_limit()  # each proxied connection holds two files
    admin_text = getattr(args, "admin", None)
    admin = parse_address(admin_text) if isinstance(admin_text, str) else admin_text
    path = getattr(args, "path", None)
    asyncio.run(serve(config, admin, [path] if isinstance(path, str) else None, check_cache=check_cache,
                      artefacts=artefacts, admin_server=admin_server))
