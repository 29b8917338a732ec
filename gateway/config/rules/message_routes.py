"""API rules about message routes (``API.routes``, ``route_selection``): what the model alone cannot show.

Codes: WSG143-WSG148 (errors) and WSG241-WSG242 (warnings), listed in docs/diagnostics.md.
"""

from __future__ import annotations

import json
from typing import Any

from ..diagnostics import Related, error, warning
from ..document_checks import suggestion
from .api_upstream import _split
from .base import Entry, RuleContext, cert_and_key_must_exist, must_exist, rule

SPECIAL = ("$default", "$connect", "$disconnect")
EVENTS = ("$connect", "$disconnect")
AWS_PREFIX = "$request.body."


def _path(expression: str) -> tuple[str, ...]:
    # As gateway.build.message_routes.selection_path reads it (config sits below build: no import upward).
    if expression.startswith("/"):
        return tuple(part.replace("~1", "/").replace("~0", "~") for part in expression[1:].split("/"))
    return tuple(expression.removeprefix(AWS_PREFIX).split("."))


def _expression(api: Any) -> str | None:
    if api.route_selection is not None and api.route_selection.expression:
        return str(api.route_selection.expression)
    for policy in api.policies:
        if policy.type == "validate-messages" and policy.discriminator:
            return str(policy.discriminator)
    return None


def _key_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


_UNKNOWN = object()


def _fixed(schema: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    """The one value ``schema`` fixes at ``path`` (``const`` or a one-value ``enum``), else _UNKNOWN."""
    node: Any = schema or {}
    for part in path:
        props = node.get("properties") if isinstance(node, dict) else None
        node = props.get(part) if isinstance(props, dict) else None
        if not isinstance(node, dict):
            return _UNKNOWN
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) == 1:
        return enum[0]
    return _UNKNOWN


def producible_keys(api: Any, path: tuple[str, ...]) -> set[str] | None:
    """The route keys the API's declared client messages can select; None when that cannot be told (none
    declared, or a text message that does not fix its selection value)."""
    text = [m for m in api.messages if m.origin == "client" and m.type == "text"]
    if not text:
        return None if not any(m.origin == "client" for m in api.messages) else set()
    keys: set[str] = set()
    for message in text:
        value = _fixed(message.json_schema, path)
        if value is _UNKNOWN:
            return None
        key = _key_of(value)
        if key is not None:
            keys.add(key)
    return keys


def _enforces_client(api: Any) -> bool:
    return any(p.type == "validate-messages" and p.client == "enforce" for p in api.policies)


@rule
def message_routes(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        api = e.model
        if not api.routes:
            if api.route_selection is not None:
                ctx.out.append(warning(
                    "WSG242", f"API '{e.name}' has `route_selection` but no `routes`: it is never used",
                    e.doc.key_at(("route_selection",)), hint="declare `routes`, or remove `route_selection`"))
            continue
        _route_keys(ctx, e)
        for i, route in enumerate(api.routes):
            _integration(ctx, e, i, route)


def _route_keys(ctx: RuleContext, e: Entry) -> None:
    api = e.model
    first: dict[str, int] = {}
    for i, route in enumerate(api.routes):
        if route.key in first:
            ctx.out.append(error(
                "WSG145", f"two routes with the key '{route.key}'", e.doc.value_at(("routes", i, "key")),
                related=(Related(e.doc.value_at(("routes", first[route.key], "key")), "first one here"),),
                hint="keep one route per key: merge their settings"))
        else:
            first[route.key] = i
    named = [(i, r) for i, r in enumerate(api.routes) if r.key not in SPECIAL and first.get(r.key) == i]
    expression = _expression(api)
    if named and expression is None:
        ctx.out.append(error(
            "WSG146", f"API '{e.name}' has routes but no selection expression: no message can choose one",
            e.doc.key_at(("routes",)),
            hint="add `route_selection: {expression: action}` (the JSON field holding the route key), or a "
            "validate-messages `discriminator`"))
        return
    if expression is None:
        return
    path = _path(expression)
    keys = producible_keys(api, path)
    if keys is not None:
        field = ".".join(path)
        for i, route in named:
            if route.key in keys:
                continue
            if not any(m.origin == "client" and m.type == "text" for m in api.messages):
                ctx.out.append(warning(
                    "WSG241", f"route '{route.key}' can never be chosen: API '{e.name}' declares only binary "
                    "client messages, and those go to `$default`", e.doc.value_at(("routes", i, "key")),
                    hint="declare the text messages that select it, or remove the route"))
                continue
            ctx.out.append(error(
                "WSG143", f"no client message of API '{e.name}' has {field} = '{route.key}': route "
                f"'{route.key}' can never be chosen", e.doc.value_at(("routes", i, "key")),
                hint=suggestion(route.key, sorted(keys), listing="the declared messages select")
                or f"declare a client message whose schema fixes `{field}` to '{route.key}' (`const`)"))
        default = first.get("$default")
        covered = keys and all(k in first for k in keys)
        binary = any(m.origin == "client" and m.type == "binary" for m in api.messages)
        if default is not None and covered and not binary and _enforces_client(api):
            ctx.out.append(warning(
                "WSG241", "route '$default' can never be chosen: validate-messages lets only declared client "
                f"messages through, and each of them selects a route of its own ({', '.join(sorted(keys))})",
                e.doc.value_at(("routes", default, "key")),
                hint="remove the `$default` route, or declare the messages it should take"))


def _integration(ctx: RuleContext, e: Entry, i: int, route: Any) -> None:
    at: tuple[Any, ...] = ("routes", i)
    integration = route.integration
    if integration is None:
        ctx.out.append(error(
            "WSG144", f"route '{route.key}' has no integration: its messages would go nowhere",
            e.doc.value_at(at + ("key",)),
            hint="add `integration: {http: {url: https://...}}` or `integration: {websocket: {url: wss://...}}`"))
        return
    if route.key in EVENTS and integration.websocket is not None:
        ctx.out.append(error(
            "WSG148", f"route '{route.key}' is an event: it calls an HTTP backend, not a WebSocket upstream",
            e.doc.key_at(at + ("integration", "websocket")), hint="write `integration: {http: {url: ...}}`"))
        return
    kind = "http" if integration.http is not None else "websocket"
    target = integration.http or integration.websocket
    schemes = ("http", "https") if kind == "http" else ("ws", "wss")
    url_at = at + ("integration", kind, "url")
    parts = _split(target.url)
    if parts is None or not parts.hostname or parts.scheme.lower() not in schemes or parts.fragment:
        better = {"ws": "http", "wss": "https", "http": "ws", "https": "wss"}.get(parts.scheme.lower() if parts else "")
        ctx.out.append(error(
            "WSG147", f"route '{route.key}': {target.url!r} is not a {' or '.join(s + '://' for s in schemes)} URL",
            e.doc.value_at(url_at),
            hint=f"write it as {schemes[0]}://host:port/path"
            + (f" (a {kind} integration; for a {better}:// backend use `{'websocket' if kind == 'http' else 'http'}`)"
               if better else "")))
    tls_at = at + ("integration", kind, "tls")
    if not target.tls.verify:
        ctx.out.append(warning(
            "WSG206", f"route '{route.key}' does not verify its backend's TLS certificate",
            e.doc.value_at(tls_at + ("verify",)),
            hint="anyone on the path can impersonate the backend; set a `ca_file` instead"))
    if target.tls.ca_file is not None:
        must_exist(ctx, e, tls_at + ("ca_file",), target.tls.ca_file, "CA file")
    cert_and_key_must_exist(ctx, e, tls_at, target.tls.cert, target.tls.key)
    for name, value in target.headers.items():
        if value.env not in ctx.env:
            ctx.out.append(warning(
                "WSG203", f"environment variable {value.env} is not set",
                e.doc.value_at(at + ("integration", kind, "headers", name, "env")),
                hint=f"route '{route.key}' gets no {name} header until the gateway runs with {value.env} set"))
