"""One view of a running gateway, whatever its process count: what the admin listener (and the dashboard) read.

``GatewayView`` is the protocol; a single process (``gateway.serving.runtime.Gateway``) and the supervisor of
``wsgate run --workers N`` (``gateway.workers.supervisor.Supervisor``, aggregating its workers' typed replies)
implement it. The admin takes a view and nothing else: one route table, and every answer has the same shape
with or without workers, because both sides build it from the records below and their ``to_dict``.

The admin listener itself is made by whoever runs the gateway (``AdminFactory``; the serving layer knows it only
as an ``AdminListener``), which raises ``StartError`` when the admin settings refuse a start.

Each record's ``to_dict`` is its JSON answer: keys present whether or not the field applies here (``null``,
``[]`` or ``false`` when it does not), so a client reads one shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from ..changes.impact import Accepted
from ..config.diagnostics import Diagnostic
from ..config.tree import Config

# "reload-failed": serving, but the last reload failed and the Gateway resource's
# admin.unready_after_failed_reload asks to be taken out of rotation for it.
Status = Literal["ready", "starting", "stopping", "reload-failed"]
Counts = Mapping[str, Any]  # the registry's counts: total, upgrading, and per port/API/application maps of ints


class _FieldsRecord:
    """Base of a record whose JSON answer is its fields as they are."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(cast(Any, self))


@dataclass(frozen=True)
class WorkerState(_FieldsRecord):
    """One worker of a supervisor, as the supervisor last heard from it (never asked while an answer waits)."""

    index: int
    pid: int | None
    generation: int
    ready: bool
    restarts: int = 0
    error: str | None = None
    connections: int | None = None  # relayed connections it last reported


@dataclass(frozen=True)
class LastReload:
    """The last reload attempt in short: whether it failed and why (the first error, and how many more)."""

    ok: bool
    at: float
    trigger: str
    error: str | None = None


@dataclass(frozen=True)
class ConfigStatus:
    """What this gateway serves (digest, generation, the git commit of the tree, ``--values`` files) and whether
    its last reload failed: in ``/readyz`` and ``/reload``, so a rollout sees a replica stuck on an old config."""

    digest: str
    generation: int
    commit: str | None
    values: tuple[str, ...] = ()
    last_reload: LastReload | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "generation": self.generation, "commit": self.commit,
                "values": list(self.values),
                "last_reload": dataclasses.asdict(self.last_reload) if self.last_reload is not None else None}


@dataclass(frozen=True)
class Readiness:
    """``/readyz``: whether to send traffic here, from state the view holds (answers while workers drain)."""

    status: Status
    generation: int
    state: Mapping[str, Any] | None = None  # the shared-state backend's health (None before it is open)
    split: bool = False  # workers serve different generations
    workers: tuple[WorkerState, ...] = ()
    config: ConfigStatus | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "generation": self.generation,
                "state": dict(self.state) if self.state is not None else None,
                "config": self.config.to_dict() if self.config is not None else None,
                "split": self.split, "workers": [w.to_dict() for w in self.workers]}


@dataclass(frozen=True)
class PlanCounts:
    """How many resources a reload added, changed and removed (the plan's summary line)."""

    add: int = 0
    change: int = 0
    destroy: int = 0


@dataclass(frozen=True)
class ReloadOutcome:
    """One reload attempt, as ``POST /reload`` answers it and ``GET /reload`` lists it.

    What apply reports (``ok``, ``error``, ``problems``, ``plan``, ``drained``, ``revoked``...) and what the
    reload sequence adds (``trigger``, ``at``, the digest and generation serving after it) in one value; a
    supervisor's adds how many workers applied it and their generations.
    """

    ok: bool
    trigger: str = ""
    at: float = 0.0
    generation: int = 0
    digest: str = ""
    noop: bool = False
    error: str | None = None
    diagnostics: tuple[Diagnostic, ...] = ()
    old_digest: str | None = None
    problems: tuple[str, ...] = ()  # applied, but something of it (a port, a certificate) was kept as it was
    plan: PlanCounts | None = None
    drained: int = 0
    revoked: int = 0
    workers_applied: int | None = None  # None: one process
    errors: Mapping[int, str] = field(default_factory=dict)  # worker index -> why it did not apply the reload
    split: bool = False
    workers: tuple[WorkerState, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "trigger": self.trigger, "at": self.at, "generation": self.generation,
                "digest": self.digest, "noop": self.noop, "error": self.error,
                "diagnostics": [d.to_dict() for d in self.diagnostics], "old_digest": self.old_digest,
                "problems": list(self.problems),
                "plan": dataclasses.asdict(self.plan) if self.plan is not None else None,
                "drained": self.drained, "revoked": self.revoked, "workers_applied": self.workers_applied,
                "errors": {str(k): v for k, v in self.errors.items()}, "split": self.split,
                "workers": [w.to_dict() for w in self.workers]}


@dataclass(frozen=True)
class ReloadStatusSnapshot:
    """``GET /reload``: how many reloads were tried, the last one, the recent ones (oldest first)."""

    reloads: int
    last_reload: ReloadOutcome | None
    history: tuple[ReloadOutcome, ...]
    generation: int
    split: bool = False
    workers: tuple[WorkerState, ...] = ()
    config: ConfigStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reloads": self.reloads,
                "last_reload": self.last_reload.to_dict() if self.last_reload is not None else None,
                "history": [o.to_dict() for o in self.history], "generation": self.generation,
                "config": self.config.to_dict() if self.config is not None else None,
                "split": self.split, "workers": [w.to_dict() for w in self.workers]}


@dataclass(frozen=True)
class ConfigSnapshot:
    """``GET /config``: the serving config with its digest and generation, and where the running echo servers
    differ from it (``drift``). The admin renders it: each resource as JSON with its credentials redacted."""

    config: Config
    digest: str
    generation: int
    loaded_at: float
    drift: Mapping[str, list[dict[str, object]]]


@dataclass(frozen=True)
class ListedConnection:
    """One relayed connection as ``GET /connections`` lists it: what it was accepted with, its id (what the push
    API, the logs and ``POST /connections/close`` name it by) and the push groups it is in."""

    accepted: Accepted
    id: str
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.accepted.to_dict(), "id": self.id, "groups": list(self.groups)}


@dataclass(frozen=True)
class ConnectionsSnapshot:
    """``GET /connections``: counts per port, API and application, and what each relayed connection was
    accepted with (``plan --from`` decides each as a reload would; credentials as entry fingerprints only),
    with its id and push groups."""

    counts: Counts
    connections: tuple[ListedConnection, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "connections": [a.to_dict() for a in self.connections]}


@dataclass(frozen=True)
class WorkerEndpoint(_FieldsRecord):
    """One worker's own view of an endpoint: its passive mark and its load."""

    index: int
    healthy: bool
    passive_cool_down: float
    pending: int
    open: int


@dataclass(frozen=True)
class EndpointState:
    """An endpoint of an API: takes new connections or not, the active verdict and why since when, its load."""

    url: str
    healthy: bool
    active_ok: bool
    since: float
    reason: str | None
    last_probe: str | None
    passive_cool_down: float
    pending: int
    open: int
    workers: tuple[WorkerEndpoint, ...] = ()  # per worker, with workers

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "workers"},
                "workers": [w.to_dict() for w in self.workers]}


@dataclass(frozen=True)
class UpstreamsSnapshot:
    """``GET /upstreams``: every API's endpoints; ``prober``: the worker running the active checks (None: this
    process)."""

    apis: Mapping[str, tuple[EndpointState, ...]]
    prober: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"prober": self.prober,
                "apis": {api: [e.to_dict() for e in endpoints] for api, endpoints in sorted(self.apis.items())}}


class GatewayView(Protocol):
    """What the admin listener reads and asks of a running gateway (one process, or a supervisor's workers)."""

    def readiness(self) -> Readiness:
        """Without waiting on anything: probes must be answered while connections drain."""
        ...

    def config_snapshot(self) -> ConfigSnapshot: ...

    async def connections_snapshot(self) -> ConnectionsSnapshot: ...

    async def close_connection(self, id: str, code: int, reason: str) -> bool:
        """Close the relayed connection ``id`` with ``code`` and ``reason`` (``POST /connections/close``): False
        when no process of this gateway holds it."""
        ...

    async def upstreams_snapshot(self) -> UpstreamsSnapshot: ...

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, brought up to date first."""
        ...

    async def reload(self, trigger: str = "manual") -> ReloadOutcome: ...

    def reload_status(self) -> ReloadStatusSnapshot: ...

    def accept_error(self, listener: str) -> None:
        """Count a failed accept on the admin's listener (out of descriptors)."""
        ...


class StartError(Exception):
    """A start the config or the machine refuses (a listener that cannot be opened, admin settings that do not
    hold): one log line for the operator, not a traceback. Raised by the runtime, the supervisor and an
    ``AdminFactory``."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    @classmethod
    def cannot_listen(cls, name: str, host: str, number: int, exc: OSError) -> StartError:
        """A Port's address is taken or not this machine's (a single gateway's bind, a supervisor's hold)."""
        return cls(f"port '{name}' cannot listen on {host}:{number}: {exc.strerror or exc}",
                   "another process holds that address, or the host is not one of this machine's: "
                   "stop the other process or change `port`/`host` in the Port resource")

    @classmethod
    def admin_cannot_listen(cls, host: str, number: int, exc: OSError) -> StartError:
        """The admin listener's address is taken (a single gateway's, or a workers' supervisor's)."""
        return cls(f"the admin listener cannot listen on {host}:{number}: {exc.strerror or exc}",
                   "stop the other process, or change `admin.port` in the Gateway resource (or --admin)")


class AdminListener(Protocol):
    """The admin listener as the gateway serving it sees it (``gateway.operations.admin.AdminServer``): the
    serving layer starts, stops and refreshes it, and never imports it."""

    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def refresh(self, config: Config) -> list[str]:
        """Re-read its token file and certificate after a reload; problems as text (the last good ones stay)."""
        ...


# (the view it serves, host, port, the config whose Gateway resource holds its token and TLS, the environment) ->
# the listener, not started; raises StartError when the admin settings refuse the start.
AdminFactory = Callable[[GatewayView, str, int, Config, Mapping[str, str] | None], AdminListener]
