"""Throttle: a limit on active connections per API or per application; past it, 503.

The counts live in the shared state (``gateway.state``): per process with
``state: memory``, across every worker and instance with ``state: redis``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable

from ..config.models import ThrottlePolicy
from ..state.base import UNAVAILABLE, Taken
from .base import ConnectionContext, Policy, PolicyBuild, Rejection, UpgradeRequest

# No application name can look like this (names are [A-Za-z0-9._-]), so it never clashes with one.
ANONYMOUS = "<anonymous>"
WHOLE_API = "<api>"


def slot_key(api: str, who: str) -> str:
    """The shared-state key of one throttle's count (names hold no '/', so the pair cannot be ambiguous)."""
    return f"{api}/{who}"


class Throttle(Policy):
    type = "throttle"

    def __init__(self, spec: ThrottlePolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = build.api_name
        self.shared = build.state.shared
        self._retry = (("Retry-After", str(spec.retry_after)),)

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None | Awaitable[
            Rejection | None]:
        if self.spec.per == "application":
            who = conn.application.name if conn.application else ANONYMOUS
        else:
            who = WHOLE_API
        key = slot_key(self.api, who)
        taken = self.shared.acquire(key, self.spec.max_connections, self.spec.on_state_error)
        if inspect.isawaitable(taken):
            return self._settle(taken, key, who, conn)
        return self._decided(taken, key, who, conn)

    async def _settle(self, taken: Awaitable[Taken], key: str, who: str, conn: ConnectionContext) -> Rejection | None:
        return self._decided(await taken, key, who, conn)

    def _decided(self, taken: Taken, key: str, who: str, conn: ConnectionContext) -> Rejection | None:
        if not taken:
            scope = f"API {self.api}" if who == WHOLE_API else f"application {who} on API {self.api}"
            if taken is UNAVAILABLE:  # an outage, not a full limit: the operator must be able to tell them apart
                return Rejection(503, "state_unavailable",
                                 f"{scope}: state backend unavailable, connections refused (on_state_error: refuse)",
                                 self._retry)
            return Rejection(503, "throttled", f"{scope} has {self.spec.max_connections} active connections, the limit",
                             self._retry)
        released = False
        shared = self.shared

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                shared.release(key)

        conn.defer(release)
        return None
