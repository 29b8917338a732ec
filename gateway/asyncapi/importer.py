"""Import an API description: an AsyncAPI 2.x or 3.x document becomes a wsgate API resource.

The result is a starting point an operator commits and edits: name, version,
description, the native endpoint (from a `ws`/`wss` server and the channel's
address) and the message definitions (origin, type, payload schema, sample).
It is checked with the same models as every other resource before it is written.

Message schemas come out standalone: every schema a payload refers to in the
description (``#/components/schemas/...`` and any other local pointer) is
copied under the payload's ``$defs`` and the reference rewritten to point
there, recursively; a cycle becomes a ``$defs`` entry that refers to itself.
References to other files are left as they are (``validate`` reports them), and import warns about every
reference it cannot follow (``unresolved_references``). The description is read through validate's guarded
loader (``gateway.config.source.load_one``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from ..config import cut_long_quotes, with_source_lines
from ..config.diagnostics import Diagnostic, warning
from ..config.message_schemas import DATA_KEYWORDS, SCHEMA_MAPS
from ..config.models import API
from ..config.source import Document, load_one

MAX_SIZE_EXTENSION = "x-wsgate-max-size"
# The largest description import reads; the biggest public AsyncAPI documents are a few hundred KB.
MAX_DESCRIPTION_BYTES = 16 * 2**20  # a message's `max_size`, as `wsgate export asyncapi` writes it


class DescriptionError(ValueError):
    """The description cannot be turned into an API; the message says why and what to pass instead.

    ``diagnostics`` are the located problems of a description the guarded loader refused (see ``read_description``).
    """

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic] = ()) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)


@dataclass(frozen=True)
class Description:
    """An AsyncAPI document as plain data, with where each of its nodes was written (for located warnings)."""

    data: dict[str, Any]
    source: Document
    warnings: tuple[Diagnostic, ...] = ()  # what the loader noticed (a key written twice)


def read_description(path: Path) -> Description:
    """Read a description through validate's guarded loader: no special file, nesting past 100 levels refused
    before parsing (a 100,000-deep document crashed the parser), aliases expanding past 200,000 nodes refused
    (an 873-byte alias bomb grew to gigabytes), a file larger than ``MAX_DESCRIPTION_BYTES`` refused unread."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise DescriptionError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size > MAX_DESCRIPTION_BYTES:
        raise DescriptionError(f"{path} is {size} bytes, more than the {MAX_DESCRIPTION_BYTES} an API description "
                               "may have")
    loaded = load_one(path)
    # A key written twice is the description's author's slip, not a reason to refuse it: YAML keeps the first.
    found = [dataclasses.replace(d, severity="warning") if d.code == "WSG002" else d for d in loaded.diagnostics]
    shown = cut_long_quotes(with_source_lines(found, loaded.sources))
    if any(d.is_error for d in shown):
        raise DescriptionError(f"{path} cannot be imported", shown)
    docs = loaded.documents
    if len(docs) != 1 or not isinstance(docs[0].data, dict) or "asyncapi" not in docs[0].data:
        raise DescriptionError(f"{path} is not an AsyncAPI document (no top-level `asyncapi` field)")
    return Description(docs[0].data, docs[0], tuple(shown))


def load_description(path: Path) -> dict[str, Any]:
    """The description at ``path`` as plain data (see ``read_description``)."""
    return read_description(path).data


def unresolved_references(description: Description) -> list[Diagnostic]:
    """A located warning for every ``$ref`` the import cannot follow: another file or a URL (WSG260), a local
    pointer to nothing (WSG261), a chain of references that comes back to itself (WSG262). What such a reference
    names is left out of the imported API (a message) or left as written (a schema: validate reports it)."""
    data, source = description.data, description.source
    out: list[Diagnostic] = list(description.warnings)
    for where, ref in _references(data, ()):
        loc = source.value_at(where + ("$ref",))
        shown = repr(ref if len(ref) <= 200 else ref[:200] + "…")
        if not ref.startswith("#"):
            out.append(warning("WSG260", f"$ref {shown} names another file or a URL, which import does not fetch",
                               loc, hint="copy what it names into the description's components and point there"))
        elif ref != "#" and _pointer(data, ref) is _MISSING:
            out.append(warning("WSG261", f"$ref {shown} points at nothing in this description", loc,
                               hint="check the pointer's spelling against the description's components"))
        elif _chain_cycles(data, ref):
            out.append(warning("WSG262", f"$ref {shown} is a cycle of references that never reaches a definition",
                               loc, hint="make one reference of the cycle point at the definition itself"))
    return out


def _references(node: Any, where: tuple) -> Iterable[tuple[tuple, str]]:
    # Iterative: a description is at most 100 levels deep (the loader's guard), but recursion is not needed.
    stack = [(node, where)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                yield where, ref
            stack.extend((value, where + (key,)) for key, value in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((value, where + (i,)) for i, value in reversed(list(enumerate(node))))


def _chain_cycles(document: dict[str, Any], ref: str) -> bool:
    """Whether following ``ref`` through nodes that are only references comes back to a pointer already seen."""
    seen = set()
    while ref.startswith("#/"):
        if ref in seen:
            return True
        seen.add(ref)
        target = _pointer(document, ref)
        if not (isinstance(target, dict) and isinstance(target.get("$ref"), str)):
            return False
        ref = target["$ref"]
    return False


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
    channel_address = _with_parameters(_first_channel_address(document, version), _first_channel(document),
                                       upstream is not None)
    url = upstream or _server_url(document, channel_address)
    if url is None:
        raise DescriptionError("no `ws` or `wss` server in the description: pass --upstream ws://HOST:PORT/PATH")
    messages = _unique(_messages(document, version))
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


def _first_channel(document: dict[str, Any]) -> dict[str, Any]:
    channels = document.get("channels") or {}
    channel = next(iter(channels.values()), None) if channels else None
    return channel if isinstance(channel, dict) else {}


def _with_parameters(address: str, channel: dict[str, Any], overridden: bool) -> str:
    """The channel address with each ``{parameter}`` replaced by its default or first enum value: the native
    endpoint is one URL. Without either, the operator must name the endpoint."""
    parameters = channel.get("parameters") or {}

    def value(match: re.Match[str]) -> str:
        spec = parameters.get(match.group(1))
        spec = spec.get("schema", spec) if isinstance(spec, dict) else {}  # 2.x nests it under `schema`
        if isinstance(spec, dict):
            if "default" in spec:
                return str(spec["default"])
            if spec.get("enum"):
                return str(spec["enum"][0])
        if overridden:
            return match.group(0)  # --upstream names the endpoint: the address is not used
        raise DescriptionError(f"the channel address {address} has parameter {{{match.group(1)}}} with no default "
                               "or enum value: pass --upstream ws://HOST:PORT/PATH")

    return re.sub(r"\{([^{}]+)\}", value, address)


def _unique(definitions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One definition per (name, origin): a message used by several operations is declared once."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for definition in definitions:
        seen.setdefault((definition["name"], definition["origin"]), definition)
    return list(seen.values())


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
            operation = _resolve(operation, document)
            if not isinstance(operation, dict):
                continue
            # 3.x describes the application (the native server): it receives what clients send.
            origin = "client" if operation.get("action") == "receive" else "server"
            yield from _operation_messages(operation, origin, document, components)
            reply = _resolve(operation.get("reply"), document)
            if isinstance(reply, dict):  # a reply goes the other way
                yield from _operation_messages(reply, "server" if origin == "client" else "client", document,
                                               components)


def _operation_messages(operation: dict[str, Any], origin: str, document: dict[str, Any],
                        components: dict[str, Any]) -> Iterable[dict]:
    """An operation's (or reply's) messages: those it lists, else every message of its channel."""
    channel = _resolve(operation.get("channel"), document) or {}
    refs = operation.get("messages") or list(((channel or {}).get("messages") or {}).values())
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
        if isinstance(payload, dict) and "schemaFormat" in payload and "schema" in payload:
            payload = _resolve(payload["schema"], document)  # 3.x multi-format schema object
        if isinstance(payload, dict):
            payload = bundle(payload, document)
        binary = str(resolved.get("contentType", "")).startswith(("application/octet-stream", "image/", "audio/"))
        definition: dict[str, Any] = {
            "name": str(name),
            "origin": origin,
            "type": "binary" if binary else "text",
            "description": str(resolved.get("summary") or resolved.get("description") or ""),
        }
        if isinstance(payload, dict):
            definition["schema"] = payload
        if isinstance(resolved.get(MAX_SIZE_EXTENSION), int):
            definition["max_size"] = resolved[MAX_SIZE_EXTENSION]
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




def bundle(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` that stands alone: each local ``$ref`` target copied under ``$defs``, recursively.

    ``$defs`` names are the pointers' last segments (``#/components/schemas/Price`` -> ``Price``), made
    unique with ``_2``, ``_3``...; a pointer referred to twice is copied once, so cycles terminate.
    """
    defs: dict[str, Any] = {}
    names: dict[str, str] = {}  # pointer -> $defs name
    taken = set((schema.get("$defs") or {}).keys()) if isinstance(schema.get("$defs"), dict) else set()

    def name_for(pointer: str, target: Any) -> str:
        name = names.get(pointer)
        if name is not None:
            return name
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", pointer.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~"))
        base = base or "schema"
        name, n = base, 2
        while name in defs or name in taken:
            name, n = f"{base}_{n}", n + 1
        names[pointer] = name
        defs[name] = None  # reserved before recursing: a cycle back to it finds the name
        defs[name] = rewrite(target)
        return name

    def rewrite(node: Any, names_map: bool = False) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if names_map:  # keys are property (or definition) names, values schemas
                    out[key] = rewrite(value)
                elif key == "$ref" and isinstance(value, str) and value.startswith("#/"):
                    target = _pointer(document, value)
                    out[key] = f"#/$defs/{name_for(value, target)}" if target is not _MISSING else value
                elif key in DATA_KEYWORDS:
                    out[key] = value
                else:
                    out[key] = rewrite(value, key in SCHEMA_MAPS)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    result = rewrite(schema)
    if defs:
        existing = result.get("$defs") if isinstance(result.get("$defs"), dict) else {}
        result["$defs"] = {**existing, **defs}
    return result


_MISSING = object()


def _pointer(document: dict[str, Any], ref: str) -> Any:
    """The node a local JSON pointer (``#/a/b``) names in ``document``, or ``_MISSING``."""
    target: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return _MISSING
    return target
