"""Prometheus metrics for the admin listener's ``/metrics``, on ``prometheus_client``.

What is counted where (the per-message cost stays as it was: none here):

- upgrade answer, its stage durations, refusals, upstream connect failures:
  once per upgrade (listener);
- active connections: +1 at the 101, -1 at the close;
- connection duration: once per close;
- messages, payload bytes and message sizes: the relays keep plain integers
  on the connection (``Counters``); they are moved into the Prometheus series
  in batches — at each scrape, at each close, and every ``FLUSH_INTERVAL`` in
  multiprocess mode — never one observation (and its lock) per message;
- reloads: once per reload.

The message-size histogram is filled per batch: a connection's messages of
one batch count in the bucket of their mean size (``_count`` and ``_sum`` are
exact; the bucket spread is per connection and batch, not per message).

Labels stay bounded: port, API, application, endpoint (as configured, no
query or credentials), status, close code, reason words. Never a connection
id, a client address or a key.

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set (before this module
is imported), every worker writes its values to files in that directory and
``/metrics`` serves the ``MultiProcessCollector`` aggregation of all of them.
Gauges declare how workers combine (``livesum`` for active connections).
The ``process_*`` metrics are per process: a single process serves its own;
the supervisor of ``--workers N`` serves its own and each worker's, read from
``/proc`` and labelled ``worker`` (``render_processes``), since
prometheus_client's multiprocess mode has none.
"""

from __future__ import annotations

import os
import platform
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .. import __version__

if TYPE_CHECKING:
    from ..config.tree import Config
    from ..policies.base import ConnectionContext
    from ..policies.state import PolicyState
    from ..push.hub import PushHub
    from ..serving.health import HealthRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 5.0  # seconds between batch flushes of live connections' message counts (multiprocess mode)
DIRECTIONS = ("client", "server")  # client: client to server
STAGES = ("policies", "upstream_connect", "total")
UPSTREAM_FAILURES = ("refused", "timeout", "bad_response")
RELOAD_OUTCOMES = ("applied", "unchanged", "failed")
ACCEPT_ERRORS = ("emfile", "enfile", "enobufs", "enomem")  # what asyncio's accept loop reports (errno names)

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONNECTION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
SIZE_BUCKETS = (16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0)
_SIZE_BOUNDS = list(SIZE_BUCKETS)

# No ``*_created`` series: they double the exposition and no dashboard or alert here reads them.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, or None (single process)."""
    return os.environ.get(MULTIPROC_ENV) or None


class _ProcessId:
    """This process's id, read once and again after a fork: what prometheus_client's multiprocess values ask on
    every counter change (to notice a fork) is otherwise an ``os.getpid()`` system call each time, about twenty
    per upgrade (measured with ``perf stat``: 69 → 49 system calls per upgrade; benchmarks/workers.py)."""

    pid = os.getpid()

    @classmethod
    def forked(cls) -> None:
        cls.pid = os.getpid()

    @classmethod
    def get(cls) -> int:
        return cls.pid


if multiprocess_dir() is not None:
    os.register_at_fork(after_in_child=_ProcessId.forked)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(process_identifier=_ProcessId.get)


def version() -> str:
    return __version__


def endpoint_label(url: str) -> str:
    """An upstream endpoint as a label: scheme, host, port and path; never user info or a query."""
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    path = uri.resource_name.partition("?")[0]
    return f"{'wss' if uri.secure else 'ws'}://{uri.host}:{uri.port}{path}"


class _Children(dict[tuple[Any, ...], Any]):
    """A metric's children by label values, looked up once: ``labels()`` costs ~3 µs (a lock, a tuple of str()
    and a dict lookup), called a dozen times per upgrade. A child removed from the metric must be popped here."""

    __slots__ = ("metric",)

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple[Any, ...]) -> Any:
        child = self[key] = self.metric.labels(*key)
        return child


class ReloadMetrics:
    """The reload series, written by the process that decides reloads: a gateway, or the supervisor of
    ``--workers N`` (its workers apply what it decided and count nothing here, so a reload counts once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter("wsgate_reloads", "Config reloads, by outcome.", ["outcome"], registry=registry)
        self.duration = Histogram(
            "wsgate_reload_duration_seconds", "Time from reading the tree to the reload's outcome.",
            buckets=DURATION_BUCKETS, registry=registry)
        self.last_success = Gauge(
            "wsgate_last_reload_success_timestamp_seconds",
            "When the serving config was last loaded successfully (start or reload), Unix time.",
            registry=registry, multiprocess_mode="livemin")
        self.failing = Gauge(
            "wsgate_reload_failing", "1 while the last reload attempt failed (the previous config keeps serving).",
            registry=registry, multiprocess_mode="livemax")
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)

    def loaded(self) -> None:
        """The config serving now was read at start."""
        self.last_success.set(time.time())

    def reloaded(self, outcome: str, seconds: float) -> None:
        """One reload's outcome: ``applied``, ``unchanged`` or ``failed``."""
        self.reloads.labels(outcome).inc()
        self.duration.observe(seconds)
        self.failing.set(1 if outcome == "failed" else 0)
        if outcome != "failed":
            self.last_success.set(time.time())


class Metrics:
    """One gateway's series, kept across reloads, in a registry of its own (tests run several gateways)."""

    def __init__(self, *, counts_reloads: bool = True) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        if not self.multiprocess:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

        self.connections_active = Gauge(
            "wsgate_connections_active", "Relayed connections open now.", ["port", "api", "application"],
            registry=registry, multiprocess_mode="livesum")
        self.upgrades = Counter(
            "wsgate_upgrades", "Upgrade requests answered, by HTTP status (499: the client left).",
            ["port", "api", "status"], registry=registry)
        self.refused = Counter(
            "wsgate_upgrades_refused", "Upgrades refused, by reason (the refusal's error word).",
            ["port", "api", "reason"], registry=registry)
        self.upgrade_duration = Histogram(
            "wsgate_upgrade_duration_seconds",
            "Upgrade time by stage: policies, upstream_connect, total (request head to 101).",
            ["api", "stage"], buckets=DURATION_BUCKETS, registry=registry)
        self.upstream_failures = Counter(
            "wsgate_upstream_connect_failures", "Upstream handshakes that failed, by endpoint and reason.",
            ["api", "endpoint", "reason"], registry=registry)
        self.integration_errors = Counter(
            "wsgate_integration_errors", "Message-route integrations that failed, by API, route and reason "
            "(status_NNN, timeout, unreachable, closed, too_large, no_route).", ["api", "route", "reason"],
            registry=registry)
        self.accept_errors = Counter(
            "wsgate_accept_errors", "Accepts that failed, mostly for lack of file descriptors (the listener pauses).",
            ["listener"], registry=registry)
        self.closes = Counter(
            "wsgate_connections_closed", "Relayed connections ended, by close code.", ["api", "code"],
            registry=registry)
        self.connection_duration = Histogram(
            "wsgate_connection_duration_seconds",
            "Lifetime of relayed connections, from the upgrade request to the close.",
            ["api"], buckets=CONNECTION_BUCKETS, registry=registry)
        self.messages = Counter(
            "wsgate_messages", "Messages relayed (direction client: client to server).", ["api", "direction"],
            registry=registry)
        self.payload_bytes = Counter(
            "wsgate_message_bytes", "Payload bytes relayed.", ["api", "direction"], registry=registry)
        self.message_size = Histogram(
            "wsgate_message_size_bytes",
            "Message payload sizes (counted in batches: a connection's batch lands in the bucket of its mean size).",
            ["api", "direction"], buckets=SIZE_BUCKETS, registry=registry)
        # Counted by the message policies in the shared PolicyState, moved here in batches (flush_state).
        self.rate_limited = Counter(
            "wsgate_rate_limited", "Messages past a rate limit that were dropped or closed the connection "
            "(delays not counted).", ["api", "direction", "action"], registry=registry)
        self.violations = Counter(
            "wsgate_message_violations", "Messages matching none of their API's definitions, by kind and what was "
            "done (log, drop, close).", ["api", "direction", "kind", "action"], registry=registry)
        self._reported_policy_counts: dict[str, dict[tuple[str, ...], int]] = {}
        self.state_backend_up = Gauge(
            "wsgate_state_backend_up", "1 while the shared state backend answers (memory always).", ["backend"],
            registry=registry, multiprocess_mode="livemin")
        # Endpoint health (gateway.serving.health), read at each batch: an endpoint down in any worker shows down.
        self.upstream_healthy = Gauge(
            "wsgate_upstream_healthy", "Whether an upstream endpoint takes new connections (1) or not (0).",
            ["api", "endpoint"], registry=registry, multiprocess_mode="livemin")
        self.upstream_pending = Gauge(
            "wsgate_upstream_pending", "Upstream handshakes in flight per endpoint.", ["api", "endpoint"],
            registry=registry, multiprocess_mode="livesum")
        self.upstream_transitions = Counter(
            "wsgate_upstream_transitions", "Endpoint health changes, by the new state.",
            ["api", "endpoint", "state"], registry=registry)
        self._health_series: set[tuple[str, str]] = set()
        # Push (gateway/push): counted in the hub's plain PushStats, moved here in batches (flush_push).
        self.push_requests = Counter(
            "wsgate_push_requests", "Push API requests answered, by operation and HTTP status.",
            ["api", "operation", "status"], registry=registry)
        self.push_deliveries = Counter(
            "wsgate_push_deliveries", "Pushed messages handed to a connection (sends and group members).", ["api"],
            registry=registry)
        self.push_dropped = Counter(
            "wsgate_push_overflows", "Pushes to a full connection queue, by the action taken (drop or close).",
            ["api", "action"], registry=registry)
        self.push_cluster_errors = Counter(
            "wsgate_push_cluster_errors", "Push requests the cluster (Redis, the supervisor) could not carry.",
            ["operation"], registry=registry)
        self.push_queued = Gauge(
            "wsgate_push_queued", "Pushed messages waiting in connection queues now.", registry=registry,
            multiprocess_mode="livesum")
        self.push_groups = Gauge(
            "wsgate_push_groups", "Groups with members now, and memberships (kind: groups, members, largest).",
            ["api", "kind"], registry=registry, multiprocess_mode="livesum")
        self._reported_push: dict[str, dict[Any, int]] = {}
        self._push_group_series: set[tuple[str, str]] = set()
        # Reloads are counted by whoever decides them: this gateway, or (a worker) its supervisor.
        self.reloads: ReloadMetrics | None = ReloadMetrics(registry) if counts_reloads else None
        self.generation = Gauge(
            "wsgate_config_generation", "Generation of the config serving now (1 at start, +1 per applied reload).",
            registry=registry, multiprocess_mode="livemin")
        self.config_info = Gauge(
            "wsgate_config_info", "The config serving now (value 1): its digest, the git commit of the tree (empty "
            "when not a checkout), and `last_reload` ok or failed (then the previous config keeps serving).",
            ["digest", "commit", "last_reload"], registry=registry, multiprocess_mode="livemax")
        self.build_info = Gauge(
            "wsgate_build_info", "wsgate and Python versions (value 1).", ["version", "python"],
            registry=registry, multiprocess_mode="livemax")
        self.build_info.labels(version(), platform.python_version()).set(1)
        self._info: tuple[str, str, str] | None = None  # wsgate_config_info's labels now
        # The hot path's children (per upgrade, per close, per batch of messages), by label values.
        self._upgrades = _Children(self.upgrades)
        self._stages = _Children(self.upgrade_duration)
        self._active = _Children(self.connections_active)
        self._closes = _Children(self.closes)
        self._durations = _Children(self.connection_duration)
        self._messages = _Children(self.messages)
        self._payload_bytes = _Children(self.payload_bytes)
        self._sizes = _Children(self.message_size)
        self._declared: set[tuple[str, str, str]] = set()  # connections_active label sets of the serving config
        for reason in ACCEPT_ERRORS:
            self.accept_errors.labels(reason)

    # ----------------------------------------------------------- config
    def declare(self, config: Config, generation: int, digest: str) -> None:
        """Make every series of the config's APIs exist (at zero until used) and show its generation and digest.

        The active-connection series of what the config no longer declares go once they are back at zero (an
        alert on "no connection to a declared API" must not fire for a removed one); counters stay, as counters do.
        """
        declared: set[tuple[str, str, str]] = set()
        for port in config.ports:
            self.accept_errors.labels(port)
        for api_name, loaded in config.apis.items():
            api = loaded.model
            apps = [""] + [name for name, app in config.applications.items() if api_name in app.model.apis]
            for port in api.ports:
                self.upgrades.labels(port, api_name, "101")
                declared.update((port, api_name, app) for app in apps)
            for direction in DIRECTIONS:
                self.messages.labels(api_name, direction)
                self.payload_bytes.labels(api_name, direction)
                self.message_size.labels(api_name, direction)
            for stage in STAGES:
                self.upgrade_duration.labels(api_name, stage)
            self.connection_duration.labels(api_name)
            self.closes.labels(api_name, "1000")
            for endpoint in api.upstream.endpoints if api.upstream is not None else ():
                for reason in UPSTREAM_FAILURES:
                    self.upstream_failures.labels(api_name, endpoint_label(endpoint.url), reason)
        for key in declared:
            self.connections_active.labels(*key)
        for key in self._declared - declared:
            self._forget_if_idle(key)
        self._declared = declared
        self.generation.set(generation)
        self.config_served(digest, self._info[1] if self._info is not None else None, failed=False)

    def config_served(self, digest: str, commit: str | None, *, failed: bool) -> None:
        """``wsgate_config_info``: one series at 1, for the config serving now and the last reload's outcome."""
        labels = (digest, commit or "", "failed" if failed else "ok")
        if labels == self._info:
            return
        if self._info is not None:
            self.config_info.labels(*self._info).set(0)  # multiprocess files keep the old value: make it 0
            self.config_info.remove(*self._info)
        self.config_info.labels(*labels).set(1)
        self._info = labels

    # ---------------------------------------------------------- upgrades
    def upgrade(self, port: str, api: str, status: int, reason: str | None = None) -> None:
        """An upgrade's answer: 101, or a refusal with its error word."""
        self._upgrades[port, api, status].inc()
        if status != 101:
            self.refused.labels(port, api, reason or str(status)).inc()

    def stage(self, api: str, stage: str, seconds: float) -> None:
        self._stages[api, stage].observe(seconds)

    def upstream_failed(self, api: str, url: str, status: int, reason: str) -> None:
        kind = "timeout" if status == 504 else "refused" if "connection failed" in reason else "bad_response"
        self.upstream_failures.labels(api, endpoint_label(url), kind).inc()

    def integration_error(self, api: str, route: str, reason: str) -> None:
        """A message route's integration failed (a non-2xx status, a timeout, an unreachable upstream) or a message
        matched no route (route ``""``)."""
        self.integration_errors.labels(api, route, reason).inc()

    def accept_error(self, listener: str) -> None:
        """A listener's accept failed (gateway.edge.accept counts it; the listener pauses)."""
        self.accept_errors.labels(listener).inc()

    # ------------------------------------------------------- connections
    def opened(self, port: str, api: str, application: str) -> None:
        self._active[port, api, application].inc()

    def closed(self, port: str, conn: ConnectionContext, code: int | None, seconds: float) -> None:
        key = (port, conn.api, conn.application.name if conn.application else "")
        self._active[key].dec()
        if key not in self._declared:
            self._forget_if_idle(key)
        self._closes[conn.api, "none" if code is None else code].inc()
        self._durations[conn.api,].observe(seconds)
        self.flush_one(conn)

    def _forget_if_idle(self, key: tuple[str, str, str]) -> None:
        if self._active[key]._value.get() == 0:  # no public getter for one child's value
            self.connections_active.remove(*key)
            del self._active[key]

    def flush(self, conns: Iterable[ConnectionContext]) -> None:
        """Move the message counts the relays kept since the last batch into the series."""
        for conn in conns:
            self.flush_one(conn)

    def flush_one(self, conn: ConnectionContext) -> None:
        c = conn.counters
        messages_in, messages_out = c.messages_in - c.reported_messages_in, c.messages_out - c.reported_messages_out
        if messages_in or c.bytes_in != c.reported_bytes_in:
            self._batch(conn.api, "client", messages_in, c.bytes_in - c.reported_bytes_in)
            c.reported_messages_in, c.reported_bytes_in = c.messages_in, c.bytes_in
        if messages_out or c.bytes_out != c.reported_bytes_out:
            self._batch(conn.api, "server", messages_out, c.bytes_out - c.reported_bytes_out)
            c.reported_messages_out, c.reported_bytes_out = c.messages_out, c.bytes_out

    def _batch(self, api: str, direction: str, messages: int, payload: int) -> None:
        self._messages[api, direction].inc(messages)
        self._payload_bytes[api, direction].inc(payload)
        if messages <= 0:
            return
        # prometheus_client has no bulk observe: add ``messages`` observations of the mean size to its
        # (non-cumulative) bucket and the exact total to the sum, as ``observe`` would one by one.
        histogram = self._sizes[api, direction]
        index = bisect_left(_SIZE_BOUNDS, payload / messages)  # the first bound >= the mean; the last is +Inf
        histogram._buckets[index].inc(messages)
        histogram._sum.inc(payload)

    def flush_state(self, state: PolicyState | None) -> None:
        """Move what the message policies counted since the last batch (plain Counters) into the series, and show
        whether the shared state backend answers."""
        if state is None:
            return
        health = state.shared.health()
        self.state_backend_up.labels(health["backend"]).set(1 if health["healthy"] else 0)
        sources = ((state.rate_limits.exceeded, self.rate_limited), (state.violations, self.violations))
        for source, family in sources:
            reported = self._reported_policy_counts.setdefault(family._name, {})
            for key, total in list(source.items()):
                delta = total - reported.get(key, 0)
                if delta > 0:
                    family.labels(*key).inc(delta)
                    reported[key] = total

    def flush_push(self, hub: PushHub) -> None:
        """Move the push hub's counts since the last batch into the series; show queue depth and group sizes."""
        stats = hub.stats
        sources = ((stats.requests, self.push_requests), (stats.deliveries, self.push_deliveries),
                   (stats.dropped, self.push_dropped), (stats.cluster_errors, self.push_cluster_errors))
        for source, family in sources:
            reported = self._reported_push.setdefault(family._name, {})
            for key, total in list(source.items()):
                delta = total - reported.get(key, 0)
                if delta > 0:
                    family.labels(*(key if isinstance(key, tuple) else (key,))).inc(delta)
                    reported[key] = total
        self.push_queued.set(stats.queued)
        series: set[tuple[str, str]] = set()
        for api, sizes in hub.group_sizes().items():
            for kind, value in sizes.items():
                self.push_groups.labels(api, kind).set(value)
                series.add((api, kind))
        for gone in self._push_group_series - series:
            self.push_groups.labels(*gone).set(0)
        self._push_group_series = series

    def flush_health(self, health: HealthRegistry | None) -> None:
        """Show every endpoint's health and pending handshakes now, and count the transitions since the last batch."""
        if health is None:
            return
        series: set[tuple[str, str]] = set()
        for (api, url), endpoint in list(health.endpoints.items()):
            key = (api, endpoint_label(url))
            series.add(key)
            self.upstream_healthy.labels(*key).set(1 if endpoint.healthy else 0)
            self.upstream_pending.labels(*key).set(endpoint.pending)
        for key in self._health_series - series:  # endpoints a reload removed
            self.upstream_healthy.remove(*key)
            self.upstream_pending.remove(*key)
        self._health_series = series
        reported = self._reported_policy_counts.setdefault(self.upstream_transitions._name, {})
        for (api, url, state), total in list(health.transitions.items()):
            delta = total - reported.get((api, url, state), 0)
            if delta > 0:
                self.upstream_transitions.labels(api, endpoint_label(url), state).inc(delta)
                reported[(api, url, state)] = total

    # ------------------------------------------------------------ scrape
    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's aggregated in multiprocess mode."""
        directory = multiprocess_dir()
        if self.multiprocess and directory is not None:
            return render_directory(directory)
        return generate_latest(self.registry)


def render_directory(directory: str) -> bytes:
    """The series every process wrote to ``directory`` (multiprocess mode), aggregated: what the workers'
    supervisor serves as ``/metrics`` once each worker has flushed."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


class LabelledProcesses(Collector):
    """The ``process_*`` series of several processes (``/proc/PID``), each sample labelled ``worker=NAME``: the
    alert on open descriptors and the dashboard's panels read every worker, and the supervisor, alike."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for name, pid in self.pids.items():
            # A process gone meanwhile has no /proc entry: prometheus_client yields nothing for it.
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": name}, sample.value)
        yield from families.values()


def render_processes(pids: Mapping[str, int]) -> bytes:
    """``process_*`` of every process in ``pids`` (name -> pid), labelled by name, and this one's ``python_info``."""
    registry = CollectorRegistry()
    registry.register(LabelledProcesses(pids))
    PlatformCollector(registry=registry)
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """Multiprocess mode: a worker exited; drop its ``live*`` gauge files (the supervisor calls this)."""
    from prometheus_client import multiprocess

    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
