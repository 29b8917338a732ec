"""Policy state that outlives one config: throttle counts, log writers, the hostname cache.

One ``PolicyState`` per gateway process. A reload builds new policy objects,
but they find their counters and open files here, so a swap neither resets a
throttle nor reopens a log file. Throttle counts live in ``shared`` (see
``gateway.state``): this process's memory, or Redis shared by every instance.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from ..build.remote_keys import RemoteKeySet, jwks_ssl_context
from ..common.http_client import SharedHTTPClient
from ..state.base import SharedState
from .log_sinks import Sink
from .rate_limit import RateLimits

log = structlog.get_logger("wsgate.policies")
transactions = structlog.get_logger("wsgate.transactions")


class LogWriter:
    """A JSON-lines file with size rotation, written by its own thread.

    Two ways in. ``write_line`` takes a record the event loop already encoded
    (the common message record: a few string joins): lines gather on the loop
    in a batch that is handed to the thread as one item when it is big
    (``HANDOFF_LINES``/``HANDOFF_BYTES``) or ``HANDOFF_DELAY`` after its first
    line. So under load the thread wakes once per batch, and a lone message
    neither wakes a thread nor waits for the GIL it takes back: the writer's
    wake-ups and GIL hand-offs were the tutorial chain's tail latency and about
    a fifth of its CPU. ``write`` takes a tuple ``(encode, echo, ...)`` for
    records that cost more to make (masking, compression, the structlog echo):
    the thread calls ``encode(item)`` for the JSON line (ASCII bytes, no
    newline) and, when ``echo`` is set, ``echo(item)`` for the dict it emits
    through structlog. Both ways keep the order records were written in.
    Compression, file writes and rotation happen in the thread, in batches.

    ``path`` None: no file (records go only where ``echo`` sends them).
    At most ``max_pending`` records wait; past that, records are dropped and
    counted (a warning says how many), so a stalled disk cannot grow the
    gateway without bound. ``write_line``, ``flush`` and ``close`` are called
    from the event loop's thread.
    """

    BATCH_DELAY = 0.005  # seconds the thread lets records gather after a wakeup: fewer, bigger writes
    YIELD_BYTES = 256 * 1024  # encoded bytes after which a batch is written out (releasing the GIL) mid-way
    # Big batches: each hand-off wakes the thread and trades the GIL twice, which cost the tutorial chain ~3 µs per
    # message at 512 lines; from ~8k lines on the cost is flat (docs/performance.md). At most this much waits here.
    HANDOFF_LINES = 8192
    HANDOFF_BYTES = 2 * 1024 * 1024
    HANDOFF_DELAY = 0.05  # seconds a started batch waits on the loop at most: how stale the file may be
    FAILURE_LOG_INTERVAL = 1.0  # seconds between two transaction_records_failed lines (a failure per record
    # would let one client write a traceback per message it sends)

    def __init__(self, path: Path | None, max_bytes: int, backups: int, max_pending: int = 200_000,
                 sinks: Sequence[Sink] = ()) -> None:
        self.path = path
        # Syslog and OTLP destinations (log_sinks.py): each gets every encoded line, masked as for the file.
        self.sinks = tuple(sinks)
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_pending = max_pending
        self.users = 0
        self.dropped = 0
        self._pending: deque[Any] = deque()
        # Records queued and records taken, each written by one thread only (a shared `+=`/`-=` could lose
        # updates between the threads): their difference is what waits in _pending.
        self._queued = 0
        self._taken = 0
        self._batch: list[bytes] = []  # pre-encoded lines not yet handed to the thread (event loop side)
        self._batch_bytes = 0
        self._handoff: asyncio.TimerHandle | None = None
        self._sleeping = False
        self._wake = threading.Event()
        self._failed = 0  # records that failed to encode since the last transaction_records_failed line
        self._failure: BaseException | None = None  # the last of them
        self._failure_logged_at = -float("inf")
        self._thread = threading.Thread(
            target=self._run, name=f"wsgate-log-{path.name if path else 'stdout'}", daemon=True)
        self._thread.start()

    def write(self, item: tuple[Any, ...]) -> None:
        if self._batch:
            self._hand_off()  # lines written before this record reach the file before it
        if self._queued - self._taken >= self.max_pending:
            self.dropped += 1
            return
        self._queued += 1
        self._pending.append(item)
        self._wake_thread()

    def write_line(self, line: bytes) -> None:
        """Queue one encoded record (ASCII JSON, no newline); see the class docstring."""
        batch = self._batch
        if not batch:
            if self._queued - self._taken >= self.max_pending:
                self.dropped += 1
                return
            try:
                self._handoff = asyncio.get_running_loop().call_later(self.HANDOFF_DELAY, self._hand_off)
            except RuntimeError:  # no event loop (a direct call): hand each line off at once
                self._queued += 1
                self._pending.append([line])
                self._wake_thread()
                return
        batch.append(line)
        self._batch_bytes += len(line)
        if len(batch) >= self.HANDOFF_LINES or self._batch_bytes >= self.HANDOFF_BYTES:
            self._hand_off()

    def _hand_off(self) -> None:
        batch = self._batch
        if self._handoff is not None:
            self._handoff.cancel()
            self._handoff = None
        if not batch:
            return
        self._batch = []
        self._batch_bytes = 0
        if self._queued - self._taken >= self.max_pending:
            self.dropped += len(batch)
            return
        self._queued += len(batch)
        self._pending.append(batch)
        self._wake_thread()

    def _wake_thread(self) -> None:
        if self._sleeping:
            self._sleeping = False
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record written so far is on disk and rotated (for tests and shutdown)."""
        if not self._thread.is_alive():
            return True  # closed: everything it wrote is on disk
        self._hand_off()
        done = threading.Event()
        self._pending.append(done)
        self._wake.set()
        return done.wait(timeout) and all(sink.flush(timeout) for sink in self.sinks)

    def close(self) -> None:
        self._hand_off()
        self._pending.append(None)
        self._wake.set()
        self._thread.join(timeout=5)
        for sink in self.sinks:
            sink.close()

    def _run(self) -> None:
        file = None
        size = 0
        pending = self._pending
        try:
            while True:
                if not pending:
                    self._sleeping = True
                    if not pending:  # re-checked after the flag: an append in between sent no wakeup
                        # Failures not yet logged: wake up to log them even if no record comes.
                        self._wake.wait(self.FAILURE_LOG_INTERVAL if self._failed else None)
                    self._sleeping = False
                    self._wake.clear()
                last = pending[-1] if pending else None
                if last is not None and type(last) is not threading.Event:
                    time.sleep(self.BATCH_DELAY)  # let the burst gather: one write per batch, few GIL handoffs
                lines: list[bytes] = []
                chunk = 0
                for _ in range(len(pending)):
                    item = pending.popleft()
                    if type(item) is list:  # lines the event loop encoded
                        self._taken += len(item)
                        for sink in self.sinks:
                            sink.send(item)
                        lines += item
                        chunk += sum(map(len, item)) + len(item)
                        if size + chunk >= self.max_bytes or chunk >= self.YIELD_BYTES:
                            file, size, lines, chunk = self._write_out(file, size, lines)
                        continue
                    if item is None or type(item) is threading.Event:
                        if lines:
                            file, size = self._write(file, size, lines)
                            lines, chunk = [], 0
                        if file is not None:
                            file.flush()
                        if item is None:
                            if self._failed:
                                self._log_failures(force=True)  # closing: the count not yet logged, now
                            return
                        item.set()
                        continue
                    self._taken += 1
                    try:
                        if item[1] is not None:
                            record = item[1](item)
                            transactions.info(record.get("record", "transaction"), **record)
                        if self.path is None and not self.sinks:
                            continue
                        line = item[0](item)
                    except Exception as exc:
                        self._failed += 1
                        self._failure = exc
                        self._log_failures()
                        continue
                    for sink in self.sinks:
                        sink.send((line,))
                    if self.path is None:
                        continue
                    lines.append(line)
                    chunk += len(line) + 1
                    if size + chunk >= self.max_bytes or chunk >= self.YIELD_BYTES:
                        # Write now: to rotate after this record, or because the write lets the event loop
                        # have the GIL, so a big batch cannot hold it for a whole switch interval (5 ms).
                        file, size, lines, chunk = self._write_out(file, size, lines)
                if lines:
                    file, size = self._write(file, size, lines)
                    file.flush()
                if self.dropped:
                    dropped, self.dropped = self.dropped, 0
                    log.warning("transaction_records_dropped", reason="the writer fell behind", file=str(self.path),
                                dropped=dropped)
                if self._failed:
                    self._log_failures()
        except Exception:
            log.exception("transaction_log_writer_failed", file=str(self.path))
        finally:
            if file is not None:
                file.close()
            self._release_flushes()

    def _log_failures(self, force: bool = False) -> None:
        """One ``transaction_records_failed`` line per ``FAILURE_LOG_INTERVAL`` at most, with the number of
        records that failed since the last one and the last failure's traceback (in the writer's thread)."""
        now = time.monotonic()
        if not force and now - self._failure_logged_at < self.FAILURE_LOG_INTERVAL:
            return
        failed, failure = self._failed, self._failure
        self._failed, self._failure, self._failure_logged_at = 0, None, now
        log.error("transaction_records_failed", file=str(self.path), failed=failed, exc_info=failure)

    def _write_out(self, file: Any, size: int, lines: list[bytes]) -> tuple[Any, int, list[bytes], int]:
        """Write ``lines``, rotating after the line that reaches ``max_bytes`` (so no file grows past
        ``max_bytes`` by more than one record); returns the open file, its size and an empty batch."""
        start = 0
        if size + sum(map(len, lines)) + len(lines) >= self.max_bytes:
            total = size
            for i, line in enumerate(lines):
                total += len(line) + 1
                if total >= self.max_bytes:
                    file, size = self._write(file, size, lines[start:i + 1])
                    file.close()
                    file, size, total = None, 0, 0
                    self._rotate()
                    start = i + 1
        if start < len(lines):
            file, size = self._write(file, size, lines[start:])
        return file, size, [], 0

    def _write(self, file: Any, size: int, lines: list[bytes]) -> tuple[Any, int]:
        if file is None:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches; closed on rotation and close()
            size = file.tell()
        lines.append(b"")  # the last line's newline, without copying the batch once more
        text = b"\n".join(lines)
        file.write(text)
        return file, size + len(text)

    def _release_flushes(self) -> None:
        # The thread is gone: nobody else will answer the flushes still queued.
        while self._pending:
            item = self._pending.popleft()
            if type(item) is threading.Event:
                item.set()

    def _rotate(self) -> None:
        assert self.path is not None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)


def encode_record(item: tuple[Any, ...]) -> bytes:
    """``encode`` for items ``(encode_record, echo, record_dict, ...)``: the dict as one compact JSON line."""
    return _dumps(item[2]).encode("ascii")  # ensure_ascii: the JSON is ASCII


def record_dict(item: tuple[Any, ...]) -> dict[str, Any]:
    """``echo`` for items ``(encode_record, echo, record_dict, ...)``."""
    return item[2]


_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode


class LogWriters:
    """One writer per absolute file path (or one for no file), shared by every route that logs there."""

    def __init__(self) -> None:
        self._writers: dict[tuple[Path | None, str], LogWriter] = {}

    def get(self, path: Path | None, max_bytes: int, backups: int, destinations: str = "",
            sinks: Callable[[], Sequence[Sink]] = tuple) -> LogWriter:
        """The writer of ``path`` with the remote ``destinations`` (their settings as text: routes that log to
        the same file and destinations share one writer; ``sinks`` makes them for a new writer)."""
        if path is not None:
            path = path.resolve()
        key = (path, destinations)
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = LogWriter(path, max_bytes, backups, sinks=sinks())
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
        except (TimeoutError, OSError):
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
    """What policies keep across reloads, and the shared-state backend their throttles and budgets count in.

    A backend switched away from on reload (another ``state`` in the Gateway
    resource) stays open while a route table compiled against it is open:
    the connections accepted on those tables hold their slots there and give
    them back there. When the last such table is released (its last
    connection ended), the backend is closed: its leftover slots are given
    back (Redis: its owner leaves) and its client disconnects.
    """

    def __init__(self, shared: SharedState | None = None) -> None:
        if shared is None:
            from ..state.memory import MemoryStore

            shared = MemoryStore()
        self.shared: SharedState = shared
        self.shared_settings: Any = None  # the Gateway resource's `state` that built ``shared`` (None: the default)
        # (backend, its settings) switched away from by the reload in progress: revert_shared restores the pair.
        self._switched_from: tuple[SharedState, Any] | None = None
        self._holders: Counter[int] = Counter()  # id(backend) -> open route tables compiled against it
        self._retired: dict[int, SharedState] = {}  # switched away from: closed when their last table is released
        self._closing: set[asyncio.Task[None]] = set()
        self.rate_limits = RateLimits()
        # Messages that broke their API's definitions: (api, direction, kind, action) -> count.
        self.violations: Counter[tuple[str, str, str, str]] = Counter()
        self.log_writers = LogWriters()
        self.resolver = HostnameResolver()
        # The process's HTTP client (authorizer, remote JWKS): its keep-alive pool outlives reloads.
        self.http = SharedHTTPClient()
        self._jwks: dict[tuple[str, str | None], RemoteKeySet] = {}  # (url, CA file) -> its keys, across reloads

    def jwks(self, url: str, cafile: str | None, timeout: float, max_age: float, min_refresh_interval: float,
             parse: Callable[[str], list[Any]]) -> RemoteKeySet:
        """The process's key set of a JWKS URL: one per URL and CA, so a reload keeps the keys fetched so far."""
        found = self._jwks.get((url, cafile))
        if found is None:
            found = RemoteKeySet(url, self.http, jwks_ssl_context(url, cafile), timeout, max_age, min_refresh_interval,
                                 parse)
            self._jwks[(url, cafile)] = found
        return found

    async def use_shared(self, settings: Any, env: Mapping[str, str], ca_file: str | None = None) -> bool:
        """Count in the backend ``settings`` names from now on; False if it is the one in use.

        New upgrades count in the new one. ``revert_shared`` undoes the switch
        (a reload that failed later), ``commit_shared`` keeps it (the reload
        was applied: the previous backend is retired).
        """
        if settings == self.shared_settings or (self.shared_settings is None and settings.backend == "memory"):
            return False
        from ..state import open_state

        self.commit_shared()  # a switch neither reverted nor committed (its reload crashed after the swap) stays
        shared = open_state(settings, env, ca_file=ca_file)
        await shared.start()
        self._switched_from = (self.shared, self.shared_settings)
        self.shared, self.shared_settings = shared, settings
        self._budgets_from(shared)
        log.info("state_backend", backend=shared.backend, expiry_bound=shared.expiry_bound)
        return True

    async def revert_shared(self) -> None:
        """Back to the backend in use before the last ``use_shared`` that switched; the new one is closed."""
        assert self._switched_from is not None
        unused = self.shared
        self.shared, self.shared_settings = self._switched_from
        self._switched_from = None
        self._budgets_from(self.shared)
        await unused.close()

    def commit_shared(self) -> None:
        """The switch stays: the previous backend closes once no open route table was compiled against it."""
        if self._switched_from is None:
            return
        previous, _ = self._switched_from
        self._switched_from = None
        self._retired[id(previous)] = previous
        self._close_if_unused(previous)

    def hold_shared(self) -> Callable[[], None]:
        """The backend in use is held by one more route table, until the returned callable is called (once)."""
        shared = self.shared
        self._holders[id(shared)] += 1
        held = True

        def let_go() -> None:
            nonlocal held
            if not held:
                return
            held = False
            self._holders[id(shared)] -= 1
            if self._holders[id(shared)] <= 0:
                del self._holders[id(shared)]
                self._close_if_unused(shared)

        return let_go

    def _close_if_unused(self, shared: SharedState) -> None:
        if id(shared) not in self._retired or self._holders.get(id(shared)):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a table released at interpreter exit): aclose() closes it
        del self._retired[id(shared)]
        log.info("state_backend_retired", backend=shared.backend,
                 reason="no live connection holds a slot from it any more")
        task = loop.create_task(shared.close(), name="wsgate-state-retire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _budgets_from(self, shared: SharedState) -> None:
        """Rate limits per application and per API take their budgets from a remote backend (cluster-wide) or
        keep them in this process. Buckets made for the previous backend stay with the connections that hold
        them; new connections get buckets of the new one."""
        self.rate_limits.backend = None if shared.backend == "memory" else shared
        self.rate_limits.shared.clear()

    async def aclose(self) -> None:
        """Close the shared-state backends (giving their slots back) and the log writers."""
        previous = [self._switched_from[0]] if self._switched_from is not None else []
        for shared in (*self._retired.values(), *previous, self.shared):
            await shared.close()
        self._retired.clear()
        self._switched_from = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.http.aclose()
        self.close()

    def close(self) -> None:
        self.log_writers.close()
