"""One endpoint's health verdict and load counters: what routing reads and the upgrade counts.

A plain record, no I/O: the route table's endpoints hold one each (``candidates``
reads ``healthy``, ``pending`` and ``open``), the upstream connect and the
listener count into it, and :class:`gateway.serving.health.HealthRegistry`
makes them, keeps them across reloads and decides their verdicts. It lives
here, below the table, so the table can name it without importing the
serving part that runs the probes.
"""

from __future__ import annotations

import time


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
