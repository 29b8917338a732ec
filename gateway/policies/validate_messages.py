"""Validate messages: each message is checked against the API's `messages` definitions for its direction.

A message matches when any definition of its direction (``origin``) does: the
same type (text or binary), within the definition's ``max_size``, and for a
definition with a schema, a JSON text payload the schema accepts. Schemas are
compiled once, when the policy is built (every reload). With a
``discriminator`` field, a JSON message's value for it picks the definitions
whose schema fixes that value (``const`` or a one-value ``enum``): one lookup,
not a scan; definitions that fix no value are tried as well.

A violation has a kind, and the kind gives the close code under ``enforce``
with ``on_violation: close``: ``type`` (no definition of that type) 1007,
``size`` 1009, ``schema`` (not JSON, or no schema accepts it) 1008. ``log``
passes the message and records the violation: in the API's invocation log
(the first log-invocation policy's file) when it has one, in the gateway log
otherwise; both at most ``LOGGED_PER_CONNECTION`` times per connection. Every
violation is counted for ``/metrics``.

A text payload the validator cannot read is a ``schema`` violation like any
other (the configured mode handles it, ``log`` never closes): not JSON, JSON
nested deeper than the parser goes (Python's recursion limit, ~1,000 levels),
or an object with a duplicate key. Python keeps the last value of a duplicate
key while other parsers keep the first, and the message is forwarded as the
text it came in as: an upstream that keeps the first would act on a value
nobody validated.

A text payload longer than ``offload_above`` is parsed and checked in a worker
process, not on the event loop: a 1.7 MB JSON message costs 40-140 ms to parse
and validate, and every other connection of the process would wait for it. A
thread does not help: json's parser and jsonschema-rs hold the GIL for the
whole call, and the loop then waits for the GIL instead (measured with
``benchmarks/message_relay_micro.py --big-neighbour``). The payload crosses a
pipe (pickled in the executor's feeder thread, not on the loop); the worker
compiles each direction's definitions once (keyed by their JSON). The relay
holds the connection's later messages of that direction until the answer is
in, so their order is kept. If the worker dies, it is replaced and the message
is checked on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import structlog

from ..config.message_schemas import CompiledSchema
from ..config.models import MessageDefinition, ValidateMessagesPolicy
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
    wire_size,
)
from .log_invocation import writer_for
from .state import LogWriter, encode_record, record_dict

log = structlog.get_logger("wsgate.policies")

CLOSE_CODES = {"type": 1007, "size": 1009, "schema": 1008}
LOGGED_PER_CONNECTION = 10  # violations recorded per connection; the counter keeps counting past it


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the object as a dict, unless a key repeats (one dict and one len per object)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return document


# Takes the payload of a text message, a str (Message: "str when is_text").
_loads: Callable[[str | bytes], Any] = json.JSONDecoder(object_pairs_hook=_unique_object).decode  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # "type", "size" or "schema"
    detail: str  # one sentence for people; never the payload


class _Definition:
    __slots__ = ("name", "is_text", "max_size", "schema")

    def __init__(self, model: MessageDefinition) -> None:
        self.name = model.name
        self.is_text = model.type == "text"
        self.max_size = model.max_size
        self.schema = CompiledSchema(model.json_schema) if model.json_schema is not None and self.is_text else None


def _fixed_value(schema: dict[str, Any] | None, field: str) -> tuple[bool, Any]:
    """(True, value) when ``schema`` fixes ``field`` of a JSON object to one value."""
    prop = ((schema or {}).get("properties") or {}).get(field)
    if isinstance(prop, dict):
        if "const" in prop:
            return True, prop["const"]
        enum = prop.get("enum")
        if isinstance(enum, list) and len(enum) == 1:
            return True, enum[0]
    return False, None


class Matcher:
    """The definitions of one direction; ``check`` says why a message matches none of them (or None)."""

    def __init__(self, definitions: Sequence[MessageDefinition], discriminator: str | None = None) -> None:
        compiled = [(_Definition(d), d.json_schema) for d in definitions]
        self.text = [d for d, _ in compiled if d.is_text]
        self.binary = [d for d, _ in compiled if not d.is_text]
        self.discriminator = discriminator
        # A text definition with no size limit and no schema accepts every text message.
        self.any_text = any(d.max_size is None and d.schema is None for d in self.text)
        # Shortcuts decided once: most APIs have no max_size anywhere, or a schema on every text definition.
        self.sized = any(d.max_size is not None for d, _ in compiled)
        self.schemaless_text = any(d.schema is None for d in self.text)
        # Whether a text message may be parsed as JSON: what is worth checking off the event loop.
        self.parses = not self.any_text and (bool(self.discriminator and self.text)
                                             or any(d.schema is not None for d in self.text))
        self.by_value: dict[Any, list[_Definition]] = {}
        self.unkeyed: list[_Definition] = []
        if discriminator:
            for d, schema in compiled:
                if not d.is_text:
                    continue
                fixed, value = _fixed_value(schema, discriminator)
                if fixed and _hashable(value):
                    self.by_value.setdefault(value, []).append(d)
                else:
                    self.unkeyed.append(d)

    def check(self, is_text: bool, payload: str | bytes) -> Violation | None:
        if is_text:
            if self.any_text:
                return None
            definitions = self.text
        else:
            definitions = self.binary
        kind = "text" if is_text else "binary"
        if not definitions:
            return Violation("type", f"no {kind} message is declared in this direction")
        document: Any = _UNPARSED
        if is_text and self.discriminator:
            try:  # inlined (here and below): a function call is a tenth of a small message's parse
                document = _loads(payload)
            except ValueError as exc:
                document = _unparsed(exc)
            except RecursionError:
                document = _TOO_DEEP
            if type(document) is dict:
                value = document.get(self.discriminator)
                keyed = self.by_value.get(value, _NONE) if _hashable(value) else _NONE
                definitions = [*keyed, *self.unkeyed] if self.unkeyed else keyed
                if not definitions:
                    return Violation("schema", f"no message is declared with {self.discriminator} = {_short(value)}")
        fitting = definitions
        if self.sized:
            size = wire_size(is_text, payload)
            fitting = [d for d in definitions if d.max_size is None or size <= d.max_size]
            if not fitting:
                largest = max(d.max_size or 0 for d in definitions)
                return Violation("size", f"{size} bytes, over the largest declared {kind} message ({largest} bytes)")
        if not is_text or (self.schemaless_text and any(d.schema is None for d in fitting)):
            return None
        if document is _UNPARSED:
            try:
                document = _loads(payload)
            except ValueError as exc:
                document = _unparsed(exc)
            except RecursionError:
                document = _TOO_DEEP
        if document is _NOT_JSON:
            return Violation("schema", "not JSON, and every declared text message has a JSON Schema")
        if type(document) is Violation:
            return document
        try:
            for d in fitting:
                if d.schema.is_valid(document):  # type: ignore[union-attr]
                    return None
            first = fitting[0]
            explained = first.schema.explain(document)  # type: ignore[union-attr]
        except RecursionError:  # jsonschema (without jsonschema-rs) walks a deep document recursively
            return Violation("schema", "JSON nested too deep to check")
        return Violation("schema", f"not a valid '{first.name}' message {explained}")


_NONE: list[_Definition] = []  # never mutated
_UNPARSED = object()
_NOT_JSON = object()


_TOO_DEEP = Violation("schema", "JSON nested too deep to check")


def _unparsed(exc: ValueError) -> Any:
    """What a failed parse leaves: the Violation of a JSON text no schema may read (a duplicate key), or
    ``_NOT_JSON``. A definition without a schema still accepts it, as any text."""
    if isinstance(exc, DuplicateKey):
        return Violation("schema", f"JSON object with a duplicate key {_short(exc.key)}")
    return _NOT_JSON


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _invocation_log(build: PolicyBuild) -> tuple[LogWriter | None, bool]:
    """The writer of the API's first log-invocation policy, and whether its records also go to the log."""
    for spec in build.api.model.policies:
        if spec.type == "log-invocation":
            return writer_for(spec, build)
    return None, False


# ----------------------------------------------------------------- the worker process

_worker: ProcessPoolExecutor | None = None  # this process's one validation worker, made on first use
_worker_matchers: dict[str, Matcher] = {}  # in the worker: the matchers it compiled, by their key
_WORKER_MATCHERS = 256


def _worker_pool() -> ProcessPoolExecutor:
    """The process big payloads are checked in, for every policy of this gateway process.

    One process: enough to take the work off the loop (the loop checked one message at a time before). A
    fork server, not a fork: this process has threads (log writers, executors), which a fork copies mid-step.
    """
    global _worker
    if _worker is None:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        _worker = ProcessPoolExecutor(max_workers=1, mp_context=context)
    return _worker


def _replace_worker(broken: ProcessPoolExecutor) -> None:
    global _worker
    if _worker is broken:
        _worker = None
        broken.shutdown(wait=False, cancel_futures=True)


def _check_in_worker(key: str, definitions: tuple[MessageDefinition, ...], discriminator: str | None,
                     payload: str | bytes) -> Violation | None:
    """``Matcher.check`` of a text payload, in the worker (``key`` names the matcher it keeps)."""
    matcher = _worker_matchers.get(key)
    if matcher is None:
        if len(_worker_matchers) >= _WORKER_MATCHERS:
            _worker_matchers.clear()  # reloads changed the definitions many times: start over
        matcher = _worker_matchers[key] = Matcher(definitions, discriminator)
    return matcher.check(True, payload)


def _ready() -> bool:
    return True


def _matcher_key(definitions: Sequence[MessageDefinition], discriminator: str | None) -> str:
    dumped = [d.model_dump(mode="json", by_alias=True) for d in definitions]
    text = json.dumps([dumped, discriminator], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
        self._for_worker = {direction: (_matcher_key(defs, spec.discriminator), defs, spec.discriminator)
                            for direction, defs in by_direction.items()}

    def activate(self) -> None:
        if not self.sync_messages:
            _worker_pool().submit(_ready)  # start the worker now, not on the first big message

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
        pool = _worker_pool()
        try:
            violation = await asyncio.wrap_future(
                pool.submit(_check_in_worker, key, definitions, discriminator, message.payload))
        except BrokenProcessPool:  # the worker died (killed, out of memory): a new one for the next message
            log.warning("validation_worker_failed", api=self.api, policy=self.type, connection=conn.id)
            _replace_worker(pool)
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
