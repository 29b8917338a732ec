"""The admin listener: a tiny HTTP/1.1 server for health, readiness, the loaded config and live counts.

Loopback by default (the Gateway resource's ``admin`` settings). One request
per connection, GET only, JSON answers. The reload issue adds its endpoints
to ``AdminServer.routes``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Callable

import structlog

if TYPE_CHECKING:
    from .runtime import Gateway

log = structlog.get_logger("wsgate.admin")

MAX_HEAD = 8 * 1024
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}

Handler = Callable[["Gateway"], tuple[int, Any]]


def healthz(gateway: "Gateway") -> tuple[int, Any]:
    return 200, {"status": "ok"}


def readyz(gateway: "Gateway") -> tuple[int, Any]:
    if gateway.ready:
        return 200, {"status": "ready"}
    return 503, {"status": "starting" if not gateway.stopping else "stopping"}


def config(gateway: "Gateway") -> tuple[int, Any]:
    table = gateway.table
    resources: dict[str, list[str]] = {}
    for kind, name in sorted(table.config.resources()):
        resources.setdefault(kind, []).append(name)
    return 200, {"digest": table.digest, "generation": table.generation, "resources": resources}


def connections(gateway: "Gateway") -> tuple[int, Any]:
    return 200, gateway.connection_counts()


class AdminServer:
    """Serves ``routes`` (path -> handler) on one address."""

    def __init__(self, gateway: "Gateway", host: str, port: int) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.routes: dict[str, Handler] = {
            "/healthz": healthz,
            "/readyz": readyz,
            "/config": config,
            "/connections": connections,
        }
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("listening", name="admin", host=self.host, port=self.port, tls=False)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            handler = self.routes.get(path)
            if handler is None:
                status, body = 404, {"error": "not_found", "reason": f"no admin endpoint {path}"}
            elif method != "GET":
                status, body = 405, {"error": "method_not_allowed", "reason": "GET only"}
            else:
                status, body = handler(self.gateway)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body = 400, {"error": "bad_request", "reason": "malformed request"}
        except Exception:
            log.exception("admin handler failed")
            status, body = 500, {"error": "internal_error", "reason": "see the gateway log"}
        data = json.dumps(body, sort_keys=True).encode()
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()
