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

from time import monotonic
from typing import TYPE_CHECKING

import structlog

from .base import DROP, Close, ConnectionContext, Delay, Message, MessageDecision, Policy, PolicyBuild
from .rate_buckets import ASK_POLL, Bucket, Limit, LimitKey, SharedBucket

if TYPE_CHECKING:
    from ..config.models import RateLimitPolicy

log = structlog.get_logger("wsgate.policies")

ANONYMOUS = "<anonymous>"  # no application name looks like this (names are [A-Za-z0-9._-])
RATE_LIMIT_CLOSE = Close(1008, "rate limit")


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
