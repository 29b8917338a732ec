"""Rate-limit buckets: the settings and token buckets every rate limit of the process counts in.

They outlive a config, so they live in the process-wide ``PolicyState``
(``state.py``), which is why they are here and not in ``rate_limit.py``: the
policy imports the state it is built with, and the state holds these buckets.
How they are used (scopes, actions, the cluster-wide budget) is in
:mod:`gateway.policies.rate_limit`'s docstring.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import Counter
from collections.abc import Awaitable
from time import monotonic
from typing import TYPE_CHECKING, Protocol

import structlog

from .decisions import Reply

if TYPE_CHECKING:
    from ..config.models import RateLimitPolicy

log = structlog.get_logger("wsgate.policies")

# Tokens a bucket may be short and still grant: float error, and asyncio waking a timer up to its clock
# resolution early, must not turn a delay into a second one.
SLACK = 1e-6


class Limit:
    """The settings of one rate limit, updated in place by a reload (every bucket of it reads them)."""

    __slots__ = ("message_rate", "message_burst", "byte_rate", "byte_burst", "action", "reply")

    def __init__(self) -> None:
        self.message_rate = 0.0  # 0: not counted
        self.message_burst = 0.0
        self.byte_rate = 0.0
        self.byte_burst = 0.0
        self.action = "delay"
        self.reply: Reply | None = None

    def assign(self, other: Limit) -> None:
        """Take ``other``'s settings (a reload's new limit, for every bucket already using this one)."""
        for name in self.__slots__:
            setattr(self, name, getattr(other, name))

    def update(self, spec: RateLimitPolicy, max_message_size: int | None) -> None:
        self.message_rate = spec.messages_per_second or 0.0
        self.message_burst = float(spec.burst_messages or max(1.0, self.message_rate))
        self.byte_rate = spec.bytes_per_second or 0.0
        self.byte_burst = float(spec.burst_bytes or max(self.byte_rate, max_message_size or 0))
        self.action = spec.action
        self.reply = Reply(spec.error_message) if spec.error_message is not None else None


class Bucket:
    """Message and byte tokens for one scope; starts full."""

    __slots__ = ("limit", "messages", "bytes", "stamp")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.messages = limit.message_burst
        self.bytes = limit.byte_burst
        self.stamp = now

    def take(self, size: int, now: float) -> float:
        """Take one message and ``size`` bytes; 0.0 when granted, else the seconds until both are there."""
        limit = self.limit
        elapsed = now - self.stamp
        self.stamp = now
        wait = 0.0
        rate = limit.message_rate
        if rate:
            messages = self.messages + elapsed * rate
            if messages > limit.message_burst:
                messages = limit.message_burst  # also clamps a bucket whose burst was tightened by a reload
            self.messages = messages
            if messages < 1.0 - SLACK:
                wait = (1.0 - messages) / rate
        rate = limit.byte_rate
        if rate:
            tokens = self.bytes + elapsed * rate
            if tokens > limit.byte_burst:
                tokens = limit.byte_burst
            self.bytes = tokens
            # A message larger than the whole burst passes once the bucket is full and leaves it in debt
            # (validate refuses such a burst when the API's largest message is known).
            need = size if size < limit.byte_burst else limit.byte_burst
            if tokens < need - SLACK:
                wait = max(wait, (need - tokens) / rate)
        if wait:
            return wait
        self.messages -= 1.0
        self.bytes -= size
        return 0.0


REFILL_SECONDS = 0.05  # how far ahead an instance takes tokens from the shared budget, and how often it asks
PENDING = -1.0  # SharedBucket.take: asked the shared budget; offer the message again when it answered
ASK_POLL = 0.002  # seconds between looks at a pending answer


class BudgetBackend(Protocol):
    """The shared state's budget: a token bucket per key, in the backend (``gateway/state``)."""

    def take_budget(self, key: str, want: int, rate_per_s: float, burst: int) -> int | Awaitable[int]:
        """Take up to ``want`` tokens of bucket ``key``; how many were granted (memory answers at once)."""


class SharedBucket:
    """Message and byte tokens granted to this process from a cluster-wide budget (see the module docstring)."""

    __slots__ = ("limit", "messages", "bytes", "backend", "key", "asking", "short_until", "_task")

    def __init__(self, limit: Limit, backend: BudgetBackend, key: str) -> None:
        self.limit = limit
        self.messages = 0.0
        self.bytes = 0.0
        self.backend = backend
        self.key = key
        self.asking = False
        self.short_until = 0.0  # until then, a miss is an excess: the last ask came back short
        self._task: asyncio.Task[None] | None = None

    def take(self, size: int, now: float) -> float:
        """0.0 granted; :data:`PENDING` while the shared budget is being asked; else seconds until it is asked
        again (exceeded)."""
        limit = self.limit
        need_bytes = int(min(size, limit.byte_burst)) if limit.byte_rate else 0
        if self._grant(size, need_bytes):
            if not self.asking and now >= self.short_until and self._low():
                self.ask(now)  # top up ahead of need
            return 0.0
        if self.asking:
            return PENDING
        if now < self.short_until:
            return self.short_until - now
        self.ask(now, need_bytes)
        if self.asking:
            return PENDING
        if self._grant(size, need_bytes):  # the backend answered at once
            return 0.0
        return max(self.short_until - now, REFILL_SECONDS)

    def _grant(self, size: int, need_bytes: int) -> bool:
        limit = self.limit
        if (limit.message_rate and self.messages < 1.0 - SLACK) or self.bytes < need_bytes - SLACK:
            return False
        if limit.message_rate:
            self.messages -= 1.0
        if limit.byte_rate:
            self.bytes -= size
        return True

    def _low(self) -> bool:
        limit = self.limit
        return bool((limit.message_rate and self.messages < _target(limit.message_rate, limit.message_burst, 1) / 2)
                    or (limit.byte_rate and self.bytes < _target(limit.byte_rate, limit.byte_burst, 0) / 2))

    def ask(self, now: float, need_bytes: int = 0) -> None:
        """Ask the shared budget for what tops this process up to ``2 * rate * REFILL_SECONDS`` tokens."""
        limit = self.limit
        asks: list[tuple[str, int, float, int, Awaitable[int] | int]] = []
        for suffix, rate, burst, held, need in (("messages", limit.message_rate, limit.message_burst, self.messages, 1),
                                                ("bytes", limit.byte_rate, limit.byte_burst, self.bytes, need_bytes)):
            if not rate:
                continue
            want = max(math.ceil(_target(rate, burst, need) - held), math.ceil(need - held), 0)
            if want:
                answer = self.backend.take_budget(f"{self.key}:{suffix}", want, rate, int(burst))
                asks.append((suffix, want, rate, int(burst), answer))
        if any(inspect.isawaitable(answer) for *_, answer in asks):
            self.asking = True
            self._task = asyncio.get_running_loop().create_task(self._collect(asks))
            return
        self._credit([(suffix, want, answer) for suffix, want, _, _, answer in asks], now)  # type: ignore[misc]

    async def _collect(self, asks: list[tuple[str, int, float, int, Awaitable[int] | int]]) -> None:
        granted = []
        try:
            for suffix, want, _, _, answer in asks:
                granted.append((suffix, want, await answer if inspect.isawaitable(answer) else answer))
        except Exception:
            log.exception("rate_limit_budget_failed", key=self.key)
        finally:
            self.asking = False
            self._credit(granted, monotonic())

    def _credit(self, granted: list[tuple[str, int, int]], now: float) -> None:
        short = False
        for suffix, want, got in granted:
            if suffix == "messages":
                self.messages += got
            else:
                self.bytes += got
            short = short or got < want
        if short or not granted:
            self.short_until = now + REFILL_SECONDS


def _target(rate: float, burst: float, need: float) -> float:
    """Tokens an instance holds ahead of need: two refill intervals' worth, within the burst, at least ``need``."""
    return max(min(burst, 2 * rate * REFILL_SECONDS), need, 1.0)


LimitKey = tuple[str, str, str, int]  # API, direction, scope, position among the API's rate limits


class RateLimits:
    """Every rate limit's settings and shared buckets, for the life of the process; and what they refused."""

    def __init__(self, backend: BudgetBackend | None = None) -> None:
        self.limits: dict[LimitKey, Limit] = {}
        self.shared: dict[tuple[LimitKey, str], Bucket | SharedBucket] = {}
        # The shared state's budget when it is remote: per-application and per-API limits become cluster-wide.
        self.backend = backend
        self.exceeded: Counter[tuple[str, str, str]] = Counter()  # (api, direction, action) -> messages

    def limit(self, key: LimitKey, settings: Limit) -> Limit:
        """The shared limit for ``key``: ``settings`` itself when the key is new, else the one live connections
        use (``RateLimit.activate`` gives it the new settings once the new table serves)."""
        return self.limits.setdefault(key, settings)

    def bucket(self, key: LimitKey, who: str, limit: Limit) -> Bucket | SharedBucket:
        bucket = self.shared.get((key, who))
        if bucket is None:
            if self.backend is None:
                bucket = Bucket(limit, monotonic())
            else:
                name = "|".join(("rate", *map(str, key), *((who,) if who else ())))
                bucket = SharedBucket(limit, self.backend, name)
                bucket.ask(monotonic())  # the first message should find tokens here
            self.shared[(key, who)] = bucket
        return bucket
