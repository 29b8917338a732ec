"""What a config change does to live connections: the one owner of keep, drain (1001) and revoke (1008).

Pure decisions from plain values. :func:`disruptions` lists, for a change
from ``old`` to ``new``, every :class:`Disruption` it causes: the resource
and field that cause it, the action, a reason, and a selector naming the
connections it reaches (port, API, application, how they were identified).
:class:`Impact` then decides for one live connection (an :class:`Accepted`)
by walking that same list, revocations first, so ``wsgate plan`` (text,
JSON, the live counts of ``--from http://``), the reload and its logs all
say the same thing, by construction.

The rules:

- **drain** (1001 after ``drain_grace``): the connection's route is gone or
  moved: its port removed, disabled or re-bound (number, host, TLS); its API
  removed, its path or upstream changed, or the API taken off its port.
  Removing an API together with the registrations to it is a drain: the
  registrations go because the API goes, not because access was withdrawn.
- **revoke** (1008 at once): the application lost its right to the API:
  removed, deregistered from an API that stays, or the very identifier the
  connection was accepted with (API key, IP, hostname, basic user, JWT
  client) is gone. A connection identified otherwise keeps going.
- **renamed** (``previous_names`` on an API or Application): the resource is compared with itself under its
  new name, so a rename alone disturbs no one; live connections are then known by the new name (the runtime
  maps the names they were accepted under, ``accepted_from(record, names)``).
- everything else keeps the connection (policy settings apply to new upgrades).
  A kept connection may still be worth a line in the plan: a new shared-state
  backend starts its throttle counts from zero, so live connections are not
  counted there (a ``keep`` disruption, close code 0, "left open").

A connection touched by both a drain and a revocation is revoked: it must
bite at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..common.build_counts import count

if TYPE_CHECKING:
    from ..build.apps import AppIndex
    from ..config.models import API, Application, EchoServer
    from ..config.tree import Config

DRAIN_CODE = 1001
REVOKE_CODE = 1008


class Action(Enum):
    KEEP = "keep"
    DRAIN = "drain"
    REVOKE = "revoke"


CLOSE_CODES = {Action.DRAIN: DRAIN_CODE, Action.REVOKE: REVOKE_CODE}


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a live connection was accepted with (credentials only as digests and entry fingerprints)."""

    port: str
    api: str
    application: str | None = None
    identified_by: str | None = None  # "api_key", "ip", "hostname", "jwt", "basic", "certificate", "anonymous"
    # Of the API key, of the basic user and password, of the JWT client id or of the certificate identifier:
    # what the reload revokes by. In this process only: an unsalted digest of a weak secret is crackable.
    key_digest: str | None = None
    peer_ip: str = ""
    hostname: str | None = None  # the reverse-DNS name it was identified by
    # The fingerprint of the configuration entry the credential matched (gateway/build/credentials.py): what the
    # admin's /connections shows instead of the digest, and what plan --from decides by.
    entry_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As the admin's ``/connections`` lists it: everything but the credential's digest."""
        data = dataclasses.asdict(self)
        del data["key_digest"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accepted:
        """The inverse of :meth:`to_dict` (as the admin's ``/connections`` lists them; no ``key_digest``)."""

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        return cls(port=text("port") or "", api=text("api") or "", application=text("application"),
                   identified_by=text("identified_by"), peer_ip=text("peer_ip") or "",
                   hostname=text("hostname"), entry_fingerprint=text("entry_fingerprint"))


@dataclass(frozen=True, slots=True)
class Disruption:
    """Live connections one change ends: those matching ``selector`` (and, for ``identifier``, whose credential
    of that kind is gone).

    ``selector`` keys: port, api, application, identified_by (gateway connections), echo, context (clients of
    the echo servers). ``cause`` is the (kind, name) of the changed resource, ``field`` the field that causes
    it (None when the whole resource goes).
    """

    action: Action
    reason: str
    selector: Mapping[str, str]
    cause: tuple[str, str]
    field: str | None = None
    identifier: str | None = None
    live_connections: int | None = None
    # Live connections this change reaches that an earlier one ends first (one connection, one line): by the
    # reason of the change that ends them, so a plan never shows "0 live connections" without saying why.
    ended_first_by: tuple[tuple[str, int], ...] = ()

    @property
    def close_code(self) -> int:
        """1001 or 1008; 0 for a change that leaves connections open but changes how they are treated."""
        return CLOSE_CODES.get(self.action, 0)

    @property
    def close_reason(self) -> str:
        """The close frame's reason: which of drain or revoke, and why (well under the 123-byte limit)."""
        prefix = "revoked" if self.action is Action.REVOKE else "going away"
        return f"{prefix}: {self.reason}"[:120]

    def selects(self, accepted: Accepted) -> bool:
        """Whether ``accepted`` is among the connections the selector names (ignoring the identifier check)."""
        return all(getattr(accepted, key, None) == value for key, value in self.selector.items())


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""
    disruption: Disruption | None = None

    @property
    def close_code(self) -> int | None:
        return CLOSE_CODES.get(self.action)

    @property
    def close_reason(self) -> str:
        return self.disruption.close_reason if self.disruption is not None else ""


KEEP = Decision(Action.KEEP)


# ------------------------------------------------------------------ rules


def listener_change(old: Config, new: Config, name: str) -> str | None:
    """Why port ``name``'s listening socket must be re-bound (its connections drained), or None."""
    before, after = old.ports[name].model, new.ports[name].model
    labels = (("port", "port number changed"), ("host", "bind host changed"), ("tls", "TLS changed"))
    changed = [label for field_name, label in labels if getattr(before, field_name) != getattr(after, field_name)]
    ca = f"Port/{name}/tls.client_certificates.ca_file"
    if not changed and old.file_fingerprints.get(ca) != new.file_fingerprints.get(ca):
        # CAs can be added to a live TLS context, never removed; certificates the old bundle let in may no
        # longer be trusted.
        changed.append("client CA bundle changed")
    return ", ".join(changed) or None


def _port(name: str, old: Config, new: Config) -> Iterable[Disruption]:
    cause = ("Port", name)
    a = old.ports[name].model
    b = new.ports[name].model if name in new.ports else None
    if not a.enabled:
        return  # nothing listened there
    if b is None:
        yield Disruption(Action.DRAIN, "port removed", {"port": name}, cause)
    elif not b.enabled:
        yield Disruption(Action.DRAIN, "port disabled", {"port": name}, cause, "enabled")
    else:
        reason = listener_change(old, new, name)
        if reason:
            first = next((f for f in ("port", "host", "tls") if getattr(a, f) != getattr(b, f)), "tls")
            yield Disruption(Action.DRAIN, reason, {"port": name}, cause, first)


def renames(old: Config | None, new: Config) -> dict[tuple[str, str], str]:
    """(kind, old name) -> new name: an API or Application of ``new`` whose `previous_names` lists a resource
    of ``old`` that ``new`` no longer has is that resource, renamed (its connections carry over)."""
    if old is None:
        return {}
    out: dict[tuple[str, str], str] = {}
    for kind, before, after in (("API", old.apis, new.apis), ("Application", old.applications, new.applications)):
        for name, loaded in after.items():
            if name in before:
                continue
            for previous in loaded.model.previous_names:
                if previous in before and previous not in after and (kind, previous) not in out:
                    out[(kind, previous)] = name
                    break
    return out


def _api(name: str, a: API, b: API | None, cause_name: str | None = None) -> Iterable[Disruption]:
    cause = ("API", cause_name or name)
    if b is None:
        yield Disruption(Action.DRAIN, "API removed", {"api": name}, cause)
        return
    if a.path != b.path:
        yield Disruption(Action.DRAIN, "API path changed", {"api": name}, cause, "path")
    if a.upstream.live_identity() != b.upstream.live_identity():  # health checks etc. only steer new ones
        first = next((f for f in ("endpoints", "connect_timeout", "tls")
                      if getattr(a.upstream, f) != getattr(b.upstream, f)), "endpoints")
        yield Disruption(Action.DRAIN, "API upstream changed", {"api": name}, cause, f"upstream.{first}")
    for port in a.ports:
        if port not in b.ports:
            yield Disruption(Action.DRAIN, f"API removed from port '{port}'", {"api": name, "port": port}, cause,
                             "ports")


def _entries(values: Iterable[Any]) -> set[str]:
    return {json.dumps(v.model_dump(mode="json") if hasattr(v, "model_dump") else v, sort_keys=True) for v in values}


# identifiers field -> (identified_by, what the reason calls it)
_IDENTIFIERS = {
    "api_keys": ("api_key", "API key revoked"),
    "ips": ("ip", "IP identifier revoked"),
    "hostnames": ("hostname", "hostname identifier revoked"),
    "basic": ("basic", "basic credentials revoked"),
    "jwt_clients": ("jwt", "JWT client revoked"),
    "certificates": ("certificate", "client certificate revoked"),
}


def _application(name: str, a: Application, b: Application | None, new_apis: Mapping[str, Any],
                 moved_apis: Mapping[str, str] | None = None, cause_name: str | None = None) -> Iterable[Disruption]:
    cause = ("Application", cause_name or name)
    moved_apis = moved_apis or {}
    if b is None:
        yield Disruption(Action.REVOKE, "application removed", {"application": name}, cause)
        return
    for api in a.apis:
        now = moved_apis.get(api, api)  # a registration to a renamed API is the same registration
        if now in b.apis:
            continue
        if now not in new_apis:
            continue  # the API itself goes: its removal drains these connections
        yield Disruption(Action.REVOKE, f"application deregistered from API '{api}'",
                         {"application": name, "api": api}, cause, "apis")
    for field_name, (method, reason) in _IDENTIFIERS.items():
        if _entries(getattr(a.identifiers, field_name)) - _entries(getattr(b.identifiers, field_name)):
            yield Disruption(Action.REVOKE, reason, {"application": name, "identified_by": method}, cause,
                             f"identifiers.{field_name}", identifier=method)


def _echo(name: str, a: EchoServer, b: EchoServer | None) -> Iterable[Disruption]:
    cause = ("EchoServer", name)
    if b is None:
        yield Disruption(Action.DRAIN, "echo server removed", {"echo": name}, cause)
        return
    if (a.port, a.host) != (b.port, b.host):
        yield Disruption(Action.DRAIN, "echo server address changed", {"echo": name}, cause,
                         "port" if a.port != b.port else "host")
        return
    published = {c.path for c in b.contexts if c.published}
    for c in a.contexts:
        if c.published and c.path not in published:
            yield Disruption(Action.DRAIN, f"context {c.path} removed or unpublished",
                             {"echo": name, "context": c.path}, cause, "contexts")


def _state(old: Config, new: Config) -> Iterable[Disruption]:
    """Another state backend (or another Redis, or key prefix) starts counting from zero."""

    def where(config: Config) -> tuple[Any, ...]:
        state = config.settings.state
        return (state.backend, getattr(state, "url", None), getattr(state, "key_prefix", None))

    if where(old) != where(new):
        gateway = new.gateway or old.gateway
        name = gateway.model.name if gateway is not None else "default"
        yield Disruption(Action.KEEP, f"state backend {old.settings.state.backend} → {new.settings.state.backend}: "
                         "throttle counts start over there, so live connections are not counted against limits "
                         "until they close", {}, ("Gateway", name), "state")


def disruptions(old: Config | None, new: Config) -> tuple[Disruption, ...]:
    """Every disruption the change from ``old`` to ``new`` causes, revocations first."""
    if old is None:
        return ()
    count("disruptions")
    out: list[Disruption] = list(_state(old, new))
    # A renamed resource is compared with itself under its new name; selectors keep the old name (the one
    # its live connections were accepted under), causes name the new one (where plan shows the change).
    moved = renames(old, new)
    moved_apis = {old_name: new_name for (kind, old_name), new_name in moved.items() if kind == "API"}
    for name in old.ports:
        out += _port(name, old, new)
    for name, api in old.apis.items():
        target = moved_apis.get(name, name)
        out += _api(name, api.model, new.apis[target].model if target in new.apis else None, target)
    for name, app in old.applications.items():
        target = moved.get(("Application", name), name)
        out += _application(name, app.model, new.applications[target].model if target in new.applications else None,
                            new.apis, moved_apis, target)
    for name, echo in old.echo_servers.items():
        out += _echo(name, echo.model, new.echo_servers[name].model if name in new.echo_servers else None)
    out.sort(key=lambda d: d.action is not Action.REVOKE)  # stable: revocations first, else as listed
    return tuple(out)


# -------------------------------------------------------------- decisions


@dataclass
class Impact:
    """The disruptions of one change, and the decision for each live connection.

    ``new_apps`` is the new config's application index: it tells whether the
    credential a connection was accepted with still names its application.
    ``known``: the disruptions of this very change when the caller listed
    them already (the reload's plan did), so they are worked out once.
    """

    old: Config
    new: Config
    new_apps: AppIndex
    known: InitVar[tuple[Disruption, ...] | None] = None
    all: tuple[Disruption, ...] = field(init=False)

    def __post_init__(self, known: tuple[Disruption, ...] | None) -> None:
        self.all = disruptions(self.old, self.new) if known is None else known
        self.moved = renames(self.old, self.new)  # (kind, old name) -> new name: connections carried over

    def decide(self, accepted: Accepted) -> Decision:
        """Keep, drain or revoke one connection: the first disruption that reaches it (revocations come first)."""
        for d in self.all:
            if d.action is not Action.KEEP and self.reaches(d, accepted):
                return Decision(d.action, d.reason, d)
        return KEEP

    def reaches(self, d: Disruption, accepted: Accepted) -> bool:
        """Whether ``d`` applies to ``accepted`` (whichever disruption applies to it first)."""
        if d.action is Action.REVOKE and accepted.identified_by in (None, "anonymous"):
            return False  # no identity, nothing to revoke
        return d.selects(accepted) and (d.identifier is None or self._credential_gone(accepted))

    def _credential_gone(self, accepted: Accepted) -> bool:
        """Whether the identifier ``accepted`` came in with no longer names its application."""
        app = accepted.application or ""
        app = self.moved.get(("Application", app), app)  # renamed: its credentials are looked up under the new name
        apps = self.new_apps
        method = accepted.identified_by
        if method in ("api_key", "basic", "jwt", "certificate"):
            if accepted.key_digest is not None:  # in the process (the reload): the credential's own digest
                held = apps.key_digests(app) if method == "api_key" else apps.credential_digests.get(app, ())
                return accepted.key_digest not in held
            # From the admin's /connections (plan --from): the configuration entry it matched. A key moved
            # between the file and the environment counts as gone here, though the reload keeps it when the
            # variable holds the same key: plan cannot know the gateway's environment.
            fingerprint = accepted.entry_fingerprint
            return fingerprint is None or fingerprint not in apps.fingerprints.get(app, ())
        if method == "ip":
            return not apps.ip_names(accepted.peer_ip, app)
        if method == "hostname":
            return accepted.hostname is None or apps.by_hostname(accepted.hostname) != app
        return False


def accepted_from(record: Any, names: Mapping[tuple[str, str], str] | None = None) -> Accepted | None:
    """The ``Accepted`` view of a ``listener.Connection`` (None before its route is known).

    ``names``: (kind, name accepted under) -> the name the serving config has for it now, after renames
    (``previous_names``): a connection is decided, counted and listed under the API's current name."""
    conn = record.conn
    if conn is None:
        return None
    names = names or {}
    identity = conn.identity
    api = names.get(("API", conn.api), conn.api)
    if identity is None:
        return Accepted(port=record.port_name, api=api, peer_ip=conn.peer[0] if conn.peer else "")
    app_name = identity.application.name
    return Accepted(
        port=record.port_name,
        api=api,
        application=names.get(("Application", app_name), app_name),
        identified_by=identity.application.identified_by,
        key_digest=identity.key_digest,
        peer_ip=conn.peer[0] if conn.peer else "",
        hostname=identity.hostname,
        entry_fingerprint=identity.entry_fingerprint,
    )


def decide(old: Config, new: Config, new_apps: AppIndex, accepted: Accepted) -> Decision:
    """One connection's decision (for one-off questions; a reload builds one :class:`Impact` for all)."""
    return Impact(old, new, new_apps).decide(accepted)
