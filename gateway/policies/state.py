"""Policy state that outlives one config: throttle counts, log writers, the hostname cache.

One ``PolicyState`` per gateway process. A reload builds new policy objects,
but they find their counters and open files here, so a swap neither resets a
throttle nor reopens a log file.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("wsgate.policies")
transactions = structlog.get_logger("wsgate.transactions")


class ThrottleCounters:
    """Active connections per key; ``acquire`` is all-or-nothing against the limit it is given."""

    def __init__(self) -> None:
        self.active: Counter[tuple[str, str]] = Counter()

    def acquire(self, key: tuple[str, str], limit: int) -> bool:
        if self.active[key] >= limit:
            return False
        self.active[key] += 1
        return True

    def release(self, key: tuple[str, str]) -> None:
        count = self.active[key] - 1
        if count > 0:
            self.active[key] = count
        else:
            del self.active[key]


class LogWriter:
    """A JSON-lines file with size rotation, written by its own thread.

    The event loop only enqueues dicts; encoding, compression already done by
    the caller, file writes and rotation happen here, off the per-message path.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, echo: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.echo = echo  # also emit every record through structlog (stdout)
        self.users = 0
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name=f"wsgate-log-{path.name}", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        self._idle.clear()
        self._queue.put(record)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record written so far is on disk and rotated (for tests and shutdown)."""
        # Its own event: ``_idle`` is set before a rotation finishes, so waiting on it could return early.
        if not self._thread.is_alive():
            return True  # closed: everything it wrote is on disk
        done = threading.Event()
        self._queue.put({"__flush__": done})
        return done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        file = None
        try:
            while True:
                record = self._queue.get()
                if record is None:
                    return
                if "__flush__" in record:
                    if file is not None:
                        file.flush()
                    if self._queue.empty():
                        self._idle.set()
                    record["__flush__"].set()
                    continue
                if self.echo:
                    transactions.info(record.get("record", "transaction"), **record)
                if file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    file = open(self.path, "a", encoding="utf-8")
                file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
                if self._queue.empty():
                    file.flush()
                    self._idle.set()
                if file.tell() >= self.max_bytes:
                    file.close()
                    file = None
                    self._rotate()
        except Exception:
            log.exception("transaction log writer failed", file=str(self.path))
        finally:
            if file is not None:
                file.close()
            self._idle.set()
            self._release_flushes()

    def _release_flushes(self) -> None:
        # The thread is gone: nobody else will answer the flushes still queued.
        while not self._queue.empty():
            record = self._queue.get()
            if record is not None and "__flush__" in record:
                record["__flush__"].set()

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)


class LogWriters:
    """One writer per absolute file path, shared by every route that logs there."""

    def __init__(self) -> None:
        self._writers: dict[Path, LogWriter] = {}

    def get(self, path: Path, max_bytes: int, backups: int) -> LogWriter:
        path = path.resolve()
        writer = self._writers.get(path)
        if writer is None:
            writer = self._writers[path] = LogWriter(path, max_bytes, backups)
        return writer

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class HostnameResolver:
    """Reverse DNS of peer addresses, cached, with a timeout; forward-confirmed, since PTR records can lie."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def lookup(self, ip: str, timeout: float) -> str | None:
        now = time.monotonic()
        cached = self._cache.get(ip)
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            name = await asyncio.wait_for(loop.run_in_executor(None, _confirmed_name, ip), timeout)
        except (asyncio.TimeoutError, OSError):
            name = None
        self._cache[ip] = (now + self.ttl, name)
        return name


def _confirmed_name(ip: str) -> str | None:
    try:
        name, _, _ = socket.gethostbyaddr(ip)
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return None
    return name if ip in addresses else None


class PolicyState:
    def __init__(self) -> None:
        self.throttle = ThrottleCounters()
        self.log_writers = LogWriters()
        self.resolver = HostnameResolver()

    def close(self) -> None:
        self.log_writers.close()
