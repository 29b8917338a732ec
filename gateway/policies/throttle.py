"""Throttle: a limit on active connections per API or per application; past it, 503.

The counts live in the shared state (``gateway.state``): per process with
``state: memory``, across every worker and instance with ``state: redis``.

Limits per application: ``applications`` narrows whom ``max_connections``
applies to (the others pass untouched), and each of ``tiers`` gives its
applications their own ``max_connections`` (like Kong's consumer groups): per
application, each of them counts alone against the tier's number; per API,
the tier's applications share one count of their own, beside the API's.
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
        # Counted under the API's oldest name (`previous_names`, oldest first): a rename neither resets the count
        # nor splits it between the connections accepted before and after.
        previous = build.api.model.previous_names
        self.counted_as = previous[0] if previous else self.api
        self.shared = build.state.shared
        self._retry = (("Retry-After", str(spec.retry_after)),)
        self._applies = frozenset(spec.applications)  # empty: every application
        # application -> (tier name, its limit); validate refuses an application in two tiers
        self._tiers = {app: (name, tier.max_connections) for name, tier in spec.tiers.items()
                       for app in tier.applications}

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None | Awaitable[
            Rejection | None]:
        app = conn.application.name if conn.application else None
        tier = self._tiers.get(app) if app is not None and self._tiers else None
        if tier is None and self._applies and app not in self._applies:
            return None  # not one of the applications this throttle is for
        limit = tier[1] if tier is not None else self.spec.max_connections
        if self.spec.per == "application":
            who = app if app is not None else ANONYMOUS
        else:
            who = f"<tier:{tier[0]}>" if tier is not None else WHOLE_API
        key = slot_key(self.counted_as, who)
        taken = self.shared.acquire(key, limit, self.spec.on_state_error)
        if inspect.isawaitable(taken):
            return self._settle(taken, key, who, limit, conn)
        return self._decided(taken, key, who, limit, conn)

    async def _settle(self, taken: Awaitable[Taken], key: str, who: str, limit: int,
                      conn: ConnectionContext) -> Rejection | None:
        return self._decided(await taken, key, who, limit, conn)

    def _decided(self, taken: Taken, key: str, who: str, limit: int, conn: ConnectionContext) -> Rejection | None:
        if not taken:
            if who == WHOLE_API:
                scope = f"API {self.api}"
            elif who.startswith("<tier:"):
                scope = f"tier {who[6:-1]} on API {self.api}"
            else:
                scope = f"application {who} on API {self.api}"
            if taken is UNAVAILABLE:  # an outage, not a full limit: the operator must be able to tell them apart
                return Rejection(503, "state_unavailable",
                                 f"{scope}: state backend unavailable, connections refused (on_state_error: refuse)",
                                 self._retry)
            return Rejection(503, "throttled", f"{scope} has {limit} active connections, the limit", self._retry)
        released = False
        shared = self.shared

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                shared.release(key)

        conn.defer(release)
        return None
