"""Log invocation: transaction records of upgrades, messages and closes.

Records go to a background writer (``PolicyState.log_writers``): the event
loop builds a small dict and enqueues it; JSON encoding, the structlog echo
to stdout and file writes with rotation happen in the writer's thread.
Credentials never get here: the runtime strips them from the metadata first.
"""

from __future__ import annotations

import base64
import gzip
import time
from pathlib import Path
from typing import Any

from ..config.models import LogInvocationPolicy
from ..config.tree import Loaded
from .base import ConnectionContext, Message, Policy
from .state import LogWriter, PolicyState

NORMAL_CLOSES = frozenset({1000, 1001})


class LogInvocation(Policy):
    type = "log-invocation"

    def __init__(self, spec: LogInvocationPolicy, loaded: Loaded[Any], state: PolicyState) -> None:
        self.spec = spec
        self.api = loaded.model.name
        self.version = loaded.model.version
        stages = set()
        if spec.store_client_messages:
            stages.add("client")
        if spec.store_server_messages:
            stages.add("server")
        self.message_stages = frozenset(stages)  # type: ignore[assignment]
        self.only_failures = spec.frequency == "on-failure"
        if spec.file:
            path = loaded.resolve(spec.file)
        else:
            # No file: a writer thread all the same, so stdout records stay off the event loop too.
            path = Path("/dev/null")
        self.writer: LogWriter = state.log_writers.get(path, spec.max_file_bytes, spec.backups)

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
        self.writer.write(record)

    def on_message(self, message: Message, conn: ConnectionContext) -> Message:
        if self.only_failures:
            return message
        payload = message.payload
        size = len(payload.encode("utf-8")) if message.is_text else len(payload)  # type: ignore[union-attr]
        record = self._base("message", conn)
        record.update(direction=message.direction, type="text" if message.is_text else "binary", size=size)
        record["payload"], record["encoding"] = self._payload(message)
        self.writer.write(record)
        return message

    def _payload(self, message: Message) -> tuple[str, str]:
        limit = self.spec.max_payload_bytes
        raw = message.payload.encode("utf-8") if message.is_text else message.payload  # type: ignore[union-attr]
        truncated = len(raw) > limit
        raw = raw[:limit]
        if self.spec.compress:
            return base64.b64encode(gzip.compress(raw, 6)).decode("ascii"), "gzip+base64" + (
                "+truncated" if truncated else "")
        if message.is_text:
            return raw.decode("utf-8", "replace"), "text" + ("+truncated" if truncated else "")
        return base64.b64encode(raw).decode("ascii"), "base64" + ("+truncated" if truncated else "")

    def on_close(self, conn: ConnectionContext, code: int | None, reason: str) -> None:
        if self.only_failures and code in NORMAL_CLOSES:
            return
        c = conn.counters
        record = self._base("close", conn)
        record.update(code=code, reason=reason, duration=round(time.monotonic() - conn.started, 6),
                      messages_in=c.messages_in, messages_out=c.messages_out, bytes_in=c.bytes_in,
                      bytes_out=c.bytes_out)
        self.writer.write(record)
