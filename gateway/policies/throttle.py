"""Throttle: a limit on active connections per API or per application; past it, 503."""

from __future__ import annotations

from ..config.models import ThrottlePolicy
from .base import ConnectionContext, Policy, PolicyBuild, Rejection, UpgradeRequest

# No application name can look like this (names are [A-Za-z0-9._-]), so it never clashes with one.
ANONYMOUS = "<anonymous>"
WHOLE_API = "<api>"


class Throttle(Policy):
    type = "throttle"

    def __init__(self, spec: ThrottlePolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = build.api_name
        self.counters = build.state.throttle
        self._retry = (("Retry-After", str(spec.retry_after)),)

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        if self.spec.per == "application":
            who = conn.application.name if conn.application else ANONYMOUS
        else:
            who = WHOLE_API
        key = (self.api, who)
        if not self.counters.acquire(key, self.spec.max_connections):
            scope = f"API {self.api}" if who == WHOLE_API else f"application {who} on API {self.api}"
            return Rejection(503, "throttled", f"{scope} has {self.spec.max_connections} active connections, the limit",
                             self._retry)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.counters.release(key)

        conn.defer(release)
        return None
