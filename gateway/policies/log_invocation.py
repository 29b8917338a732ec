"""Log invocation: transaction records of upgrades, messages and closes.

Records go to a background writer (``PolicyState.log_writers``). Without the
echo through structlog, a short text message record (no masking, no
compression) is one string format on the event loop, and upgrade and close
records one ``json`` call; those lines reach the writer in batches
(``LogWriter.write_line``). Any other record is one tuple on the writer's
deque, measured, masked, truncated, compressed and JSON-encoded in the
writer's thread. File writes and rotation always happen in the thread.
Credentials never get here: the runtime strips them from the metadata first.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from ..config.models import LogInvocationPolicy
from .base import ConnectionContext, Direction, Message, Policy, PolicyBuild
from .log_sinks import sinks_for
from .masking import Masker, Unmaskable
from .state import LogWriter, encode_record, record_dict

NORMAL_CLOSES = frozenset({1000, 1001})


def writer_for(spec: LogInvocationPolicy, build: PolicyBuild) -> tuple[LogWriter, bool]:
    """The transaction-file writer of a log-invocation policy (with its syslog and OTLP sinks), and whether its
    records also go to the structured log: without any destination that is where they go; with one, only when
    asked (it costs per record)."""
    path = build.api.resolve(spec.file) if spec.file else None
    echo = spec.stdout if spec.stdout is not None else not (spec.file or spec.syslog or spec.otlp)
    destinations = json.dumps([d.model_dump(mode="json") if d is not None else None for d in (spec.syslog, spec.otlp)])
    writer = build.state.log_writers.get(path, spec.max_file_bytes, spec.backups, destinations,
                                         lambda: sinks_for(spec, os.environ))
    return writer, echo
_JSON_ESCAPED = bytes(range(0x20)) + b'"\\\x7f'  # what json.dumps escapes in ASCII text
_LONG = 256  # from this length on, checking for nothing to escape beats escaping character by character
_PREFIX_CACHE_LIMIT = 4096  # live connections whose constant record fields stay pre-encoded (on_close forgets one)


class LogInvocation(Policy):
    type = "log-invocation"
    sync_messages = True  # on_message never returns an awaitable (read by the message relay)

    def __init__(self, spec: LogInvocationPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        loaded = build.api
        self.api = loaded.model.name
        self.version = loaded.model.version
        stages: set[Direction] = set()
        if spec.store_client_messages:
            stages.add("client")
        if spec.store_server_messages:
            stages.add("server")
        self.message_stages = frozenset(stages)
        self.only_failures = spec.frequency == "on-failure"
        self.writer: LogWriter
        self.writer, stdout = writer_for(spec, build)
        self._echo_record = record_dict if stdout else None
        self._echo_message = self._message_dict if stdout else None
        self._write = self.writer.write
        # Short text message records, and (without the structlog echo) upgrade and close records, are encoded on
        # the loop: cheaper than the writer thread's wake-up and GIL hand-off (see LogWriter). Anything long,
        # binary, masked or compressed is encoded in the thread, where it does not hold up the relay.
        self._write_line = self.writer.write_line if self.writer.path is not None and not stdout else None
        self._inline_messages = self._write_line is not None and not spec.mask and not spec.compress
        # Each live connection's constant record fields, JSON-encoded, made once on the loop: the text record's
        # middle per direction, and under "prefix" the part a thread-encoded record starts with.
        self._heads: dict[ConnectionContext, dict[str, str]] = {}
        self._inline_below = min(_LONG, spec.max_payload_bytes + 1)  # short, untruncated text: one format
        self._mask = Masker(spec.mask)  # applied in the writer thread, like all payload encoding

    def _base(self, record: str, conn: ConnectionContext) -> dict[str, Any]:
        return {
            "record": record,
            "ts": time.time(),
            "api": self.api,
            "version": self.version,
            "application": conn.application.name if conn.application else None,
            "connection": conn.id,
            "peer": conn.peer[0],
        }

    def on_outcome(self, conn: ConnectionContext, status: int, error: str | None, reason: str | None) -> None:
        if self.only_failures and status == 101:
            return
        record = self._base("upgrade", conn)
        record.update(status=status, accepted=status == 101, error=error, reason=reason,
                      path=conn.path, query=conn.metadata.get("query", ""), port=conn.port_name)
        if self._write_line is not None:
            self._write_line(encode_record((None, None, record)))
        else:
            self._write((encode_record, self._echo_record, record))

    def on_message(self, message: Message, conn: ConnectionContext) -> Message:
        if not self.only_failures:
            heads = self._heads.get(conn) or self._heads_for(conn)
            payload = message.payload
            if (self._inline_messages and type(payload) is str and len(payload) < self._inline_below
                    and payload.isascii()):
                # The common record, byte for byte what _encode_message makes of it, in one format.
                self.writer.write_line(
                    f'{{"record":"message","ts":{time.time()!r}{heads[message.direction]}{len(payload)},'
                    f'"payload":{_json_str(payload)},"encoding":"text"}}'.encode("ascii"))
            else:
                # The payload is immutable (str or bytes); the rest of the record is made in the writer's thread.
                self._write((self._encode_message, self._echo_message, conn, time.time(), message.direction,
                             message.is_text, payload, heads["prefix"]))
        return message

    def _heads_for(self, conn: ConnectionContext) -> dict[str, str]:
        """The constant middle of a text message record of ``conn``, per direction (on the event loop)."""
        heads = self._heads
        if len(heads) >= _PREFIX_CACHE_LIMIT:
            heads.clear()
        prefix = self._prefix(conn)
        made = heads[conn] = {direction: f'{prefix}"{direction}","type":"text","size":'
                              for direction in ("client", "server")}
        made["prefix"] = prefix
        return made

    def _prefix(self, conn: ConnectionContext) -> str:
        application = conn.application.name if conn.application else None
        return (f',"api":{json.dumps(self.api)},"version":{json.dumps(self.version)},'
                f'"application":{json.dumps(application)},"connection":{json.dumps(conn.id)},'
                f'"peer":{json.dumps(conn.peer[0])},"direction":')

    def on_close(self, conn: ConnectionContext, code: int | None, reason: str) -> None:
        self._heads.pop(conn, None)
        if self.only_failures and code in NORMAL_CLOSES:
            return
        c = conn.counters
        record = self._base("close", conn)
        record.update(code=code, reason=reason, duration=round(time.monotonic() - conn.started, 6),
                      messages_in=c.messages_in, messages_out=c.messages_out, bytes_in=c.bytes_in,
                      bytes_out=c.bytes_out)
        if self._write_line is not None:
            self._write_line(encode_record((None, None, record)))
        else:
            self._write((encode_record, self._echo_record, record))

    # In the writer's thread -------------------------------------------------------------------------

    def _encode_message(self, item: tuple[Any, ...]) -> bytes:
        """The message record as compact JSON, byte for byte what ``json.dumps`` makes of ``_message_dict``."""
        _, _, _, ts, direction, is_text, payload, prefix = item
        size, text, encoding, withheld = self._payload(is_text, payload)
        head = (f'{{"record":"message","ts":{ts!r}{prefix}{_json_str(direction)},'
                f'"type":"{"text" if is_text else "binary"}","size":{size},"payload":')
        if withheld is not None:
            return f'{head}null,"encoding":"{encoding}","payload_withheld":{_json_str(withheld)}}}'.encode("ascii")
        tail = f',"encoding":"{encoding}"}}'
        if len(text) >= _LONG and text.isascii():
            raw = text.encode("ascii")
            if len(raw.translate(None, _JSON_ESCAPED)) == len(raw):
                # Nothing to escape: the payload's bytes go in as they are (escaping is ~1.5 ns a character).
                return b"".join((head.encode("ascii"), b'"', raw, b'"', tail.encode("ascii")))
        return f"{head}{_json_str(text)}{tail}".encode("ascii")

    def _message_dict(self, item: tuple[Any, ...]) -> dict[str, Any]:
        _, _, conn, ts, direction, is_text, payload, _ = item
        size, text, encoding, withheld = self._payload(is_text, payload)
        record: dict[str, Any] = {
            "record": "message",
            "ts": ts,
            "api": self.api,
            "version": self.version,
            "application": conn.application.name if conn.application else None,
            "connection": conn.id,
            "peer": conn.peer[0],
            "direction": direction,
            "type": "text" if is_text else "binary",
            "size": size,
            "payload": text if withheld is None else None,
            "encoding": encoding,
        }
        if withheld is not None:
            record["payload_withheld"] = withheld
        return record

    def _payload(self, is_text: bool, payload: str | bytes) -> tuple[int, str, str, str | None]:
        """(full size in bytes, payload as stored, encoding, why it is withheld): masked, truncated, compressed
        as configured. A payload that cannot be masked is withheld (stored as null, with the reason)."""
        limit = self.spec.max_payload_bytes
        text = payload if isinstance(payload, str) else None  # text messages always carry a str
        if text is not None and not self._mask and not self.spec.compress and text.isascii() and len(text) <= limit:
            return len(text), text, "text", None  # the common case: nothing to do
        raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        size = len(raw)
        if text is not None and self._mask:
            try:
                raw = self._mask(text).encode("utf-8")
            except Unmaskable as exc:
                return size, "", "text", f"unmaskable: {exc.reason}"
        truncated = "+truncated" if len(raw) > limit else ""
        raw = raw[:limit]
        if self.spec.compress:
            return size, base64.b64encode(gzip.compress(raw, 6)).decode("ascii"), "gzip+base64" + truncated, None
        if is_text:
            return size, raw.decode("utf-8", "replace"), "text" + truncated, None
        return size, base64.b64encode(raw).decode("ascii"), "base64" + truncated, None
