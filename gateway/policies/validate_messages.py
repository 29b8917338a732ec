"""Validate messages: each message is checked against the API's `messages` definitions for its direction.

Matching (type, size, schema, discriminator, unreadable JSON, duplicate keys)
is ``message_matcher.Matcher``'s; this module decides what a violation does.

A violation has a kind, and the kind gives the close code under ``enforce``
with ``on_violation: close``: ``type`` (no definition of that type) 1007,
``size`` 1009, ``schema`` (not JSON, or no schema accepts it) 1008. ``log``
passes the message and records the violation: in the API's invocation log
(the first log-invocation policy's file) when it has one, in the gateway log
otherwise; both at most ``LOGGED_PER_CONNECTION`` times per connection. Every
violation is counted for ``/metrics``.

A text payload the matcher cannot read (not JSON, nested too deep, a
duplicate key) is a ``schema`` violation like any other: the configured mode
handles it (``log`` never closes) and the metric counts it.

A text payload longer than ``offload_above`` is parsed and checked in the
validation worker process (``validation_worker``), not on the event loop. The
relay holds the connection's later messages of that direction until the answer
is in, so their order is kept. If the worker dies, it is replaced and the
message is checked on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from concurrent.futures.process import BrokenProcessPool

import structlog

from ..config.models import ValidateMessagesPolicy
from .base import (
    DROP,
    Close,
    ConnectionContext,
    Direction,
    Message,
    MessageDecision,
    Policy,
    PolicyBuild,
    Reply,
)
from .log_invocation import writer_for
from .message_matcher import Matcher, Violation
from .state import LogWriter, encode_record, record_dict
from .validation_worker import check_in_worker, matcher_key, ready, replace_worker, worker_pool

log = structlog.get_logger("wsgate.policies")

CLOSE_CODES = {"type": 1007, "size": 1009, "schema": 1008}
LOGGED_PER_CONNECTION = 10  # violations recorded per connection; the counter keeps counting past it


def _invocation_log(build: PolicyBuild) -> tuple[LogWriter | None, bool]:
    """The writer of the API's first log-invocation policy, and whether its records also go to the log."""
    for spec in build.api.model.policies:
        if spec.type == "log-invocation":
            return writer_for(spec, build)
    return None, False


class ValidateMessages(Policy):
    type = "validate-messages"

    def __init__(self, spec: ValidateMessagesPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = build.api_name
        definitions = build.api.model.messages
        writer, echo = _invocation_log(build)
        self.modes: dict[str, str] = {"client": spec.client, "server": spec.server}
        self.message_stages = frozenset(d for d in ("client", "server") if self.modes[d] != "off")
        by_direction = {direction: tuple(d for d in definitions if d.origin == direction)
                        for direction in self.message_stages}
        self.matchers = {direction: Matcher(by_direction[direction], spec.discriminator)
                         for direction in self.message_stages}
        self.violations = build.state.violations
        self.writer = writer
        self._echo = record_dict if echo else None
        self._reply = Reply(spec.error_message) if spec.error_message is not None else None
        self._logged: Counter[ConnectionContext] = Counter()
        # Only a direction whose text is parsed is worth the worker; without one, on_message never awaits (the
        # relay then skips its per-message awaitable check).
        self._offload_above = spec.offload_above
        self.sync_messages = spec.offload_above is None or not any(m.parses for m in self.matchers.values())
        # What the worker needs to build the same matcher: the definitions, and a key it keeps it under.
        self._for_worker = {} if self.sync_messages else {
            direction: (matcher_key(defs, spec.discriminator), defs, spec.discriminator)
            for direction, defs in by_direction.items()}

    def activate(self) -> None:
        if not self.sync_messages:
            worker_pool().submit(ready)  # start the worker now, not on the first big message

    def on_message(self, message: Message, conn: ConnectionContext) -> MessageDecision | Awaitable[MessageDecision]:
        matcher = self.matchers[message.direction]
        payload = message.payload
        if self._offload_above is not None and len(payload) > self._offload_above and message.is_text \
                and matcher.parses:
            return self._check_off_loop(matcher, message, conn)
        violation = matcher.check(message.is_text, payload)
        if violation is None:
            return message
        return self._violated(message, conn, violation)

    async def _check_off_loop(self, matcher: Matcher, message: Message, conn: ConnectionContext) -> MessageDecision:
        """``check`` in the worker process; the verdict's bookkeeping back on the loop."""
        key, definitions, discriminator = self._for_worker[message.direction]
        pool = worker_pool()
        try:
            violation = await asyncio.wrap_future(
                pool.submit(check_in_worker, key, definitions, discriminator, message.payload))
        except BrokenProcessPool:  # the worker died (killed, out of memory): a new one for the next message
            log.warning("validation_worker_failed", api=self.api, policy=self.type, connection=conn.id)
            replace_worker(pool)
            violation = matcher.check(True, message.payload)
        if violation is None:
            return message
        return self._violated(message, conn, violation)

    def _violated(self, message: Message, conn: ConnectionContext, violation: Violation) -> MessageDecision:
        direction = message.direction
        mode = self.modes[direction]
        action = "log" if mode == "log" else self.spec.on_violation
        self.violations[(self.api, direction, violation.kind, action)] += 1
        self._record(conn, direction, violation, action)
        if mode == "log":
            return message
        if action == "close":
            return Close(CLOSE_CODES[violation.kind], f"message violates its definition ({violation.kind})")
        return self._reply or DROP

    def _forget(self, conn: ConnectionContext) -> None:
        self._logged.pop(conn, None)

    def _record(self, conn: ConnectionContext, direction: Direction, violation: Violation, action: str) -> None:
        logged = self._logged[conn]
        if logged > LOGGED_PER_CONNECTION:
            return
        self._logged[conn] = logged + 1
        if logged == 0:
            conn.defer(lambda: self._forget(conn))
        if logged == LOGGED_PER_CONNECTION:
            log.warning("message_violations_not_recorded", api=self.api, policy=self.type,
                        connection=conn.id)
            return
        fields = {"api": self.api, "connection": conn.id, "direction": direction, "kind": violation.kind,
                  "detail": violation.detail, "action": action}
        if self.writer is None:
            log.warning("message_violation", policy=self.type, **fields)
            return
        record = {"record": "violation", "ts": time.time(),
                  "application": conn.application.name if conn.application else None, **fields}
        self.writer.write((encode_record, self._echo, record))
