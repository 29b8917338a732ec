"""JSON Schemas of message definitions: checking them (validate) and compiling them (the policy, once per reload).

A message schema must stand alone: every ``$ref`` resolves inside the schema
itself (``#/$defs/...``, ``#/definitions/...`` or any JSON pointer into it).
Nothing is fetched over the network. The dialect is the schema's ``$schema``,
draft 2020-12 when it names none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

Path = tuple[str | int, ...]
ROOT_URI = "urn:wsgate:message-schema"  # the base every message schema's references resolve against


def _validator_class(schema: dict[str, Any]) -> Any:
    return validators.validator_for(schema, default=Draft202012Validator)


def schema_problems(schema: dict[str, Any]) -> list[tuple[Path, str]]:
    """Where ``schema`` breaks its dialect's meta-schema, as (path inside the schema, message), best first."""
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        return [(("$schema",), f"{dialect!r} is not a dialect URI")]
    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError as exc:
        return [(tuple(exc.path), exc.message)]
    except Exception as exc:  # jsonschema failing on a schema it could not even read: still a problem to show
        return [((), f"{type(exc).__name__}: {exc}")]
    return []


DATA_KEYWORDS = frozenset({"const", "enum", "examples", "example", "default"})  # values, not schemas
# Keywords whose value maps names to schemas: a property called `default` is a schema, not a value.
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _refs(node: Any, path: Path = (), names_map: bool = False) -> Iterator[tuple[Path, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if names_map:
                yield from _refs(value, path + (key,))
            elif key == "$ref" and isinstance(value, str):
                yield path + (key,), value
            elif key not in DATA_KEYWORDS:
                yield from _refs(value, path + (key,), key in SCHEMA_MAPS)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, path + (i,))


def unresolved_refs(schema: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every ``$ref`` in ``schema`` that does not resolve inside it, as (path of the ``$ref``, its value)."""
    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    resolver = Registry().with_resource(ROOT_URI, resource).resolver(base_uri=ROOT_URI)
    missing = []
    for path, ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except Exception:  # Unresolvable, or a reference too malformed to look up
            missing.append((path, ref))
    return missing


_compiled: Any
try:  # the `fast-validation` extra
    import jsonschema_rs as _compiled
except ImportError:  # pragma: no cover - depends on the installed extras
    _compiled = None


class CompiledSchema:
    """One message schema, ready to check parsed JSON: ``is_valid`` per message, ``explain`` only on a violation.

    ``is_valid`` is jsonschema-rs's compiled validator when that is installed, else jsonschema's; ``explain``
    always uses jsonschema, so error texts are the same either way.
    """

    __slots__ = ("is_valid", "_validator")

    def __init__(self, schema: dict[str, Any], *, compiled: bool = True) -> None:
        cls = _validator_class(schema)
        resource = Resource.from_contents(schema, default_specification=DRAFT202012)
        self._validator = cls(schema, registry=Registry().with_resource(ROOT_URI, resource))
        self.is_valid: Callable[[Any], bool] = self._validator.is_valid
        if compiled and _compiled is not None:
            # A schema it cannot compile (validate checked it with jsonschema) keeps jsonschema's validator.
            with contextlib.suppress(Exception):
                self.is_valid = _compiled.validator_for(schema).is_valid

    def explain(self, instance: Any) -> str:
        """The most relevant error, e.g. ``at /price: 'x' is not of type 'number'``."""
        from jsonschema.exceptions import best_match

        error = best_match(self._validator.iter_errors(instance))
        if error is None:
            return "valid"
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        return f"at {where}: {error.message}"
