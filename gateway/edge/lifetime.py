"""Per-API connection lifetime: an idle timeout and a maximum lifetime, each closing with 1001 and a reason.

Idle means no data message either way: the relays' message counters (which
pings and pongs never touch) have not moved. One timer per connection checks
them every quarter of the idle timeout, so a connection is closed between
``idle_timeout`` and 1.25 × ``idle_timeout`` after its last message, whichever
relay carries it. The maximum lifetime is one timer from the 101 on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from ..policies.base import ConnectionContext

log = structlog.get_logger("wsgate.lifetime")

CODE = 1001
IDLE_REASON = "idle timeout"
LIFETIME_REASON = "maximum lifetime reached"


class Lifetime:
    """The timers of one connection; cancelled (through ``conn.defer``) when it ends, however it ends."""

    __slots__ = ("conn", "close", "idle", "seen", "active_at", "idle_timer", "lifetime_timer")

    def __init__(self, conn: ConnectionContext, close: Callable[[int, str], None], idle: float | None,
                 max_lifetime: float | None) -> None:
        self.conn = conn
        self.close = close
        self.idle = idle
        self.seen = self._messages()
        self.active_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(idle / 4, self._check_idle) if idle is not None else None
        self.lifetime_timer = (loop.call_later(max_lifetime, self._end, LIFETIME_REASON)
                               if max_lifetime is not None else None)
        conn.defer(self.cancel)

    def _messages(self) -> int:
        counters = self.conn.counters
        return counters.messages_in + counters.messages_out

    def _check_idle(self) -> None:
        assert self.idle is not None
        now = time.monotonic()
        seen = self._messages()
        if seen != self.seen:
            self.seen, self.active_at = seen, now
        elif now - self.active_at >= self.idle:
            self.idle_timer = None
            self._end(IDLE_REASON)
            return
        self.idle_timer = asyncio.get_running_loop().call_later(self.idle / 4, self._check_idle)

    def _end(self, reason: str) -> None:
        log.info("connection_lifetime_over", api=self.conn.api, connection=self.conn.id, reason=reason)
        self.cancel()
        self.close(CODE, reason)

    def cancel(self) -> None:
        for timer in (self.idle_timer, self.lifetime_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.lifetime_timer = None


def watch(conn: ConnectionContext, close: Callable[[int, str], None], idle: float | None,
          max_lifetime: float | None) -> Lifetime | None:
    """Start the API's lifetime limits for a relayed connection (None when it has neither)."""
    if idle is None and max_lifetime is None:
        return None
    return Lifetime(conn, close, idle, max_lifetime)
