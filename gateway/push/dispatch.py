"""Where a push request goes: this process, or the process its connection id names.

A connection id names its owner (gateway/common/connection_ids.py), so a
request for one connection goes to exactly one process: answered here when
this process holds it, else through the ``Remote`` this process has (Redis
with ``state: redis``; the supervisor's control channel for a sibling worker
without Redis). A publish is delivered here and handed to the remote for the
rest of the cluster, without waiting for those deliveries.

Answers: 404 for an id that is not ours or a connection that is not there;
410 when its owner is gone (no process listens for it); 503 when the cluster
cannot be reached (Redis down), with the local deliveries a publish made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..common.connection_ids import Owner, parse
from .hub import PushHub
from .messages import NOT_FOUND, Publish, Reply, Request

GONE = Reply.error(410, "gone", "the gateway process that held this connection is gone")
UNREACHABLE = "the cluster (Redis or the workers' supervisor) cannot be reached now"


class Unreachable(Exception):
    """The remote transport cannot carry the request now (Redis down, supervisor gone)."""


class Remote(Protocol):
    """How requests reach other processes of the gateway."""

    def reaches(self, owner: Owner) -> bool:
        """Whether ``owner`` is a process this transport can address (else it is gone: 410)."""
        ...

    async def call(self, owner: Owner, request: Request) -> Reply:
        """The owner's answer; 410 when no process listens for it; raises Unreachable."""
        ...

    async def publish(self, message: Publish) -> int:
        """Hand ``message`` to every other process; how many took it. Raises Unreachable."""
        ...


class Dispatcher:
    """Answers push requests for this process, whatever holds the connection."""

    def __init__(self, hub: PushHub, me: Callable[[], Owner], remote: Remote | None = None) -> None:
        self.hub = hub
        self.me = me  # read per request: a worker names itself after the dispatcher was built
        self.remote = remote

    async def call(self, request: Request) -> Reply:
        owner = parse(request.connection)
        if owner is None:
            return NOT_FOUND
        if owner == self.me():
            return self.hub.handle(request)
        remote = self.remote
        if remote is None or not remote.reaches(owner):
            return GONE
        try:
            return await remote.call(owner, request)
        except Unreachable as exc:
            self.hub.stats.cluster_errors[request.op] += 1
            return Reply.error(503, "cluster_unavailable", f"{UNREACHABLE}: {exc}")

    async def publish(self, message: Publish) -> Reply:
        local = self.hub.publish(message)
        remote = self.remote
        if remote is None:
            return Reply(200, {"delivered": local, "cluster": "none"})
        try:
            processes = await remote.publish(Publish(message.api, message.group, message.is_text, message.data,
                                                     origin=self.me().key))
        except Unreachable as exc:
            self.hub.stats.cluster_errors["publish"] += 1
            return Reply.error(503, "cluster_unavailable", f"{UNREACHABLE}: {exc}; delivered here only",
                               delivered=local)
        return Reply(200, {"delivered": local, "cluster": "handed", "processes": processes})
