"""API rules about the upstream: its URLs (form, loops back into the gateway, echo server contexts), TLS and
headers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from ..diagnostics import Related, error, warning
from ..document_checks import suggestion
from ..models import prefix_matches
from ..tree import Location
from .base import Entry, RuleContext, cert_and_key_must_exist, must_exist, rule, written_endpoints

# Hosts that reach this machine whatever the port's own host: an upstream on one of them may be the gateway.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1", "::", ""})


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        return parts
    except ValueError:
        return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "wss" else 80


@dataclass(frozen=True)
class _Routes:
    """The gateway's own routes and listener hosts by port number: what an upstream loop would hit."""

    ports: Mapping[str, Entry]
    paths: Mapping[int, Mapping[str, tuple[str, str]]]  # port number -> exact path -> (API, port name)
    hosts: Mapping[int, set[str]]


def _routes(ctx: RuleContext) -> _Routes:
    ports = ctx.firsts("Port")
    routes_by_number: dict[int, dict[str, tuple[str, str]]] = defaultdict(dict)
    hosts_by_number: dict[int, set[str]] = defaultdict(set)
    for p in ports.values():
        hosts_by_number[p.model.port].add(p.model.host)
    for a in ctx.firsts("API").values():
        for pname in a.model.ports:
            if pname in ports:
                routes_by_number[ports[pname].model.port][a.model.path] = (a.name, pname)
    return _Routes(ports, routes_by_number, hosts_by_number)


@rule
def upstream_urls(ctx: RuleContext) -> None:
    """Each endpoint URL: its form, a loop back into the gateway, and the context of an echo server it points at."""
    routes = _routes(ctx)
    echoes = ctx.of("EchoServer")
    for e in ctx.of("API"):
        for i, endpoint in enumerate(e.model.upstream.endpoints):
            loc = e.doc.value_at(("upstream", "endpoints", i, "url"))
            parts = _url_form(ctx, e, i, endpoint.url, loc)
            if parts is None:
                continue
            host = (parts.hostname or "").lower()
            number = parts.port or _default_port(parts.scheme.lower())
            _loop_back(ctx, routes, loc, host, number, parts.path)
            for echo in echoes:
                if echo.model.port == number and (host in LOCAL_HOSTS or host == echo.model.host.lower()):
                    _echo_context(ctx, echo, loc, endpoint.url, parts.path)


def _url_form(ctx: RuleContext, e: Entry, i: int, url: str, loc: Location) -> SplitResult | None:
    """Problems of the URL's own form; its parts when it is a ws:// or wss:// URL the other checks can read."""
    parts = _split(url)
    if parts is None or not parts.scheme or not parts.hostname:
        ctx.out.append(
            error(
                "WSG121",
                f"upstream URL {url!r} is not a valid ws:// or wss:// URL",
                loc,
                hint="write it as ws://host:port/path",
            )
        )
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        better = {"http": "ws", "https": "wss"}.get(scheme)
        ctx.out.append(
            error(
                "WSG114",
                f"upstream scheme '{parts.scheme}' is not ws or wss",
                loc,
                hint=f"use {better}://{url.split('://', 1)[-1]}" if better
                else "the native endpoint must be a WebSocket URL",
            )
        )
        return None
    if parts.fragment or url.endswith("#"):
        ctx.out.append(
            error(
                "WSG121",
                "upstream URL has a fragment ('#...')",
                ctx.column_of(loc, url, url.index("#")),
                hint="WebSocket URLs cannot carry fragments (RFC 6455, 3); remove it",
            )
        )
    if parts.username is not None or parts.password is not None:
        ctx.out.append(
            warning(
                "WSG250",
                "upstream URL carries credentials (user:password@): they are sent as Basic auth but live "
                "in the config, in plain text",
                loc,
                hint="put them in the environment instead: `upstream: {headers: {Authorization: "
                "{env: UPSTREAM_AUTH}}}`",
                at_credential=True,
            )
        )
    if parts.query:
        ctx.out.append(
            warning(
                "WSG207",
                "upstream URL has a query string",
                ctx.column_of(loc, url, url.index("?")),
                hint="it is sent on every upstream connection; make sure it holds no secret and is not "
                "meant to come from the client",
            )
        )
    if scheme == "ws" and e.model.upstream.tls.ca_file is not None and i == 0:
        ctx.out.append(
            warning(
                "WSG208",
                "upstream TLS settings on a ws:// endpoint are never used",
                e.doc.key_at(("upstream", "tls")),
                hint="use wss:// or remove `upstream.tls`",
            )
        )
    return parts


def _loop_back(ctx: RuleContext, routes: _Routes, loc: Location, host: str, number: int, upath: str) -> None:
    # A loop: the upstream is one of the gateway's own routes.
    if number in routes.paths and (host in LOCAL_HOSTS or host in routes.hosts[number]):
        hit = routes.paths[number].get(upath or "/") or _prefix_hit(ctx, routes.ports, number, upath or "/")
        if hit is not None:
            ctx.out.append(
                error(
                    "WSG119",
                    f"upstream points back at the gateway's own route {upath} "
                    f"(API '{hit[0]}' on port '{hit[1]}')",
                    loc,
                    hint="the native endpoint must be the backend server, not the gateway itself",
                )
            )


def _echo_context(ctx: RuleContext, echo: Entry, loc: Location, url: str, upath: str) -> None:
    """An upstream on a declared echo server must name one of its contexts."""
    contexts = [c.path for c in echo.model.contexts]
    target = upath or "/"
    if target in contexts:
        if not next(c for c in echo.model.contexts if c.path == target).published:
            ctx.out.append(
                warning(
                    "WSG215",
                    f"upstream points at echo server '{echo.name}' context {target}, which is unpublished",
                    loc,
                    related=(Related(_context_loc(echo, target), "the context is declared here"),),
                    hint="every upgrade gets 404 until it is published: set `published: true`, or start "
                    "it over HTTP (startDemoAPI), which is drift from this config",
                )
            )
        return
    flipped = target[:-1] if target.endswith("/") else target + "/"
    if flipped in contexts:
        # The tutorial's classic deploy-time error: the native URL and the backend's
        # context disagree on the trailing '/', and every upgrade gets a 404.
        end = url.index(upath) + len(upath) if upath else len(url)
        caret = end - 1 if target.endswith("/") else end
        summary = (
            f"upstream path ends with '/' but echo server '{echo.name}' serves {flipped}"
            if target.endswith("/")
            else f"upstream path {target} lacks the trailing '/' "
            f"of echo server '{echo.name}' context {flipped}"
        )
        ctx.out.append(
            error(
                "WSG104",
                summary,
                ctx.column_of(loc, url, caret),
                related=(Related(_context_loc(echo, flipped), "the context is declared here"),),
                hint=f"write the upstream URL's path as {flipped}",
            )
        )
    else:
        ctx.out.append(
            error(
                "WSG127",
                f"echo server '{echo.name}' has no context {target}",
                loc,
                hint=suggestion(target, contexts, listing="its contexts"),
            )
        )


def _prefix_hit(ctx: RuleContext, ports: Mapping[str, Entry], number: int, path: str) -> tuple[str, str] | None:
    """The prefix route of the gateway's port ``number`` that covers ``path`` (a loop), if any."""
    for a in ctx.firsts("API").values():
        if a.model.match != "prefix" or not prefix_matches(a.model.path, path):
            continue
        for pname in a.model.ports:
            if pname in ports and ports[pname].model.port == number:
                return (a.name, pname)
    return None


def _context_loc(echo: Entry, path: str) -> Location:
    for i, c in enumerate(echo.model.contexts):
        if c.path == path:
            return echo.doc.value_at(("contexts", i, "path"))
    return echo.doc.value_at(("contexts",))


@rule
def upstream_tls(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        tls = e.model.upstream.tls
        speaks_tls = any(ep.url.lower().startswith("wss:") for ep in e.model.upstream.endpoints)
        if not tls.verify and speaks_tls:  # on ws:// only, WSG208 says the setting is never used
            ctx.out.append(
                warning(
                    "WSG206",
                    f"API '{e.name}' does not verify its upstream's TLS certificate",
                    e.doc.value_at(("upstream", "tls", "verify")),
                    hint="anyone on the path can impersonate the native server; set a `ca_file` instead",
                )
            )
        if tls.ca_file is not None:
            must_exist(ctx, e, ("upstream", "tls", "ca_file"), tls.ca_file, "CA file")
        cert_and_key_must_exist(ctx, e, ("upstream", "tls"), tls.cert, tls.key)
        if written_endpoints(e) == 1:
            for i, p in enumerate(e.model.policies):
                if p.type == "routing" and p.strategy == "round-robin":
                    ctx.out.append(
                        warning(
                            "WSG209",
                            "round-robin routing over a single endpoint",
                            e.doc.value_at(("policies", i, "strategy")),
                            hint="add endpoints under `upstream.endpoints`, or drop the routing policy",
                        )
                    )




@rule
def upstream_header_variables(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        for name, value in e.model.upstream.headers.items():
            if value.env not in ctx.env:
                ctx.out.append(
                    warning(
                        "WSG203",
                        f"environment variable {value.env} is not set",
                        e.doc.value_at(("upstream", "headers", name, "env")),
                        hint=f"the upstream gets no {name} header until the gateway runs with {value.env} set",
                    )
                )
