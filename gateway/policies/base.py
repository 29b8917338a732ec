"""The contract between the runtime and the policies.

A policy is built once per compiled route from its validated config model and
takes part in one or both stages:

- upgrade stage: ``on_upgrade(request, conn)`` returns a :class:`Rejection`
  (the upgrade fails with that HTTP status) or ``None`` to go on. It may be a
  coroutine function (hostname lookups are). Resources a policy takes for the
  connection (a throttle slot) are given back through ``conn.defer(...)``,
  which the runtime runs exactly once when the connection ends, whatever the
  stage: refused later in the chain, upstream failure, or a normal close.
- message stage: ``on_message(message, conn)`` returns the message (maybe a
  new one), :data:`DROP`, a :class:`Reply` (drop it and answer the sender),
  a :class:`Delay` (hold it, and stop reading its sender, for that long; the
  relay then asks the same policy again) or a :class:`Close`. It may be a coroutine function
  (operator transforms may be async); the relay awaits only when it must.

Observers (log-invocation) also get ``on_outcome`` (the upgrade's final
status) and ``on_close`` (code, reason and counters).

Return values are decisions; an exception is a bug: the upgrade gets 500, an
open connection closes with 1011, and the log names the policy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers

from ..build.tls import ClientCertificate as ClientCertificate
from ..common.connection_ids import ids

# The decisions are base's vocabulary: every policy imports them from here.
from .decisions import DROP as DROP
from .decisions import Close as Close
from .decisions import Delay as Delay
from .decisions import Direction as Direction
from .decisions import Message as Message
from .decisions import MessageDecision as MessageDecision
from .decisions import Rejection as Rejection
from .decisions import Reply as Reply
from .decisions import wire_size as wire_size

if TYPE_CHECKING:  # type-only: importing this module must not load the config models (pydantic)
    from ..build.apps import AppIndex
    from ..config.models import API
    from ..config.tree import Loaded
    from .state import PolicyState

@dataclass(frozen=True, slots=True)
class ApplicationRef:
    """The identified application, as it travels with a connection."""

    name: str
    identified_by: str  # "api_key", "ip", "hostname", "jwt", "basic", "certificate", "authorizer" or "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything the identify policy found out about who a connection is, set once at its upgrade.

    Read by the listener (``expires_at``: close the connection when its credential expires), the reload's
    impact (``key_digest``, ``hostname``: revoke it when the credential goes; ``entry_fingerprint`` from the
    admin's ``/connections`` for ``plan --from``) and everything that names the application. Never a
    credential: digests and fingerprints only.
    """

    application: ApplicationRef  # the application and the method that identified it
    key_digest: str | None = None  # the presented credential's digest (gateway/build/credentials.py); in-process only
    entry_fingerprint: str | None = None  # the configuration entry it matched: what /connections shows
    hostname: str | None = None  # the reverse-resolved name that identified it (``by: [hostname]``)
    expires_at: float | None = None  # wall-clock time the credential (a JWT) stops being valid, leeway included


@dataclass(slots=True)
class UpgradeRequest:
    """A read-only view of the client's HTTP upgrade request.

    ``query`` is the parsed query string (every value of every parameter).
    ``headers`` is a case-insensitive websockets ``Headers``.
    """

    path: str
    query: Mapping[str, list[str]]
    headers: Headers  # case-insensitive; identify removes the Authorization lines it consumes
    peer: tuple[str, int]
    port_name: str
    secure: bool  # arrived over TLS
    client_cert: ClientCertificate | None = None  # verified by the TLS layer (mTLS ports only)


def parse_query(query: str) -> dict[str, list[str]]:
    """``UpgradeRequest.query`` from a raw query string: how every policy reads parameters (the API key among
    them). Only ``&`` separates; ``gateway.common.redaction`` drops credentials with that in mind."""
    return parse_qs(query, keep_blank_values=True)




@dataclass(slots=True)
class Counters:
    messages_in: int = 0  # client -> server
    messages_out: int = 0  # server -> client
    bytes_in: int = 0
    bytes_out: int = 0
    # What the metrics already hold of the above (they take the difference in batches, see gateway.operations.metrics).
    reported_messages_in: int = 0
    reported_messages_out: int = 0
    reported_bytes_in: int = 0
    reported_bytes_out: int = 0


@dataclass(slots=True, eq=False)
class ConnectionContext:
    """Everything known about one client connection, from its first byte to its close."""

    api: str
    api_version: str
    port_name: str
    peer: tuple[str, int]
    path: str
    # ``<instance>.<worker>.<counter>``: unique across the cluster, names its owner (gateway/common/connection_ids.py).
    id: str = field(default_factory=ids.next)
    identity: Identity | None = None  # set by the identify policy
    started: float = field(default_factory=time.monotonic)
    counters: Counters = field(default_factory=Counters)
    # Request metadata safe to show to transforms and logs (credentials removed).
    metadata: dict[str, Any] = field(default_factory=dict)
    # The message routes this connection has used (APIs with `routes`): a removed route drains only these.
    routes: set[str] | None = None
    # Groups the connect-time authorizer named for this connection (identify `by: [authorizer]`): what push
    # group rules may join it to.
    groups: list[str] = field(default_factory=list)
    # The verified JWT's claims (identify by jwt), for push group rules (`from: claim`); never logged.
    claims: Mapping[str, Any] | None = None
    _deferred: list[Callable[[], None]] = field(default_factory=list)

    def used_route(self, key: str) -> None:
        """The connection sent a message to route ``key`` (once per route: the router asks on a new lane)."""
        if self.routes is None:
            self.routes = set()
        self.routes.add(key)

    @property
    def application(self) -> ApplicationRef | None:
        """The identified application (None before identify ran, or with no identify policy)."""
        identity = self.identity
        return identity.application if identity is not None else None

    @application.setter
    def application(self, application: ApplicationRef | None) -> None:
        # An application without further facts (tests, and policies that only name one).
        self.identity = Identity(application) if application is not None else None

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when this connection ends, however it ends."""
        self._deferred.append(callback)

    def release(self) -> None:
        """Run the deferred callbacks (idempotent). Called by the runtime only."""
        callbacks, self._deferred = self._deferred, []
        for callback in reversed(callbacks):
            callback()



@dataclass(frozen=True, slots=True)
class PolicyBuild:
    """What every policy is built with besides its own spec: ``Policy(spec, build)`` for all of them."""

    api: Loaded[API]  # the API whose chain the policy is in
    apps: AppIndex  # the applications of the config being compiled
    state: PolicyState  # process-wide state that outlives a reload (throttle counters, log writers)
    root: Path  # the config tree's root: transform modules are found there or next to the API file

    @property
    def api_name(self) -> str:
        return self.api.model.name

    @property
    def search_paths(self) -> tuple[Path, ...]:
        return (self.root.resolve(), self.api.base_dir.resolve())


class Policy:
    """Base class: override the hooks a policy takes part in; every policy is built as ``Policy(spec, build)``.

    ``message_stages`` names the directions whose messages the policy must
    see; an API whose chain leaves it empty for every policy is relayed as
    bytes (the fast path).
    """

    type: str = ""
    message_stages: frozenset[Direction] = frozenset()
    # True when on_message never returns an awaitable: the relay then skips its per-message check.
    sync_messages: bool = False

    def on_upgrade(
        self, request: UpgradeRequest, conn: ConnectionContext
    ) -> Rejection | None | Awaitable[Rejection | None]:
        return None

    def on_message(self, message: Message, conn: ConnectionContext) -> MessageDecision | Awaitable[MessageDecision]:
        return message

    def on_outcome(self, conn: ConnectionContext, status: int, error: str | None, reason: str | None) -> None:
        """The upgrade's final answer: 101, or the refusal's status."""

    def on_close(self, conn: ConnectionContext, code: int | None, reason: str) -> None:
        """The connection ended (after a 101)."""

    def activate(self) -> None:
        """The route table this policy was built into now serves new upgrades (start, or a reload's swap).

        Settings shared with live connections of older tables change here, never while building: a build can
        still fail (a later API, a port that cannot listen), and a failed reload must change nothing.
        """

    def close(self) -> None:
        """The route this policy belongs to is gone for good (release files, tasks)."""
