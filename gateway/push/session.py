"""One pushable connection: its groups, its bounded queue of pushed messages, and what it was sent.

A push goes into the relay at once while the server-to-client direction
takes messages (``MessageRelay.accepts_push``). While the client reads slowly
(its write buffer is full) or a policy holds that direction back, pushes wait
here, at most ``push.queue`` of them; the next one is dropped or closes the
connection with 1013, as the API says. The queue drains, in order, when the
relay says the direction is writable again. Memory per connection is thus
bounded by the relay's write buffer plus ``queue`` messages.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Literal

from ..relay.message import MessageRelay

if TYPE_CHECKING:
    from ..config.models import APIPush
    from ..policies.base import ConnectionContext
    from .stats import PushStats

Outcome = Literal["delivered", "queued", "dropped", "closed", "gone"]
OVERFLOW_CODE = 1013
OVERFLOW_REASON = "push queue full"


class Session:
    """A connection of an API with ``push``, as the push hub holds it."""

    __slots__ = ("conn", "relay", "settings", "groups", "queue", "since", "pushed", "stats")

    def __init__(self, conn: ConnectionContext, relay: MessageRelay, settings: APIPush, groups: tuple[str, ...],
                 stats: PushStats) -> None:
        self.conn = conn
        self.relay = relay
        self.settings = settings  # the API's push block as the connection was accepted with
        self.groups: set[str] = set(groups)
        self.queue: deque[tuple[bool, bytes]] = deque()
        self.since = time.time()
        self.pushed = 0  # messages handed to the relay
        self.stats = stats
        relay.on_writable = self.drain

    @property
    def id(self) -> str:
        return self.conn.id

    @property
    def api(self) -> str:
        return self.conn.api

    def offer(self, is_text: bool, data: bytes) -> Outcome:
        """Push one message: into the relay now, or into the queue, or overflow."""
        relay = self.relay
        if not relay.client_open:
            return "gone"
        if not self.queue and relay.accepts_push:
            self._deliver(is_text, data)
            return "delivered"
        if len(self.queue) >= self.settings.queue:
            self.stats.dropped[(self.api, self.settings.on_overflow)] += 1
            if self.settings.on_overflow == "close":
                self.queue.clear()
                relay.close(OVERFLOW_CODE, OVERFLOW_REASON)
                return "closed"
            return "dropped"
        self.queue.append((is_text, data))
        self.stats.queued += 1
        return "queued"

    def drain(self) -> None:
        """The relay takes messages again: hand over the queue, in order, while it does."""
        queue, relay = self.queue, self.relay
        while queue and relay.accepts_push:
            is_text, data = queue.popleft()
            self.stats.queued -= 1
            self._deliver(is_text, data)
        if queue and not relay.client_open:
            self.stats.queued -= len(queue)
            queue.clear()

    def _deliver(self, is_text: bool, data: bytes) -> None:
        self.pushed += 1
        self.stats.deliveries[self.api] += 1
        self.relay.inject(is_text, data)

    def forget(self) -> None:
        """The connection ended: what still waits is lost (at most once)."""
        self.stats.queued -= len(self.queue)
        self.queue.clear()
        self.relay.on_writable = None

    def describe(self) -> dict[str, object]:
        conn = self.conn
        counters = conn.counters
        application = conn.application
        return {
            "id": conn.id,
            "api": conn.api,
            "application": application.name if application is not None else None,
            "identified_by": application.identified_by if application is not None else None,
            "connected_since": round(self.since, 3),
            "messages_in": counters.messages_in,
            "messages_out": counters.messages_out,
            "bytes_in": counters.bytes_in,
            "bytes_out": counters.bytes_out,
            "pushed": self.pushed,
            "queued": len(self.queue),
            "groups": sorted(self.groups),
        }
