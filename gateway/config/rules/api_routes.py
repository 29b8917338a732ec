"""API rules about where an API is served: its ports, its path, and routes two APIs both claim."""

from __future__ import annotations

from ..diagnostics import Related, error, warning
from .base import Entry, RuleContext, listed_once, rule, unknown_reference


@rule
def api_port_references(ctx: RuleContext) -> None:
    ports = ctx.firsts("Port")
    known = set(ports) | ctx.known.get("Port", set())
    for e in ctx.of("API"):
        for name, loc in listed_once(ctx, e, "ports", "port"):
            if name not in known:
                unknown_reference(ctx, "WSG112", f"API '{e.name}' refers to an unknown port '{name}'", loc, name,
                                  known, "declared ports", "declare a Port resource with this name")
            elif name in ports and not ports[name].model.enabled:
                ctx.out.append(
                    warning(
                        "WSG202",
                        f"API '{e.name}' is on port '{name}', which is disabled",
                        loc,
                        related=(Related(ports[name].doc.value_at(("enabled",)), "disabled here"),),
                        hint="the API is unreachable through this port; enable it or remove it from `ports`",
                    )
                )




@rule
def api_paths(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        path = e.model.path
        loc = e.doc.value_at(("path",))
        bad = next((c for c in "?#" if c in path), None)
        if bad:
            ctx.out.append(
                error(
                    "WSG122",
                    f"API path contains '{bad}'",
                    ctx.column_of(loc, path, path.index(bad)),
                    hint="the path is matched without the query string; remove everything from '" + bad + "' on",
                )
            )


@rule
def route_claims(ctx: RuleContext) -> None:
    """Two APIs claiming the same route: port, host (or any host), match kind, path and header/query conditions.

    Everything else is ordered, not ambiguous: a claimed host before any host,
    an exact path before a prefix, the longest prefix first.
    """
    served: dict[tuple[str, str | None, str, str, tuple[tuple[str, str, str], ...]], Entry] = {}
    reported: set[tuple[str, str]] = set()  # one error per pair of APIs, however many ports and hosts they share
    for e in ctx.of("API"):
        model = e.model
        for port in dict.fromkeys(model.ports):
            claims: list[str | None] = [*model.hosts] or [None]
            for host in dict.fromkeys(claims):
                key = (port, host, model.match, model.path, model.match_conditions())
                first = served.setdefault(key, e)
                if first.name == e.name or (first.name, e.name) in reported:
                    continue
                reported.add((first.name, e.name))
                what = f"{model.path}{' (prefix)' if model.match == 'prefix' else ''} on port '{port}'"
                where = f" for host {host}" if host else ""
                if model.match_conditions():  # the same header/query conditions: they always match the same requests
                    where += " with the same match_headers and match_query"
                ctx.out.append(
                    error(
                        "WSG111",
                        f"APIs '{first.name}' and '{e.name}' both claim {what}{where}",
                        e.doc.value_at(("path",)),
                        related=(Related(first.doc.value_at(("path",)), f"'{first.name}' claims it here"),),
                        hint="give one of them another path, port, `hosts` entry or `match_headers`/`match_query`",
                    )
                )
