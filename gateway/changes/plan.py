"""What changes between two configs: ``diff(old, new) -> Plan``, and its renderers.

``diff`` is a pure function of two checked configs. A :class:`Plan` lists
resource changes (create, update with per-field ``old -> new``, destroy) and,
for each, the :class:`~gateway.changes.impact.Disruption` s it causes to live
connections, as :mod:`gateway.changes.impact` (the one owner of that decision, which
the reload follows too) says. A caller that knows the live gateway fills in
``live_connections`` (see :meth:`Plan.with_live_counts`) and the renderers
show the counts.

Policies are matched by identity, not list position: by their optional
``name``, else by type (and stage for transforms, ``per`` for throttles), so
adding one policy at the top of a chain is one added policy. A resource or
policy that appears or goes shows only the fields not at their defaults. Key
values never appear in a plan: API key lists are rendered as ``(sensitive)``
with counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel

from ..common.redaction import redact_url, redact_urls
from ..config.diagnostics import escape_data, escape_property
from ..config.tree import Config, Loaded, Location
from .impact import Action as DisruptionAction
from .impact import Disruption, disruptions, renames

Action = Literal["create", "update", "destroy"]
KIND_ORDER = {"Gateway": 0, "Port": 1, "EchoServer": 2, "API": 3, "Application": 4}
SENSITIVE_FIELDS = ("identifiers.api_keys", "identifiers.basic", "push.credentials")

__all__ = ["Disruption", "FieldChange", "Plan", "ResourceChange", "diff", "render"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field, by dotted path (``policies[throttle].max_connections``)."""

    path: str
    old: Any
    new: Any
    sensitive: bool = False
    disruptive: bool = False


@dataclass(frozen=True, slots=True)
class ResourceChange:
    action: Action
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    disruptions: tuple[Disruption, ...] = ()
    location: str | None = None  # file:line:col of the desired resource (or of the old one, for destroy)
    # Where each disruption's cause was written (same order as ``disruptions``): GitHub annotations go there.
    disruption_locations: tuple[Location | None, ...] = ()
    renamed_from: str | None = None  # an update that is also a rename (`previous_names`): the old name

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def disruptive(self) -> bool:
        return bool(self.disruptions)


@dataclass(frozen=True, slots=True)
class Drift:
    """A run-time difference from the config that no file shows: an echo context started or stopped over HTTP."""

    kind: str
    name: str
    what: str  # e.g. "context /any/path/"
    change: str  # e.g. "started over HTTP, not declared"


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[ResourceChange, ...] = ()
    old_digest: str | None = None
    new_digest: str | None = None
    drift: tuple[Drift, ...] = ()  # only when planned against a running gateway

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def empty(self) -> bool:
        """No change and no drift: the exit code is 0."""
        return not self.changes and not self.drift

    @property
    def disruptive(self) -> bool:
        return any(c.disruptive for c in self.changes)

    def with_live_counts(self, count: Callable[[Disruption], int | None],
                         ended_first: Callable[[Disruption], tuple[tuple[str, int], ...]] | None = None) -> Plan:
        """A copy with ``live_connections`` filled in by ``count`` (e.g. from a running gateway's admin API), and
        ``ended_first_by`` by ``ended_first``: the connections a change reaches that another ends first."""
        return replace(
            self,
            changes=tuple(
                replace(c, disruptions=tuple(
                    replace(d, live_connections=count(d),
                            ended_first_by=ended_first(d) if ended_first is not None else ())
                    for d in c.disruptions))
                for c in self.changes
            ),
        )


# ------------------------------------------------------------------ diff


def _dump(model: BaseModel, *, defaults: bool = True) -> dict:
    data = model.model_dump(mode="json", by_alias=True, exclude_defaults=not defaults)
    if isinstance(data.get("policies"), list):
        # Keyed by identity, so a policy added at the top does not shift every other one.
        data["policies"] = _policies_by_identity(model, defaults)
    if isinstance(data.get("routes"), list):
        # Message routes keyed by their key, like policies: `routes[join].integration.http.url`.
        data["routes"] = {route.key: _Whole(route) for route in getattr(model, "routes", [])}
    return data


def policy_identity(policy: Any) -> str:
    """How plan matches a policy across versions: its ``name``, else its type (with the stage, direction or
    ``per`` that several policies of one type in a chain differ by)."""
    name = getattr(policy, "name", None)
    if name:
        return str(name)
    if policy.type == "transform":
        return f"transform {policy.stage}"
    if policy.type == "throttle":
        return f"throttle per {policy.per}"
    if policy.type == "rate-limit":
        return f"rate-limit {policy.direction} per {policy.per}"
    return str(policy.type)


def _policies_by_identity(model: Any, defaults: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy in getattr(model, "policies", []):
        key = policy_identity(policy)
        n, unique = 2, key
        while unique in out:  # two unnamed policies of one identity: the second is `key #2`
            unique, n = f"{key} #{n}", n + 1
        out[unique] = _Whole(policy)
    return out


@dataclass(frozen=True)
class _Whole:
    """A nested object that, when it appears or goes as a whole, shows only its fields not at their defaults."""

    model: BaseModel


def _flatten(value: Any, prefix: str = "", *, added: bool = False) -> dict[str, Any]:
    """Dotted paths to leaf values; lists of scalars stay whole, lists of mappings are indexed."""
    out: dict[str, Any] = {}
    if isinstance(value, _Whole):
        return _flatten(value.model.model_dump(mode="json", by_alias=True, exclude_defaults=added), prefix,
                        added=added)
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for key, sub in value.items():
            if prefix.endswith(".policies") or prefix in ("policies", "routes"):
                path = f"{prefix}[{key}]"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            if path in SENSITIVE_FIELDS:
                out[path] = sub
            elif path == "state.url" and isinstance(sub, str):
                out[path] = redact_url(sub)
            else:
                out.update(_flatten(sub, path, added=added))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            out.update(_flatten(sub, f"{prefix}[{i}]", added=added))
    else:
        out[prefix] = value
    return out


def _policy_prefix(path: str) -> str | None:
    """The policy or message route a path is in (``policies[identify]``, ``routes[join]``): one that appears or
    goes shows only its fields not at their defaults."""
    if path.startswith(("policies[", "routes[")):
        return path[: path.index("]") + 1]
    return None


def _field_changes(old: dict, new: dict, causes: tuple[str, ...]) -> tuple[FieldChange, ...]:
    full_a, full_b = _flatten(old), _flatten(new)
    # A policy on one side only shows its settings that are not at their defaults.
    lean_a, lean_b = _flatten(old, added=True), _flatten(new, added=True)
    in_a = {_policy_prefix(p) for p in full_a} - {None}
    in_b = {_policy_prefix(p) for p in full_b} - {None}
    a = {p: v for p, v in full_a.items() if _policy_prefix(p) in in_b or _policy_prefix(p) is None}
    a.update({p: v for p, v in lean_a.items() if _policy_prefix(p) not in (in_b | {None})})
    b = {p: v for p, v in full_b.items() if _policy_prefix(p) in in_a or _policy_prefix(p) is None}
    b.update({p: v for p, v in lean_b.items() if _policy_prefix(p) not in (in_a | {None})})
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
                disruptive=any(path == p or path.startswith((p + ".", p + "[")) for p in causes),
            )
        )
    order_a = [k for k in old.get("policies", {}) if k in new.get("policies", {})]
    order_b = [k for k in new.get("policies", {}) if k in old.get("policies", {})]
    if order_a != order_b:  # the same policies in another order: the chain runs differently
        out.append(FieldChange("policies (order)", order_a, order_b))
    return tuple(out)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _loaded(config: Config | None) -> dict[tuple[str, str], Loaded[Any]]:
    if config is None:
        return {}
    out: dict[tuple[str, str], Loaded[Any]] = {}
    for group in (config.ports, config.apis, config.applications, config.echo_servers):
        for name, loaded in group.items():
            out[(loaded.model.kind, name)] = loaded
    if config.gateway is not None:
        out[("Gateway", config.gateway.model.name)] = config.gateway
    return out


def _cause_location(d: Disruption, before: Loaded[Any] | None, after: Loaded[Any] | None) -> Location | None:
    """Where the change that causes ``d`` was written: the field in the new file, else the removed resource."""
    if after is not None and d.field is not None:
        return after.locate(_model_path(d.field, after.model))
    if before is not None:
        return before.location
    return None


def _model_path(dotted: str, model: Any) -> tuple[object, ...]:
    """A disruption's field as a path into the document: ``routes[join].integration`` -> ('routes', 2,
    'integration'), the route's index found by its key."""
    out: list[object] = []
    for part in dotted.split("."):
        name, _, key = part.partition("[")
        out.append(name)
        if key and name == "routes":
            keys = [route.key for route in getattr(model, "routes", [])]
            if key[:-1] in keys:
                out.append(keys.index(key[:-1]))
    return tuple(out)


def diff(old: Config | None, new: Config, found: tuple[Disruption, ...] | None = None) -> Plan:
    """The changes that turn ``old`` (None: nothing deployed yet) into ``new``.

    ``found``: the disruptions of this change when the caller has them already (a reload's ``Impact``).
    """
    before, after = _loaded(old), _loaded(new)
    moved = renames(old, new)  # (kind, old name) -> new name: one renamed resource, not a destroy and a create
    origin = {(kind, new_name): (kind, old_name) for (kind, old_name), new_name in moved.items()}
    by_cause: dict[tuple[str, str], list[Disruption]] = {}
    for d in disruptions(old, new) if found is None else found:
        by_cause.setdefault(d.cause, []).append(d)
    changes: list[ResourceChange] = []
    for key in sorted(set(before) | set(after), key=lambda k: (KIND_ORDER.get(k[0], 9), k[1])):
        kind, name = key
        if key in moved:
            continue  # shown under its new name
        a, b = before.get(origin.get(key, key)), after.get(key)
        found = tuple(by_cause.get(key, ()))
        where = tuple(_cause_location(d, a, b) for d in found)
        if a is None:
            assert b is not None
            created = {k: v for k, v in _dump(b.model, defaults=False).items() if k not in ("kind", "name")}
            fields = _field_changes({}, created, tuple(d.field for d in found if d.field))
            changes.append(ResourceChange("create", kind, name, fields, found, str(b.location), where))
        elif b is None:
            changes.append(ResourceChange("destroy", kind, name, (), found, str(a.location), where))
        elif key in origin:
            fields = _field_changes(_renamed(_dump(a.model)), _renamed(_dump(b.model)),
                                    tuple(d.field for d in found if d.field))
            changes.append(ResourceChange("update", kind, name, fields, found, str(b.location), where,
                                          renamed_from=origin[key][1]))
        elif a.model != b.model:
            fields = _field_changes(_dump(a.model), _dump(b.model), tuple(d.field for d in found if d.field))
            if not fields and not found:
                continue
            changes.append(ResourceChange("update", kind, name, fields, found, str(b.location), where))
    return Plan(tuple(changes), old.digest() if old is not None else None, new.digest())


def _renamed(data: dict) -> dict:
    """A renamed resource's fields as compared: its name and `previous_names` are the rename itself."""
    return {k: v for k, v in data.items() if k not in ("name", "previous_names")}


# ------------------------------------------------------------- rendering

_SYMBOL = {"create": "+", "update": "~", "destroy": "-"}
_HOW = {DisruptionAction.REVOKE: "closed at once with 1008", DisruptionAction.DRAIN: "drained, then closed with 1001",
        DisruptionAction.KEEP: "left open"}
_VERB = {"create": "will be created", "update": "will be updated in place", "destroy": "will be destroyed"}


def _value(value: Any) -> str:
    # Shown values lose any URL userinfo; the diff itself compared the real ones.
    return json.dumps(redact_urls(value), ensure_ascii=False)


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
    first = "; ".join(f"{k} more closed first by: {reason}" for reason, k in d.ended_first_by)
    return f", {n} live connection{'s' if n != 1 else ''}" + (f" ({first})" if first else "")


def _drift_lines(plan: Plan) -> list[str]:
    if not plan.drift:
        return []
    lines = ["Drift: the running gateway differs from its config at run time (no reload resets this):", ""]
    for d in plan.drift:
        lines.append(f"  ! {d.kind} \"{d.name}\" {d.what}: {d.change}")
    lines.append("")
    return lines


def render_text(plan: Plan) -> str:
    if not plan.changes:
        return "\n".join(_drift_lines(plan) + ["No changes. The config matches.", ""])
    lines = _drift_lines(plan) + ["wsgate will perform the following actions:", ""]
    for c in plan.changes:
        verb = _VERB[c.action]
        if c.renamed_from is not None:
            verb = f"will be renamed from \"{c.renamed_from}\"" + (
                ", no connection disrupted" if not c.disruptive else "") + (" and updated in place" if c.fields else "")
        lines.append(f"  # {c.kind} \"{c.name}\" {verb}" + (f" ({c.location})" if c.location else ""))
        for d in c.disruptions:
            lines.append(f"  # ! disrupts live connections: {d.reason} ({_HOW[d.action]}{_live(d)})")
        old_name = f"\"{c.renamed_from}\" → " if c.renamed_from is not None else ""
        lines.append(f"  {_SYMBOL[c.action]} {c.kind} {old_name}\"{c.name}\"")
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
        return {"path": f.path, "old": redact_urls(f.old), "new": redact_urls(f.new), "disruptive": f.disruptive}

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
        "drift": [{"kind": d.kind, "name": d.name, "what": d.what, "change": d.change} for d in plan.drift],
        "changes": [
            {
                "action": c.action,
                "kind": c.kind,
                "name": c.name,
                **({"renamed_from": c.renamed_from} if c.renamed_from is not None else {}),
                "location": c.location,
                "fields": [field_dict(f) for f in c.fields],
                "disruptions": [
                    {
                        "action": d.action.value,
                        "reason": d.reason,
                        "selector": dict(d.selector),
                        "close_code": d.close_code,
                        "live_connections": d.live_connections,
                        **({"ended_first_by": [{"reason": r, "live_connections": k} for r, k in d.ended_first_by]}
                           if d.ended_first_by else {}),
                        "field": d.field,
                        "location": str(loc) if loc is not None else None,
                    }
                    for d, loc in zip(c.disruptions, c.disruption_locations or (None,) * len(c.disruptions),
                                      strict=True)
                ],
            }
            for c in plan.changes
        ],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(to_dict(plan), indent=2, ensure_ascii=False) + "\n"


def render_github(plan: Plan) -> str:
    """The text plan, then one GitHub ``::warning`` annotation per disruption, on the line that causes it."""
    out = [render_text(plan)]
    for c in plan.changes:
        for d, loc in zip(c.disruptions, c.disruption_locations or (None,) * len(c.disruptions), strict=True):
            props = []
            if loc is not None:
                props += [f"file={escape_property(loc.file)}", f"line={loc.line}", f"col={loc.col}"]
            how = _HOW[d.action]
            props.append(f"title={escape_property(f'{c.kind} {c.name}: disrupts live connections')}")
            out.append(f"::warning {','.join(props)}::{escape_data(f'{d.reason} ({how}{_live(d)})')}\n")
    return "".join(out)


RENDERERS = {"text": render_text, "json": render_json, "github": render_github}


def render(plan: Plan, fmt: str = "text") -> str:
    return RENDERERS[fmt](plan)

