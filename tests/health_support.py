"""Upstreams for health and routing tests: websockets echo servers a test can refuse with, kill and restart."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from support import api_yaml
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


@dataclass
class Backend:
    """A websockets echo server on a port of its own choosing that a test can refuse with, kill and restart."""

    name: str
    port: int = 0
    refuse: bool = False  # answer upgrades with 503 instead of 101
    upgrades: int = 0  # 101s given (probes included)
    requests: list[str] = field(default_factory=list)  # the X-Client header of every upgrade request
    server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            self.requests.append(request.headers.get("X-Client", ""))
            if self.refuse:
                return connection.respond(503, "refusing\n")
            self.upgrades += 1
            return None

        async def handle(ws: ServerConnection) -> None:
            with contextlib.suppress(Exception):
                async for message in ws:
                    await ws.send(f"{self.name}:{message}")

        self.server = await serve(handle, "127.0.0.1", self.port, process_request=process_request, compression=None)
        self.port = self.server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        """Stop listening and drop every connection, like a crashed process."""
        assert self.server is not None
        self.server.close(close_connections=True)
        await self.server.wait_closed()
        self.server = None


@asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = [Backend(name) for name in names]
    for backend in started:
        await backend.start()
    try:
        yield started
    finally:
        for backend in started:
            if backend.server is not None:
                await backend.kill()


def health_api(*urls: str, strategy: str = "round-robin", upstream: str = "", routing: str = "") -> str:
    extra = "policies:\n  - type: routing\n    strategy: " + strategy + "\n" + routing
    text = api_yaml("H", "/h", *urls, extra=extra)
    if upstream:
        text = text.replace("upstream:\n", "upstream:\n" + upstream)
    return text
