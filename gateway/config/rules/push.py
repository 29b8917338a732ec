"""Rules of push (docs/push.md): the APIs' ``push`` blocks and the Gateway's push listener."""

from __future__ import annotations

from collections.abc import Mapping

from ..diagnostics import Diagnostic, Related, error, warning
from ..models import SHA256_PATTERN, EnvKey, is_loopback
from .base import Entry, RuleContext, rule


@rule
def push_blocks(ctx: RuleContext) -> None:
    ctx.out += _push(ctx.entries, ctx.env)


def _push(entries: list[Entry], env: Mapping[str, str]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    gateways = [e for e in entries if e.kind == "Gateway"]
    listener = gateways[0].model.push if gateways else None
    for e in entries:
        if e.kind == "API" and e.model.push is not None:
            out += _api(e, env, listener_on=listener is not None and listener.enabled)
    for e in gateways[:1]:
        if listener is not None and listener.tls is None and not is_loopback(listener.host):
            out.append(warning("WSG281", "push listener beyond loopback without TLS: backends' keys travel in "
                               "clear", e.doc.value_at(("push", "host")),
                               hint="add `push.tls` (with `client_certificates` for mTLS), or bind it to 127.0.0.1"))
    return out


def _api(e: Entry, env: Mapping[str, str], listener_on: bool) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    push = e.model.push
    if not listener_on:
        out.append(warning("WSG282", f"API '{e.name}' has `push` but the Gateway has no enabled push listener",
                           e.doc.key_at(("push",)),
                           hint="add `push: {host: 127.0.0.1, port: 9910}` to the Gateway resource"))
    if not push.credentials:
        out.append(warning("WSG283", f"API '{e.name}' has `push` without credentials: no backend can use it",
                           e.doc.key_at(("push",)), hint="add `push.credentials` with a key from `{env: ...}`"))
    seen: dict[str, int] = {}
    for i, credential in enumerate(push.credentials):
        at = ("push", "credentials", i)
        if credential.name in seen:
            out.append(error("WSG136", f"push credential '{credential.name}' is defined twice in API '{e.name}'",
                             e.doc.value_at(at + ("name",)),
                             related=(Related(e.doc.value_at(("push", "credentials", seen[credential.name], "name")),
                                              "first defined here"),),
                             hint="names say which backend called in the logs and the plan: give each its own"))
        seen.setdefault(credential.name, i)
        key = credential.key
        if isinstance(key, EnvKey):
            if key.env not in env:
                out.append(warning("WSG203", f"environment variable {key.env} is not set",
                                   e.doc.value_at(at + ("key", "env")),
                                   hint=f"the push credential is unusable until the gateway runs with {key.env} set"))
        elif key.startswith("sha256:") and not SHA256_PATTERN.match(key):
            out.append(error("WSG125", "malformed key hash: expected 'sha256:' and 64 lowercase hex digits",
                             e.doc.value_at(at + ("key",)), hint="compute it with `printf %s 'KEY' | sha256sum`"))
        elif not key.startswith("sha256:"):
            out.append(warning("WSG280", "push credential in plain text", e.doc.value_at(at + ("key",)),
                               at_credential=True, hint="anyone who can read this file can push to this API's "
                               "clients; write `sha256:<hash>` or `{env: VARIABLE}`"))
    identify = next((p for p in e.model.policies if p.type == "identify"), None)
    for i, group in enumerate(push.groups):
        source_at = ("push", "groups", i, "from")
        if group.source == "claim" and (identify is None or "jwt" not in identify.by):
            out.append(error("WSG137", f"group rule reads JWT claim '{group.name}' but API '{e.name}' does not "
                             "identify clients by JWT", e.doc.value_at(source_at),
                             hint="add `jwt` to the identify policy's `by`, or read a query parameter or header"))
        elif group.source == "application" and identify is None:
            out.append(warning("WSG284", f"group rule reads the application but API '{e.name}' has no identify "
                               "policy: no connection joins", e.doc.value_at(source_at),
                               hint="add an identify policy, or read a query parameter or header"))
    return out
