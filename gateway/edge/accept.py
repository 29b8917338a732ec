"""Accepting connections without flooding the log when the process runs out of file descriptors.

asyncio's own accept loop (``loop.create_server``) answers EMFILE/ENFILE by
logging a traceback and scheduling a retry, and then tries the next of up to a
backlog's worth of accepts in the same callback: one readable event on a full
process wrote ~1,000 tracebacks, and a retry each (322,593 in 62 s in a probe).
Its ``Server`` has no way to pause. So each listener here owns its listening
sockets and its reader callback:

- on EMFILE/ENFILE/ENOBUFS/ENOMEM it stops reading the listening sockets (the
  kernel's backlog keeps the waiting clients) and resumes after a backoff that
  doubles from ``BACKOFF_MIN`` to ``BACKOFF_MAX`` and resets on a success;
- it logs one ``accept_paused`` line per ``LOG_INTERVAL`` at most, with the
  number of failed accepts since the last line, and counts each one
  (``wsgate_accept_errors_total``);
- ``reserve=True`` (the admin listener) keeps one descriptor open on
  ``/dev/null``: when accept fails for lack of descriptors it closes it and
  accepts once more, so a health probe is answered while client listeners are
  paused, then takes the descriptor back as soon as one is free.

Closing and re-listening would not do: it drops every connection waiting in
the backlog and frees the port for anyone to take.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable

import structlog

log = structlog.get_logger("wsgate.accept")

OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPTS_PER_EVENT = 64  # fairness: a burst of connections does not keep the loop from the relays
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
LOG_INTERVAL = 1.0  # seconds between two accept_paused lines of one listener
RESERVE_RETRY = 0.05  # seconds between attempts to take the reserved descriptor back

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


async def bind(host: str | None, port: int, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address ``host`` resolves to (as ``create_server`` binds);
    ``reuse_port``: SO_REUSEPORT, so that worker processes share the port."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class AcceptLoop:
    """Serves ``protocol_factory`` on ``sockets``; see the module docstring. ``close()`` stops listening."""

    def __init__(self, name: str, protocol_factory: ProtocolFactory, sockets: list[socket.socket], *,
                 ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
                 on_error: Callable[[], None] | None = None, reserve: bool = False) -> None:
        self.name = name
        self.sockets = sockets
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._closed = False
        self._backoff = BACKOFF_MIN
        self._resume: asyncio.TimerHandle | None = None
        self._unlogged = 0  # failed accepts since the last accept_paused line
        self._logged_at = -LOG_INTERVAL
        self._tasks: set[asyncio.Task[None]] = set()
        # Plain TCP: the loop's own constructor for a connected socket, called at once (what
        # connect_accepted_socket does after a task, a coroutine and a waiter future: ~10 µs per connection).
        self._make_transport: Callable[..., object] | None = (
            None if ssl_context is not None else getattr(self._loop, "_make_socket_transport", None))
        self._reserve: int | None = None
        self._reserve_wanted = reserve
        self._reserve_timer: asyncio.TimerHandle | None = None
        if reserve:
            self._take_reserve()
        self._start_reading()

    @classmethod
    async def open(cls, name: str, protocol_factory: ProtocolFactory, host: str | None, port: int, *,
                   backlog: int = 1024, reuse_port: bool = False, **kwargs: object) -> AcceptLoop:
        sockets = await bind(host, port, backlog, reuse_port)
        return cls(name, protocol_factory, sockets, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop accepting and close the listening sockets (connections already accepted are not touched)."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        for timer in (self._resume, self._reserve_timer):
            if timer is not None:
                timer.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    # ------------------------------------- the asyncio.Server surface websockets' Server uses
    # So that a websockets server (the echo server) can run on this loop instead of loop.create_server's
    # (``echo.server``): websockets closes it, asks whether it serves, and waits for its own handlers itself.
    def is_serving(self) -> bool:
        return not self._closed

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        """Already serving from the constructor on."""

    async def wait_closed(self) -> None:
        """Nothing to wait for: ``close`` closes the sockets at once, and accepted connections are the owner's."""

    # ------------------------------------------------------------ reading
    def _start_reading(self) -> None:
        if self._closed or self._reading:
            return
        self._reading = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._readable, sock)

    def _stop_reading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client left while waiting in the backlog
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES and self._reserve is not None:
                    os.close(self._reserve)  # the descriptor kept for this moment: accept once more
                    self._reserve = None
                    self._schedule_reserve()
                    continue
                self._failed(exc)
                return
            self._backoff = BACKOFF_MIN
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if self._make_transport is not None:
            try:
                self._make_transport(conn, self._factory())
            except Exception:
                conn.close()
                log.exception("accept_setup_failed", listener=self.name)
            return
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl,
                ssl_handshake_timeout=self._ssl_handshake_timeout if self._ssl else None)
        except (TimeoutError, OSError, asyncio.CancelledError):
            conn.close()  # a failed TLS handshake or a client gone: nothing to answer
        except Exception:
            conn.close()
            log.exception("accept_setup_failed", listener=self.name)

    # ------------------------------------------------------- out of descriptors
    def _failed(self, exc: OSError) -> None:
        """Pause this listener for a backoff; one log line per interval, one count per failure."""
        self._stop_reading()  # first: whatever happens next, this listener must not spin on a full process
        if self._on_error is not None:
            try:
                self._on_error()
            except Exception:
                log.exception("accept_error_count_failed", listener=self.name)
        self._unlogged += 1
        now = self._loop.time()
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning("accept_paused", listener=self.name, error=errno.errorcode.get(exc.errno or 0, str(exc)),
                        failed_accepts=self._unlogged, backoff=self._backoff)
            self._logged_at = now
            self._unlogged = 0
        if exc.errno not in OUT_OF_RESOURCES:
            # Anything else (a listening socket gone bad) gets the same treatment: never a crash, never a spin.
            log.debug("accept_error", listener=self.name, error=str(exc))
        self._resume = self._loop.call_later(self._backoff, self._resume_reading)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _resume_reading(self) -> None:
        self._resume = None
        self._start_reading()

    def _take_reserve(self) -> bool:
        try:
            self._reserve = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return False
        return True

    def _schedule_reserve(self) -> None:
        if self._reserve_timer is None and not self._closed:
            self._reserve_timer = self._loop.call_later(RESERVE_RETRY, self._retake_reserve)

    def _retake_reserve(self) -> None:
        self._reserve_timer = None
        if self._closed or self._reserve is not None:
            return
        if not self._take_reserve():
            self._schedule_reserve()
