"""Rate limit: messages and bytes per second in one direction, a token bucket per connection, application or API.

A bucket holds up to ``burst`` tokens and gains ``rate`` per second; a message
takes one message token and ``len(payload)`` byte tokens, both or neither.
When either is short the policy's action decides: :class:`Delay` for as long
as the missing tokens take to return (the relay stops reading the sender
meanwhile: backpressure, nothing lost), a drop (counted, logged once per
connection, optionally answered with ``error_message``) or a 1008 close.

Limits outlive a config: the settings (:class:`Limit`) and the shared buckets
live in :class:`RateLimits`, kept in the process-wide ``PolicyState``, keyed by
(API, direction, scope, position among the API's rate limits). When a
reload's table starts serving (``activate``), the new settings are copied into
that ``Limit`` in place, so connections accepted under the old config (which
keep their old policy objects) obey a changed limit at their next message,
without being closed; a reload that fails changes nothing. Per-application and per-API buckets are
shared by every connection of this process.

Cluster-wide: when the gateway's shared state is remote (Redis),
``RateLimits.backend`` is set and per-application and per-API limits use a
:class:`SharedBucket` instead: local tokens granted from the cluster's budget
(``take_budget``, a token bucket in the backend) ahead of need, topped up
when they run low and asked for at once when they run out (the message waits
for the answer, with its sender unread). Tokens exist only as grants from the
shared bucket, so the cluster never admits more than ``burst + rate * t`` in
any ``t`` seconds. The approximation goes the other way: each instance may hold
up to ``2 * rate * REFILL_SECONDS`` tokens (at most the burst) that another
instance cannot use, so with ``n`` instances the cluster may refuse up to
``n * 2 * rate * REFILL_SECONDS`` tokens' worth early; an instance whose ask
came back short answers "exceeded" from memory for ``REFILL_SECONDS`` before it
asks again. Per-connection limits never leave the process.
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

from .base import DROP, Close, ConnectionContext, Delay, Message, MessageDecision, Policy, PolicyBuild, Reply

if TYPE_CHECKING:  # state.py imports this module: keep it free of the config models (pydantic)
    from ..config.models import RateLimitPolicy

log = structlog.get_logger("wsgate.policies")

ANONYMOUS = "<anonymous>"  # no application name looks like this (names are [A-Za-z0-9._-])
RATE_LIMIT_CLOSE = Close(1008, "rate limit")
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


class RateLimit(Policy):
    type = "rate-limit"
    sync_messages = True  # never awaits: a delay is a decision the relay carries out

    def __init__(self, spec: RateLimitPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = api = build.api_name
        self.message_stages = frozenset({spec.direction})
        # Which of the API's rate limits this is: with the API's name, what keeps its buckets across reloads.
        position = [i for i, p in enumerate(p for p in build.api.model.policies if p.type == spec.type)
                    if p is spec][0]
        # Under the API's oldest name (`previous_names`, oldest first): a rename keeps its buckets and limits.
        previous = build.api.model.previous_names
        self.key: LimitKey = (previous[0] if previous else api, spec.direction, spec.per, position)
        self.settings = Limit()
        self.settings.update(spec, build.api.model.limits.max_message_size)
        self.limits = limits = build.state.rate_limits
        self.limit = limits.limit(self.key, self.settings)
        self._buckets: dict[ConnectionContext, Bucket | SharedBucket] = {}
        self._exceeded: set[ConnectionContext] = set()  # connections already logged as exceeding
        # Limits per application: whom the policy's numbers apply to (empty: everyone), and each tier's own
        # numbers (the policy's where the tier sets none), kept across reloads like the policy's own.
        self._applies = frozenset(spec.applications)
        self._exempt: set[ConnectionContext] = set()  # connections of applications this limit is not for
        self._tier_of = {app: name for name, tier in spec.tiers.items() for app in tier.applications}
        self._tier_settings: dict[str, tuple[LimitKey, Limit, Limit]] = {}  # tier -> (key, settings, shared)
        for name, tier in spec.tiers.items():
            merged = spec.model_copy(update={field: value for field, value in tier.model_dump().items()
                                             if field != "applications" and value is not None})
            settings = Limit()
            settings.update(merged, build.api.model.limits.max_message_size)
            key: LimitKey = (api, spec.direction, f"{spec.per}:tier:{name}", position)
            self._tier_settings[name] = (key, settings, limits.limit(key, settings))

    def activate(self) -> None:
        if self.limit is not self.settings:
            self.limit.assign(self.settings)  # live connections of older tables get the new limit too
        for _, settings, shared in self._tier_settings.values():
            if shared is not settings:
                shared.assign(settings)

    def on_message(self, message: Message, conn: ConnectionContext) -> MessageDecision:
        bucket = self._buckets.get(conn)
        if bucket is None:
            if conn in self._exempt:
                return message
            opened = self._open(conn)
            if opened is None:
                return message
            bucket = opened
        size = message.size()
        wait = bucket.take(size, monotonic())
        if not wait:
            return message
        if wait < 0.0:  # PENDING: the shared budget is being asked; decide when it answered
            return Delay(ASK_POLL)
        limit = bucket.limit  # the tier's, or the policy's own
        action = limit.action
        if action == "delay":
            return Delay(wait)
        self.limits.exceeded[(self.api, message.direction, action)] += 1
        if conn not in self._exceeded:
            self._exceeded.add(conn)
            log.warning("rate_limit_exceeded", api=self.api, policy=self.type, connection=conn.id,
                        direction=message.direction, per=self.spec.per, action=action)
        if action == "close":
            return RATE_LIMIT_CLOSE
        return limit.reply or DROP

    def _open(self, conn: ConnectionContext) -> Bucket | SharedBucket | None:
        """The connection's bucket: its own, or the one its application, its tier or the API shares (None: this
        limit is not for its application)."""
        per = self.spec.per
        app = conn.application.name if conn.application is not None else None
        tier = self._tier_of.get(app) if app is not None and self._tier_of else None
        if tier is None and self._applies and app not in self._applies:
            self._exempt.add(conn)
            conn.defer(lambda: self._exempt.discard(conn))
            return None
        key, limit = (self._tier_settings[tier][0], self._tier_settings[tier][2]) if tier is not None \
            else (self.key, self.limit)
        bucket: Bucket | SharedBucket
        if per == "connection":
            bucket = Bucket(limit, monotonic())
        elif per == "application":
            bucket = self.limits.bucket(key, app if app is not None else ANONYMOUS, limit)
        else:
            bucket = self.limits.bucket(key, "", limit)
        self._buckets[conn] = bucket

        def forget() -> None:
            self._buckets.pop(conn, None)
            self._exceeded.discard(conn)

        conn.defer(forget)
        return bucket
