"""Endpoint health: what active probes and real upgrades say about each native endpoint.

One :class:`HealthRegistry` per gateway process, keyed by (API name,
endpoint URL), so a reload that leaves an endpoint unchanged keeps its
verdict, counters and probe task. An endpoint is healthy when the active
checks have not voted it down (``unhealthy_threshold`` failures in a row, up
again after ``healthy_threshold`` successes) and no passive mark is running
(``failures`` failed upgrades in a row mark it down for ``cool_down``
seconds, or until the active checks see ``healthy_threshold`` successes;
never the API's last healthy endpoint).
Unhealthy endpoints get no new connections; live ones stay.

Transitions, and only transitions, are logged (``endpoint_unhealthy`` /
``endpoint_healthy``) and counted for ``/metrics``; ``/upstreams`` shows the
current state.

With ``--workers`` one worker probes for the whole gateway (``probing``):
its active verdicts go out through ``on_verdict`` and the supervisor hands
them to the others (``apply_verdict``), which run no probe loops of their
own and do not count or log those transitions again. Passive marks stay
each worker's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ..edge.probe import ProbeResult, probe
from .view import EndpointState

if TYPE_CHECKING:
    from ..build.routes import CompiledAPI, Endpoint, RouteTable
    from ..config.models import ActiveHealthCheck, PassiveHealthCheck

log = structlog.get_logger("wsgate.health")

Key = tuple[str, str]  # (API name, endpoint URL)


class EndpointHealth:
    """The health and load of one endpoint of one API; outlives reloads that keep the endpoint."""

    __slots__ = ("api", "url", "active_ok", "passive_until", "successes", "failures", "passive_failures",
                 "pending", "open", "reported", "changed_at", "reason", "last_probe")

    def __init__(self, api: str, url: str) -> None:
        self.api = api
        self.url = url
        self.active_ok = True  # optimistic at start: a gateway must serve before its first probe round
        self.passive_until = 0.0  # monotonic time until which a passive mark keeps it out
        self.successes = 0  # consecutive active probe successes / failures
        self.failures = 0
        self.passive_failures = 0  # consecutive failed upgrades
        self.pending = 0  # upstream handshakes in flight (the circuit breaker counts these)
        self.open = 0  # relayed connections on this endpoint (least-connections counts these and pending)
        self.reported = True  # the health last logged: transitions are changes of this
        self.changed_at = time.time()
        self.reason = "initial"
        self.last_probe: str | None = None

    def closed_one(self) -> None:
        self.open -= 1

    @property
    def healthy(self) -> bool:
        return self.active_ok and time.monotonic() >= self.passive_until

    def snapshot(self) -> EndpointState:
        cool_down = max(0.0, self.passive_until - time.monotonic())
        return EndpointState(self.url, self.healthy, self.active_ok, self.changed_at, self.reason, self.last_probe,
                             round(cool_down, 3), self.pending, self.open)


@dataclass(eq=False)
class _Checker:
    """The active probe loop of one endpoint; ``sync`` updates its target in place."""

    health: EndpointHealth
    settings: ActiveHealthCheck
    endpoint: Endpoint
    route: CompiledAPI
    task: asyncio.Task[None] | None = None


class HealthRegistry:
    """Every endpoint's health, the active probe tasks, and a condition tests and admin can wait on."""

    def __init__(self) -> None:
        self.endpoints: dict[Key, EndpointHealth] = {}
        self.transitions: Counter[tuple[str, str, str]] = Counter()  # (api, url, "healthy"/"unhealthy")
        self.probes = 0  # finished active probes (tests wait on this moving)
        self._checkers: dict[Key, _Checker] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._changed: asyncio.Condition | None = None
        # A single gateway probes; a worker does only while its supervisor says so (set_probing).
        self.probing = True
        # Called with (api, url, active_ok, reason) when the probes change an active verdict: how a probing
        # worker tells its supervisor, which hands the verdict to the other workers.
        self.on_verdict: Callable[[str, str, bool, str], None] | None = None
        self._table: RouteTable | None = None  # the last synced table: a worker told to probe starts its loops

    # --------------------------------------------------------------- lookups
    def get(self, api: str, url: str) -> EndpointHealth:
        """The state of an endpoint, created healthy on first sight (compile calls this)."""
        key = (api, url)
        health = self.endpoints.get(key)
        if health is None:
            health = self.endpoints[key] = EndpointHealth(api, url)
        return health

    def verdicts(self) -> list[tuple[str, str, bool, str]]:
        """Every endpoint's active verdict, as ``on_verdict`` reports one: a supervisor's starting point."""
        return [(api, url, health.active_ok, health.reason) for (api, url), health in sorted(self.endpoints.items())]

    def snapshot(self) -> dict[str, tuple[EndpointState, ...]]:
        """Every API's endpoints as ``/upstreams`` shows them."""
        out: dict[str, list[EndpointState]] = {}
        for (api, _), health in sorted(self.endpoints.items()):
            out.setdefault(api, []).append(health.snapshot())
        return {api: tuple(endpoints) for api, endpoints in out.items()}

    # ------------------------------------------------------------ verdicts
    def probe_result(self, health: EndpointHealth, result: ProbeResult, settings: ActiveHealthCheck) -> None:
        """An active probe finished: count it toward the thresholds."""
        health.last_probe = result.detail
        before = health.active_ok
        if result.ok:
            health.failures = 0
            health.successes += 1
            if health.successes >= settings.healthy_threshold:
                # Enough probes answered: that is better news than a passive mark's guess, so it ends the mark.
                health.active_ok = True
                health.passive_until = 0.0
        else:
            health.successes = 0
            health.failures += 1
            if health.active_ok and health.failures >= settings.unhealthy_threshold:
                health.active_ok = False
        self.probes += 1
        reason = f"active probe: {result.detail}"
        self._report(health, reason)
        if health.active_ok != before and self.on_verdict is not None:
            self.on_verdict(health.api, health.url, health.active_ok, reason)

    def apply_verdict(self, api: str, url: str, active_ok: bool, reason: str) -> None:
        """The gateway's prober changed an active verdict: take it as if this worker's own probes had.

        Not counted nor logged as a transition here: the prober did both, once for the gateway. An endpoint not
        seen yet is created with it (a worker starting takes the verdicts before it compiles its routes)."""
        health = self.get(api, url)
        if health.active_ok == active_ok:
            return
        health.active_ok = active_ok
        health.successes = health.failures = 0
        if active_ok:
            health.passive_until = 0.0  # as the prober's successes end a passive mark
        self._report(health, reason, count=False)

    def upgrade_failed(self, health: EndpointHealth, reason: str, passive: PassiveHealthCheck,
                       siblings: Sequence[EndpointHealth] = ()) -> None:
        """A real upgrade to the endpoint failed (refused, timed out, a 5xx or an invalid answer).

        A passive mark never takes out an API's last healthy endpoint (``siblings``
        are all its endpoints): a guess from failed upgrades must not turn every
        client away with 503; only the active checks may say that all are down.
        """
        if not passive.enabled:
            return
        health.passive_failures += 1
        last_one = not any(other.healthy for other in siblings if other is not health)
        if health.passive_failures >= passive.failures and not last_one:
            health.passive_failures = 0
            health.passive_until = time.monotonic() + passive.cool_down
            health.successes = 0  # only probes after the mark may end it early
            self._at_cool_down_end(health, passive.cool_down)
        self._report(health, f"upgrade failed: {reason}")

    def upgrade_succeeded(self, health: EndpointHealth) -> None:
        health.passive_failures = 0

    def _at_cool_down_end(self, health: EndpointHealth, delay: float) -> None:
        key = (health.api, health.url)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # plain-value tests: nobody to tell
            return
        self._timers[key] = loop.call_later(delay, self._cool_down_over, health)

    def _cool_down_over(self, health: EndpointHealth) -> None:
        self._timers.pop((health.api, health.url), None)
        self._report(health, "passive cool-down over")

    def _report(self, health: EndpointHealth, reason: str, count: bool = True) -> None:
        """Log and count a change of the endpoint's health (``count``: unless the prober did); wake waiters."""
        now = health.healthy
        if now != health.reported:
            health.reported = now
            health.changed_at = time.time()
            health.reason = reason
            state = "healthy" if now else "unhealthy"
            if count:
                self.transitions[(health.api, health.url, state)] += 1
                (log.info if now else log.warning)(f"endpoint_{state}", api=health.api, endpoint=health.url,
                                                   reason=reason)
            else:
                log.debug(f"endpoint_{state}", api=health.api, endpoint=health.url, reason=reason, shared=True)
        self._notify()

    def _notify(self) -> None:
        if self._changed is None:
            return
        changed = self._changed

        async def wake() -> None:
            async with changed:
                changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(wake())

    async def wait_for(self, predicate: Any, timeout: float | None = None) -> None:
        """Wait until ``predicate()`` holds, re-checked after every probe and verdict."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    # -------------------------------------------------------- probe tasks
    def sync(self, table: RouteTable) -> None:
        """Follow a new route table: keep the state of unchanged endpoints, start and stop probe loops (only while
        ``probing``)."""
        self._table = table
        wanted: dict[Key, tuple[EndpointHealth, ActiveHealthCheck | None, Endpoint, CompiledAPI]] = {}
        for compiled in table.apis.values():
            for endpoint in compiled.endpoints:
                key = (compiled.name, endpoint.url)
                health = endpoint.health or self.get(*key)
                wanted[key] = (health, compiled.api.upstream.health_check, endpoint, compiled)
        for key in list(self.endpoints):
            if key not in wanted:
                del self.endpoints[key]
                timer = self._timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
        for key, checker in list(self._checkers.items()):
            want = wanted.get(key)
            if want is None or want[1] != checker.settings:
                self._stop_checker(key)
        for key, (health, settings, endpoint, compiled) in wanted.items():
            if settings is None:
                if not health.active_ok:  # active checks were removed: their verdict goes with them
                    health.active_ok = True
                    self._report(health, "active checks removed", count=self.probing)
                continue
            if not self.probing:
                continue
            running = self._checkers.get(key)
            if running is None:
                fresh = self._checkers[key] = _Checker(health, settings, endpoint, compiled)
                fresh.task = asyncio.get_running_loop().create_task(self._check_loop(fresh))
            else:  # same settings: the loop goes on against the new route's TLS context
                running.endpoint, running.route = endpoint, compiled

    def set_probing(self, probing: bool) -> None:
        """Start (or stop) this process's probe loops: a worker the supervisor makes the gateway's prober."""
        if probing == self.probing:
            return
        self.probing = probing
        if not probing:
            for key in list(self._checkers):
                self._stop_checker(key)
        elif self._table is not None:
            self.sync(self._table)

    def _stop_checker(self, key: Key) -> None:
        checker = self._checkers.pop(key)
        if checker.task is not None:
            checker.task.cancel()

    async def _check_loop(self, checker: _Checker) -> None:
        while True:
            settings = checker.settings
            endpoint, route = checker.endpoint, checker.route
            try:
                result = await probe(endpoint.probe_url, timeout=settings.timeout, ssl_context=route.ssl_context,
                                     server_hostname=route.api.upstream.tls.server_hostname,
                                     tcp_only=settings.type == "tcp", headers=route.upstream_headers)
            except Exception as exc:  # a bug in the probe must not end the checks
                log.exception("health_probe_failed", api=checker.health.api, endpoint=endpoint.url)
                result = ProbeResult(False, f"probe error: {exc.__class__.__name__}")
            self.probe_result(checker.health, result, settings)
            await asyncio.sleep(settings.interval)

    def close(self) -> None:
        for key in list(self._checkers):
            self._stop_checker(key)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
