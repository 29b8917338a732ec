"""The connection registry: every live client connection, counted, drained and released.

One registry per gateway process. Listeners track a connection when its TCP
connection is made and untrack it when it ends; the admin listener and the
metrics read the counts; the reload asks it to drain (1001 after a grace) or
revoke (1008 now) connections; route tables retired by a reload are released
here once no live connection uses their routes.

Every operation is O(1) per connection: the registry counts live connections per
route (``routed`` / ``untrack``), so a retired table waits on a number, not on a
scan of every live connection each time one ends (draining 10,000 connections
after a reload was ~10^8 steps on the event loop).

Nothing here decides *which* connections a change touches (that is
``gateway.changes.impact``); the registry only carries out what it is told.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from ..build.routes import CompiledAPI, RouteTable
    from ..edge.listener import Connection, PortListener

log = structlog.get_logger("wsgate.connections")

DRAIN_CODE = 1001
DRAIN_REASON = "going away"


class ConnectionRegistry:
    """The live connections, their counts per listener, pending drains and retired route tables."""

    def __init__(self) -> None:
        self.live: set[Connection] = set()
        # Per listener object, not per port name: a port re-listened by a reload starts a fresh count
        # while the connections of its previous listener finish.
        self._open: Counter[PortListener] = Counter()
        self.draining: dict[Connection, asyncio.TimerHandle | None] = {}
        # Live connections per route (CompiledAPI compares by identity), counted from ``routed`` to ``untrack``.
        self._routed: Counter[CompiledAPI] = Counter()
        # Each route of a retired table that still has live connections -> that table's entry (a compiled route
        # belongs to one table only: every compile builds its own).
        self._retired: dict[CompiledAPI, _Retired] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # ---------------------------------------------------------------- tracking
    def track(self, record: Connection) -> None:
        """Count a connection that was just made on ``record.listener``."""
        self.live.add(record)
        self._open[record.listener] += 1
        self._idle.clear()

    def untrack(self, record: Connection) -> None:
        """Forget a connection that ended (idempotent)."""
        if record not in self.live:
            return
        self.live.remove(record)
        self._open[record.listener] -= 1
        if self._open[record.listener] <= 0:
            del self._open[record.listener]
        timer = self.draining.pop(record, None)
        if timer is not None:
            timer.cancel()
        route = record.route
        if route is not None:
            self._routed[route] -= 1
            if self._routed[route] <= 0:
                del self._routed[route]
            retired = self._retired.get(route)
            if retired is not None:
                retired.live -= 1
                if retired.live <= 0:
                    self._release(retired)
        if not self.live:
            self._idle.set()

    def routed(self, record: Connection, route: CompiledAPI) -> None:
        """``record``'s upgrade was matched to ``route``: it holds the route's table until it ends."""
        record.route = route
        if record in self.live:
            self._routed[route] += 1

    def open_on(self, listener: PortListener) -> int:
        """Connections (relayed or still upgrading) made on ``listener`` and not yet ended."""
        return self._open.get(listener, 0)

    def counts(self) -> dict[str, Any]:
        """Live relayed connections per port, API and application, plus upgrades in progress."""
        ports: Counter[str] = Counter()
        apis: Counter[str] = Counter()
        apps: Counter[str] = Counter()
        api_ports: dict[str, Counter[str]] = {}
        api_apps: dict[str, Counter[str]] = {}
        upgrading = 0
        for record in self.live:
            if record.relay is None:
                upgrading += 1
                continue
            ports[record.port_name] += 1
            conn = record.conn
            if conn is not None:
                apis[conn.api] += 1
                api_ports.setdefault(conn.api, Counter())[record.port_name] += 1
                if conn.application is not None:
                    apps[conn.application.name] += 1
                    api_apps.setdefault(conn.api, Counter())[conn.application.name] += 1
        return {
            "total": sum(ports.values()),
            "upgrading": upgrading,
            "ports": dict(ports),
            "apis": dict(apis),
            "applications": dict(apps),
            "api_ports": {api: dict(c) for api, c in api_ports.items()},  # what `plan --from` counts
            "api_applications": {api: dict(c) for api, c in api_apps.items()},
        }

    # ------------------------------------------------------- drain and revoke
    def revoke(self, record: Connection, reason: str = "application revoked") -> None:
        """Close now with 1008 (a pending drain of the same connection is cancelled)."""
        timer = self.draining.get(record)
        if timer is not None:
            timer.cancel()
        record.close(1008, reason)

    def drain(self, record: Connection, grace: float, reason: str = DRAIN_REASON) -> bool:
        """Close with 1001 after ``grace`` seconds (at once when ``grace <= 0``); False if already draining."""
        if record in self.draining:
            return False
        if grace <= 0:
            self.draining[record] = None
            record.close(DRAIN_CODE, reason)
        else:
            loop = asyncio.get_running_loop()
            self.draining[record] = loop.call_later(grace, self._drain_now, record, reason)
        return True

    def _drain_now(self, record: Connection, reason: str) -> None:
        self.draining[record] = None
        if record in self.live:
            record.close(DRAIN_CODE, reason)

    # ------------------------------------------------------ retired route tables
    def retire(self, table: RouteTable) -> None:
        """Release ``table``'s policies once no live connection uses its routes (now, if none does).

        Called after the swap: from then on no upgrade is matched to ``table``, so its count only goes down.
        """
        in_use = [compiled for compiled in table.apis.values() if self._routed[compiled] > 0]
        retired = _Retired(table, sum(self._routed[compiled] for compiled in in_use), in_use)
        log.info("route_table_retired", generation=table.generation, connections=retired.live)
        if retired.live == 0:
            self._release(retired)
            return
        for compiled in in_use:
            self._retired[compiled] = retired

    def _release(self, retired: _Retired) -> None:
        for compiled in retired.routes:
            self._retired.pop(compiled, None)
        log.info("route_table_released", generation=retired.table.generation)
        retired.table.close()

    # ---------------------------------------------------------------- shutdown
    async def wait_idle(self, timeout: float, hurry: asyncio.Event | None = None) -> bool:
        """Wait until no connection is live, for at most ``timeout`` seconds or until ``hurry`` is set;
        True when none is left."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._idle.wait())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return not self.live

    async def close_all(self, timeout: float) -> None:
        """Close every connection with 1001, wait up to ``timeout``, then abort what is left."""
        for record in list(self.live):
            record.close(DRAIN_CODE, DRAIN_REASON)
        if not self.live:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("shutdown_timeout", action="aborting connections", remaining=len(self.live))
            for record in list(self.live):
                record.abort()
            # Aborted transports report connection_lost on the next loop turns; let the relays finish.
            try:
                async with asyncio.timeout(1.0):
                    await self._idle.wait()
            except TimeoutError:
                log.error("connections_still_open_after_abort", remaining=len(self.live))

    def close(self) -> None:
        """Cancel pending drains and release every retired table (the gateway stopped)."""
        for timer in self.draining.values():
            if timer is not None:
                timer.cancel()
        self.draining.clear()
        for retired in {id(entry): entry for entry in self._retired.values()}.values():
            self._release(retired)


class _Retired:
    """A retired route table and how many live connections still use its routes."""

    __slots__ = ("table", "live", "routes")

    def __init__(self, table: RouteTable, live: int, routes: list[CompiledAPI]) -> None:
        self.table = table
        self.live = live
        self.routes = routes  # those with live connections at retirement: where ``untrack`` finds this entry
