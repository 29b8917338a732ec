"""Rules about names across kinds: one resource per name, one Gateway resource."""

from __future__ import annotations

from ..diagnostics import Related, error
from .base import Entry, RuleContext, rule


@rule
def duplicate_names(ctx: RuleContext) -> None:
    first: dict[tuple[str, str], Entry] = {}
    for e in ctx.entries:
        key = (e.kind, e.name)
        if key in first:
            ctx.out.append(
                error(
                    "WSG110",
                    f"{e.kind} '{e.name}' is defined twice",
                    e.doc.value_at(("name",)),
                    related=(Related(first[key].doc.value_at(("name",)), "first defined here"),),
                    hint="names are unique per kind; rename or delete one of them",
                )
            )
        else:
            first[key] = e


@rule
def one_gateway(ctx: RuleContext) -> None:
    gateways = ctx.of("Gateway")
    for e in gateways[1:]:
        if e.name == gateways[0].name:
            continue  # already reported as a duplicate name
        ctx.out.append(
            error(
                "WSG120",
                f"a second Gateway resource '{e.name}'",
                e.doc.value_at(("kind",)),
                related=(Related(gateways[0].doc.value_at(("kind",)), "the first Gateway resource"),),
                hint="process-wide settings live in one Gateway resource; merge them",
            )
        )
