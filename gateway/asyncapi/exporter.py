"""Export an API resource as an AsyncAPI 3.0 document: what clients of the gateway see.

The document describes the gateway as the application: one server per
enabled Port the API is on (the gateway's address, ws or wss, and the
security schemes its identify policy accepts), one channel at the API's path,
a ``receive`` operation for the messages clients send and a ``send``
operation for those the native server sends, and each message definition as
a component message (JSON payload schema, content type, example).

Message schemas stand alone in wsgate (``#/$defs/...``), but in an AsyncAPI
document a reference resolves against the whole document. So each schema's
``$defs`` move to ``components/schemas`` (a name already taken by a different
schema gets ``_2``...) and references are rewritten to point there;
``wsgate import`` bundles them back, so import -> export -> import is stable.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

from ruamel.yaml import YAML

from ..build.message_routes import route_key_of, selection_expression, selection_path
from ..config.message_schemas import DATA_KEYWORDS, SCHEMA_MAPS
from ..config.models import API, IdentifyPolicy, MessageDefinition
from ..config.tree import Config
from .importer import MAX_SIZE_EXTENSION, ROUTE_EXTENSION

ASYNCAPI_VERSION = "3.0.0"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
API_KEY_PARAMETER = "x-Gateway-APIKey"


class ExportError(ValueError):
    """The API cannot be exported; the message says why."""


def asyncapi_document(config: Config, api_name: str, *, version: str | None = None,
                      host: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of API ``api_name`` in ``config``.

    ``version`` is the document's ``info.version`` (default: the API's version label); ``host`` replaces the
    Ports' bind addresses in the server URLs (a wildcard bind address becomes ``localhost`` otherwise).
    """
    loaded = config.apis.get(api_name)
    if loaded is None:
        known = ", ".join(sorted(config.apis)) or "none"
        raise ExportError(f"no API named '{api_name}' in the config (APIs: {known})")
    api = loaded.model
    schemes = _security_schemes(api)
    security = [{"$ref": f"#/components/securitySchemes/{name}"} for name in schemes]
    servers: dict[str, Any] = {}
    for port_name in api.ports:
        port = config.ports.get(port_name)
        if port is None or not port.model.enabled:
            continue
        bind = port.model.host
        name = host or ("localhost" if bind in WILDCARD_HOSTS else bind)
        server: dict[str, Any] = {"host": f"{name}:{port.model.port}", "protocol": "wss" if port.model.tls else "ws",
                                  "description": f"wsgate Port '{port_name}'"}
        if security:
            server["security"] = security
        servers[_key(port_name)] = server
    if not servers:
        raise ExportError(f"API '{api_name}' is on no enabled Port: there is no address to describe")

    channel = _key(api.name)
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    keys: dict[tuple[str, str], str] = {}
    for definition in api.messages:
        key = _key(definition.name)
        if key in messages:
            key = _key(f"{definition.name}-{definition.origin}")
        keys[(definition.name, definition.origin)] = key
        messages[key] = _message(definition, schemas)
    # One operation per message, in definition order (import reads them back in the same order).
    operations: dict[str, Any] = {}
    for m in api.messages:
        key = keys[(m.name, m.origin)]
        action = "receive" if m.origin == "client" else "send"
        name = f"{action}{key[:1].upper()}{key[1:]}"
        while name in operations:
            name += "_"
        operations[name] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"A client sends {m.name}" if m.origin == "client" else f"Clients receive {m.name}",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"}],
        }
    operations.update(_route_operations(api, channel, keys))
    info: dict[str, Any] = {"title": api.name, "version": version or api.version}
    if api.description:
        info["description"] = api.description
    components: dict[str, Any] = {"messages": messages}
    if schemas:
        components["schemas"] = schemas
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "servers": servers,
        "channels": {channel: {
            "address": api.path,
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
        }},
        "operations": operations,
        "components": components,
    }


def _route_operations(api: API, channel: str, keys: dict[tuple[str, str], str]) -> dict[str, Any]:
    """One ``receive`` operation per message route: the client messages that select it (by the schema's fixed
    value of the selection field; `$default` takes those no other route does), and which kind of backend it
    reaches. Backend URLs stay out: they are the operator's, not the clients'."""
    routes = api.message_routes
    if not routes:
        return {}
    expression = selection_expression(api)
    path = selection_path(expression) if expression else ()
    field = ".".join(path)
    selected: dict[str, list[str]] = {}
    for m in api.messages:
        if m.origin != "client":
            continue
        value = _fixed_at(m.json_schema, path) if m.type == "text" and path else _NO_VALUE
        key = route_key_of(value) if value is not _NO_VALUE else None
        named = key is not None and any(r.key == key for r in routes)
        selected.setdefault(key if named and key is not None else "$default", []).append(keys[(m.name, m.origin)])
    out: dict[str, Any] = {}
    for route in routes:
        integration = route.integration
        kind = "http" if integration is not None and integration.http is not None else "websocket"
        name = "route" + "".join(part[:1].upper() + part[1:] for part in re.split(r"[^\w]+", route.key) if part)
        if route.key == "$default":
            summary = "Messages no other route takes" + (f" (no or another `{field}`)" if field else "")
        else:
            summary = f"Messages with `{field}` = {route.key!r}"
        out[_key(name if name != "route" else "routeDefault")] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{summary}, routed to {'an HTTP backend' if kind == 'http' else 'a WebSocket upstream'}",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in selected.get(route.key, [])],
            ROUTE_EXTENSION: {"key": route.key, "selection": expression, "integration": kind},
        }
    return out


_NO_VALUE = object()


def _fixed_at(schema: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    """The value ``schema`` fixes at ``path`` (``const`` or a one-value ``enum``), else _NO_VALUE."""
    node: Any = schema or {}
    for part in path:
        props = node.get("properties") if isinstance(node, dict) else None
        node = props.get(part) if isinstance(props, dict) else None
        if not isinstance(node, dict):
            return _NO_VALUE
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    return enum[0] if isinstance(enum, list) and len(enum) == 1 else _NO_VALUE


def render(document: dict[str, Any], fmt: str = "yaml") -> str:
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 100
    yaml.dump(document, out)
    return out.getvalue()


def _key(name: str) -> str:
    """A component or map key AsyncAPI accepts (``^[\\w\\d.\\-_]+$``)."""
    return re.sub(r"[^\w.\-]+", "_", name) or "_"


def _security_schemes(api: API) -> dict[str, Any]:
    identify = next((p for p in api.policies if isinstance(p, IdentifyPolicy)), None)
    if identify is None or identify.allow_anonymous:
        return {}
    schemes: dict[str, Any] = {}
    for by in identify.by:
        if by == "api_key":
            schemes["apiKeyQuery"] = {"type": "httpApiKey", "name": API_KEY_PARAMETER, "in": "query",
                                      "description": "The application's API key as a query parameter."}
            if identify.api_key_header:
                schemes["apiKeyHeader"] = {"type": "httpApiKey", "name": API_KEY_PARAMETER, "in": "header",
                                           "description": "The application's API key as a header."}
        elif by == "jwt":
            schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        elif by == "basic":
            schemes["basic"] = {"type": "http", "scheme": "basic"}
        # `ip` and `hostname` identify by the peer's address: AsyncAPI has no scheme for that.
    return schemes


def _message(definition: MessageDefinition, schemas: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"name": definition.name}
    if definition.description:
        message["summary"] = definition.description
    if definition.type == "binary":
        message["contentType"] = "application/octet-stream"
    elif definition.json_schema is not None:
        message["contentType"] = "application/json"
        message["payload"] = _hoist(definition.json_schema, schemas)
    else:
        message["contentType"] = "text/plain"
    if definition.max_size is not None:
        message[MAX_SIZE_EXTENSION] = definition.max_size
    if definition.sample is not None:
        sample: Any = definition.sample
        if definition.json_schema is not None:
            with contextlib.suppress(ValueError):  # a sample that is not JSON stays text
                sample = json.loads(sample)
        message["examples"] = [{"payload": sample}]
    return message


def _hoist(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``$defs``: they go to ``schemas`` (components) and references follow them."""
    found = schema.get("$defs")
    defs: dict[str, Any] = found if isinstance(found, dict) else {}
    renamed: dict[str, str] = {}
    for name, sub in defs.items():
        key, n = _key(name), 2
        base = key
        while key in schemas and schemas[key] != _rewrite(sub, renamed | {name: key}):
            key, n = f"{base}_{n}", n + 1
        renamed[name] = key
    for name, sub in defs.items():
        schemas[renamed[name]] = _rewrite(sub, renamed)
    return _rewrite({k: v for k, v in schema.items() if k != "$defs"}, renamed)


def _rewrite(node: Any, renamed: dict[str, str], names_map: bool = False) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if names_map:
                out[key] = _rewrite(value, renamed)
            elif key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                name = value[len("#/$defs/"):].split("/", 1)
                target = renamed.get(name[0].replace("~1", "/").replace("~0", "~"), name[0])
                out[key] = f"#/components/schemas/{target}" + (f"/{name[1]}" if len(name) > 1 else "")
            elif key in DATA_KEYWORDS:
                out[key] = value
            else:
                out[key] = _rewrite(value, renamed, key in SCHEMA_MAPS)
        return out
    if isinstance(node, list):
        return [_rewrite(item, renamed) for item in node]
    return node
