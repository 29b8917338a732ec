"""Organisation rules: the Gateway resource's `requirements`, a declared list of what every API must have (an
identify policy, only TLS ports, invocation logs, a `team` label), checked by `validate` as errors naming the rule.

One error per API and rule (WSG135), at the API's part that breaks it, with a note at the rule: a team reads
which house rule its API breaks, where, and what would satisfy it.
"""

from __future__ import annotations

from typing import Any

from ..diagnostics import Related, error
from .base import Entry, RuleContext, rule


@rule
def organisation_requirements(ctx: RuleContext) -> None:
    gateways = ctx.of("Gateway")
    if not gateways:
        return
    g = gateways[0]
    ports = ctx.firsts("Port")
    for index, requirement in enumerate(g.model.requirements):
        note = Related(g.doc.value_at(("requirements", index, "name")), f"requirement '{requirement.name}'")
        for e in ctx.of("API"):
            if any(e.model.labels.get(k) != v for k, v in requirement.selector.items()):
                continue
            for problem, at, hint in _broken(e, requirement, ports):
                ctx.out.append(error("WSG135", f"API '{e.name}' breaks requirement '{requirement.name}': {problem}",
                                     at, related=(note,), hint=hint))


def _broken(e: Entry, requirement: Any, ports: dict[str, Entry]) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    have = {p.type for p in e.model.policies}
    missing = [t for t in requirement.policies if t not in have]
    if missing:
        at = e.doc.key_at(("policies",)) if "policies" in e.doc.data else e.doc.value_at(("name",))
        out.append((f"no {', '.join(missing)} polic{'ies' if len(missing) > 1 else 'y'}", at,
                    "add " + ", ".join(f"`- type: {t}`" for t in missing) + " to `policies`"))
    if requirement.tls_ports:
        plain = [(i, n) for i, n in enumerate(e.model.ports) if n in ports and ports[n].model.tls is None]
        for i, name in plain:
            out.append((f"port '{name}' serves plain ws://", e.doc.value_at(("ports", i)),
                        "serve the API on a Port with `tls:` only"))
    absent = [k for k in requirement.labels if k not in e.model.labels]
    if absent:
        at = e.doc.key_at(("labels",)) if "labels" in e.doc.data else e.doc.value_at(("name",))
        out.append((f"no label {', '.join(absent)}", at, "add `labels: {" + ", ".join(f"{k}: ..." for k in absent)
                    + "}`"))
    limit = requirement.max_message_size
    size = e.model.limits.max_message_size
    if limit is not None and (size is None or size > limit):
        at = e.doc.value_at(("limits", "max_message_size"))
        out.append((f"limits.max_message_size is {size if size is not None else 'unlimited'}, above {limit}", at,
                    f"set `limits: {{max_message_size: {limit}}}` or lower"))
    return out
