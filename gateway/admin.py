"""The admin listener: a tiny HTTP/1.1 server for health, readiness, the loaded config and live counts.

Loopback by default (the Gateway resource's ``admin`` settings). One request
per connection, JSON answers. GET: ``/healthz``, ``/readyz``, ``/config``
(digest, generation, resources; API keys only as digests), ``/connections``, ``/upstreams``,
``/reload`` (the last reload's outcome). POST ``/reload`` reloads now.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .runtime import Gateway

log = structlog.get_logger("wsgate.admin")

MAX_HEAD = 8 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 422: "Unprocessable Content",
           503: "Service Unavailable"}

Handler = Callable[["Gateway"], tuple[int, Any]]


def healthz(gateway: Gateway) -> tuple[int, Any]:
    return 200, {"status": "ok"}


def readyz(gateway: Gateway) -> tuple[int, Any]:
    # A state backend that is down does not make the gateway unready: each throttle's on_state_error decides.
    state = gateway.state.shared.health() if gateway.state is not None else None
    if gateway.ready:
        return 200, {"status": "ready", "state": state}
    return 503, {"status": "starting" if not gateway.stopping else "stopping", "state": state}


def _redacted(model: Any, env: Any) -> dict[str, Any]:
    """A resource as JSON; API keys and basic passwords only as ``sha256:`` digests (env ones stay variable names)."""
    from .config.models import EnvKey
    from .credentials import SHA256_PREFIX, configured_digest

    data = model.model_dump(mode="json", by_alias=True)
    state = data.get("state")
    if isinstance(state, dict) and isinstance(state.get("url"), str):
        from .plan import without_password

        state["url"] = without_password(state["url"])
    identifiers = data.get("identifiers")
    if isinstance(identifiers, dict) and identifiers.get("api_keys"):
        shown: list[Any] = []
        for entry in model.identifiers.api_keys:
            if isinstance(entry, EnvKey):
                shown.append(entry.model_dump(mode="json", by_alias=True))
            else:
                shown.append(SHA256_PREFIX + str(configured_digest(entry, {})))
        identifiers["api_keys"] = shown
    if isinstance(identifiers, dict) and identifiers.get("basic"):
        users: list[dict[str, Any]] = []
        for user in model.identifiers.basic:
            password = user.password
            shown_password: Any = (password.model_dump(mode="json") if isinstance(password, EnvKey)
                                   else SHA256_PREFIX + str(configured_digest(password, {})))
            users.append({"username": user.username, "password": shown_password})
        identifiers["basic"] = users
    return data


def config(gateway: Gateway) -> tuple[int, Any]:
    table = gateway.table
    names: dict[str, list[str]] = {}
    documents: list[dict[str, Any]] = []
    for (kind, name), model in sorted(table.config.resources().items()):
        names.setdefault(kind, []).append(name)
        documents.append(_redacted(model, gateway.env))
    # "resources" lists names by kind (as before); "documents" holds each resource as JSON, keys redacted.
    # "drift": where the running echo servers differ from this config (contexts started or stopped over HTTP).
    drift = {service.model.name: service.drift() for service in gateway.echo_services}
    return 200, {"digest": table.digest, "generation": table.generation, "loaded_at": gateway.loaded_at,
                 "resources": names, "documents": documents, "drift": {k: v for k, v in drift.items() if v}}


def last_reload(gateway: Gateway) -> tuple[int, Any]:
    return 200, {"reloads": gateway.reload_count, "last_reload": gateway.last_reload}


async def reload_now(gateway: Gateway) -> tuple[int, Any]:
    outcome = await gateway.reload("admin")
    return (200 if outcome["ok"] else 422), outcome


def connections(gateway: Gateway) -> tuple[int, Any]:
    """Counts, and what each relayed connection was accepted with: ``plan --from`` decides each as a reload would
    (credentials only as the SHA-256 digests ``/config`` shows too)."""
    from .impact import accepted_from

    accepted = [accepted_from(record) for record in gateway.registry.live if record.relay is not None]
    return 200, {**gateway.registry.counts(), "connections": [a.to_dict() for a in accepted if a is not None]}


def upstreams(gateway: Gateway) -> tuple[int, Any]:
    """Every API's endpoints: healthy or not, why since when, handshakes pending, connections open."""
    return 200, {"apis": gateway.health.snapshot()}


def metrics(gateway: Gateway) -> tuple[int, Any]:
    text = gateway.metrics.render(gateway.registry, gateway.table.generation, gateway.state, gateway.health)
    return 200, PlainText(text, "text/plain; version=0.0.4; charset=utf-8")


class PlainText(str):
    """A handler's body served as is, with its content type, instead of as JSON."""

    content_type: str

    def __new__(cls, text: str, content_type: str) -> PlainText:
        self = super().__new__(cls, text)
        self.content_type = content_type
        return self


class AdminServer:
    """Serves ``routes`` (path -> handler) on one address."""

    def __init__(self, gateway: Any, host: str, port: int, routes: dict[str, Callable[[Any], Any]] | None = None,
                 post_routes: dict[str, Callable[[Any], Any]] | None = None) -> None:
        # ``gateway``: what the handlers get; a worker supervisor passes itself with its own routes.
        self.gateway = gateway
        self.host = host
        self.port = port
        self.routes: dict[str, Callable[[Any], Any]] = routes or {
            "/healthz": healthz,
            "/readyz": readyz,
            "/config": config,
            "/connections": connections,
            "/upstreams": upstreams,
            "/metrics": metrics,
            "/reload": last_reload,
        }
        self.post_routes: dict[str, Callable[[Any], Any]] = post_routes or {"/reload": reload_now}
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
            table = self.post_routes if method == "POST" else self.routes if method == "GET" else {}
            handler = table.get(path)
            if handler is None and path not in self.routes and path not in self.post_routes:
                status, body = 404, {"error": "not_found", "reason": f"no admin endpoint {path}"}
            elif handler is None:
                allowed = "GET" if path in self.routes else "POST"
                status, body = 405, {"error": "method_not_allowed", "reason": f"{allowed} only"}
            else:
                result = handler(self.gateway)
                status, body = (await result) if inspect.isawaitable(result) else result
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body = 400, {"error": "bad_request", "reason": "malformed request"}
        except Exception:
            log.exception("admin handler failed")
            status, body = 500, {"error": "internal_error", "reason": "see the gateway log"}
        if isinstance(body, PlainText):
            data, content_type = body.encode(), body.content_type
        else:
            data, content_type = json.dumps(body, sort_keys=True).encode(), "application/json"
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
