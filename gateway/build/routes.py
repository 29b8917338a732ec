"""The compiled route table: what the listener reads once per upgrade.

``RouteTable.compile`` turns a checked :class:`Config` into immutable
lookups: (port name, host claim) -> exact paths and prefixes -> :class:`CompiledAPI`. A connection keeps
the ``CompiledAPI`` it was accepted with; a reload compiles a new table and
the runtime swaps the reference, so nothing here is ever mutated after
compile (except the balancer's round-robin credit, which is only a hint).
Endpoint health lives outside the table, in the gateway's
:class:`~gateway.serving.health.HealthRegistry` (which the table knows only as
:class:`PassiveHealth`), so it survives the swap.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol
from urllib.parse import parse_qs, quote

import structlog
from websockets.datastructures import Headers
from websockets.headers import build_host
from websockets.uri import WebSocketURI, parse_uri

from ..common.build_counts import count
from ..config.models import API, PassiveHealthCheck, Port, RoutingPolicy, Upstream, prefix_matches
from ..config.models import Policy as PolicySpec
from ..config.tree import Config, Loaded
from ..policies.base import ConnectionContext, Policy, UpgradeRequest
from ..policies.registry import build_chain as default_build_chain
from ..policies.registry import build_route_chains
from ..policies.state import PolicyState
from .apps import AppIndex
from .balance import SmoothWeightedRoundRobin, least_connections_order, rendezvous_order
from .endpoint_health import EndpointHealth
from .message_routes import CompiledRoutes, compile_routes, env_headers

log = structlog.get_logger("wsgate.routes")


class PassiveHealth(Protocol):
    """The endpoint-health registry as routes use it (``gateway.serving.health.HealthRegistry`` is the one).

    Compile takes each endpoint's record from it (``get``: created healthy on first sight, kept across reloads);
    the upstream connect reports each upgrade's outcome to it. Probes, verdicts and their logs stay in serving.
    """

    def get(self, api: str, url: str) -> EndpointHealth: ...

    def upgrade_failed(self, health: EndpointHealth, reason: str, passive: PassiveHealthCheck,
                       siblings: Sequence[EndpointHealth] = ()) -> None: ...

    def upgrade_succeeded(self, health: EndpointHealth) -> None: ...


def _overrides(policy: Policy, name: str) -> bool:
    return getattr(type(policy), name) is not getattr(Policy, name)


def upstream_ssl_context(loaded: Loaded[API]) -> ssl.SSLContext | None:
    """The client-side TLS context for an API's wss:// endpoints (None when all are ws://)."""
    api = loaded.model
    if api.upstream is None or not any(e.url.startswith("wss://") for e in api.upstream.endpoints):
        return None
    count("upstream_tls")
    tls = api.upstream.tls
    cafile = str(loaded.resolve(tls.ca_file)) if tls.ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if tls.cert and tls.key:  # mTLS to the upstream: present the gateway's client certificate when asked
        context.load_cert_chain(loaded.resolve(tls.cert), loaded.resolve(tls.key))
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A native endpoint and what every upgrade to it needs, derived once when the config is compiled."""

    uri: WebSocketURI
    host_header: str  # the Host header the upstream request carries
    url: str  # how logs name it
    weight: int = 1
    health: EndpointHealth | None = None  # shared with the registry: outlives this table

    @classmethod
    def parse(cls, url: str, weight: int = 1, health: Callable[[str], EndpointHealth] | None = None) -> Endpoint:
        uri = parse_uri(url)
        name = f"{'wss' if uri.secure else 'ws'}://{uri.host}:{uri.port}{uri.resource_name}"
        return cls(uri, build_host(uri.host, uri.port, uri.secure), name, weight,
                   health(name) if health is not None else None)

    @property
    def probe_url(self) -> str:
        """The URL health checks open: ``url`` plus the user and password of the configured URL (never logged)."""
        if not self.uri.user_info:
            return self.url
        user, password = (quote(part, safe="") for part in self.uri.user_info)
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{user}:{password}@{rest}"

    @property
    def host(self) -> str:
        return self.uri.host

    @property
    def path(self) -> str:
        return self.uri.path


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """One API as ``build()`` compiles it, with no live state: what validate checked and run serves.

    ``CompiledAPI.build`` binds it (policy objects, the endpoints' shared health, the environment's upstream
    headers) when a route table is made from it; nothing here is parsed again there.
    """

    loaded: Loaded[API]
    endpoints: tuple[Endpoint, ...]  # parsed, not yet bound to their health
    routing: RoutingPolicy  # the chain's routing spec (the default when it has none)
    chain: tuple[PolicySpec, ...]  # the policy specs, in chain order
    ssl_context: ssl.SSLContext | None  # the client context of its wss:// endpoints

    @classmethod
    def compile(cls, loaded: Loaded[API], ssl_context: ssl.SSLContext | None,
                endpoints: tuple[Endpoint, ...] | None = None) -> CompiledRoute:
        """``endpoints``: already parsed (``build()`` parses each to locate a failure); else parsed here."""
        count("routes")
        api = loaded.model
        routing = next((spec for spec in api.policies if isinstance(spec, RoutingPolicy)), None)
        if endpoints is None:
            endpoints = tuple(Endpoint.parse(e.url, e.weight) for e in (api.upstream.endpoints if api.upstream else ()))
        return cls(loaded, endpoints, routing or RoutingPolicy(type="routing"), tuple(api.policies), ssl_context)


def _pending(endpoint: Endpoint) -> int:
    return endpoint.health.pending if endpoint.health is not None else 0


class NoEndpoint(Exception):
    """No endpoint may take a new connection now: all unhealthy, or the healthy ones at their pending cap
    (``at_capacity``: a slot frees as soon as a handshake in flight ends)."""

    def __init__(self, reason: str, at_capacity: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at_capacity = at_capacity


@dataclass(eq=False, slots=True)
class CompiledAPI:
    """One API as the runtime uses it: its model, policy chain and upstream endpoints."""

    loaded: Loaded[API]
    chain: tuple[Policy, ...]
    upgrade_policies: tuple[Policy, ...]  # those with an on_upgrade hook, in chain order
    client_policies: tuple[Policy, ...]  # message stage, client -> upstream
    server_policies: tuple[Policy, ...]  # message stage, upstream -> client
    endpoints: tuple[Endpoint, ...]
    routing: RoutingPolicy
    ssl_context: ssl.SSLContext | None
    fast_path: bool
    balancer: SmoothWeightedRoundRobin
    health: PassiveHealth | None = None  # where failed upgrades are reported (passive checks)
    # (name, value) added to every upstream request, values read from the environment when compiled: what
    # upstream credentials look like inside the gateway. Never logged; no repr shows them.
    upstream_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Upgrades waiting for a pending-handshake slot of this route's endpoints, oldest first (see upstream.py).
    slot_waiters: deque[asyncio.Future[None]] = field(default_factory=deque, repr=False)
    # `match_headers` and `match_query` as sorted (kind, name, value): every one must hold for the route to match.
    conditions: tuple[tuple[str, str, str], ...] = ()
    # Message routes (an API with `routes` instead of an `upstream`): relayed by the router, never the byte relay.
    routes: CompiledRoutes | None = None

    def matches(self, headers: Headers | None, query: Mapping[str, list[str]] | None) -> bool:
        """Whether the request's headers (any of a header's values) and query parameters meet every condition."""
        for kind, name, value in self.conditions:
            if kind == "header":
                if headers is None or value not in headers.get_all(name):
                    return False
            elif query is None or value not in query.get(name, ()):
                return False
        return True

    @property
    def api(self) -> API:
        return self.loaded.model

    @property
    def name(self) -> str:
        return self.loaded.model.name

    @property
    def upstream(self) -> Upstream:
        """The API's native upstream; only APIs without message routes have one (and only they connect to it)."""
        upstream = self.loaded.model.upstream
        if upstream is None:
            raise LookupError(f"API '{self.name}' has message routes, not an upstream")
        return upstream

    def hash_key(self, request: UpgradeRequest, conn: ConnectionContext) -> str | None:
        """What consistent hashing keys this upgrade on (None: no key, e.g. an absent header)."""
        routing = self.routing
        if routing.strategy != "consistent-hash":
            return None
        if routing.hash_on == "client_ip":
            return request.peer[0]
        if routing.hash_on == "application":
            return conn.application.name if conn.application else None
        if routing.hash_on == "header":
            return request.headers.get(routing.hash_key or "")
        values = request.query.get(routing.hash_key or "")
        return values[0] if values else None

    def candidates(self, key: str | None = None) -> list[Endpoint]:
        """The endpoints a new upgrade may try, in order: the strategy's pick first, then failover order.

        Unhealthy endpoints and those at their pending cap are left out;
        raises :class:`NoEndpoint` when that leaves none.
        """
        endpoints = self.endpoints
        cap = self.upstream.max_pending
        healthy = [i for i, e in enumerate(endpoints) if e.health is None or e.health.healthy]
        if not healthy:
            raise NoEndpoint("no healthy upstream endpoint")
        eligible = [i for i in healthy if _pending(endpoints[i]) < cap]
        if not eligible:
            raise NoEndpoint("every healthy upstream endpoint is at its limit of pending upgrades", at_capacity=True)
        weights = [e.weight for e in endpoints]
        strategy = self.routing.strategy
        if strategy == "round-robin":
            order = self.balancer.order(eligible, weights)
        elif strategy == "least-connections":
            load = [(e.health.open + e.health.pending) if e.health else 0 for e in endpoints]
            order = least_connections_order(eligible, load, weights)
        elif strategy == "consistent-hash" and key is not None:
            # Rank all endpoints, so a key's place does not move when another endpoint goes down.
            ranked = rendezvous_order(key, [e.url for e in endpoints], weights)
            allowed = set(eligible)
            order = [i for i in ranked if i in allowed]
        elif strategy == "consistent-hash":  # no key to hash: spread like round-robin
            order = self.balancer.order(eligible, weights)
        else:  # straight-through: list order is priority order
            order = eligible
        return [endpoints[i] for i in order]

    def pick_endpoint(self) -> Endpoint:
        """The endpoint the next upgrade would try first."""
        return self.candidates()[0]

    @property
    def all_policies(self) -> list[Policy]:
        """The API's chain and every message route's own policies."""
        return [*self.chain, *(self.routes.policies if self.routes is not None else ())]

    def activate(self) -> None:
        """The route serves new upgrades from now on: let its policies apply shared settings."""
        for policy in self.all_policies:
            policy.activate()

    def close(self) -> None:
        """The route is gone for good: let its policies release files and tasks."""
        if self.routes is not None and self.routes.http_client is not None:
            self.routes.http_client.close_soon()  # the keep-alive pool of its HTTP integrations
        for policy in self.all_policies:
            try:
                policy.close()
            except Exception:
                log.exception("policy_close_failed", api=self.name, policy=policy.type)

    @classmethod
    def build(cls, loaded: Loaded[API], chain: list[Policy], health: PassiveHealth | None = None,
              env: Mapping[str, str] | None = None,
              upstream_tls: Mapping[str, ssl.SSLContext | None] | None = None,
              compiled: CompiledRoute | None = None,
              route_chains: Mapping[str, Sequence[Policy]] | None = None) -> CompiledAPI:
        """Bind ``compiled`` (what ``gateway.build.pipeline`` compiled for this API; else compiled here, with the
        client context from ``upstream_tls`` when given) to ``chain`` and the endpoints' ``health``;
        ``route_chains``: each message route's own policies by route key."""
        api = loaded.model
        if compiled is None:
            context = (upstream_tls[api.name] if upstream_tls is not None and api.name in upstream_tls
                       else upstream_ssl_context(loaded))
            compiled = CompiledRoute.compile(loaded, context)
        upstream = api.upstream
        if upstream is not None and not upstream.tls.verify and any(e.url.startswith("wss://")
                                                                    for e in upstream.endpoints):
            log.warning("upstream_tls_verification_off", api=api.name)
        client = tuple(p for p in chain if "client" in p.message_stages)
        server = tuple(p for p in chain if "server" in p.message_stages)
        endpoints = compiled.endpoints
        if health is not None:  # the live part: each endpoint's counters and state, shared across reloads
            endpoints = tuple(replace(e, health=health.get(api.name, e.url)) for e in endpoints)
        return cls(
            loaded=loaded,
            chain=tuple(chain),
            upgrade_policies=tuple(p for p in chain if _overrides(p, "on_upgrade")),
            client_policies=client,
            server_policies=server,
            endpoints=endpoints,
            routing=compiled.routing,
            ssl_context=compiled.ssl_context,
            # A push enters the server-to-client stage of the message relay: an API with push is never relayed as
            # bytes, even with no message-stage policy (docs/push.md).
            fast_path=not client and not server and not api.compression and not api.routes and api.push is None,
            balancer=SmoothWeightedRoundRobin(len(endpoints)),
            health=health,
            upstream_headers=upstream_headers(api, os.environ if env is None else env),
            conditions=api.match_conditions(),
            routes=compile_routes(loaded, route_chains or {}, env),
        )


def upstream_headers(api: API, env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The API's ``upstream.headers`` with their values from ``env``: unset ones left out (validate warned,
    WSG203), and a value holding a line break never sent (it would smuggle further headers upstream)."""
    return env_headers(api.upstream.headers if api.upstream is not None else {}, env, api.name)


class MalformedHost(ValueError):
    """A ``Host`` header that names no host: an empty label (``a..example``, ``.a.example``, ``a.example..``),
    an unclosed IPv6 bracket, or a port that is not a number. The upgrade gets 400."""


def request_host(value: str | None) -> str | None:
    """The host name of a ``Host`` header, lowercased, without port or its one trailing dot (None when absent).

    Raises :class:`MalformedHost`: stripping every trailing dot made ``a.example..`` route like ``a.example``,
    a name no resolver would give the same answer for.
    """
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal: [::1]:8080
        end = value.find("]")
        if end < 0 or not _port_ok(value[end + 1:]):
            raise MalformedHost("malformed Host header: an unclosed IPv6 literal or a bad port")
        return value[: end + 1]
    name, colon, port = value.partition(":")
    if not _port_ok(colon + port):
        raise MalformedHost("malformed Host header: the port is not a number")
    if name.endswith("."):  # the fully qualified form names the same host
        name = name[:-1]
    if not name or "" in name.split("."):
        raise MalformedHost("malformed Host header: an empty label")
    return name


def _port_ok(rest: str) -> bool:
    """Whether what follows a host is nothing, or ``:`` and an optional decimal port (RFC 3986, 3.2.3)."""
    return not rest or (rest[0] == ":" and (rest[1:] == "" or (rest[1:].isascii() and rest[1:].isdigit())))


def _specificity(route: CompiledAPI) -> tuple[int, str]:
    """Order among routes of one path: more header/query conditions first, then by API name (deterministic)."""
    return (-len(route.conditions), route.name)


class _Query:
    """The request's query, parsed once and only when a route has a query condition."""

    __slots__ = ("text", "parsed")

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.parsed: Mapping[str, list[str]] | None = None

    def get(self) -> Mapping[str, list[str]] | None:
        if self.parsed is None and self.text is not None:
            self.parsed = parse_qs(self.text, keep_blank_values=True)
        return self.parsed


@dataclass(slots=True)
class PortRoutes:
    """The routes of one port for one host claim (a host name, a ``*.`` pattern, or any host): exact paths and
    prefixes, longest first; routes of one path (or prefix) most conditions first."""

    exact: dict[str, list[CompiledAPI]] = field(default_factory=dict)
    prefixes: list[tuple[str, CompiledAPI]] = field(default_factory=list)

    def add_exact(self, path: str, route: CompiledAPI) -> None:
        routes = self.exact.setdefault(path, [])
        if all(other.conditions != route.conditions for other in routes):  # the same twice: the first stays
            routes.append(route)
            routes.sort(key=_specificity)

    def sort(self) -> None:
        self.prefixes.sort(key=lambda item: (-len(item[0]), *_specificity(item[1])))  # the longest prefix wins

    def match(self, path: str, headers: Headers | None = None,
              query: str | None = None) -> tuple[CompiledAPI, str] | None:
        parsed = _Query(query)
        for route in self.exact.get(path, ()):
            if not route.conditions or route.matches(headers, parsed.get()):
                return route, ""
        for prefix, route in self.prefixes:
            if prefix_matches(prefix, path) and (not route.conditions or route.matches(headers, parsed.get())):
                return route, path[len(prefix):] if route.api.strip_prefix else path
        return None


@dataclass(frozen=True, eq=False)
class RouteTable:
    """Immutable routes of one config generation."""

    config: Config
    digest: str
    generation: int
    apps: AppIndex
    routes: Mapping[tuple[str, str | None], PortRoutes] = field(default_factory=dict)  # (port, host claim)
    apis: Mapping[str, CompiledAPI] = field(default_factory=dict)
    hosts: frozenset[str] = frozenset()  # ports that have host-specific routes
    # Gives back this table's hold on the shared-state backend it was compiled against (PolicyState.hold_shared):
    # a backend switched away from closes when the last table holding it is closed.
    release_state: Callable[[], None] | None = field(default=None, repr=False)

    @classmethod
    def compile(cls, config: Config, apps: AppIndex, state: PolicyState, *, generation: int = 1,
                build_chain: Callable[[Loaded[API], Config, AppIndex, PolicyState], list[Policy]] | None = None,
                health: PassiveHealth | None = None, env: Mapping[str, str] | None = None,
                upstream_tls: Mapping[str, ssl.SSLContext | None] | None = None,
                compiled_routes: Mapping[str, CompiledRoute] | None = None) -> RouteTable:
        """Bind every enabled route of ``config``: the ``compiled_routes`` (``gateway.build.pipeline.Artefacts``;
        default: compiled here, with the contexts of ``upstream_tls`` when given) to policies from
        ``build_chain`` (default: ``gateway.policies.build_chain``) and endpoint health from ``health``
        (the gateway's registry; None: endpoints without a health record)."""
        build_chain = build_chain or default_build_chain
        enabled = {name for name, port in config.ports.items() if port.model.enabled}
        apis: dict[str, CompiledAPI] = {}
        routes: dict[tuple[str, str | None], PortRoutes] = {}
        release_state = state.hold_shared() if state is not None else None
        try:
            for name, loaded in config.apis.items():
                compiled = CompiledAPI.build(loaded, build_chain(loaded, config, apps, state), health, env,
                                             upstream_tls,
                                             compiled_routes.get(name) if compiled_routes is not None else None,
                                             build_route_chains(loaded, config, apps, state))
                apis[name] = compiled
                api = loaded.model
                for port_name in api.ports:
                    if port_name not in enabled:
                        continue
                    claims: list[str | None] = [*api.hosts] or [None]
                    for host in claims:
                        group = routes.setdefault((port_name, host), PortRoutes())
                        if api.match == "prefix":
                            group.prefixes.append((api.path, compiled))
                        else:
                            group.add_exact(api.path, compiled)
        except BaseException:
            for compiled in apis.values():
                compiled.close()
            if release_state is not None:
                release_state()
            raise
        for group in routes.values():
            group.sort()
        with_hosts = frozenset(port for port, host in routes if host is not None)
        return cls(config=config, digest=config.digest(), generation=generation, apps=apps, routes=routes,
                   apis=apis, hosts=with_hosts, release_state=release_state)

    def match(self, port_name: str, path: str, host: str | None = None, headers: Headers | None = None,
              query: str | None = None) -> tuple[CompiledAPI, str] | None:
        """The API for a request, and the path part the upstream URL gets (see ``API.strip_prefix``).

        Routes claiming the request's host (exact name, then ``*.`` pattern)
        come first; then routes for any host. Within each: the exact path,
        then the longest prefix; among routes of one path, the one with the
        most `match_headers`/`match_query` conditions that all hold (ties by
        API name). ``path`` has no query (``query`` is the raw query string);
        the trailing slash counts.
        """
        if host is not None and port_name in self.hosts:
            claims: list[str] = [host]
            if "." in host:
                claims.append("*." + host.split(".", 1)[1])
            for claim in claims:
                group = self.routes.get((port_name, claim))
                found = group.match(path, headers, query) if group is not None else None
                if found is not None:
                    return found
        group = self.routes.get((port_name, None))
        return group.match(path, headers, query) if group is not None else None

    def lookup(self, port_name: str, path: str, host: str | None = None) -> CompiledAPI | None:
        """The API served at ``path`` (no query; the trailing slash counts) on a port."""
        found = self.match(port_name, path, host)
        return found[0] if found is not None else None

    def enabled_ports(self) -> dict[str, Loaded[Port]]:
        return {name: port for name, port in self.config.ports.items() if port.model.enabled}

    def activate(self) -> None:
        """This table serves new upgrades from now on (called by the runtime at start and at a reload's swap)."""
        for compiled in self.apis.values():
            compiled.activate()

    def close(self) -> None:
        """Release the policies of every route (the table is retired and its connections are gone)."""
        for compiled in self.apis.values():
            compiled.close()
        if self.release_state is not None:
            self.release_state()
