"""The compiled route table: what the listener reads once per upgrade.

``RouteTable.compile`` turns a checked :class:`Config` into immutable
lookups: (port name, exact path) -> :class:`CompiledAPI`. A connection keeps
the ``CompiledAPI`` it was accepted with; a reload compiles a new table and
the runtime swaps the reference, so nothing here is ever mutated after
compile (except the round-robin cursor, which is only a hint).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from websockets.headers import build_host
from websockets.uri import WebSocketURI, parse_uri

from .apps import AppIndex
from .config.models import API, Port
from .config.tree import Config, Loaded
from .policies.base import Policy
from .policies.registry import build_chain as default_build_chain
from .policies.state import PolicyState

log = structlog.get_logger("wsgate.routes")


def _overrides(policy: Policy, name: str) -> bool:
    return getattr(type(policy), name) is not getattr(Policy, name)


def upstream_ssl_context(loaded: Loaded[API]) -> ssl.SSLContext | None:
    """The client-side TLS context for an API's wss:// endpoints (None when all are ws://)."""
    api = loaded.model
    if not any(e.url.startswith("wss://") for e in api.upstream.endpoints):
        return None
    tls = api.upstream.tls
    cafile = str(loaded.resolve(tls.ca_file)) if tls.ca_file else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning("upstream TLS verification is off", api=api.name)
    return context


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A native endpoint and what every upgrade to it needs, derived once when the config is compiled."""

    uri: WebSocketURI
    host_header: str  # the Host header the upstream request carries
    url: str  # how logs name it

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        uri = parse_uri(url)
        return cls(uri, build_host(uri.host, uri.port, uri.secure),
                   f"{'wss' if uri.secure else 'ws'}://{uri.host}:{uri.port}{uri.resource_name}")

    @property
    def host(self) -> str:
        return self.uri.host

    @property
    def path(self) -> str:
        return self.uri.path


@dataclass(eq=False, slots=True)
class CompiledAPI:
    """One API as the runtime uses it: its model, policy chain and upstream endpoints."""

    loaded: Loaded[API]
    chain: tuple[Policy, ...]
    upgrade_policies: tuple[Policy, ...]  # those with an on_upgrade hook, in chain order
    client_policies: tuple[Policy, ...]  # message stage, client -> upstream
    server_policies: tuple[Policy, ...]  # message stage, upstream -> client
    endpoints: tuple[Endpoint, ...]
    round_robin: bool
    ssl_context: ssl.SSLContext | None
    fast_path: bool
    _cursor: int = 0

    @property
    def api(self) -> API:
        return self.loaded.model

    @property
    def name(self) -> str:
        return self.loaded.model.name

    def pick_endpoint(self) -> Endpoint:
        """The endpoint for the next upgrade: the first (straight-through) or the next in turn (round-robin)."""
        if not self.round_robin:
            return self.endpoints[0]
        index = self._cursor % len(self.endpoints)
        self._cursor = index + 1
        return self.endpoints[index]

    def activate(self) -> None:
        """The route serves new upgrades from now on: let its policies apply shared settings."""
        for policy in self.chain:
            policy.activate()

    def close(self) -> None:
        """The route is gone for good: let its policies release files and tasks."""
        for policy in self.chain:
            try:
                policy.close()
            except Exception:
                log.exception("policy close failed", api=self.name, policy=policy.type)

    @classmethod
    def build(cls, loaded: Loaded[API], chain: list[Policy]) -> CompiledAPI:
        api = loaded.model
        strategy = "straight-through"
        for spec in api.policies:
            if spec.type == "routing":
                strategy = spec.strategy
        client = tuple(p for p in chain if "client" in p.message_stages)
        server = tuple(p for p in chain if "server" in p.message_stages)
        return cls(
            loaded=loaded,
            chain=tuple(chain),
            upgrade_policies=tuple(p for p in chain if _overrides(p, "on_upgrade")),
            client_policies=client,
            server_policies=server,
            endpoints=tuple(Endpoint.parse(e.url) for e in api.upstream.endpoints),
            round_robin=strategy == "round-robin",
            ssl_context=upstream_ssl_context(loaded),
            fast_path=not client and not server and not api.compression,
        )


@dataclass(frozen=True, eq=False)
class RouteTable:
    """Immutable routes of one config generation."""

    config: Config
    digest: str
    generation: int
    apps: AppIndex
    routes: Mapping[tuple[str, str], CompiledAPI] = field(default_factory=dict)
    apis: Mapping[str, CompiledAPI] = field(default_factory=dict)

    @classmethod
    def compile(cls, config: Config, apps: AppIndex, state: PolicyState, *, generation: int = 1,
                build_chain: Callable[[Loaded[API], Config, AppIndex, PolicyState], list[Policy]] | None = None,
                ) -> RouteTable:
        """Build every enabled route of ``config``; policies come from ``build_chain``
        (default: ``gateway.policies.build_chain``)."""
        build_chain = build_chain or default_build_chain
        enabled = {name for name, port in config.ports.items() if port.model.enabled}
        apis: dict[str, CompiledAPI] = {}
        routes: dict[tuple[str, str], CompiledAPI] = {}
        try:
            for name, loaded in config.apis.items():
                compiled = CompiledAPI.build(loaded, build_chain(loaded, config, apps, state))
                apis[name] = compiled
                for port_name in loaded.model.ports:
                    if port_name in enabled:
                        routes[(port_name, loaded.model.path)] = compiled
        except BaseException:
            for compiled in apis.values():
                compiled.close()
            raise
        return cls(config=config, digest=config.digest(), generation=generation, apps=apps, routes=routes, apis=apis)

    def lookup(self, port_name: str, path: str) -> CompiledAPI | None:
        """The API served at exactly ``path`` (no query; the trailing slash counts) on a port."""
        return self.routes.get((port_name, path))

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
