"""EchoServer rules: each context declared once."""

from __future__ import annotations

from ..diagnostics import Related, error
from .base import RuleContext, rule


@rule
def echo_contexts(ctx: RuleContext) -> None:
    for e in ctx.of("EchoServer"):
        seen: dict[str, int] = {}
        for i, c in enumerate(e.model.contexts):
            if c.path in seen:
                ctx.out.append(
                    error(
                        "WSG124",
                        f"echo context {c.path} is declared twice",
                        e.doc.value_at(("contexts", i, "path")),
                        related=(Related(e.doc.value_at(("contexts", seen[c.path], "path")), "first one here"),),
                        hint="delete one of them",
                    )
                )
            else:
                seen[c.path] = i
