"""Message routes compiled: the selection expression as a path, one dict from route key to route.

An API with ``routes`` sends each client message to the integration of the
route its selection value names. What is decided here, once per config: the
path the expression reads (``action``, ``/a/b``, ``$request.body.a.b`` all
become a tuple of keys), the route of each key (one dict lookup per message,
never a scan), each route's own policy chains, the integration's headers
from the environment and its TLS context. Nothing here opens a socket; the
relay's router (gateway/relay/routed.py) does, with what this module holds.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..config.models import (
    API,
    EnvKey,
    HTTPIntegration,
    IntegrationErrors,
    MessageRoute,
    UpstreamTLS,
    WebSocketIntegration,
)
from ..config.tree import Loaded
from ..policies.base import Policy

log = structlog.get_logger("wsgate.routes")

DEFAULT, CONNECT, DISCONNECT = "$default", "$connect", "$disconnect"
AWS_PREFIX = "$request.body."


def selection_path(expression: str) -> tuple[str, ...]:
    """The keys an expression reads, outermost first: ``action``, ``/action`` (a JSON Pointer, with its ``~1``
    and ``~0`` escapes), ``meta.kind`` and ``$request.body.meta.kind`` (AWS API Gateway's form)."""
    if expression.startswith("/"):
        return tuple(part.replace("~1", "/").replace("~0", "~") for part in expression[1:].split("/"))
    return tuple(expression.removeprefix(AWS_PREFIX).split("."))


def selection_expression(api: API) -> str | None:
    """The API's selection expression: its own, else the discriminator of its validate-messages policy."""
    if api.route_selection is not None and api.route_selection.expression:
        return api.route_selection.expression
    for policy in api.policies:
        if policy.type == "validate-messages" and policy.discriminator:
            return policy.discriminator
    return None


def route_key_of(value: Any) -> str | None:
    """The route key a selected JSON value stands for: strings as they are, numbers and booleans as JSON writes
    them (``1``, ``true``), anything else (null, objects, arrays) none."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


def select(path: tuple[str, ...], payload: str | bytes) -> str | None:
    """The route key of one text message (None: not JSON, not an object, or no such field)."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    for part in path:
        if not isinstance(document, dict):
            return None
        document = document.get(part)
        if document is None:
            return None
    return route_key_of(document)


def tls_context(loaded: Loaded[API], tls: UpstreamTLS, secure: bool) -> ssl.SSLContext | None:
    """The client TLS context of one integration (None for ws:// and http://)."""
    if not secure:
        return None
    cafile = str(loaded.resolve(tls.ca_file)) if tls.ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if tls.cert and tls.key:
        context.load_cert_chain(loaded.resolve(tls.cert), loaded.resolve(tls.key))
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def env_headers(configured: Mapping[str, EnvKey], env: Mapping[str, str], api: str) -> tuple[tuple[str, str], ...]:
    """Configured ``{env: VARIABLE}`` headers with their values (upstream.headers, an integration's headers)."""
    headers = []
    for name, value in configured.items():
        text = env.get(value.env)
        if not text:
            continue
        if any(ch in text for ch in "\r\n\0"):
            log.warning("upstream_header_not_sent", reason="its variable holds a line break", api=api, header=name,
                        variable=value.env)
            continue
        headers.append((name, text))
    return tuple(headers)


@dataclass(eq=False, slots=True)
class CompiledRoute:
    """One route as the router uses it."""

    key: str
    http: HTTPIntegration | None
    websocket: WebSocketIntegration | None
    on_error: IntegrationErrors
    ssl_context: ssl.SSLContext | None
    client_policies: tuple[Policy, ...] = ()  # the route's own, after the API's
    server_policies: tuple[Policy, ...] = ()  # on what its integration answers, before the API's
    chain: tuple[Policy, ...] = ()
    # ``{env: ...}`` headers with their values: credentials inside the gateway. Never logged; no repr.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def url(self) -> str:
        target = self.http if self.http is not None else self.websocket
        assert target is not None  # validate refuses a route without an integration (WSG131)
        return target.url


@dataclass(eq=False, slots=True)
class CompiledRoutes:
    """An API's routes: the selection path, the routes by key, and the live state the whole API shares."""

    api: str
    path: tuple[str, ...]
    by_key: Mapping[str, CompiledRoute]
    default: CompiledRoute | None
    connect: CompiledRoute | None
    disconnect: CompiledRoute | None
    no_route: str  # "drop" or "close"
    error_message: str | None
    max_http_requests: int
    max_answer: int | None  # the API's max_message_size: a larger HTTP answer is a failure, never read whole
    # The keep-alive pool of the API's HTTP integrations (an aiohttp session), made on first use by the relay.
    http_client: Any = None

    def route_for(self, payload: str | bytes, is_text: bool) -> CompiledRoute | None:
        """The route of one client message: one parse and one dict lookup; ``$default`` when none matches."""
        if is_text:
            key = select(self.path, payload)
            if key is not None:
                route = self.by_key.get(key)
                if route is not None:
                    return route
        return self.default

    @property
    def policies(self) -> list[Policy]:
        return [p for r in self.all() for p in r.chain]

    def all(self) -> list[CompiledRoute]:
        out = list(self.by_key.values())
        out += [r for r in (self.default, self.connect, self.disconnect) if r is not None]
        return out


def compile_routes(loaded: Loaded[API], chains: Mapping[str, Sequence[Policy]],
                   env: Mapping[str, str] | None = None) -> CompiledRoutes | None:
    """The API's routes (None without any); ``chains`` holds each route's own policy objects by key."""
    api = loaded.model
    if not api.routes:
        return None
    env = os.environ if env is None else env
    compiled: dict[str, CompiledRoute] = {}
    for route in api.routes:
        compiled.setdefault(route.key, _route(loaded, route, chains.get(route.key, ()), env))
    expression = selection_expression(api) or ""
    selection = api.route_selection
    by_key = {key: r for key, r in compiled.items() if key not in (DEFAULT, CONNECT, DISCONNECT)}
    return CompiledRoutes(
        api=api.name,
        path=selection_path(expression) if expression else (),
        by_key=by_key,
        default=compiled.get(DEFAULT),
        connect=compiled.get(CONNECT),
        disconnect=compiled.get(DISCONNECT),
        no_route=selection.no_route if selection is not None else "drop",
        error_message=selection.error_message if selection is not None else None,
        max_http_requests=api.limits.max_http_requests,
        max_answer=api.limits.max_message_size,
    )


def _route(loaded: Loaded[API], route: MessageRoute, chain: Sequence[Policy],
           env: Mapping[str, str]) -> CompiledRoute:
    integration = route.integration
    assert integration is not None  # validate refuses a route without one (WSG131)
    target = integration.http if integration.http is not None else integration.websocket
    assert target is not None
    secure = target.url.lower().startswith(("https://", "wss://"))
    return CompiledRoute(
        key=route.key,
        http=integration.http,
        websocket=integration.websocket,
        on_error=target.on_error,
        ssl_context=tls_context(loaded, target.tls, secure),
        client_policies=tuple(p for p in chain if "client" in p.message_stages),
        server_policies=tuple(p for p in chain if "server" in p.message_stages),
        chain=tuple(chain),
        headers=env_headers(target.headers, env, loaded.model.name),
    )
