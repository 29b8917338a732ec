"""Per-document checks: the ``kind``, the JSON Schema, then the pydantic model.

Schema errors are translated into diagnostics that point at the most precise
node: the key of an unknown field (with a "did you mean"), the value of a
wrong type, the parent mapping of a missing field. A document that fails its
schema is not given to pydantic (its errors would only repeat the schema's).
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .diagnostics import Diagnostic, error, warning
from .models import API_VERSIONS, KINDS
from .schema import passes, validator
from .source import Document

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError as SchemaError

_JSON_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_YAML_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    choices = [c for c in choices if isinstance(c, str)]
    lowered = {c.lower(): c for c in choices}
    if isinstance(word, str) and word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return match[0] if match else None


def suggestion(word: str, choices: Sequence[str], *, listing: str = "expected one of") -> str:
    best = did_you_mean(word, choices)
    if best is not None:
        return f"did you mean '{best}'?"
    return f"{listing}: {', '.join(choices)}" if choices else ""


def describe_path(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "the document"


# Checked in order: bool before int (a bool is an int), datetime before date.
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
    (list, "list"), (dict, "mapping"), ((date, datetime), "date"),
)


def json_type(value: Any) -> str:
    for kinds, name in _JSON_TYPES:
        if isinstance(value, kinds):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (date, datetime)) else value.isoformat()
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ kind


def check_kind(doc: Document) -> tuple[str | None, list[Diagnostic]]:
    data = doc.data
    if not isinstance(data, dict):
        return None, [
            error(
                "WSG008",
                f"a resource must be a mapping with 'kind' and 'name', not {json_type(data)}",
                doc.value_at(()),
                hint="start the document with `kind: API` (or Port, Application, EchoServer, Gateway)",
            )
        ]
    if "kind" not in data:
        return None, [
            error(
                "WSG009",
                "missing 'kind'",
                doc.value_at(()),
                hint=f"add `kind:` with one of {', '.join(KINDS)}",
            )
        ]
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        hint = suggestion(str(kind), list(KINDS)) if isinstance(kind, str) else f"one of {', '.join(KINDS)}"
        return None, [error("WSG009", f"unknown kind {_short(kind)}", doc.value_at(("kind",)), hint=hint)]
    return kind, []


# ------------------------------------------------------------- apiVersion


def check_api_version(doc: Document) -> tuple[bool, list[Diagnostic]]:
    """(whether the document names its format version, problems): a version this wsgate does not read is an error
    at the value, before the schema (whose enum error would not say what to do)."""
    data = doc.data
    if "apiVersion" not in data:
        return False, []
    version = data["apiVersion"]
    if version in API_VERSIONS:
        return True, []
    newer = isinstance(version, str) and version.startswith("wsgate/")
    return True, [
        error(
            "WSG010",
            f"unknown apiVersion {_short(version)}: this wsgate reads {', '.join(API_VERSIONS)}",
            doc.value_at(("apiVersion",)),
            hint=("a newer wsgate wrote this format: upgrade wsgate, or keep the tree at " + API_VERSIONS[-1]
                  if newer else f"write `apiVersion: {API_VERSIONS[-1]}`, or leave it out"),
        )
    ]


# ---------------------------------------------------------------- schema


def check_schema(doc: Document, kind: str) -> list[Diagnostic]:
    if passes(kind, doc.data):
        return []
    out: list[Diagnostic] = []
    for err in validator(kind).iter_errors(doc.data):
        out += _translate(err, doc)
    return out


def _translate(err: SchemaError, doc: Document) -> list[Diagnostic]:
    path = tuple(err.absolute_path)
    where = describe_path(path)
    instance = err.instance
    v = err.validator
    if v == "additionalProperties" and isinstance(instance, dict):
        allowed = list(err.schema.get("properties", {}))
        out = []
        for key in instance:
            if key in allowed:
                continue
            out.append(
                error(
                    "WSG100",
                    f"unknown field '{key}'" + (f" in {where}" if path else ""),
                    doc.key_at(path + (key,)),
                    hint=suggestion(key, allowed, listing="allowed fields"),
                )
            )
        return out
    if v == "required":
        missing = [name for name in err.validator_value if isinstance(instance, dict) and name not in instance]
        # A misspelt required field is one problem: the unknown field's "did you mean" says it all.
        allowed = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
        unknown = [k for k in instance if k not in allowed] if isinstance(instance, dict) and allowed else []
        missing = [name for name in missing if not any(did_you_mean(k, [name]) == name for k in unknown)]
        return [
            error(
                "WSG102",
                f"missing field '{name}'" + (f" in {where}" if path else ""),
                doc.value_at(path),
                hint=_field_hint(err.schema, name),
            )
            for name in missing
        ]
    if v == "type":
        return [_type_error(path, instance, err.validator_value, doc)]
    if v in ("anyOf", "oneOf"):
        return _union_error(err, doc)
    if v == "enum" or v == "const":
        choices = [str(c) for c in (err.validator_value if v == "enum" else [err.validator_value])]
        if path and path[-1] == "type" and len(path) >= 2 and path[-3:-2] == ("policies",):
            return [
                error(
                    "WSG107",
                    f"unknown policy type {_short(instance)}",
                    doc.value_at(path),
                    hint=suggestion(str(instance), choices),
                )
            ]
        return [
            error(
                "WSG103",
                f"{where} must be one of {', '.join(choices)}, not {_short(instance)}",
                doc.value_at(path),
                hint=suggestion(str(instance), choices) if isinstance(instance, str) else "",
            )
        ]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bound = err.validator_value
        relation = {
            "minimum": f"at least {bound}",
            "exclusiveMinimum": f"greater than {bound}",
            "maximum": f"at most {bound}",
            "exclusiveMaximum": f"less than {bound}",
        }[v]
        return [error("WSG105", f"{where} must be {relation}, not {_short(instance)}", doc.value_at(path))]
    if v == "minItems":
        n = err.validator_value
        what = "must not be empty" if n == 1 else f"needs at least {n} entries"
        return [error("WSG106", f"{where} {what}", doc.value_at(path), hint=_field_description(err.schema))]
    if v == "pattern":
        return [
            error(
                "WSG103",
                f"{where} has an invalid value {_short(instance)}",
                doc.value_at(path),
                hint=_pattern_hint(path, err.validator_value),
            )
        ]
    return [error("WSG103", f"{where}: {err.message}", doc.value_at(path))]


def _field_description(schema: dict) -> str:
    return str(schema.get("description", "")) if isinstance(schema, dict) else ""


def _field_hint(schema: dict, name: str) -> str:
    prop = schema.get("properties", {}).get(name, {}) if isinstance(schema, dict) else {}
    desc = prop.get("description", "") if isinstance(prop, dict) else ""
    return f"add `{name}:`" + (f" ({desc.rstrip('.')})" if desc else "")


def _pattern_hint(path: tuple, pattern: str) -> str:
    last = path[-1] if path else ""
    if last == "name" or (len(path) >= 2 and path[-2] in ("ports", "apis")):
        return "names use letters, digits, '.', '_' and '-', and start with a letter or digit"
    if last == "path":
        return "a path starts with '/' and contains no spaces"
    if last == "callable":
        return "write it as `package.module:function`"
    if last == "env":
        return "an environment variable name: letters, digits and '_', not starting with a digit"
    return f"it must match the pattern {pattern}"


def _expected(types: Any) -> list[str]:
    return [types] if isinstance(types, str) else list(types)


def _type_error(path: tuple, instance: Any, expected: Any, doc: Document) -> Diagnostic:
    kinds = _expected(expected)
    want = " or ".join(_JSON_TYPE_NAMES.get(t, t) for t in kinds)
    got = json_type(instance)
    where = describe_path(path)
    hint = ""
    if ("integer" in kinds or "number" in kinds) and isinstance(instance, str) and _is_number(instance):
        hint = "remove the quotes: a number is written without them"
    elif "array" in kinds and got in ("string", "integer", "number", "boolean"):
        key = path[-1] if path else "field"
        hint = f"write a list: `{key}: [{instance}]`"
    elif "string" in kinds and got in ("integer", "number", "boolean", "date", "null"):
        hint = "YAML read this as " + (
            "a date" if got == "date" else f"{got}"
        ) + "; put the value in quotes to keep it text"
    elif "boolean" in kinds and isinstance(instance, str) and instance.lower() in _YAML_BOOLEAN_WORDS:
        hint = "YAML 1.2 reads only `true` and `false` as booleans"
    elif "object" in kinds and isinstance(instance, str) and path[-1:] == ("upstream",):
        hint = f"the upstream is a mapping: `upstream: {{endpoints: [{{url: {instance}}}]}}`"
    elif "object" in kinds and isinstance(instance, str) and len(path) >= 2 and path[-2] == "endpoints":
        hint = f"an endpoint is a mapping: `- url: {instance}`"
    elif "object" in kinds and isinstance(instance, str) and len(path) >= 2 and path[-2] == "policies":
        hint = f"a policy is a mapping: `- type: {instance}`"
    elif "object" in kinds and got != "mapping":
        hint = "this field takes a mapping (indented `key: value` lines)"
    return error("WSG101", f"{where} must be {want}, not {got} ({_short(instance)})", doc.value_at(path), hint=hint)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _union_error(err: SchemaError, doc: Document) -> list[Diagnostic]:
    """Report the errors of the branch that matches the value's type, not of every branch."""
    branches: dict[int, list[SchemaError]] = defaultdict(list)
    for sub in err.context or ():
        branches[sub.relative_schema_path[0]].append(sub)
    fitting = [
        errs
        for errs in branches.values()
        if not any(e.validator == "type" and len(e.relative_path) == 0 for e in errs)
    ]
    if len(fitting) == 1:
        out: list[Diagnostic] = []
        for sub in fitting[0]:
            out += _translate(sub, doc)
        return out
    types: list[str] = []
    for branch in err.validator_value:
        t = branch.get("type") if isinstance(branch, dict) else None
        if t is None and isinstance(branch, dict) and "$ref" in branch:
            t = "object"
        for name in _expected(t) if t else []:
            if name not in types:
                types.append(name)
    path = tuple(err.absolute_path)
    if types:
        return [_type_error(path, err.instance, types, doc)]
    return [error("WSG103", f"{describe_path(path)}: {err.message}", doc.value_at(path))]


# ----------------------------------------------------------------- model


def check_model(doc: Document, kind: str) -> tuple[BaseModel | None, list[Diagnostic]]:
    try:
        return KINDS[kind].model_validate(doc.data), []
    except ValidationError as exc:
        out = []
        for item in exc.errors(include_url=False):
            path = _data_path(doc.data, item.get("loc", ()))
            message = item.get("msg", "invalid value").removeprefix("Value error, ")
            path = _named_field(doc.data, path, message)
            out.append(error("WSG108", f"{describe_path(path)}: {message}", doc.value_at(path)))
        return None, out


# A model validator's message names the field it refuses first, in backticks (`strip_prefix` needs ...):
# pydantic locates such an error at the mapping, so the diagnostic is moved onto that field when it is written.
_FIRST_FIELD = re.compile(r"^`([A-Za-z_][\w]*)(?::[^`]*)?`")


def _named_field(data: Any, path: tuple, message: str) -> tuple:
    match = _FIRST_FIELD.match(message)
    node = data
    for part in path:
        node = node[part]
    if match is None or not isinstance(node, dict) or match.group(1) not in node:
        return path
    return path + (match.group(1),)


def _data_path(data: Any, loc: Sequence[Any]) -> tuple:
    """Map a pydantic error location onto the document, skipping union tags that are not keys."""
    path: list[Any] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if isinstance(node, dict) and part in node or in_list:
            node = node[part]
            path.append(part)
    return tuple(path)


# ------------------------------------------------------ document warnings

_NUMBER_TOKEN = re.compile(r"[-+]?[0-9][0-9_.eE+-]*")


def check_lossy_numbers(doc: Document, kind: str, lines: list[str]) -> list[Diagnostic]:
    """`version: 1.10` is the float 1.1 in YAML: warn when a label loses digits on the way."""
    if kind != "API" or not isinstance(doc.data, dict):
        return []
    value = doc.data.get("version")
    if not isinstance(value, float):
        return []
    loc = doc.value_at(("version",))
    line = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
    match = _NUMBER_TOKEN.match(line[loc.col - 1 :])
    if match and match.group(0) != str(value):
        return [
            warning(
                "WSG210",
                f"version {match.group(0)} is read by YAML as the number {value}",
                loc,
                hint=f'quote it: `version: "{match.group(0)}"`',
            )
        ]
    return []
