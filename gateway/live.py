"""The running gateway as its admin API shows it: the loaded config and live connection counts.

``wsgate plan PATH --from http://HOST:PORT`` diffs a desired tree against
this. The admin endpoint shows API keys only as ``sha256:`` digests, so the
desired config's keys are compared in the same form (``digested_keys``).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config.models import API, Application, EchoServer, EnvKey, Gateway, Port
from .config.tree import Config, Loaded, Location
from .credentials import SHA256_PREFIX, configured_digest
from .impact import Disruption
from .plan import Drift

MODELS: dict[str, type[Port | API | Application | EchoServer | Gateway]] = {
    "Port": Port, "API": API, "Application": Application, "EchoServer": EchoServer, "Gateway": Gateway,
}


def fetch_json(base: str, path: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=timeout) as response:  # noqa: S310 - operator's URL
        return json.loads(response.read())


def config_from_documents(documents: list[Mapping[str, Any]], origin: str) -> Config:
    """A Config from the admin's resource documents, validated through the same models (raises ValueError)."""
    groups: dict[str, dict[str, Loaded[Any]]] = {kind: {} for kind in MODELS}
    for index, document in enumerate(documents):
        kind = document.get("kind")
        model_class = MODELS.get(kind) if isinstance(kind, str) else None
        if kind is None or model_class is None:
            raise ValueError(f"{origin}: resource {index} has an unknown kind {kind!r}")
        model = model_class.model_validate(dict(document))
        groups[kind][model.name] = Loaded(model, Location(origin, 1, index + 1), Path("."))
    gateway = next(iter(groups["Gateway"].values()), None)
    return Config(root=Path("."), ports=groups["Port"], apis=groups["API"], applications=groups["Application"],
                  echo_servers=groups["EchoServer"], gateway=gateway)


def digested_keys(config: Config) -> Config:
    """``config`` with every literal API key and basic password as its ``sha256:`` digest (env ones stay names)."""
    applications = {}
    for name, loaded in config.applications.items():
        keys = [entry if isinstance(entry, EnvKey) else SHA256_PREFIX + str(configured_digest(entry, {}))
                for entry in loaded.model.identifiers.api_keys]
        basic = [user if isinstance(user.password, EnvKey) else user.model_copy(
                     update={"password": SHA256_PREFIX + str(configured_digest(user.password, {}))})
                 for user in loaded.model.identifiers.basic]
        identifiers = loaded.model.identifiers.model_copy(update={"api_keys": keys, "basic": basic})
        model = loaded.model.model_copy(update={"identifiers": identifiers})
        applications[name] = Loaded(model, loaded.location, loaded.base_dir, loaded.where)
    return Config(root=config.root, ports=config.ports, apis=config.apis, applications=applications,
                  echo_servers=config.echo_servers, gateway=config.gateway)


def live_counter(counts: Mapping[str, Any], current: Config,
                 desired: Config) -> Callable[[Disruption], int | None]:
    """A ``Plan.with_live_counts`` callback from the admin's ``/connections`` answer.

    Each live connection is decided by :class:`gateway.impact.Impact`, exactly as the reload will decide it,
    and counted under the disruption that ends it. None (not shown) when the gateway lists no connections.
    """
    from .apps import AppIndex
    from .impact import Accepted, Action, Impact

    records = counts.get("connections")
    if not isinstance(records, list):
        return lambda disruption: None
    impact = Impact(current, desired, AppIndex.build(desired))
    ends = [impact.decide(Accepted.from_dict(record)).disruption for record in records if isinstance(record, dict)]

    accepted = [Accepted.from_dict(record) for record in records if isinstance(record, dict)]

    def count(disruption: Disruption) -> int | None:
        if "echo" in disruption.selector:
            return None  # clients of the echo servers: not counted by the gateway
        if disruption.action is Action.KEEP:  # left open: every connection it names
            return sum(1 for a in accepted if disruption.selects(a))
        return sum(1 for d in ends if d == disruption)

    return count


def drift_of(loaded: Mapping[str, Any]) -> tuple[Drift, ...]:
    """The admin ``/config`` answer's run-time differences from the config, as plan drift."""
    out: list[Drift] = []
    drift = loaded.get("drift")
    for server, contexts in sorted(drift.items()) if isinstance(drift, dict) else ():
        for item in contexts if isinstance(contexts, list) else ():
            if isinstance(item, dict):
                out.append(Drift("EchoServer", str(server), f"context {item.get('path')}", str(item.get("change"))))
    return tuple(out)
