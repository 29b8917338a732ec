"""Import an API description: an AsyncAPI 2.x or 3.x document becomes a wsgate API resource.

The result is a starting point an operator commits and edits: name, version,
description, the native endpoint (from a `ws`/`wss` server and the channel's
address) and the message definitions (origin, type, payload schema, sample).
It is checked with the same models as every other resource before it is written.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .config.models import API


class DescriptionError(ValueError):
    """The description cannot be turned into an API; the message says why and what to pass instead."""


def load_description(path: Path) -> dict[str, Any]:
    try:
        document = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptionError(f"cannot read {path}: {exc}") from None
    except YAMLError as exc:
        raise DescriptionError(f"{path} is not YAML or JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or "asyncapi" not in document:
        raise DescriptionError(f"{path} is not an AsyncAPI document (no top-level `asyncapi` field)")
    return document


def api_from_asyncapi(document: dict[str, Any], *, name: str | None = None, path: str | None = None,
                      port: str = "default", upstream: str | None = None) -> API:
    """The API resource an AsyncAPI document describes; raises DescriptionError when it lacks what is needed."""
    version = str(document.get("asyncapi", ""))
    if not version.startswith(("2.", "3.")):
        raise DescriptionError(f"AsyncAPI {version or '?'} is not supported (2.x and 3.x are)")
    info = document.get("info") or {}
    title = str(info.get("title") or "")
    api_name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-") or None
    if not api_name:
        raise DescriptionError("the description has no info.title: pass --name")
    api_version = str(info.get("version") or "1.0")
    channel_address = _first_channel_address(document, version)
    url = upstream or _server_url(document, channel_address)
    if url is None:
        raise DescriptionError("no `ws` or `wss` server in the description: pass --upstream ws://HOST:PORT/PATH")
    messages = list(_messages(document, version))
    resource = {
        "kind": "API",
        "name": api_name,
        "version": api_version,
        "description": str(info.get("description") or "").strip(),
        "path": path or f"/websocket/{api_name}/{api_version}",
        "ports": [port],
        "upstream": {"endpoints": [{"url": url}]},
        "messages": messages,
    }
    try:
        return API.model_validate(resource)
    except ValueError as exc:
        raise DescriptionError(f"the imported API does not check: {exc}") from None


def render_yaml(api: API, source: str) -> str:
    """The API as a YAML file with the editor schema line, ready to commit."""
    data = api.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data = {"kind": "API", **{k: v for k, v in data.items() if k != "kind"}}
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 100
    yaml.dump(data, out)
    return (
        "# yaml-language-server: $schema=../../schemas/api.schema.json\n"
        f"# Imported from {source} by `wsgate import`: add the policy chain, then commit.\n" + out.getvalue()
    )


def _first_channel_address(document: dict[str, Any], version: str) -> str:
    """The first channel's address: its key in 2.x, its ``address`` field in 3.x."""
    channels = document.get("channels") or {}
    if not channels:
        return ""
    key, channel = next(iter(channels.items()))
    if version.startswith("2."):
        return str(key)
    address = channel.get("address") if isinstance(channel, dict) else None
    return str(address) if address else ""


def _server_url(document: dict[str, Any], channel: str) -> str | None:
    for server in (document.get("servers") or {}).values():
        if not isinstance(server, dict):
            continue
        protocol = str(server.get("protocol", "")).lower()
        if protocol not in ("ws", "wss"):
            continue
        if "url" in server:  # 2.x: url may carry the scheme
            base = str(server["url"])
            if "://" not in base:
                base = f"{protocol}://{base}"
        else:  # 3.x: host + pathname
            base = f"{protocol}://{server.get('host', '')}{server.get('pathname', '')}"
        return base.rstrip("/") + "/" + channel.lstrip("/") if channel else base
    return None


def _messages(document: dict[str, Any], version: str) -> Iterable[dict[str, Any]]:
    """(origin, message) pairs as MessageDefinition dicts; `client` is what clients send."""
    components = (document.get("components") or {}).get("messages") or {}
    if version.startswith("2."):
        for channel in (document.get("channels") or {}).values():
            for operation, origin in (("publish", "client"), ("subscribe", "server")):
                message = ((channel or {}).get(operation) or {}).get("message")
                yield from _definitions(message, origin, document, components)
    else:
        for operation in (document.get("operations") or {}).values():
            # 3.x describes the application (the native server): it receives what clients send.
            origin = "client" if operation.get("action") == "receive" else "server"
            channel = _resolve(operation.get("channel"), document) or {}
            refs = operation.get("messages") or list((channel.get("messages") or {}).values())
            for message in refs:
                yield from _definitions(message, origin, document, components)


def _definitions(message: Any, origin: str, document: dict[str, Any], components: dict[str, Any]) -> Iterable[dict]:
    if not message:
        return
    for one in (message["oneOf"] if isinstance(message, dict) and "oneOf" in message else [message]):
        resolved = _resolve(one, document)
        if not isinstance(resolved, dict):
            continue
        name = resolved.get("name") or _ref_name(one) or f"{origin}-message"
        payload = _resolve(resolved.get("payload"), document)
        binary = str(resolved.get("contentType", "")).startswith(("application/octet-stream", "image/", "audio/"))
        definition: dict[str, Any] = {
            "name": str(name),
            "origin": origin,
            "type": "binary" if binary else "text",
            "description": str(resolved.get("summary") or resolved.get("description") or ""),
        }
        if isinstance(payload, dict):
            definition["schema"] = payload
        examples = resolved.get("examples") or []
        if examples and isinstance(examples[0], dict) and "payload" in examples[0]:
            sample = examples[0]["payload"]
            definition["sample"] = sample if isinstance(sample, str) else json.dumps(sample)
        yield definition


def _resolve(node: Any, document: dict[str, Any]) -> Any:
    """Follow a local `$ref` (``#/components/...``); other references are left as they are."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        node, seen = target, seen + 1
        if seen > 32:
            return None  # a reference cycle
    return node


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        return node["$ref"].rsplit("/", 1)[-1]
    return None
