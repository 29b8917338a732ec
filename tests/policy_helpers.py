"""Helpers for policy unit tests: real context objects, no sockets."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from websockets.datastructures import Headers

from gateway.build.apps import AppIndex
from gateway.common.redaction import forwarded_query
from gateway.config.models import API, Application, Identifiers
from gateway.config.tree import Config, Loaded, Location
from gateway.policies.base import ConnectionContext, PolicyBuild, UpgradeRequest, parse_query
from gateway.policies.state import PolicyState

HERE = Path(__file__).parent


def loaded(model: Any, base_dir: Path = HERE) -> Loaded[Any]:
    """Wrap a model the way the loader does, with a made-up location."""
    return Loaded(model, Location("test.yaml", 1, 1), base_dir)


def api_model(name: str = "Echo") -> API:
    """A minimal valid API named ``name``."""
    return API.model_validate({
        "kind": "API", "name": name, "version": "2.1", "path": "/echo", "ports": ["public"],
        "upstream": {"endpoints": [{"url": "ws://127.0.0.1:9/echo"}]},
    })


def policy_build(api: str | Loaded[API] = "Echo", apps: AppIndex | None = None, state: PolicyState | None = None,
                 base_dir: Path = HERE) -> PolicyBuild:
    """What the route compiler hands every policy: ``api`` by name (a minimal model) or as a loaded API."""
    loaded_api = loaded(api_model(api), base_dir) if isinstance(api, str) else api
    return PolicyBuild(api=loaded_api, apps=apps if apps is not None else app_index(),
                       state=state if state is not None else PolicyState(), root=base_dir)


def application(name: str, apis: Iterable[str] = ("Echo",), *, api_keys: Iterable[Any] = (),
                ips: Iterable[str] = (), hostnames: Iterable[str] = ()) -> Loaded[Application]:
    identifiers = Identifiers(api_keys=list(api_keys), ips=list(ips), hostnames=list(hostnames))
    return loaded(Application(kind="Application", name=name, identifiers=identifiers, apis=list(apis)))


def app_index(*apps: Loaded[Application], env: Mapping[str, str] | None = None) -> AppIndex:
    config = Config(root=HERE, applications={a.model.name: a for a in apps})
    return AppIndex.build(config, env={} if env is None else env)


def upgrade_request(query: str = "", headers: Iterable[tuple[str, str]] = (),
                    peer: tuple[str, int] = ("127.0.0.1", 50000), path: str = "/echo") -> UpgradeRequest:
    return UpgradeRequest(path=path, query=parse_query(query), headers=Headers(list(headers)),
                          peer=peer, port_name="public", secure=False)


def connection(api: str = "Echo", query: str = "", peer: tuple[str, int] = ("127.0.0.1", 50000),
               path: str = "/echo") -> ConnectionContext:
    """A context built like the listener builds it (API key stripped from the metadata query)."""
    return ConnectionContext(api=api, api_version="1.0", port_name="public", peer=peer, path=path,
                             metadata={"path": path, "query": forwarded_query(query), "peer": peer[0]})


def settle(result: Any) -> Any:
    """Run a hook's result to completion if it is awaitable."""
    if inspect.isawaitable(result):
        async def wait() -> Any:
            return await result
        return asyncio.run(wait())
    return result
