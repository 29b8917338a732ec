"""Matching messages against an API's definitions: the part of validate-messages that decides, with no I/O.

A message matches when any definition of its direction (``origin``) does: the
same type (text or binary), within the definition's ``max_size``, and for a
definition with a schema, a JSON text payload the schema accepts. Schemas are
compiled once, when the matcher is built (every reload). With a
``discriminator`` field, a JSON message's value for it picks the definitions
whose schema fixes that value (``const`` or a one-value ``enum``): one lookup,
not a scan; definitions that fix no value are tried as well.

A text payload the matcher cannot read is a ``schema`` violation like any
other: not JSON, JSON nested deeper than the parser goes (Python's recursion
limit, ~1,000 levels), or an object with a duplicate key. Python keeps the last
value of a duplicate key while other parsers keep the first, and the message is
forwarded as the text it came in as: an upstream that keeps the first would act
on a value nobody validated. A definition without a schema still accepts any
text. Used on the event loop and in the validation worker process alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.message_schemas import CompiledSchema
from ..config.models import MessageDefinition
from .base import wire_size


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: the object as a dict, unless a key repeats (one dict and one len per object)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return document


# Takes the payload of a text message, a str (Message: "str when is_text").
_loads: Callable[[str | bytes], Any] = json.JSONDecoder(object_pairs_hook=_unique_object).decode  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # "type", "size" or "schema"
    detail: str  # one sentence for people; never the payload


class _Definition:
    __slots__ = ("name", "is_text", "max_size", "schema")

    def __init__(self, model: MessageDefinition) -> None:
        self.name = model.name
        self.is_text = model.type == "text"
        self.max_size = model.max_size
        self.schema = CompiledSchema(model.json_schema) if model.json_schema is not None and self.is_text else None


def _fixed_value(schema: dict[str, Any] | None, field: str) -> tuple[bool, Any]:
    """(True, value) when ``schema`` fixes ``field`` of a JSON object to one value."""
    prop = ((schema or {}).get("properties") or {}).get(field)
    if isinstance(prop, dict):
        if "const" in prop:
            return True, prop["const"]
        enum = prop.get("enum")
        if isinstance(enum, list) and len(enum) == 1:
            return True, enum[0]
    return False, None


class Matcher:
    """The definitions of one direction; ``check`` says why a message matches none of them (or None)."""

    def __init__(self, definitions: Sequence[MessageDefinition], discriminator: str | None = None) -> None:
        compiled = [(_Definition(d), d.json_schema) for d in definitions]
        self.text = [d for d, _ in compiled if d.is_text]
        self.binary = [d for d, _ in compiled if not d.is_text]
        self.discriminator = discriminator
        # A text definition with no size limit and no schema accepts every text message.
        self.any_text = any(d.max_size is None and d.schema is None for d in self.text)
        # Shortcuts decided once: most APIs have no max_size anywhere, or a schema on every text definition.
        self.sized = any(d.max_size is not None for d, _ in compiled)
        self.schemaless_text = any(d.schema is None for d in self.text)
        # Whether a text message may be parsed as JSON: what is worth checking off the event loop.
        self.parses = not self.any_text and (bool(self.discriminator and self.text)
                                             or any(d.schema is not None for d in self.text))
        self.by_value: dict[Any, list[_Definition]] = {}
        self.unkeyed: list[_Definition] = []
        if discriminator:
            for d, schema in compiled:
                if not d.is_text:
                    continue
                fixed, value = _fixed_value(schema, discriminator)
                if fixed and _hashable(value):
                    self.by_value.setdefault(value, []).append(d)
                else:
                    self.unkeyed.append(d)

    def check(self, is_text: bool, payload: str | bytes) -> Violation | None:
        if is_text:
            if self.any_text:
                return None
            definitions = self.text
        else:
            definitions = self.binary
        kind = "text" if is_text else "binary"
        if not definitions:
            return Violation("type", f"no {kind} message is declared in this direction")
        document: Any = _UNPARSED
        if is_text and self.discriminator:
            try:  # inlined (here and below): a function call is a tenth of a small message's parse
                document = _loads(payload)
            except ValueError as exc:
                document = _unparsed(exc)
            except RecursionError:
                document = _TOO_DEEP
            if type(document) is dict:
                value = document.get(self.discriminator)
                keyed = self.by_value.get(value, _NONE) if _hashable(value) else _NONE
                definitions = [*keyed, *self.unkeyed] if self.unkeyed else keyed
                if not definitions:
                    return Violation("schema", f"no message is declared with {self.discriminator} = {_short(value)}")
        fitting = definitions
        if self.sized:
            size = wire_size(is_text, payload)
            fitting = [d for d in definitions if d.max_size is None or size <= d.max_size]
            if not fitting:
                largest = max(d.max_size or 0 for d in definitions)
                return Violation("size", f"{size} bytes, over the largest declared {kind} message ({largest} bytes)")
        if not is_text or (self.schemaless_text and any(d.schema is None for d in fitting)):
            return None
        if document is _UNPARSED:
            try:
                document = _loads(payload)
            except ValueError as exc:
                document = _unparsed(exc)
            except RecursionError:
                document = _TOO_DEEP
        if document is _NOT_JSON:
            return Violation("schema", "not JSON, and every declared text message has a JSON Schema")
        if type(document) is Violation:
            return document
        try:
            for d in fitting:
                if d.schema.is_valid(document):  # type: ignore[union-attr]
                    return None
            first = fitting[0]
            explained = first.schema.explain(document)  # type: ignore[union-attr]
        except RecursionError:  # jsonschema (without jsonschema-rs) walks a deep document recursively
            return Violation("schema", "JSON nested too deep to check")
        return Violation("schema", f"not a valid '{first.name}' message {explained}")


_NONE: list[_Definition] = []  # never mutated
_UNPARSED = object()
_NOT_JSON = object()


_TOO_DEEP = Violation("schema", "JSON nested too deep to check")


def _unparsed(exc: ValueError) -> Any:
    """What a failed parse leaves: the Violation of a JSON text no schema may read (a duplicate key), or
    ``_NOT_JSON``. A definition without a schema still accepts it, as any text."""
    if isinstance(exc, DuplicateKey):
        return Violation("schema", f"JSON object with a duplicate key {_short(exc.key)}")
    return _NOT_JSON


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
