"""The admin listener: health, readiness, the loaded config, live counts, upstreams, reloads and metrics of a
gateway, over aiohttp's HTTP server.

It reads a ``gateway.serving.view.GatewayView`` and nothing else: one process and a supervisor with workers are
two implementations of that view, and this module's one route table serves both, so every answer has one shape.
GET: ``/healthz``, ``/readyz``, ``/config`` (digest, generation, resources; API keys and basic passwords never,
not even as digests), ``/connections``, ``/upstreams``, ``/metrics``, ``/reload`` (the recent reloads' outcomes),
``/dashboard/`` (the ops page's static files). POST ``/reload`` reloads now; POST ``/connections/close?id=ID``
closes one relayed connection with 1008 (the dashboard's button; with workers, the one that holds it).

HTTP is aiohttp's (``web.Server``, the low-level server: keep-alive, a parser that refuses malformed requests),
served on connections our own accept loop accepted (``gateway.edge.accept``: it pauses instead of spinning
when descriptors run out, and keeps one in reserve so the probes are answered even then). aiohttp's own error
pages are replaced: every refusal is a short JSON body (``gateway.common.http_response``).

Access (docs/security.md): with a bearer token configured, every path but ``/healthz``, ``/readyz`` (what probes
call) and the dashboard's files (``/dashboard`` and anything under ``/dashboard/``, one rule for the whole path:
they hold no data, the page sends the token for what it reads) wants ``Authorization: Bearer TOKEN``, compared
in constant time; without one the listener must be on loopback (validate refuses anything else). TLS is optional.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..common.http_response import error_json
from ..common.redaction import redact_urls
from ..config.models import Application, is_loopback
from ..config.tree import Config
from ..edge.accept import AcceptLoop
from ..serving.view import ConfigSnapshot, GatewayView, StartError
from .live import redacted_application
from .metrics import CONTENT_TYPE

log = structlog.get_logger("wsgate.admin")

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes carry no credentials
DASHBOARD_PREFIX = "/dashboard"
DASHBOARD_FILES = {"/dashboard": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/index.html": ("index.html", "text/html; charset=utf-8"),
                   "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
                   "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
KEEPALIVE = 5.0  # seconds an idle connection (or one that sends no request at all) stays open
MAX_LINE = 8190  # request line and each header line: aiohttp answers 400 beyond
MAX_HEADERS = 64
JSON = partial(json.dumps, sort_keys=True)


@dataclass(frozen=True)
class Answer:
    """What a route answers: a status and a JSON body, or a text body with its content type."""

    status: HTTPStatus
    body: Mapping[str, Any] | str
    content_type: str = "application/json"


Query = Mapping[str, str]  # the request's query parameters (the last value of each)
Route = Callable[[GatewayView, Query], Awaitable[Answer]]


# ------------------------------------------------------------------ routes


async def healthz(view: GatewayView, query: Query) -> Answer:
    return Answer(HTTPStatus.OK, {"status": "ok"})


async def readyz(view: GatewayView, query: Query) -> Answer:
    readiness = view.readiness()
    return Answer(HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE, readiness.to_dict())


def _redacted(model: Any) -> dict[str, Any]:
    """A resource as JSON: an application's keys and basic passwords as ``redacted:<fingerprint prefix>`` (env ones
    stay variable names), and any URL's userinfo cut."""
    if isinstance(model, Application):
        model = redacted_application(model)
    # Any URL's userinfo (an upstream's, the Redis state URL's) is cut: one owner, gateway/common/redaction.py.
    return redact_urls(model.model_dump(mode="json", by_alias=True))


def config_answer(snapshot: ConfigSnapshot) -> dict[str, Any]:
    """``/config``: "resources" lists names by kind, "documents" holds each resource as JSON with its keys redacted,
    "drift" where the running echo servers differ from the config (contexts started or stopped over HTTP)."""
    names: dict[str, list[str]] = {}
    documents: list[dict[str, Any]] = []
    for (kind, name), model in sorted(snapshot.config.resources().items()):
        names.setdefault(kind, []).append(name)
        documents.append(_redacted(model))
    return {"digest": snapshot.digest, "generation": snapshot.generation, "loaded_at": snapshot.loaded_at,
            "resources": names, "documents": documents, "drift": dict(snapshot.drift)}


async def config(view: GatewayView, query: Query) -> Answer:
    return Answer(HTTPStatus.OK, config_answer(view.config_snapshot()))


async def connections(view: GatewayView, query: Query) -> Answer:
    """Counts, and what each relayed connection was accepted with: ``plan --from`` decides each as a reload would.
    A credential shows only as the fingerprint of the configuration entry it matched, never a digest of the
    secret (gateway/build/credentials.py)."""
    return Answer(HTTPStatus.OK, (await view.connections_snapshot()).to_dict())


async def upstreams(view: GatewayView, query: Query) -> Answer:
    """Every API's endpoints: healthy or not, why since when, handshakes pending, connections open."""
    return Answer(HTTPStatus.OK, (await view.upstreams_snapshot()).to_dict())


async def metrics(view: GatewayView, query: Query) -> Answer:
    return Answer(HTTPStatus.OK, (await view.metrics_text()).decode(), CONTENT_TYPE)


async def last_reload(view: GatewayView, query: Query) -> Answer:
    return Answer(HTTPStatus.OK, view.reload_status().to_dict())


async def reload_now(view: GatewayView, query: Query) -> Answer:
    outcome = await view.reload("admin")
    return Answer(HTTPStatus.OK if outcome.ok else HTTPStatus.UNPROCESSABLE_ENTITY, outcome.to_dict())


async def close_connection(view: GatewayView, query: Query) -> Answer:
    """``POST /connections/close?id=ID``: close one relayed connection with 1008 (the dashboard's button)."""
    wanted = query.get("id", "")
    if not wanted:
        return Answer(HTTPStatus.BAD_REQUEST, {"error": "bad_request", "reason": "give the connection as ?id=ID"})
    if await view.close_connection(wanted, 1008, "closed by an operator"):
        return Answer(HTTPStatus.OK, {"connection": wanted, "result": "closing"})
    return Answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "reason": "no such connection in this gateway"})


def dashboard_file(path: str) -> Route:
    """A static file of the ops dashboard (package data; the page reads the JSON endpoints and /metrics)."""
    name, content_type = DASHBOARD_FILES[path]

    async def serve(view: GatewayView, query: Query) -> Answer:
        page = (files("gateway.operations") / "dashboard" / name).read_text(encoding="utf-8")
        return Answer(HTTPStatus.OK, page, content_type)

    return serve


# The one route table: (method, path) -> route, whatever implements the view.
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/healthz"): healthz,
    ("GET", "/readyz"): readyz,
    ("GET", "/config"): config,
    ("GET", "/connections"): connections,
    ("GET", "/upstreams"): upstreams,
    ("GET", "/metrics"): metrics,
    ("GET", "/reload"): last_reload,
    ("POST", "/reload"): reload_now,
    ("POST", "/connections/close"): close_connection,
    **{("GET", path): dashboard_file(path) for path in DASHBOARD_FILES},
}
PATHS = {path: sorted(m for m, p in ROUTES if p == path) for _, path in ROUTES}


def is_open(path: str) -> bool:
    """Whether ``path`` (as the request wrote it, undecoded) is answered without the token: the probes, and the
    dashboard's whole path (its files hold no data; an unknown name under it is a 404 either way)."""
    return path in OPEN_PATHS or path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")


def error(status: HTTPStatus, word: str, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_json(word, reason), content_type="application/json",
                        headers=headers)


def admin_access(config: Config, host: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``AdminServer``'s access keywords from the Gateway resource: its token (env or file) and TLS context.

    A token variable that is unset locks the protected endpoints (logged); a listener beyond loopback without
    any token configured raises ValueError (validate reports it as WSG180; a ``--admin`` address skips that).
    """
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


def admin_server(view: GatewayView, host: str, port: int, config: Config,
                 env: Mapping[str, str] | None = None) -> AdminServer:
    """The admin listener of a gateway (not started), with its Gateway resource's token and TLS (also for a
    ``--admin`` address): the ``admin_server`` a ``gateway.serving.runtime.Gateway`` is given, and what the
    workers' supervisor makes. Called before any listener binds: a start the admin settings refuse (beyond
    loopback without a token, a token file or certificate that cannot be read) is one StartError, never a
    traceback after the ports said ``listening``."""
    try:
        access = admin_access(config, host, env)
    except (OSError, UnicodeError) as exc:  # a token file or certificate that cannot be read (ssl.SSLError too)
        # The error's class and the file it names only: a decode error's text quotes a byte of the file.
        filename = getattr(exc, "filename", None)
        where = f" ({filename})" if filename else ""
        raise StartError(f"the admin listener's token file or certificate cannot be loaded{where}: "
                         f"{type(exc).__name__}",
                         "check `admin.token_file` and `admin.tls` in the Gateway resource") from exc
    except ValueError as exc:  # beyond loopback without a token (after UnicodeError, a ValueError too)
        raise StartError(f"the admin listener on {host}:{port} is refused: {exc}",
                         "set `admin.token` (or `admin.token_file`) in the Gateway resource, or keep the admin on "
                         "loopback (--admin 127.0.0.1:PORT)") from exc
    return AdminServer(view, host, port, **access)


class _AdminRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with its error pages replaced by our JSON refusals and its logging by ours."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # A malformed request (aiohttp's parser refused it) or, never expected, a failure outside our handler.
        if status >= 500:
            log.error("admin_request_failed", error=exc.__class__.__name__ if exc else None)
            response = error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "see the gateway log")
        else:
            log.debug("admin_bad_request", status=status, error=exc.__class__.__name__ if exc else None)
            response = error(HTTPStatus(status), "bad_request", "malformed request")
        response.force_close()
        return response


class AdminServer:
    """Serves ``ROUTES`` over ``view`` on one address.

    ``token``: the bearer token the protected paths want; ``protected`` with no token (its variable is unset)
    refuses them all: an admin meant to be locked never opens by accident.
    """

    def __init__(self, view: GatewayView, host: str, port: int, *, token: str | None = None,
                 protected: bool = False, ssl_context: ssl.SSLContext | None = None) -> None:
        self.view = view
        self.host = host
        self.port = port
        self._token = token.encode() if token else None
        self._protected = protected or token is not None
        self._ssl = ssl_context
        self._server: AcceptLoop | None = None
        self._http: web.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        http = web.Server(self._handle)

        def protocol() -> RequestHandler:
            # access_log=None: no access log (aiohttp documents None; its annotation says Logger).
            return _AdminRequestHandler(http, loop=loop, access_log=None,  # type: ignore[arg-type]
                                        keepalive_timeout=KEEPALIVE,
                                        max_line_size=MAX_LINE, max_field_size=MAX_LINE, max_headers=MAX_HEADERS)

        # aiohttp's HTTP on connections our accept loop accepted, with a reserved descriptor: probes are answered
        # while the client listeners are paused for lack of descriptors (gateway/edge/accept.py).
        self._server = await AcceptLoop.open("admin", protocol, self.host, self.port, backlog=128,
                                             ssl_context=self._ssl, ssl_handshake_timeout=5 if self._ssl else None,
                                             on_error=partial(self.view.accept_error, "admin"), reserve=True)
        self._http = http
        self.port = self._server.sockets[0].getsockname()[1]
        # Whether a token guards it, never the token: a key named "token" would be redacted whatever its value.
        log.info("listening", name="admin", host=self.host, port=self.port, tls=self._ssl is not None,
                 auth="token" if self._protected else "none")

    def _authorized(self, request: web.BaseRequest) -> bool:
        """Whether the request carries the bearer token (constant-time compare; any request if none is set)."""
        if not self._protected:
            return True
        if self._token is None:
            return False
        presented = b""
        for value in request.headers.getall("Authorization", ()):
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                presented = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented, self._token)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # The path exactly as the request wrote it (no decoding, no dot segments resolved): the access rule and
        # the route table read the same string, so no spelling reaches a route the rule did not check.
        path = request.raw_path.split("?", 1)[0]
        if not is_open(path) and not self._authorized(request):
            return error(HTTPStatus.UNAUTHORIZED, "unauthorized", "this admin endpoint needs the bearer token",
                         {"WWW-Authenticate": 'Bearer realm="wsgate admin"'})
        route = ROUTES.get((request.method, path))
        if route is None:
            allowed = PATHS.get(path)
            if not allowed:
                return error(HTTPStatus.NOT_FOUND, "not_found", f"no admin endpoint {path}")
            return error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{' or '.join(allowed)} only",
                         {"Allow": ", ".join(allowed)})
        try:
            answer = await route(self.view, {key: value for key, value in request.query.items()})
        except Exception:
            log.exception("admin_handler_failed", path=path)
            return error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "see the gateway log")
        if isinstance(answer.body, str):
            return web.Response(status=answer.status, text=answer.body,
                                headers={"Content-Type": answer.content_type})
        return web.json_response(answer.body, status=answer.status, dumps=JSON)

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
        """Stop accepting, then close the open (keep-alive) connections once their request is answered."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._http is not None:
            await self._http.shutdown(1.0)
            self._http = None
