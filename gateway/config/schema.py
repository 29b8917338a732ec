"""JSON Schema (2020-12) generated from the pydantic models.

The models are the truth; ``schemas/`` holds what this module generates (one
file per kind and ``resource.schema.json`` for any document) so editors can
complete and check fields. ``check()`` validates against the same schemas,
built in memory from the models, never read from disk.

Two adjustments to what pydantic emits, both for precise errors:

- discriminated unions (``kind``, a policy's ``type``) become ``if``/``then``
  branches keyed by the discriminator instead of ``oneOf``, so a validator
  (and an editor) reports the errors of the branch the document chose rather
  than of every branch;
- fields whose model accepts more than their type (``version: 1.0`` is a
  YAML float that the API model turns into the label "1.0") say so.

Two validators of the same schema: a compiled one (``jsonschema-rs``) decides
pass or fail, and only a document that fails is walked again by ``jsonschema``,
whose errors the diagnostics are written from. Nearly every document passes,
and the compiled check is ~20x faster, so messages stay exactly as they were
while the common case costs little. Where the compiled validator is missing (no
wheel for the platform) or cannot read a value (a YAML date), ``jsonschema``
decides alone.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

try:
    import jsonschema_rs
except ImportError:  # no pre-built wheel for this platform: jsonschema alone decides
    jsonschema_rs = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

from .models import KINDS, Resource

DIALECT = "https://json-schema.org/draft/2020-12/schema"
RESOURCE_FILE = "resource.schema.json"


def file_name(kind: str) -> str:
    return f"{kind.lower()}.schema.json"


def _rewrite_discriminators(node: Any) -> Any:
    """Replace pydantic's ``oneOf`` + ``discriminator`` with one ``if``/``then`` per tag value."""
    if isinstance(node, list):
        return [_rewrite_discriminators(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rewrite_discriminators(value) for key, value in node.items()}
    disc = node.get("discriminator")
    if disc and "oneOf" in node and "mapping" in disc:
        prop = disc["propertyName"]
        tags = list(disc["mapping"])
        rest = {k: v for k, v in node.items() if k not in ("oneOf", "discriminator")}
        branches = [
            {
                "if": {"type": "object", "properties": {prop: {"const": tag}}, "required": [prop]},
                "then": {"$ref": ref},
            }
            for tag, ref in disc["mapping"].items()
        ]
        return {
            **rest,
            "type": "object",
            "required": [prop],
            "properties": {prop: {"enum": tags, "description": f"One of: {', '.join(tags)}."}},
            "allOf": branches,
        }
    return node


def _patch_lenient_fields(kind: str, schema: dict) -> None:
    if kind == "API":
        version = schema["properties"]["version"]
        version.pop("type", None)
        version["type"] = ["string", "number"]


def _kind_schema(kind: str) -> dict:
    model = KINDS[kind]
    schema = _rewrite_discriminators(model.model_json_schema(by_alias=True))
    _patch_lenient_fields(kind, schema)
    return {"$schema": DIALECT, **schema}


def _resource_schema() -> dict:
    # Typed Any: mypy's incremental cache reads the Annotated union as a UnionType that fits no overload.
    resource: Any = Resource
    schema = _rewrite_discriminators(TypeAdapter(resource).json_schema(by_alias=True))
    api = schema["$defs"]["API"]
    _patch_lenient_fields("API", api)
    return {"$schema": DIALECT, "title": "wsgate resource", **schema}


@cache
def _generated() -> dict[str, dict]:
    out = {file_name(kind): _kind_schema(kind) for kind in KINDS}
    out[RESOURCE_FILE] = _resource_schema()
    return out


def kind_schema(kind: str) -> dict:
    """The generated schema of one kind (shared, do not change it): what the field reference is written from."""
    return _generated()[file_name(kind)]


@cache
def validator(kind: str) -> Draft202012Validator:
    """The cached validator of one kind: built once per process, reused for every document."""
    # Imported on first use: ~50 ms of start-up that a tree without schema errors never needs.
    from jsonschema import Draft202012Validator

    schema = _generated()[file_name(kind)]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _compiled(kind: str) -> Any:
    """The compiled validator of one kind, or None where ``jsonschema-rs`` is not installed."""
    if jsonschema_rs is None:
        return None
    return jsonschema_rs.Draft202012Validator(_generated()[file_name(kind)])


def passes(kind: str, data: Any) -> bool:
    """Whether ``data`` certainly satisfies the schema of ``kind``: the fast check before ``validator(kind)``.

    False means "not known to pass": the caller asks ``validator(kind)`` for the errors, and that answer stands
    (if the two validators ever disagree, the one that writes the messages wins).
    """
    compiled = _compiled(kind)
    if compiled is None:
        return False
    try:
        return bool(compiled.is_valid(data))
    except ValueError:  # a value JSON has no type for (a YAML date or timestamp): jsonschema reports it
        return False


def dumps(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """(Re)generate every schema file in ``directory``; returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, schema in _generated().items():
        path = directory / name
        text = dumps(schema)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale(directory: Path) -> list[str]:
    """Names of schema files in ``directory`` that are missing or differ from the models."""
    out = []
    for name, schema in _generated().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != dumps(schema):
            out.append(name)
    return out


def default_directory() -> Path:
    """``schemas/`` of the source checkout when running from one, else ``./schemas``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "gateway").is_dir():
        return repo / "schemas"
    return Path("schemas")
