"""API rules about declared messages: their schemas and the validate-messages policy that reads them."""

from __future__ import annotations

from ..diagnostics import error, warning
from .base import RuleContext, rule


@rule
def message_schemas(ctx: RuleContext) -> None:
    """Every message schema is a valid JSON Schema and stands alone (each `$ref` resolves inside it)."""
    for e in ctx.of("API"):
        for i, message in enumerate(e.model.messages):
            schema = message.json_schema
            if schema is None:
                continue
            from ..message_schemas import schema_problems, unresolved_refs  # jsonschema: only when there are schemas

            at = ("messages", i, "schema")
            problems = schema_problems(schema)
            for path, problem in problems:
                ctx.out.append(
                    error(
                        "WSG141",
                        f"the schema of message '{message.name}' is not a valid JSON Schema: {problem}",
                        e.doc.value_at(at + path),
                        hint="fix it against its dialect's meta-schema (`$schema`, draft 2020-12 by default)",
                    )
                )
            if problems:
                continue
            for path, ref in unresolved_refs(schema):
                ctx.out.append(
                    error(
                        "WSG142",
                        f"the schema of message '{message.name}' refers to '{ref}', which is not inside it",
                        e.doc.value_at(at + path),
                        hint="bundle the referenced schema under `$defs` and point at `#/$defs/NAME` "
                        "(`wsgate import` does this for AsyncAPI documents)",
                    )
                )


@rule
def message_validation(ctx: RuleContext) -> None:
    """Validation switched on for a direction with no message declared in it refuses every message."""
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "validate-messages":
                continue
            for direction in ("client", "server"):
                mode = getattr(p, direction)
                if mode == "off" or any(m.origin == direction for m in e.model.messages):
                    continue
                ctx.out.append(
                    warning(
                        "WSG240",
                        f"validate-messages is `{mode}` for {direction} messages, but API '{e.name}' declares "
                        f"none from the {direction}: every one is a violation",
                        e.doc.value_at(("policies", i, direction)),
                        hint=f"declare the {direction}'s messages under `messages` (origin: {direction}), "
                        f"or set `{direction}: off`",
                    )
                )
