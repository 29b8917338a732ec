"""The admin listener: a tiny HTTP/1.1 server for health, readiness, the loaded config and live counts.

Loopback by default (the Gateway resource's ``admin`` settings). One request
per connection, JSON answers. GET: ``/healthz``, ``/readyz``, ``/config``
(digest, generation, resources; API keys and basic passwords never, not even
as digests), ``/connections``, ``/upstreams``, ``/metrics``, ``/reload`` (the
last reload's outcome). POST ``/reload`` reloads now; POST ``/connections/close?id=ID`` closes one connection
(1008, the dashboard's button).

Access (docs/security.md): with a bearer token configured, every endpoint but
``/healthz`` and ``/readyz`` (what probes call) wants ``Authorization: Bearer
TOKEN``, compared in constant time; without one the listener must be on
loopback (validate refuses anything else). TLS is optional.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import inspect
import json
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import structlog

from ..common.http_response import error_body, status_line
from ..edge.accept import AcceptLoop

if TYPE_CHECKING:
    from ..config.tree import Config
    from ..serving.runtime import Gateway

log = structlog.get_logger("wsgate.admin")

MAX_HEAD = 8 * 1024
RELOAD_HISTORY = 20  # reload outcomes GET /reload (and the dashboard) shows
OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes carry no credentials

Handler = Callable[["Gateway"], tuple[int, Any]]


def healthz(gateway: Gateway) -> tuple[int, Any]:
    return 200, {"status": "ok"}


def readyz(gateway: Gateway) -> tuple[int, Any]:
    # A state backend that is down does not make the gateway unready: each throttle's on_state_error decides.
    state = gateway.state.shared.health() if gateway.state is not None else None
    # "config": what this replica serves (digest, generation, git commit) and whether its last reload failed.
    served = gateway.config_status
    if gateway.ready and gateway.reload_failing and gateway.config.settings.admin.unready_after_failed_reload:
        return 503, {"status": "reload-failed", "state": state, "config": served}
    if gateway.ready:
        return 200, {"status": "ready", "state": state, "config": served}
    return 503, {"status": "starting" if not gateway.stopping else "stopping", "state": state, "config": served}


def admin_access(config: Config, host: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``AdminServer``'s access keywords from the Gateway resource: its token (env or file) and TLS context.

    A token variable that is unset locks the protected endpoints (logged); a listener beyond loopback without
    any token configured raises ValueError (validate reports it as WSG180; a ``--admin`` address skips that).
    """
    from ..config.models import is_loopback

    settings = config.settings.admin
    gateway = config.gateway
    token: str | None = None
    if settings.token is not None:
        token = (os.environ if env is None else env).get(settings.token.env) or None
        if token is None:
            log.error("admin_token_unset", effect="protected admin endpoints answer 401",
                      variable=settings.token.env)
    elif settings.token_file is not None and gateway is not None:
        token = read_token_file(gateway.resolve(settings.token_file))
    protected = settings.token is not None or settings.token_file is not None
    if not protected and not is_loopback(host):
        raise ValueError(f"the admin listener on {host}, beyond loopback, needs a token (admin.token)")
    context = None
    if settings.tls is not None and gateway is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(gateway.resolve(settings.tls.cert), gateway.resolve(settings.tls.key))
    return {"token": token, "protected": protected, "ssl_context": context}


def read_token_file(path: Path) -> str | None:
    """The admin token a ``token_file`` holds, whitespace trimmed (None: the file is empty)."""
    return path.read_text(encoding="utf-8").strip() or None


def _redacted(model: Any) -> dict[str, Any]:
    """A resource as JSON: an application's keys and basic passwords as ``redacted:<fingerprint prefix>`` (env ones
    stay variable names), and any URL's userinfo cut."""
    from ..common.redaction import redact_urls
    from ..config.models import Application
    from .live import redacted_application

    if isinstance(model, Application):
        model = redacted_application(model)
    # Any URL's userinfo (an upstream's, the Redis state URL's) is cut: one owner, gateway/common/redaction.py.
    return redact_urls(model.model_dump(mode="json", by_alias=True))


def config(gateway: Gateway) -> tuple[int, Any]:
    table = gateway.table
    names: dict[str, list[str]] = {}
    documents: list[dict[str, Any]] = []
    for (kind, name), model in sorted(table.config.resources().items()):
        names.setdefault(kind, []).append(name)
        documents.append(_redacted(model))
    # "resources" lists names by kind (as before); "documents" holds each resource as JSON, keys redacted.
    # "drift": where the running echo servers differ from this config (contexts started or stopped over HTTP).
    drift = {service.model.name: service.drift() for service in gateway.echo_services}
    return 200, {"digest": table.digest, "generation": table.generation, "loaded_at": gateway.loaded_at,
                 "resources": names, "documents": documents, "drift": {k: v for k, v in drift.items() if v}}


def last_reload(gateway: Gateway) -> tuple[int, Any]:
    # "history": the last reload outcomes, oldest first (failures with their diagnostics).
    return 200, {"reloads": gateway.reload_count, "last_reload": gateway.last_reload,
                 "history": list(gateway.reload_history), "config": gateway.config_status}


async def reload_now(gateway: Gateway) -> tuple[int, Any]:
    outcome = await gateway.reload("admin")
    return (200 if outcome["ok"] else 422), outcome


def connections(gateway: Gateway) -> tuple[int, Any]:
    """Counts, and what each relayed connection was accepted with (``plan --from`` decides each as a reload
    would), its id and its push groups.
    A credential shows only as the fingerprint of the configuration entry it matched, never a digest of the
    secret (gateway/build/credentials.py)."""
    from ..changes.impact import accepted_from

    listed = []
    for record in gateway.registry.live:
        accepted = accepted_from(record, gateway.names) if record.relay is not None else None
        if accepted is not None and record.conn is not None:
            # Its id (what the push API and the logs name it by) and the push groups it is in.
            connection = record.conn.id
            listed.append({**accepted.to_dict(), "id": connection, "groups": gateway.push.hub.groups_of(connection)})
    return 200, {**gateway.registry.counts(), "connections": listed}


# The query of the request being answered: handlers take the gateway only, and closing one connection needs its id.
request_query: contextvars.ContextVar[Mapping[str, list[str]] | None] = contextvars.ContextVar("admin_query",
                                                                                             default=None)


def close_connection(gateway: Gateway) -> tuple[int, Any]:
    """``POST /connections/close?id=ID``: close one relayed connection with 1008 (the dashboard's button)."""
    wanted = (request_query.get() or {}).get("id", [""])[0]
    for record in list(gateway.registry.live):
        if record.relay is not None and record.conn is not None and record.conn.id == wanted:
            log.info("connection_closed_by_operator", connection=wanted, api=record.conn.api)
            record.close(1008, "closed by an operator")
            return 200, {"connection": wanted, "result": "closing"}
    return 404, {"error": "not_found", "reason": "no such connection in this process"}


def upstreams(gateway: Gateway) -> tuple[int, Any]:
    """Every API's endpoints: healthy or not, why since when, handshakes pending, connections open."""
    return 200, {"apis": gateway.health.snapshot()}


def metrics(gateway: Gateway) -> tuple[int, Any]:
    from .metrics import CONTENT_TYPE

    return 200, PlainText(gateway.scrape().decode(), CONTENT_TYPE)


DASHBOARD_FILES = {"/dashboard": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/index.html": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
                   "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}


def dashboard_file(path: str) -> Handler:
    """A static file of the ops dashboard (package data; the page reads the JSON endpoints and /metrics)."""
    name, content_type = DASHBOARD_FILES[path]

    def serve(gateway: Gateway) -> tuple[int, Any]:
        from importlib.resources import files

        page = (files("gateway.operations") / "dashboard" / name).read_text(encoding="utf-8")
        return 200, PlainText(page, content_type)

    return serve


def _dashboard_path(path: str) -> bool:
    """Whether ``path`` lies under ``/dashboard``: one rule for all of it, token or not (a file there is 200, any
    other path 404). Its static files hold no data; the page sends the token for what it reads."""
    return path == "/dashboard" or path.startswith("/dashboard/")


def dashboard_routes() -> dict[str, Handler]:
    """The dashboard's static files, for any admin listener (a gateway's, a worker supervisor's)."""
    return {path: dashboard_file(path) for path in DASHBOARD_FILES}


class PlainText(str):
    """A handler's body served as is, with its content type, instead of as JSON."""

    content_type: str

    def __new__(cls, text: str, content_type: str) -> PlainText:
        self = super().__new__(cls, text)
        self.content_type = content_type
        return self


class AdminServer:
    """Serves ``routes`` (path -> handler) on one address.

    ``gateway``: what the handlers get; a worker supervisor passes itself with its own routes.
    ``token``: the bearer token the protected endpoints want; ``protected`` with no token (its variable is
    unset) refuses them all: an admin meant to be locked never opens by accident.
    """

    def __init__(self, gateway: Any, host: str, port: int, routes: dict[str, Callable[[Any], Any]] | None = None,
                 post_routes: dict[str, Callable[[Any], Any]] | None = None, *, token: str | None = None,
                 protected: bool = False, ssl_context: ssl.SSLContext | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self._token = token.encode() if token else None
        self._protected = protected or token is not None
        self._ssl = ssl_context
        self.routes: dict[str, Callable[[Any], Any]] = routes or {
            "/healthz": healthz,
            "/readyz": readyz,
            "/config": config,
            "/connections": connections,
            "/upstreams": upstreams,
            "/metrics": metrics,
            "/reload": last_reload,
            **dashboard_routes(),
        }
        self.post_routes: dict[str, Callable[[Any], Any]] = post_routes or {"/reload": reload_now,
                                                                            "/connections/close": close_connection}
        self._server: AcceptLoop | None = None

    async def start(self) -> None:
        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=MAX_HEAD), self._serve)

        # Its own accept loop with a reserved descriptor: probes are answered while the client listeners are
        # paused for lack of descriptors (gateway/edge/accept.py).
        self._server = await AcceptLoop.open("admin", protocol, self.host, self.port, backlog=128,
                                             ssl_context=self._ssl, ssl_handshake_timeout=5 if self._ssl else None,
                                             on_error=self._count_accept_error,
                                             reserve=True)
        self.port = self._server.sockets[0].getsockname()[1]
        # Whether a token guards it, never the token: a key named "token" would be redacted whatever its value.
        log.info("listening", name="admin", host=self.host, port=self.port, tls=self._ssl is not None,
                 auth="token" if self._protected else "none")

    def _count_accept_error(self) -> None:
        # A gateway counts into its metrics; a worker supervisor (whose `metrics` is a handler) does not count.
        count = getattr(getattr(self.gateway, "metrics", None), "accept_error", None)
        if count is not None:
            count("admin")

    def _authorized(self, head: bytes) -> bool:
        """Whether the request carries the bearer token (constant-time compare; any request if none is set)."""
        if not self._protected:
            return True
        if self._token is None:
            return False
        presented = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
        return hmac.compare_digest(presented, self._token)

    def refresh(self, config: Config) -> list[str]:
        """Re-read the Gateway resource's admin ``token_file`` and TLS certificate (called by a reload): the next
        request wants the new token, the next handshake shows the new certificate. A file that cannot be read,
        is empty or does not load keeps the last good one (a warning, and a problem as text for the reload's
        outcome). Whether the admin wants a token or TLS at all, and a token from the environment, are fixed at
        start."""
        settings, gateway = config.settings.admin, config.gateway
        problems: list[str] = []
        if gateway is None:
            return problems
        if settings.token_file is not None and self._protected:
            path = gateway.resolve(settings.token_file)
            try:
                token = read_token_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                # The error's class only: a decode error's text quotes a byte of the file.
                token, why = None, f"cannot read it ({type(exc).__name__})"
            else:
                why = "it is empty"
            if token is None:
                log.warning("admin_token_reload_failed", kept="the last good token", file=str(path), reason=why)
                problems.append(f"admin token file {path}: {why}; the last good token stays")
            elif token.encode() != self._token:
                self._token = token.encode()
                log.info("admin_token_reloaded", file=str(path))
        if settings.tls is not None and self._ssl is not None:
            cert, key = gateway.resolve(settings.tls.cert), gateway.resolve(settings.tls.key)
            try:
                # A scratch context first: a failed load into the live one could leave it half-updated.
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
                self._ssl.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                log.warning("admin_certificate_reload_failed", kept="the previous certificate", cert=str(cert),
                            error=str(exc))
                problems.append(f"admin certificate {cert}: {exc}; the previous certificate stays")
        return problems

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path, _, query = target.partition("?")
            request_query.set(parse_qs(query))
            table = self.post_routes if method == "POST" else self.routes if method == "GET" else {}
            handler = table.get(path)
            if path not in OPEN_PATHS and not _dashboard_path(path) and not self._authorized(head):
                status, body = 401, error_body("unauthorized", "this admin endpoint needs the bearer token")
            elif handler is None and path not in self.routes and path not in self.post_routes:
                status, body = 404, error_body("not_found", f"no admin endpoint {path}")
            elif handler is None:
                allowed = "GET" if path in self.routes else "POST"
                status, body = 405, error_body("method_not_allowed", f"{allowed} only")
            else:
                result = handler(self.gateway)
                status, body = (await result) if inspect.isawaitable(result) else result
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, ConnectionError,
                ssl.SSLError):
            status, body = 400, error_body("bad_request", "malformed request")
        except Exception:
            log.exception("admin_handler_failed")
            status, body = 500, error_body("internal_error", "see the gateway log")
        if isinstance(body, PlainText):
            data, content_type = body.encode(), body.content_type
        else:
            data, content_type = json.dumps(body, sort_keys=True).encode(), "application/json"
        challenge = 'WWW-Authenticate: Bearer realm="wsgate admin"\r\n' if status == 401 else ""
        writer.write(
            f"{status_line(status)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n{challenge}Connection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
