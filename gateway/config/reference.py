"""docs/reference.md: a field reference for every resource, generated from the same JSON Schemas as schemas/.

``wsgate schemas`` writes it beside the schema files and ``wsgate schemas
--check`` fails when it is stale, so the reference cannot drift from the
models: a field's type, default, bounds and description come from its model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import KINDS
from .schema import kind_schema

FILE_NAME = "reference.md"

_HEADER = """\
# Field reference

Every field of every resource, generated from the models (`wsgate schemas` writes this file; a test fails when it
is stale, so edit the field descriptions in `gateway/config/models.py`, not this file). Nested fields are written
as dotted paths; `[]` marks the items of a list. Relative file paths start at the declaring file's directory.
"""


def render() -> str:
    """The whole reference, as Markdown."""
    parts = [_HEADER]
    for kind in KINDS:
        schema = kind_schema(kind)
        parts.append(f"\n## {kind}\n")
        if schema.get("description"):
            parts.append(f"\n{_one_line(schema['description'])}\n")
        rows, unions = _rows(schema, schema, "")
        parts.append(_table(rows))
        for path, branches in unions:
            parts.append(f"\n### `{path}` entries, by `type`\n")
            for tag, branch in branches:
                parts.append(f"\n#### `{tag}`\n")
                if branch.get("description"):
                    parts.append(f"\n{_one_line(branch['description'])}\n")
                parts.append(_table(_rows(schema, branch, "")[0]))
    return "".join(parts)


def write(directory: Path) -> Path | None:
    """Write ``reference.md`` into ``directory``; the path if it changed, else None."""
    path = directory / FILE_NAME
    text = render()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def is_stale(directory: Path) -> bool:
    path = directory / FILE_NAME
    return not path.exists() or path.read_text(encoding="utf-8") != render()


def default_directory() -> Path:
    """``docs/`` of the source checkout when running from one, else ``./docs``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "gateway").is_dir():
        return repo / "docs"
    return Path("docs")


# ------------------------------------------------------------------ walk

Row = tuple[str, str, str, str]  # field, type, default, description


def _resolve(root: dict, node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**root["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _rows(root: dict, node: dict, prefix: str) -> tuple[list[Row], list[tuple[str, list[tuple[str, dict]]]]]:
    rows: list[Row] = []
    unions: list[tuple[str, list[tuple[str, dict]]]] = []
    node = _resolve(root, node)
    required = set(node.get("required", ()))
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        prop = _resolve(root, prop)
        default = "required" if name in required else _default(prop)
        items = _resolve(root, prop.get("items", {})) if prop.get("type") == "array" else {}
        if items.get("allOf") and all("if" in b for b in items["allOf"]):  # a discriminated union (policies)
            branches = [(b["if"]["properties"]["type"]["const"], _resolve(root, b["then"])) for b in items["allOf"]]
            rows.append((path, "list of mappings, by `type`", default, _describe(prop)))
            unions.append((path, branches))
            continue
        nested = _object_of(root, prop)
        if nested is not None:
            rows.append((path, _type(root, prop), default, _describe(prop)))
            sub, more = _rows(root, nested, f"{path}.")
            rows += sub
            unions += more
        elif items.get("properties"):
            rows.append((path, "list of mappings", default, _describe(prop)))
            sub, more = _rows(root, items, f"{path}[].")
            rows += sub
            unions += more
        else:
            rows.append((path, _type(root, prop), default, _describe(prop)))
    return rows, unions


def _object_of(root: dict, prop: dict) -> dict | None:
    """The object schema a property holds (directly, or as the non-null side of an optional)."""
    if prop.get("properties"):
        return prop
    options = [_resolve(root, o) for o in prop.get("anyOf", ())]
    objects = [o for o in options if o.get("properties")]
    return objects[0] if len(objects) == 1 else None


def _type(root: dict, prop: dict) -> str:
    prop = _resolve(root, prop)
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(dict.fromkeys(_type(root, o) for o in prop["anyOf"]))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " or ".join(_word(k) for k in kind)
    if kind == "array":
        return f"list of {_type(root, prop.get('items', {}))}"
    if prop.get("properties"):
        return "mapping"
    text = _word(kind) if kind else "any"
    bounds = [f"{op} {prop[key]}" for key, op in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                                  ("exclusiveMaximum", "<")) if key in prop]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _word(kind: str) -> str:
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "null": "null",
            "object": "mapping", "array": "list"}.get(kind, kind)


def _default(prop: dict) -> str:
    if "default" not in prop:
        return ""
    value: Any = prop["default"]
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _describe(prop: dict) -> str:
    text = _one_line(prop.get("description", ""))
    pattern = prop.get("pattern")
    return text + (f" Pattern: `{pattern}`." if pattern and "pattern" not in text.lower() else "")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(rows: list[Row]) -> str:
    lines = ["", "| field | type | default | description |", "| --- | --- | --- | --- |"]
    for field, kind, default, description in rows:
        lines.append(f"| `{field}` | {kind} | {default} | {description} |")
    return "\n".join(lines) + "\n"
