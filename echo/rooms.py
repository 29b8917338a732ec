"""Rooms: the clients of one URL context and how messages reach them.

A room client gets a bounded outgoing queue and one writer task, so a slow
reader only ever delays itself: fan-out is a ``put_nowait`` per client, and a
client whose queue is full is closed with :data:`TOO_SLOW` instead of growing
memory or stalling the room. Echo-mode clients have no queue and no writer:
their handler answers each message in place (the benchmark path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.config.models import EchoContext

log = structlog.get_logger("wsgate.echo")

TOO_SLOW = 1013
"""Close code for a client that fell ``max_queue`` messages behind: 1013 "try again later".

The condition is temporary and the client did nothing wrong by protocol, so a
reconnect is the right reaction; 1008 (policy violation) would read as a refusal.
"""

GOING_AWAY = 1001

Message = str | bytes


def sends_time(context: EchoContext) -> bool:
    """Whether a context pushes the server time: explicit flag, else ``broadcast`` in the path."""
    if context.broadcast_time is not None:
        return context.broadcast_time
    return "broadcast" in context.path


def server_time() -> str:
    """The server's local time, ISO 8601 with its UTC offset."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class Client:
    """One connection in a room: its user name, outgoing queue and writer task."""

    __slots__ = ("ws", "user", "queue", "writer", "closing", "closer")

    def __init__(self, ws: ServerConnection, user: str, max_queue: int | None) -> None:
        self.ws = ws
        self.user = user
        self.closing = False
        # Echo-mode clients pass None: they never go through a queue.
        self.queue: asyncio.Queue[Message] | None = None if max_queue is None else asyncio.Queue(max_queue)
        self.writer: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None  # held here so the task is not collected
        if self.queue is not None:
            self.writer = asyncio.create_task(self._write(self.queue))

    def push(self, message: Message) -> None:
        """Queue a message for this client; close it if it is too far behind."""
        if self.queue is None or self.closing:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            reason = f"too slow: {self.queue.qsize()} messages queued"
            log.warning("echo_client_too_slow", user=self.user, code=TOO_SLOW, reason=reason)
            self.close(TOO_SLOW, reason)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it; queued messages are dropped."""
        if self.closing:
            return
        self.closing = True
        if self.writer is not None:
            # The writer may sit in send() waiting for the socket to drain; its
            # frame is already in the transport, so cancelling it loses nothing
            # and lets the close frame follow right behind.
            self.writer.cancel()
        self.closer = asyncio.create_task(self.ws.close(code, reason))

    def stop(self) -> None:
        """Forget the writer when the connection has ended."""
        self.closing = True
        if self.writer is not None:
            self.writer.cancel()

    async def _write(self, queue: asyncio.Queue[Message]) -> None:
        try:
            while True:
                await self.ws.send(await queue.get())
        except ConnectionClosed:
            pass


class Room:
    """A URL context: its definition, whether it is published, its clients and time ticker."""

    def __init__(self, context: EchoContext, published: bool | None = None) -> None:
        self.context = context
        self.published = context.published if published is None else published
        self.clients: set[Client] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.context.path

    def join(self, client: Client) -> None:
        self.clients.add(client)
        self._sync_ticker()

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        client.stop()
        self._sync_ticker()

    def broadcast(self, message: Message) -> None:
        """Queue a message for every client, in one pass, so every client sees the same order."""
        for client in tuple(self.clients):
            client.push(message)

    def close_all(self, reason: str) -> None:
        """Close every client of the room with 1001."""
        for client in tuple(self.clients):
            client.close(GOING_AWAY, reason)

    def publish(self) -> None:
        self.published = True
        self._sync_ticker()

    def unpublish(self) -> None:
        self.published = False
        self.close_all("context unpublished")
        self._sync_ticker()

    def update(self, context: EchoContext) -> None:
        """Take a changed definition; a changed mode closes the clients (they joined under the old one)."""
        if context.mode != self.context.mode:
            self.close_all("context changed")
        self.context = context
        self._stop_ticker()  # restarted below with the new interval, if still wanted
        self._sync_ticker()

    def _sync_ticker(self) -> None:
        # The ticker runs only while the room has clients: an idle server has
        # no timers waking it, and the first client gets its first tick one
        # interval after joining.
        wanted = self.published and bool(self.clients) and self.context.mode == "room" and sends_time(self.context)
        if wanted and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(self.context.interval))
        elif not wanted:
            self._stop_ticker()

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            # Sleep to absolute deadlines so the interval does not drift.
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            # A stalled loop skips the ticks it missed rather than sending them back to back.
            now = loop.time()
            if next_at <= now:
                next_at = now + interval
            self.broadcast(server_time())


def published_paths(rooms: Iterable[Room]) -> list[str]:
    return [room.path for room in rooms if room.published]
