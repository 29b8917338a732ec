"""Invocation records beyond a file: syslog and OpenTelemetry logs (OTLP/HTTP), each behind a bounded queue.

The log writer (``state.LogWriter``) encodes every record once, masked and truncated as for the file, and hands
the JSON line to each sink of its policy. A sink never blocks the writer: lines wait in a bounded deque
(``MAX_PENDING``); past it they are dropped and counted, so a destination that is down or slow costs memory up
to that bound and nothing else. A sink's own thread sends batches with a short timeout; a batch that fails is
dropped (counted, one warning per failure streak) rather than retried into a growing backlog.

OTLP is written as OTLP/HTTP JSON (``POST {endpoint}``, ``application/json``) with the standard library: the
wire format is a stable spec, while the OpenTelemetry SDK's logs API is still experimental (``_logs``) and its
signatures changed between the versions the ``otel`` extra allows; this way the destination also works without
the extra installed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from ..config.models import OTLPLogs, SyslogDestination

log = structlog.get_logger("wsgate.policies")

FACILITIES = {"user": 1, "daemon": 3, "auth": 4, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
              "local4": 20, "local5": 21, "local6": 22, "local7": 23}
SEVERITY_INFO = 6


class Sink:
    """A destination for encoded records with a bounded queue and a thread of its own."""

    MAX_PENDING = 10_000  # lines waiting at most; past it new ones are dropped and counted
    BATCH = 512  # lines sent at once at most

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.dropped = 0  # lines lost: the queue was full, or their batch failed
        self._pending: deque[bytes] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._failing = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"wsgate-sink-{name}", daemon=True)
        self._thread.start()

    def send(self, lines: Sequence[bytes]) -> None:
        """Queue encoded records (called from the log writer's thread); never blocks."""
        room = self.MAX_PENDING - len(self._pending)
        if room < len(lines):
            self.dropped += len(lines) - max(room, 0)
            lines = lines[: max(room, 0)]
        if lines:
            self._idle.clear()
            self._pending.extend(lines)
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line was sent or dropped (tests, shutdown)."""
        self._wake.set()
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)

    def deliver(self, lines: list[bytes]) -> None:  # pragma: no cover - every sink overrides it
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self.BATCH, len(self._pending)))]
                try:
                    self.deliver(batch)
                    self.sent += len(batch)
                    if self._failing:
                        self._failing = False
                        log.info("transaction_sink_recovered", sink=self.name)
                except Exception as exc:  # a destination down: drop this batch, say so once per streak
                    self.dropped += len(batch)
                    if not self._failing:
                        self._failing = True
                        log.warning("transaction_sink_failed", sink=self.name, error=str(exc) or type(exc).__name__,
                                    effect="records dropped until it answers again (bounded queue)")
            self._idle.set()
            if self._closed:
                return


class SyslogSink(Sink):
    """RFC 5424 messages whose text is the JSON record: a unix socket (datagram), udp:// or tcp:// (octet
    counting, RFC 6587)."""

    def __init__(self, settings: SyslogDestination) -> None:
        self.settings = settings
        self._socket: socket.socket | None = None
        self._host = socket.gethostname() or "-"
        self._pri = FACILITIES[settings.facility] * 8 + SEVERITY_INFO
        super().__init__(f"syslog {settings.address}")

    def _connect(self) -> socket.socket:
        address = self.settings.address
        timeout = self.settings.timeout
        if address.startswith(("udp://", "tcp://")):
            parts = urlsplit(address)
            kind = socket.SOCK_DGRAM if parts.scheme == "udp" else socket.SOCK_STREAM
            sock = socket.create_connection((parts.hostname or "localhost", parts.port or 514), timeout) \
                if kind == socket.SOCK_STREAM else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if kind == socket.SOCK_DGRAM:
                sock.settimeout(timeout)
                sock.connect((parts.hostname or "localhost", parts.port or 514))
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(timeout)
        sock.connect(address.removeprefix("unix://"))
        return sock

    def deliver(self, lines: list[bytes]) -> None:
        stream = self.settings.address.startswith("tcp://")
        try:
            if self._socket is None:
                self._socket = self._connect()
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            head = f"<{self._pri}>1 {stamp} {self._host} {self.settings.app_name} {os.getpid()} - - ".encode()
            for line in lines:
                message = head + line
                self._socket.sendall(str(len(message)).encode() + b" " + message if stream else message)
        except OSError:
            if self._socket is not None:
                self._socket.close()
                self._socket = None  # reconnect for the next batch
            raise

    def close(self) -> None:
        super().close()
        if self._socket is not None:
            self._socket.close()


class OTLPSink(Sink):
    """OTLP/HTTP JSON log records: the body is the JSON record, `api`, `record` and `application` attributes."""

    def __init__(self, settings: OTLPLogs, headers: Mapping[str, str]) -> None:
        self.settings = settings
        self._headers = {"Content-Type": "application/json", **headers}
        super().__init__(f"otlp {settings.endpoint}")

    def deliver(self, lines: list[bytes]) -> None:
        records = [_otlp_record(line) for line in lines]
        body = {"resourceLogs": [{
            "resource": {"attributes": [_attribute("service.name", self.settings.service_name)]},
            "scopeLogs": [{"scope": {"name": "wsgate.transactions"}, "logRecords": records}],
        }]}
        request = urllib.request.Request(self.settings.endpoint, data=json.dumps(body).encode(), method="POST",
                                         headers=self._headers)
        with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:  # noqa: S310 - config URL
            response.read()


def _attribute(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": str(value)}}


def _otlp_record(line: bytes) -> dict[str, Any]:
    text = line.decode("ascii", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        record = {}
    stamp = record.get("ts") if isinstance(record, dict) else None
    nanos = int((stamp if isinstance(stamp, (int, float)) else time.time()) * 1e9)
    attributes = [_attribute(k, record[k]) for k in ("record", "api", "application", "connection")
                  if isinstance(record, dict) and record.get(k) is not None]
    return {"timeUnixNano": str(nanos), "observedTimeUnixNano": str(time.time_ns()), "severityNumber": 9,
            "severityText": "INFO", "body": {"stringValue": text}, "attributes": attributes}


def sinks_for(spec: Any, env: Mapping[str, str]) -> list[Sink]:
    """The sinks a log-invocation policy's settings ask for (none: only the file and the structured log)."""
    out: list[Sink] = []
    if spec.syslog is not None:
        out.append(SyslogSink(spec.syslog))
    if spec.otlp is not None:
        headers = {name: env.get(value.env, "") for name, value in spec.otlp.headers.items()}
        out.append(OTLPSink(spec.otlp, {k: v for k, v in headers.items() if v}))
    return out
