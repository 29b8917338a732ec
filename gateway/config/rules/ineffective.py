"""Settings that can never take effect: a field another setting makes meaningless, a path character taken
literally, a probe timeout its own interval cuts short, a per-application count nothing identifies.

Each passes the schema and the models (the field is allowed on its own) and would be silently ignored at run
time, so each is a located warning at the ignored field, with a note at the setting that overrides it. Only
fields the operator wrote count (pydantic's ``model_fields_set``): a default is never "ignored".
"""

from __future__ import annotations

import re
from typing import Any

from ..diagnostics import Related, error, warning
from ..tree import Location
from .base import Entry, RuleContext, rule, written_endpoints


def _written(model: Any, name: str) -> bool:
    return name in getattr(model, "model_fields_set", ())


def _ignored(ctx: RuleContext, e: Entry, at: tuple, summary: str, because: tuple, why: str, hint: str) -> None:
    """WSG230 at the key of ``at``, with a note at ``because`` (the setting that makes it meaningless)."""
    ctx.out.append(warning("WSG230", summary, e.doc.key_at(at),
                           related=(Related(e.doc.value_at(because), why),), hint=hint))


# ------------------------------------------------------------------ paths

# Characters operators write meaning "anything": routes and contexts are matched literally (or by prefix).
_GLOB = re.compile(r"[*\[\]{}]")


def _glob(ctx: RuleContext, loc: Location, path: str, what: str, hint: str) -> None:
    found = _GLOB.search(path)
    if found is None:
        return
    ctx.out.append(warning(
        "WSG217", f"{what} {path} contains '{found.group()}', which is matched literally, not as a wildcard",
        ctx.column_of(loc, path, found.start()), hint=hint))


@rule
def glob_paths(ctx: RuleContext) -> None:
    """`/websocket/EchoWS/*` serves only a path that ends in a star; a prefix route is how to serve a subtree."""
    for e in ctx.of("API"):
        path = e.model.path
        found = _GLOB.search(path)
        if found is None:
            continue
        stem = path[: found.start()].rstrip("/") or "/"
        how = ("the prefix already covers everything under it" if e.model.match == "prefix"
               else "for everything under it add `match: prefix`")
        _glob(ctx, e.doc.value_at(("path",)), path, "API path",
              f"write `path: {stem}`: {how} (`{stem}` serves `{stem}/a/b`, not `{stem}x`)")
    for e in ctx.of("EchoServer"):
        for i, c in enumerate(e.model.contexts):
            _glob(ctx, e.doc.value_at(("contexts", i, "path")), c.path, "echo context",
                  "an echo context serves exactly its path; declare each path the clients use")


# ---------------------------------------------------------- health checks


@rule
def health_check_timing(ctx: RuleContext) -> None:
    """A probe timeout as long as its interval: a hanging endpoint is probed back to back, never at the interval."""
    for e in ctx.of("API"):
        hc = e.model.upstream.health_check
        if hc is None or hc.timeout < hc.interval:
            continue
        at = ("upstream", "health_check")
        here, there = ("timeout", "interval") if _written(hc, "timeout") or not _written(hc, "interval") \
            else ("interval", "timeout")
        ctx.out.append(warning(
            "WSG218", f"health-check timeout {hc.timeout:g}s is not shorter than its interval {hc.interval:g}s",
            e.doc.value_at(at + (here,)),
            related=(Related(e.doc.value_at(at + (there,)), f"the {there}"),),
            hint="a probe waits for its timeout and then the interval: keep `timeout` well below `interval` "
                 "(e.g. timeout 2, interval 5)"))


# ----------------------------------------------------------------- upstream


def _routing(e: Entry) -> tuple[int | None, Any]:
    return next(((i, p) for i, p in enumerate(e.model.policies) if p.type == "routing"), (None, None))


@rule
def routing_settings(ctx: RuleContext) -> None:
    """Hash settings under another strategy or another hash input; weights no strategy reads."""
    for e in ctx.of("API"):
        index, policy = _routing(e)
        endpoints = e.model.upstream.endpoints
        strategy = policy.strategy if policy is not None else "straight-through"
        if policy is not None:
            at: tuple = ("policies", index)
            strategy_at = at + ("strategy",) if _written(policy, "strategy") else at + ("type",)
            hashing = strategy == "consistent-hash"
            if _written(policy, "hash_on") and not hashing:
                _ignored(ctx, e, at + ("hash_on",), f"`hash_on` is read only by consistent-hash, not {strategy}",
                         strategy_at, f"the strategy is {strategy}",
                         "set `strategy: consistent-hash`, or delete `hash_on`")
            elif policy.hash_key is not None and (not hashing or policy.hash_on not in ("header", "query")):
                because = at + ("hash_on",) if hashing and _written(policy, "hash_on") else strategy_at
                what = f"the hash is on {policy.hash_on}" if hashing else f"the strategy is {strategy}"
                _ignored(ctx, e, at + ("hash_key",), f"`hash_key` is never read: {what}", because, what,
                         "set `hash_on: header` or `hash_on: query` to hash that name, or delete `hash_key`")
        weighted = [i for i, ep in enumerate(endpoints) if _written(ep, "weight") and ep.weight != 1]
        single = written_endpoints(e) == 1
        if weighted and (strategy == "straight-through" or single):
            because = ("upstream", "endpoints") if single else (
                ("policies", index, "strategy") if policy is not None else ("upstream", "endpoints"))
            why = "the only endpoint" if single else "straight-through takes the first healthy endpoint"
            _ignored(ctx, e, ("upstream", "endpoints", weighted[0], "weight"),
                     f"endpoint weights are never read: {why}", because, why,
                     "weights share connections under round-robin, least-connections or consistent-hash routing")


@rule
def upstream_settings(ctx: RuleContext) -> None:
    """Failover with nowhere to fail over to, passive-check tuning with passive checks off, keepalive timeout
    without pings, TLS settings on an upstream that never speaks TLS."""
    for e in ctx.of("API"):
        up = e.model.upstream
        if written_endpoints(e) == 1 and _written(up.failover, "retries") and up.failover.retries > 0:
            _ignored(ctx, e, ("upstream", "failover", "retries"),
                     f"failover retries {up.failover.retries} with a single endpoint: there is no other to try",
                     ("upstream", "endpoints"), "the only endpoint",
                     "add endpoints, or delete `failover.retries`")
        if not up.passive.enabled:
            for name in ("failures", "cool_down"):
                if _written(up.passive, name):
                    _ignored(ctx, e, ("upstream", "passive", name), f"`passive.{name}` is set but passive checks "
                             "are off", ("upstream", "passive", "enabled"), "turned off here",
                             "delete it, or set `passive.enabled: true`")
        if e.model.keepalive.interval is None and _written(e.model.keepalive, "timeout"):
            _ignored(ctx, e, ("keepalive", "timeout"), "`keepalive.timeout` waits for a pong, but pings are off",
                     ("keepalive", "interval"), "pings turned off here",
                     "set `keepalive.interval`, or delete `keepalive.timeout`")
        speaks_tls = any(ep.url.lower().startswith("wss:") for ep in up.endpoints)
        if up.tls.ca_file is not None and not up.tls.verify and speaks_tls:  # on ws:// only: WSG208
            _ignored(ctx, e, ("upstream", "tls", "ca_file"), "`ca_file` verifies nothing: verification is off",
                     ("upstream", "tls", "verify"), "turned off here",
                     "delete `verify: false` (the CA file is what makes verification work), or delete `ca_file`")
        if speaks_tls or not up.endpoints:
            continue
        for name in ("server_hostname", "cert", "verify"):
            if _written(up.tls, name):  # ca_file: upstream_urls says so already (WSG208)
                ctx.out.append(warning(
                    "WSG208", f"`upstream.tls.{name}` on ws:// endpoints is never used",
                    e.doc.key_at(("upstream", "tls", name)),
                    related=(Related(e.doc.value_at(("upstream", "endpoints", 0, "url")), "a ws:// endpoint"),),
                    hint="use wss:// or remove it"))
                break


# ------------------------------------------------------------------ policies


def _identify(e: Entry) -> tuple[int | None, Any]:
    return next(((i, p) for i, p in enumerate(e.model.policies) if p.type == "identify"), (None, None))


@rule
def policy_settings(ctx: RuleContext) -> None:
    """Identify options for methods `by` does not list, state-error handling without shared state,
    log options that store nothing, validation options no direction enforces."""
    gateways = ctx.of("Gateway")
    shared = bool(gateways) and gateways[0].model.state.backend == "redis"
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            at: tuple = ("policies", i)
            if p.type == "identify":
                for name, method in (("api_key_header", "api_key"), ("hostname_lookup_timeout", "hostname")):
                    if _written(p, name) and method not in p.by:
                        _ignored(ctx, e, at + (name,), f"`{name}` is read only when `by` lists {method}",
                                 at + ("by",), f"`by` lists {', '.join(p.by)}",
                                 f"add {method} to `by`, or delete `{name}`")
            elif p.type == "throttle" and _written(p, "on_state_error") and not shared:
                because = ("state", "backend") if gateways else at + ("type",)
                if gateways:
                    ctx.out.append(warning(
                        "WSG230", "`on_state_error` applies to a shared state backend, but counts are kept in "
                        "memory", e.doc.key_at(at + ("on_state_error",)),
                        related=(Related(gateways[0].doc.value_at(because), "the state backend"),),
                        hint="set `state: {backend: redis, ...}` in the Gateway resource, or delete it"))
                else:
                    _ignored(ctx, e, at + ("on_state_error",), "`on_state_error` applies to a shared state "
                             "backend, but no Gateway resource declares one (counts are kept in memory)",
                             because, "this throttle",
                             "declare `state: {backend: redis, ...}` in a Gateway resource, or delete it")
            elif p.type == "log-invocation":
                _log_settings(ctx, e, at, p)
            elif p.type == "validate-messages":
                if _written(p, "on_violation") and "enforce" not in (p.client, p.server):
                    _ignored(ctx, e, at + ("on_violation",), "`on_violation` applies to `enforce`, and no "
                             "direction enforces", at + ("client",), f"client: {p.client}, server: {p.server}",
                             "set `client: enforce` (or `server`), or delete `on_violation`")
                if p.discriminator is not None and not any(
                        _fixes(m.json_schema, p.discriminator) for m in e.model.messages):
                    _ignored(ctx, e, at + ("discriminator",), f"no message schema fixes `{p.discriminator}` "
                             "(a `const` or one-value `enum`): the discriminator picks nothing",
                             ("messages",) if e.model.messages else at + ("type",), "the message definitions",
                             f"give each schema `properties: {{{p.discriminator}: {{const: NAME}}}}`, "
                             "or delete `discriminator`")


def _log_settings(ctx: RuleContext, e: Entry, at: tuple, p: Any) -> None:
    if p.frequency == "on-failure":
        for name in ("store_client_messages", "store_server_messages"):
            if getattr(p, name):
                _ignored(ctx, e, at + (name,), f"`{name}` stores nothing under `frequency: on-failure`: message "
                         "records are never written there", at + ("frequency",), "on-failure here",
                         "set `frequency: always` to keep messages, or delete it")
    if not (p.store_client_messages or p.store_server_messages):
        for name in ("compress", "max_payload_bytes", "mask"):
            if _written(p, name) and (name != "compress" or p.compress):
                _ignored(ctx, e, at + (name,), f"`{name}` shapes stored payloads, but no message is stored",
                         at + ("type",), "store_client_messages and store_server_messages are off",
                         "set `store_client_messages: true` (or server), or delete it")
    if p.file is None:
        for name in ("max_file_bytes", "backups"):
            if _written(p, name):
                _ignored(ctx, e, at + (name,), f"`{name}` rotates the log file, but there is no `file`",
                         at + ("type",), "records go to the structured log only",
                         "set `file:`, or delete it")


def _fixes(schema: Any, field: str, root: Any = None, depth: int = 0) -> bool:
    """Whether a message schema fixes the top-level ``field`` to one value (what a discriminator reads), through
    `allOf`/`oneOf`/`anyOf` and local `$ref`s (`#/$defs/...`, as `wsgate import` bundles them)."""
    root = schema if root is None else root
    schema = _resolved(schema, root)
    if not isinstance(schema, dict) or depth > 16:
        return False
    props = schema.get("properties")
    prop = _resolved(props.get(field), root) if isinstance(props, dict) else None
    if isinstance(prop, dict) and ("const" in prop or (isinstance(prop.get("enum"), list) and len(prop["enum"]) == 1)):
        return True
    return any(_fixes(s, field, root, depth + 1) for key in ("allOf", "oneOf", "anyOf")
               for s in schema.get(key, []) or [])


def _resolved(node: Any, root: Any) -> Any:
    """``node``, or what its local `$ref` points at (a few hops at most)."""
    for _ in range(8):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return node
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        node = target
    return node


@rule
def binary_message_schemas(ctx: RuleContext) -> None:
    """A JSON Schema on a binary message: only text payloads are parsed as JSON, so it is never applied."""
    for e in ctx.of("API"):
        for i, m in enumerate(e.model.messages):
            if m.type == "binary" and m.json_schema is not None:
                _ignored(ctx, e, ("messages", i, "schema"), f"the schema of binary message '{m.name}' is never "
                         "applied: only text messages are checked against a JSON Schema",
                         ("messages", i, "type"), "declared binary here",
                         "make it `type: text` if it carries JSON, or delete `schema` (keep `max_size`)")


@rule
def message_sizes_over_the_api_limit(ctx: RuleContext) -> None:
    """A message definition's `max_size` above the API's `limits.max_message_size`: the API closes with 1009 first."""
    for e in ctx.of("API"):
        limit = e.model.limits.max_message_size
        for i, m in enumerate(e.model.messages):
            if limit is not None and m.max_size is not None and m.max_size > limit:
                _ignored(ctx, e, ("messages", i, "max_size"), f"message '{m.name}' allows {m.max_size} bytes, but the "
                         f"API closes any message over {limit} bytes (1009) before validation sees it",
                         ("limits", "max_message_size"), f"the API's limit, {limit} bytes",
                         f"lower `max_size` to at most {limit}, or raise `limits.max_message_size`")


@rule
def per_application_before_identify(ctx: RuleContext) -> None:
    """A per-application count with no identify before it: every connection is the anonymous application."""
    for e in ctx.of("API"):
        index, _ = _identify(e)
        for i, p in enumerate(e.model.policies):
            if p.type not in ("throttle", "rate-limit") or p.per != "application":
                continue
            # Throttle decides at the upgrade, in chain order; a rate-limit counts messages, after every upgrade step.
            if index is not None and (p.type == "rate-limit" or index < i):
                continue
            where = "before identify" if index is not None else "without an identify policy"
            related = (Related(e.doc.value_at(("policies", index, "type")), "identify runs here"),) \
                if index is not None else ()
            ctx.out.append(warning(
                "WSG231", f"{p.type} per application {where}: every connection is the anonymous application, so "
                "all share one count", e.doc.value_at(("policies", i, "per")), related=related,
                hint="move identify before it in `policies`" if index is not None
                else "add an identify policy before it, or count `per: api`"))


# ------------------------------------------------------------- applications

_IDENTIFIER_METHODS = {"api_keys": "api_key", "hostnames": "hostname", "ips": "ip", "jwt_clients": "jwt",
                       "basic": "basic", "certificates": "certificate"}
_DN = re.compile(r"^\s*(CN|O|OU|C|L|ST|DC|E|emailAddress|UID)\s*=", re.IGNORECASE)


@rule
def application_identifiers_used(ctx: RuleContext) -> None:
    """Identifiers of a kind no API the application is registered to identifies by: never compared."""
    apis = ctx.firsts("API")
    if not ctx.known.get("API", set()) <= set(apis):
        return  # an API whose document failed: its chain is unknown
    for e in ctx.of("Application"):
        mine = [apis[name] for name in e.model.apis if name in apis]
        if not mine or len(mine) != len(set(e.model.apis)):
            continue
        methods = {m for a in mine for p in a.model.policies if p.type == "identify" for m in p.by}
        if not methods:
            continue  # no API of its identifies at all: WSG201 says so at each API
        for field_name, method in _IDENTIFIER_METHODS.items():
            if getattr(e.model.identifiers, field_name) and method not in methods:
                ctx.out.append(warning(
                    "WSG230", f"application '{e.name}' has {field_name.replace('_', ' ')}, but none of its APIs "
                    f"identifies by {method}", e.doc.key_at(("identifiers", field_name)),
                    related=(Related(e.doc.value_at(("apis",)), "its APIs"),),
                    hint=f"add {method} to the `by` of their identify policies, or delete these identifiers"))


@rule
def certificate_subjects(ctx: RuleContext) -> None:
    """A subject written as a distinguished name: only the common name is compared, so it never matches."""
    for e in ctx.of("Application"):
        for i, c in enumerate(e.model.identifiers.certificates):
            if c.subject is None or not _DN.match(c.subject):
                continue
            cn = re.search(r"(?:^|,)\s*CN\s*=\s*([^,]+)", c.subject, re.IGNORECASE)
            ctx.out.append(error(
                "WSG133", f"certificate subject {c.subject!r} is a distinguished name; only the common name (CN) "
                "is compared, so it never matches", e.doc.value_at(("identifiers", "certificates", i, "subject")),
                hint=f"write `subject: {cn.group(1).strip()}`" if cn else
                "write the certificate's CN only, or use `san` or `fingerprint`"))


# ------------------------------------------------------------ echo, gateway


@rule
def echo_settings(ctx: RuleContext) -> None:
    """An interval for a context that never broadcasts; an unpublished context with no way to publish it."""
    for e in ctx.of("EchoServer"):
        for i, c in enumerate(e.model.contexts):
            at: tuple = ("contexts", i)
            broadcasts = c.broadcast_time if c.broadcast_time is not None else "broadcast" in c.path
            if _written(c, "interval") and not broadcasts:
                because = at + ("broadcast_time",) if c.broadcast_time is not None else at + ("path",)
                why = "turned off here" if c.broadcast_time is not None else "the path lacks 'broadcast'"
                _ignored(ctx, e, at + ("interval",), f"`interval` paces server-time messages, but context "
                         f"{c.path} sends none", because, why, "set `broadcast_time: true`, or delete `interval`")
            if not c.published and not e.model.control:
                _ignored(ctx, e, at + ("published",), f"context {c.path} is unpublished and the server has no "
                         "control endpoint to publish it: it answers 404 for ever", ("control",), "control is off",
                         "set `published: true`, or `control: true` to publish it with startDemoAPI")


@rule
def admin_settings(ctx: RuleContext) -> None:
    """Admin settings under `enabled: false`: no listener starts."""
    for e in ctx.of("Gateway"):
        admin = e.model.admin
        if admin.enabled:
            continue
        written = [n for n in ("host", "port", "token", "token_file", "tls") if _written(admin, n)]
        if written:
            _ignored(ctx, e, ("admin", written[0]), f"admin {', '.join(written)} set, but the admin listener is "
                     "disabled", ("admin", "enabled"), "disabled here", "set `enabled: true`, or delete them")
