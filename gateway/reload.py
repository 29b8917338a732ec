"""What a reload does to one live connection: keep it, drain it (1001 after a grace), or revoke it (1008 now).

Pure decisions from plain values (the old and new config, the new application
index, what the connection was accepted with), so every rule is testable
without sockets. The runtime (``Gateway.reload``) applies them. The rules
match ``plan.diff``'s disruptions, so ``wsgate plan --from`` counts exactly
the connections a reload would end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .config.tree import Config

if TYPE_CHECKING:
    from .apps import AppIndex
    from .listener import Connection


class Action(Enum):
    KEEP = "keep"
    DRAIN = "drain"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""


KEEP = Decision(Action.KEEP)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a live connection was accepted with (the key only as its SHA-256 digest)."""

    port: str
    api: str
    application: str | None = None
    identified_by: str | None = None  # "api_key", "ip", "hostname", "jwt", "basic", "certificate", "anonymous"
    key_digest: str | None = None
    peer_ip: str = ""


def port_changed(old: Config, new: Config, name: str) -> str | None:
    """Why connections on port ``name`` must drain, or None when the port is untouched."""
    before = old.ports.get(name)
    after = new.ports.get(name)
    if before is None:
        return None
    if after is None:
        return "port removed"
    a, b = before.model, after.model
    if a.enabled and not b.enabled:
        return "port disabled"
    if (a.port, a.host, a.tls) != (b.port, b.host, b.tls):
        return "port changed"
    ca = f"Port/{name}/tls.client_certificates.ca_file"
    if old.file_fingerprints.get(ca) != new.file_fingerprints.get(ca):
        # A new client CA bundle: the port re-listens (CAs can be added to a live TLS context, never removed),
        # and certificates the old bundle let in may no longer be trusted.
        return "port changed"
    return None


def api_changed(old: Config, new: Config, api: str, port: str) -> str | None:
    """Why connections to ``api`` via ``port`` must drain, or None."""
    before = old.apis.get(api)
    after = new.apis.get(api)
    if before is None:
        return None
    if after is None:
        return "API removed"
    a, b = before.model, after.model
    if a.path != b.path:
        return "API path changed"
    if a.upstream.live_identity() != b.upstream.live_identity():
        return "API upstream changed"
    if port in a.ports and port not in b.ports:
        return f"API removed from port '{port}'"
    return None


def application_revoked(new: Config, apps: AppIndex, accepted: Accepted) -> str | None:
    """Why the application behind a connection lost its right to the API, or None.

    ``apps`` is the new ``gateway.apps.AppIndex``. Anonymous connections have
    no identity to revoke.
    """
    app = accepted.application
    if app is None or accepted.identified_by in (None, "anonymous"):
        return None
    if app not in new.applications:
        return "application removed"
    if not apps.is_registered(app, accepted.api):
        return "application deregistered from the API"
    if accepted.identified_by == "api_key":
        if accepted.key_digest is None or accepted.key_digest not in apps.key_digests(app):
            return "API key revoked"
    elif accepted.identified_by == "ip":
        if apps.by_ip(accepted.peer_ip) != app:
            return "IP identifier revoked"
    elif accepted.identified_by == "hostname":
        if not new.applications[app].model.identifiers.hostnames:
            return "hostname identifier revoked"
    elif accepted.identified_by in ("basic", "jwt", "certificate") and (
        # key_digest here is the digest of the basic user and password, the JWT client id or the certificate
        # identifier that matched.
        accepted.key_digest is None or accepted.key_digest not in apps.credential_digests.get(app, ())
    ):
        return {"basic": "basic credentials revoked", "jwt": "JWT client revoked",
                "certificate": "client certificate revoked"}[accepted.identified_by]
    return None


def decide(old: Config, new: Config, new_apps: AppIndex, accepted: Accepted) -> Decision:
    """Keep, drain or revoke one connection; revocation wins over draining (it must bite at once)."""
    revoked = application_revoked(new, new_apps, accepted)
    if revoked:
        return Decision(Action.REVOKE, revoked)
    reason = port_changed(old, new, accepted.port) or api_changed(old, new, accepted.api, accepted.port)
    if reason:
        return Decision(Action.DRAIN, reason)
    return KEEP


def accepted_from(record: Connection) -> Accepted | None:
    """The ``Accepted`` view of a ``listener.Connection`` (None before its route is known)."""
    conn = record.conn
    if conn is None:
        return None
    application = conn.application
    return Accepted(
        port=record.port_name,
        api=conn.api,
        application=application.name if application is not None else None,
        identified_by=application.identified_by if application is not None else None,
        key_digest=conn.metadata.get("key_digest"),
        peer_ip=conn.peer[0] if conn.peer else "",
    )
