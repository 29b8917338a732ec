"""What changes between two configs: ``diff(old, new) -> Plan``, and its renderers.

``diff`` is a pure function of two checked configs. A :class:`Plan` lists
resource changes (create, update with per-field ``old -> new``, destroy) and,
for each, the :class:`Disruption` s it causes to live connections. A
disruption names the connections it touches with a selector (port, API,
application), so a caller that knows the live gateway can fill in
``live_connections`` (see :meth:`Plan.with_live_counts`) and the renderers show
the counts. Key values never appear in a plan: API key lists are rendered as
``(sensitive)`` with counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel

from .config.tree import Config

Action = Literal["create", "update", "destroy"]
KIND_ORDER = {"Gateway": 0, "Port": 1, "EchoServer": 2, "API": 3, "Application": 4}
SENSITIVE_FIELDS = ("identifiers.api_keys", "identifiers.basic")


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field, by dotted path (``policies[1].max_connections``)."""

    path: str
    old: Any
    new: Any
    sensitive: bool = False
    disruptive: bool = False


@dataclass(frozen=True, slots=True)
class Disruption:
    """Live connections a change ends: those matching ``selector`` (keys: port, api, application, echo)."""

    reason: str
    selector: Mapping[str, str]
    close_code: int  # 1001 drained (going away), 1008 closed at once (policy violation), 0 left open
    live_connections: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceChange:
    action: Action
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    disruptions: tuple[Disruption, ...] = ()
    location: str | None = None  # file:line:col of the desired resource (or of the old one, for destroy)

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def disruptive(self) -> bool:
        return bool(self.disruptions)


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[ResourceChange, ...] = ()
    old_digest: str | None = None
    new_digest: str | None = None

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def disruptive(self) -> bool:
        return any(c.disruptive for c in self.changes)

    def with_live_counts(self, count: Callable[[Disruption], int | None]) -> Plan:
        """A copy with ``live_connections`` filled in by ``count`` (e.g. from a running gateway's admin API)."""
        return replace(
            self,
            changes=tuple(
                replace(c, disruptions=tuple(replace(d, live_connections=count(d)) for d in c.disruptions))
                for c in self.changes
            ),
        )


# ------------------------------------------------------------------ diff


def _dump(model: BaseModel) -> dict:
    return model.model_dump(mode="json", by_alias=True)


def without_password(url: str) -> str:
    """A URL with its password (if any) replaced by ``***``: what plans, logs and the admin may show."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()
    except ValueError:
        return "(unparsable URL)"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaf values; lists of scalars stay whole, lists of mappings are indexed."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if path in SENSITIVE_FIELDS:
                out[path] = sub
            elif path == "state.url" and isinstance(sub, str):
                out[path] = without_password(sub)
            else:
                out.update(_flatten(sub, path))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            out.update(_flatten(sub, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _field_changes(old: dict, new: dict, disruptive_prefixes: tuple[str, ...]) -> tuple[FieldChange, ...]:
    a, b = _flatten(old), _flatten(new)
    out = []
    for path in list(a) + [p for p in b if p not in a]:
        before, after = a.get(path, _ABSENT), b.get(path, _ABSENT)
        if before == after:
            continue
        out.append(
            FieldChange(
                path,
                None if before is _ABSENT else before,
                None if after is _ABSENT else after,
                sensitive=path in SENSITIVE_FIELDS,
                disruptive=any(path == p or path.startswith((p + ".", p + "[")) for p in disruptive_prefixes),
            )
        )
    return tuple(out)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _key_set(model: BaseModel, field: str = "api_keys") -> set[str]:
    return {json.dumps(k, sort_keys=True) for k in _dump(model).get("identifiers", {}).get(field, [])}


def _disruptions(kind: str, name: str, action: Action, old: Any, new: Any) -> tuple[Disruption, ...]:
    if kind == "Gateway":  # no Gateway resource means the default settings: memory state
        from .config.models import MemoryState

        return _state_disruptions(old.state if old is not None else MemoryState(),
                                  new.state if new is not None else MemoryState())
    if action == "create":
        return ()
    if kind == "Port":
        sel = {"port": name}
        if action == "destroy":
            return (Disruption("port removed", sel, 1001),)
        labels = {"port": "port number changed", "host": "bind host changed", "tls": "TLS changed"}
        reasons = [labels[f] for f in ("port", "host", "tls") if getattr(old, f) != getattr(new, f)]
        if old.enabled and not new.enabled:
            reasons.append("port disabled")
        return (Disruption(", ".join(reasons), sel, 1001),) if reasons else ()
    if kind == "API":
        sel = {"api": name}
        if action == "destroy":
            return (Disruption("API removed", sel, 1001),)
        out = []
        if old.path != new.path:
            out.append(Disruption("path changed", sel, 1001))
        if old.upstream.live_identity() != new.upstream.live_identity():
            out.append(Disruption("upstream changed", sel, 1001))
        for port in old.ports:
            if port not in new.ports:
                out.append(Disruption(f"removed from port '{port}'", {"api": name, "port": port}, 1001))
        return tuple(out)
    if kind == "Application":
        sel = {"application": name}
        if action == "destroy":
            return (Disruption("application removed", sel, 1008),)
        out = []
        revoked = len(_key_set(old) - _key_set(new))
        if revoked:
            out.append(Disruption(f"{revoked} API key(s) revoked", sel, 1008))
        for field, what in (("basic", "basic user(s)"), ("jwt_clients", "JWT client(s)")):
            gone = len(_key_set(old, field) - _key_set(new, field))
            if gone:
                out.append(Disruption(f"{gone} {what} revoked", sel, 1008))
        for api in old.apis:
            if api not in new.apis:
                out.append(Disruption(f"deregistered from API '{api}'", {"application": name, "api": api}, 1008))
        return tuple(out)
    if kind == "EchoServer":
        sel = {"echo": name}
        if action == "destroy":
            return (Disruption("echo server removed", sel, 1001),)
        if old.port != new.port or old.host != new.host:
            return (Disruption("echo server address changed", sel, 1001),)
        published = {c.path for c in new.contexts if c.published}
        out = []
        for c in old.contexts:
            if c.published and c.path not in published:
                labels = {"echo": name, "context": c.path}
                out.append(Disruption(f"context {c.path} removed or unpublished", labels, 1001))
        return tuple(out)
    return ()


def _state_disruptions(old: Any, new: Any) -> tuple[Disruption, ...]:
    """Another state backend (or another Redis, or key prefix) starts counting from zero."""
    def where(state: Any) -> tuple[Any, ...]:
        return (state.backend, getattr(state, "url", None), getattr(state, "key_prefix", None))

    if where(old) == where(new):
        return ()
    return (Disruption(f"state backend {old.backend} → {new.backend}: throttle counts start over there, so live "
                       "connections are not counted against limits until they close", {}, 0),)


_DISRUPTIVE_FIELDS = {
    "Port": ("port", "host", "tls", "enabled"),
    "API": ("path", "ports", "upstream.endpoints", "upstream.connect_timeout", "upstream.tls"),
    "Application": ("identifiers.api_keys", "identifiers.basic", "identifiers.jwt_clients", "apis"),
    "EchoServer": ("port", "host", "contexts"),
    "Gateway": ("state",),
}


def _locations(config: Config | None) -> dict[tuple[str, str], str]:
    if config is None:
        return {}
    out: dict[tuple[str, str], str] = {}
    for group in (config.ports, config.apis, config.applications, config.echo_servers):
        for name, loaded in group.items():
            out[(loaded.model.kind, name)] = str(loaded.location)
    if config.gateway is not None:
        out[("Gateway", config.gateway.model.name)] = str(config.gateway.location)
    return out


def diff(old: Config | None, new: Config) -> Plan:
    """The changes that turn ``old`` (None: nothing deployed yet) into ``new``."""
    before = old.resources() if old is not None else {}
    after = new.resources()
    where = {**_locations(old), **_locations(new)}
    changes: list[ResourceChange] = []
    for key in sorted(set(before) | set(after), key=lambda k: (KIND_ORDER.get(k[0], 9), k[1])):
        kind, name = key
        a, b = before.get(key), after.get(key)
        if a is None:
            assert b is not None  # the key came from one side or the other
            fields = _field_changes({}, b.model_dump(mode="json", by_alias=True, exclude_defaults=True), ())
            changes.append(ResourceChange("create", kind, name, fields, _disruptions(kind, name, "create", None, b),
                                          where.get(key)))
        elif b is None:
            disruptions = _disruptions(kind, name, "destroy", a, None)
            changes.append(ResourceChange("destroy", kind, name, (), disruptions, where.get(key)))
        elif a != b:
            disruptions = _disruptions(kind, name, "update", a, b)
            # Fields are marked only when the change really ends connections (adding a port does not).
            fields = _field_changes(_dump(a), _dump(b), _DISRUPTIVE_FIELDS.get(kind, ()) if disruptions else ())
            if not fields:
                continue
            changes.append(ResourceChange("update", kind, name, fields, disruptions, where.get(key)))
    return Plan(tuple(changes), old.digest() if old is not None else None, new.digest())


# ------------------------------------------------------------- rendering

_SYMBOL = {"create": "+", "update": "~", "destroy": "-"}
_VERB = {"create": "will be created", "update": "will be updated in place", "destroy": "will be destroyed"}


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _sensitive(old: Any, new: Any) -> str:
    a = old if isinstance(old, list) else []
    b = new if isinstance(new, list) else []
    keys_a = {json.dumps(k, sort_keys=True) for k in a}
    keys_b = {json.dumps(k, sort_keys=True) for k in b}
    return (
        f"(sensitive: {len(a)} → {len(b)} keys, {len(keys_b - keys_a)} added, {len(keys_a - keys_b)} removed)"
    )


def _live(d: Disruption) -> str:
    if d.live_connections is None:
        return ""
    n = d.live_connections
    return f", {n} live connection{'s' if n != 1 else ''}"


def render_text(plan: Plan) -> str:
    if plan.empty:
        return "No changes. The config matches.\n"
    lines = ["wsgate will perform the following actions:", ""]
    for c in plan.changes:
        lines.append(f"  # {c.kind} \"{c.name}\" {_VERB[c.action]}" + (f" ({c.location})" if c.location else ""))
        for d in c.disruptions:
            how = {1008: "closed at once with 1008", 0: "left open"}.get(d.close_code, "drained, then closed with 1001")
            lines.append(f"  # ! disrupts live connections: {d.reason} ({how}{_live(d)})")
        lines.append(f"  {_SYMBOL[c.action]} {c.kind} \"{c.name}\"")
        width = max((len(f.path) for f in c.fields), default=0)
        for f in c.fields:
            mark = "  !" if f.disruptive else ""
            if c.action == "create":
                shown = _sensitive([], f.new) if f.sensitive else _value(f.new)
                lines.append(f"      + {f.path.ljust(width)} = {shown}")
            elif f.sensitive:
                lines.append(f"      ~ {f.path.ljust(width)} : {_sensitive(f.old, f.new)}{mark}")
            elif f.old is None:
                lines.append(f"      + {f.path.ljust(width)} : {_value(f.new)}{mark}")
            elif f.new is None:
                lines.append(f"      - {f.path.ljust(width)} : {_value(f.old)}{mark}")
            else:
                lines.append(f"      ~ {f.path.ljust(width)} : {_value(f.old)} → {_value(f.new)}{mark}")
        lines.append("")
    n_disruptive = sum(1 for c in plan.changes if c.disruptive)
    if n_disruptive:
        changes = f"{n_disruptive} change{'s' if n_disruptive != 1 else ''}"
        lines.append(f"{changes} will disturb live connections (marked !).")
    lines.append(
        f"Plan: {plan.count('create')} to add, {plan.count('update')} to change, {plan.count('destroy')} to destroy."
    )
    return "\n".join(lines) + "\n"


def to_dict(plan: Plan) -> dict:
    def field_dict(f: FieldChange) -> dict:
        if f.sensitive:
            return {"path": f.path, "sensitive": True, "summary": _sensitive(f.old, f.new), "disruptive": f.disruptive}
        return {"path": f.path, "old": f.old, "new": f.new, "disruptive": f.disruptive}

    return {
        "format_version": 1,
        "old_digest": plan.old_digest,
        "new_digest": plan.new_digest,
        "summary": {
            "add": plan.count("create"),
            "change": plan.count("update"),
            "destroy": plan.count("destroy"),
            "disruptive": sum(1 for c in plan.changes if c.disruptive),
        },
        "changes": [
            {
                "action": c.action,
                "kind": c.kind,
                "name": c.name,
                "location": c.location,
                "fields": [field_dict(f) for f in c.fields],
                "disruptions": [
                    {
                        "reason": d.reason,
                        "selector": dict(d.selector),
                        "close_code": d.close_code,
                        "live_connections": d.live_connections,
                    }
                    for d in c.disruptions
                ],
            }
            for c in plan.changes
        ],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(to_dict(plan), indent=2, ensure_ascii=False) + "\n"


RENDERERS = {"text": render_text, "json": render_json}


def render(plan: Plan, fmt: str = "text") -> str:
    return RENDERERS[fmt](plan)

