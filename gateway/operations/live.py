"""The running gateway as its admin API shows it: the loaded config and live connection counts.

``wsgate plan PATH --from http://HOST:PORT`` diffs a desired tree against
this. The admin endpoint never shows an API key or a basic password, not even
as a digest (an unsalted SHA-256 of a weak password is crackable): each one
written in the config is ``redacted:`` and a prefix of its entry fingerprint,
``{env: VARIABLE}`` ones stay variable names. The desired config's keys are
compared in the same form (``redacted_credentials``), so such a plan sees keys
added, removed, moved to the environment or replaced in place. ``/connections``
shows the credential of each live connection only as the fingerprint of the
configuration entry it matched (gateway/build/credentials.py), which the desired
tree yields too: whether the plan revokes a connection is decided by that.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..changes.impact import Disruption
from ..changes.plan import Drift
from ..common.redaction import CREDENTIAL_PLACEHOLDER
from ..config.models import API, Application, EchoServer, EnvKey, Gateway, Port
from ..config.tree import Config, Loaded, Location

if TYPE_CHECKING:
    from ..changes.impact import Impact

MODELS: dict[str, type[Port | API | Application | EchoServer | Gateway]] = {
    "Port": Port, "API": API, "Application": Application, "EchoServer": EchoServer, "Gateway": Gateway,
}


def fetch_json(base: str, path: str, timeout: float = 10.0, token: str | None = None) -> Any:
    """GET an admin endpoint; ``token`` (default: ``WSGATE_ADMIN_TOKEN``) goes as a bearer token."""
    token = os.environ.get("WSGATE_ADMIN_TOKEN") if token is None else token
    request = urllib.request.Request(base.rstrip("/") + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator's URL
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


REDACTED_PREFIX = CREDENTIAL_PLACEHOLDER


def redacted_application(model: Application) -> Application:
    """``model`` with every key and basic password written in the config replaced by ``redacted:`` and the first
    16 hex digits of its entry fingerprint (gateway/build/credentials.py: what ``/connections`` shows, computed from the
    entry's git form, so it tells a reader nothing git does not): a key replaced by another in place shows as a
    change, the same key written in plain text or as its ``sha256:`` form does not."""
    from ..build.credentials import api_key_fingerprint, basic_fingerprint
    from ..build.hashes import slow_hash_kind

    identifiers = model.identifiers
    keys = [entry if isinstance(entry, EnvKey) else f"{REDACTED_PREFIX}{api_key_fingerprint(entry)[:16]}"
            for entry in identifiers.api_keys]
    basic = [user if isinstance(user.password, EnvKey) else user.model_copy(update={"password": REDACTED_PREFIX + (
                 basic_fingerprint(user.username, user.password, slow_hash_kind(user.password) is not None)[:16])})
             for user in identifiers.basic]
    return model.model_copy(update={"identifiers": identifiers.model_copy(update={"api_keys": keys, "basic": basic})})


def redacted_credentials(config: Config) -> Config:
    """``config`` as the admin's ``/config`` shows it: see :func:`redacted_application`."""
    applications = {name: Loaded(redacted_application(loaded.model), loaded.location, loaded.base_dir, loaded.where)
                    for name, loaded in config.applications.items()}
    return Config(root=config.root, ports=config.ports, apis=config.apis, applications=applications,
                  echo_servers=config.echo_servers, gateway=config.gateway)


def ended_first(counts: Mapping[str, Any], impact: Impact) -> Callable[[Disruption], tuple[tuple[str, int], ...]]:
    """For each disruption, the live connections it reaches that another disruption ends first, by that one's
    reason: each connection is counted once (under the reason that applies first), and said where it is not."""
    from ..changes.impact import Accepted, Action

    records = counts.get("connections")
    accepted = [Accepted.from_dict(r) for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    ends = [impact.decide(a).disruption for a in accepted]

    def elsewhere(disruption: Disruption) -> tuple[tuple[str, int], ...]:
        if disruption.action is Action.KEEP or "echo" in disruption.selector:
            return ()
        out: dict[str, int] = {}
        for a, end in zip(accepted, ends, strict=True):
            if end is not None and end != disruption and impact.reaches(disruption, a):
                out[end.reason] = out.get(end.reason, 0) + 1
        return tuple(sorted(out.items()))

    return elsewhere


def live_counter(counts: Mapping[str, Any], impact: Impact) -> Callable[[Disruption], int | None]:
    """A ``Plan.with_live_counts`` callback from the admin's ``/connections`` answer.

    Each live connection is decided by ``impact`` (the plan's own, built once by the caller), exactly as the
    reload will decide it, and counted under the disruption that ends it. None (not shown) when the gateway lists
    no connections. ``impact.new`` is compared as ``/config`` shows the running one (:func:`redacted_credentials`);
    ``impact.new_apps`` is built from the tree as written, so the fingerprints of its credential entries can be
    compared with those ``/connections`` shows.
    """
    from ..changes.impact import Accepted, Action

    records = counts.get("connections")
    if not isinstance(records, list):
        return lambda disruption: None
    accepted = [Accepted.from_dict(record) for record in records if isinstance(record, dict)]
    ends = [impact.decide(a).disruption for a in accepted]

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
