"""One periodic task per gateway that finds silent and dead relay legs.

A timer per connection would cost a handle and a callback per connection per
interval; one sweeper walking every registered leg once per tick costs a few
hundred nanoseconds per leg and nothing per message. Relays only record
``last_rx`` when bytes arrive.

A leg registered here provides:

- ``last_rx``: ``time.monotonic()`` of the last bytes received from the peer;
- ``ka_sent``: when the sweeper last pinged it (the sweeper writes it);
- ``reading_paused``: True while the relay holds the peer back for flow
  control (its silence then means nothing, so it is neither pinged nor killed);
- ``keepalive_ping(payload)``: send a ping with this payload at the next frame boundary;
- ``keepalive_dead()``: the peer said nothing for interval + timeout.

Pings carry :data:`PING_PREFIX` and a 4-byte counter; relays strip the pongs
that echo them, so peers see only their own pings and pongs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import structlog

log = structlog.get_logger("wsgate.relay.keepalive")

PING_PREFIX = b"wsgate-ka"
MAX_TICK = 1.0


class KeepaliveLeg(Protocol):
    last_rx: float
    ka_sent: float

    @property
    def reading_paused(self) -> bool:
        """True while the gateway holds this leg's reading back (silence is then ours, not the peer's)."""
        ...

    def keepalive_ping(self, payload: bytes) -> None: ...

    def keepalive_dead(self) -> None: ...


class KeepaliveSweeper:
    """Pings legs silent for ``interval``; reports legs silent for ``interval + timeout``."""

    __slots__ = ("_loop", "_legs", "_params", "_tick", "_task", "_counter", "_closed")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._legs: dict[Any, tuple[float, float]] = {}
        self._params: dict[tuple[float, float], tuple[float, float]] = {}  # one tuple per distinct setting
        self._tick = MAX_TICK
        self._task: asyncio.Task[None] | None = None
        self._counter = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._legs)

    @property
    def tick(self) -> float:
        """Seconds between sweeps: min(1 s, half the smallest registered interval)."""
        return self._tick

    def register(self, leg: KeepaliveLeg, interval: float, timeout: float) -> None:
        """Watch ``leg``; pass the same ``(interval, timeout)`` values for many legs freely."""
        if self._closed:
            return
        params = (interval, timeout)
        self._legs[leg] = self._params.setdefault(params, params)
        if interval / 2 < self._tick:
            self._tick = interval / 2
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name="wsgate-keepalive")

    def unregister(self, leg: KeepaliveLeg) -> None:
        """Stop watching ``leg`` (idempotent)."""
        self._legs.pop(leg, None)
        if not self._legs:
            # The next registration sets the tick again from its own interval.
            self._tick = MAX_TICK

    def close(self) -> None:
        """Stop the periodic task (the gateway is stopping)."""
        self._closed = True
        self._legs.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.sweep(time.monotonic())
            except Exception:  # a bug in one relay must not stop keepalive for all
                log.exception("keepalive_sweep_failed")

    def sweep(self, now: float) -> None:
        """One pass over every leg (called by the task; public for tests and benchmarks)."""
        dead = []
        for leg, (interval, timeout) in list(self._legs.items()):
            if leg.reading_paused:
                continue
            last_rx = leg.last_rx
            silent = now - last_rx
            if silent < interval:
                continue
            if silent >= interval + timeout:
                dead.append(leg)
            elif leg.ka_sent <= last_rx:
                leg.ka_sent = now
                self._counter = (self._counter + 1) & 0xFFFFFFFF
                try:
                    leg.keepalive_ping(PING_PREFIX + self._counter.to_bytes(4, "big"))
                except Exception:
                    log.exception("keepalive_ping_failed")
        for leg in dead:
            self.unregister(leg)
            try:
                leg.keepalive_dead()
            except Exception:
                log.exception("keepalive_dead_failed")
