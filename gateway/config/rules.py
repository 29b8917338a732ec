"""Cross-resource rules: what no single document can show.

Each rule is a small function of the validated resources (with their source
maps) that returns diagnostics. They run on every document that passed its
schema and model, even when other documents failed, so one run reports all
problems; a reference to a resource whose own document is invalid is not
reported as unknown (its own errors say enough).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import ipaddress
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from ..build.hashes import slow_hash_kind, slow_hash_problem
from .diagnostics import Diagnostic, Related, error, warning
from .document_checks import did_you_mean, suggestion
from .models import SHA256_PATTERN, EnvKey, is_loopback, prefix_matches
from .source import Document, file_refusal, inside
from .tree import Location

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "::1", "::", ""})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Policy types that make no sense twice in one chain (throttle: twice with the same `per`).
SINGLE_POLICY_TYPES = ("identify", "routing", "origin")


@dataclass
class Entry:
    """A resource whose document passed its schema and model."""

    kind: str
    name: str
    model: Any
    doc: Document


@dataclass
class RuleContext:
    entries: list[Entry]
    known: Mapping[str, set[str]]  # names by kind, including documents that failed their checks
    env: Mapping[str, str]
    roots: list[Path]
    sources: Mapping[str, list[str]]
    import_transforms: bool = False  # False: transform callables are checked statically, no tree code runs
    out: list[Diagnostic] = field(default_factory=list)

    def of(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]

    def firsts(self, kind: str) -> dict[str, Entry]:
        """The first resource of each name (duplicates are reported separately)."""
        out: dict[str, Entry] = {}
        for e in self.of(kind):
            out.setdefault(e.name, e)
        return out

    def column_of(self, loc: Location, value: str, index: int) -> Location:
        """The position of ``value[index]`` when the scalar is written plainly or quoted on its line."""
        lines = self.sources.get(loc.file, [])
        line = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
        rest = line[loc.col - 1 :]
        if rest.startswith(value):
            return Location(loc.file, loc.line, loc.col + index)
        if rest[:1] in "\"'" and rest[1:].startswith(value):
            return Location(loc.file, loc.line, loc.col + 1 + index)
        return loc


Rule = Callable[[RuleContext], None]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def run(
    entries: list[Entry],
    *,
    known: Mapping[str, set[str]],
    env: Mapping[str, str],
    roots: list[Path],
    sources: Mapping[str, list[str]],
    only: Iterable[Rule] | None = None,
    import_transforms: bool = False,
) -> list[Diagnostic]:
    """Every rule (or ``only`` these) over ``entries``; the diagnostics they found."""
    ctx = RuleContext(entries, known, env, roots, sources, import_transforms)
    for fn in RULES if only is None else only:
        fn(ctx)
    return ctx.out


# ------------------------------------------------------------------ names


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


# ------------------------------------------------------------- references


def _listed_once(ctx: RuleContext, entry: Any, field_name: str, what: str) -> Iterable[tuple[str, Location]]:
    """The names of a reference list, each with its location; a repeated name is warned about and skipped."""
    seen: set[str] = set()
    for i, name in enumerate(getattr(entry.model, field_name)):
        loc = entry.doc.value_at((field_name, i))
        if name in seen:
            ctx.out.append(warning("WSG205", f"{what} '{name}' is listed twice", loc, hint="delete the repetition"))
            continue
        seen.add(name)
        yield name, loc


def _unknown(ctx: RuleContext, code: str, summary: str, loc: Location | None, name: str, known: set[str],
             listing: str, otherwise: str) -> None:
    """A reference to a resource nobody declares: "did you mean" among ``known``, else how to declare it."""
    ctx.out.append(error(code, summary, loc, hint=suggestion(name, sorted(known), listing=listing) or otherwise))


@rule
def api_port_references(ctx: RuleContext) -> None:
    ports = ctx.firsts("Port")
    known = set(ports) | ctx.known.get("Port", set())
    for e in ctx.of("API"):
        for name, loc in _listed_once(ctx, e, "ports", "port"):
            if name not in known:
                _unknown(ctx, "WSG112", f"API '{e.name}' refers to an unknown port '{name}'", loc, name, known,
                         "declared ports", "declare a Port resource with this name")
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
def application_api_references(ctx: RuleContext) -> None:
    apis = ctx.firsts("API")
    known = set(apis) | ctx.known.get("API", set())
    for e in ctx.of("Application"):
        for name, loc in _listed_once(ctx, e, "apis", "API"):
            if name not in known:
                _unknown(ctx, "WSG113", f"application '{e.name}' is registered to an unknown API '{name}'", loc,
                         name, known, "declared APIs", "declare an API with this name")


# ------------------------------------------------------------------- APIs


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
    """Two APIs claiming the same route: port, host (or any host), match kind and path.

    Everything else is ordered, not ambiguous: a claimed host before any host,
    an exact path before a prefix, the longest prefix first.
    """
    served: dict[tuple[str, str | None, str, str], Entry] = {}
    reported: set[tuple[str, str]] = set()  # one error per pair of APIs, however many ports and hosts they share
    for e in ctx.of("API"):
        model = e.model
        for port in dict.fromkeys(model.ports):
            claims: list[str | None] = [*model.hosts] or [None]
            for host in dict.fromkeys(claims):
                key = (port, host, model.match, model.path)
                first = served.setdefault(key, e)
                if first.name == e.name or (first.name, e.name) in reported:
                    continue
                reported.add((first.name, e.name))
                what = f"{model.path}{' (prefix)' if model.match == 'prefix' else ''} on port '{port}'"
                where = f" for host {host}" if host else ""
                ctx.out.append(
                    error(
                        "WSG111",
                        f"APIs '{first.name}' and '{e.name}' both claim {what}{where}",
                        e.doc.value_at(("path",)),
                        related=(Related(first.doc.value_at(("path",)), f"'{first.name}' claims it here"),),
                        hint="give one of them another path, port or `hosts` entry",
                    )
                )


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        return parts
    except ValueError:
        return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "wss" else 80


@rule
def upstream_urls(ctx: RuleContext) -> None:
    ports = ctx.firsts("Port")
    echoes = ctx.of("EchoServer")
    # Routes the gateway serves, by port number: what a loop would hit.
    routes_by_number: dict[int, dict[str, tuple[str, str]]] = defaultdict(dict)
    hosts_by_number: dict[int, set[str]] = defaultdict(set)
    for p in ports.values():
        hosts_by_number[p.model.port].add(p.model.host)
    for a in ctx.firsts("API").values():
        for pname in a.model.ports:
            if pname in ports:
                routes_by_number[ports[pname].model.port][a.model.path] = (a.name, pname)
    for e in ctx.of("API"):
        for i, endpoint in enumerate(e.model.upstream.endpoints):
            at = ("upstream", "endpoints", i, "url")
            loc = e.doc.value_at(at)
            url = endpoint.url
            parts = _split(url)
            if parts is None or not parts.scheme or not parts.hostname:
                ctx.out.append(
                    error(
                        "WSG121",
                        f"upstream URL {url!r} is not a valid ws:// or wss:// URL",
                        loc,
                        hint="write it as ws://host:port/path",
                    )
                )
                continue
            scheme = parts.scheme.lower()
            if scheme not in ("ws", "wss"):
                better = {"http": "ws", "https": "wss"}.get(scheme)
                ctx.out.append(
                    error(
                        "WSG114",
                        f"upstream scheme '{parts.scheme}' is not ws or wss",
                        loc,
                        hint=f"use {better}://{url.split('://', 1)[-1]}" if better
                        else "the native endpoint must be a WebSocket URL",
                    )
                )
                continue
            if parts.fragment or url.endswith("#"):
                ctx.out.append(
                    error(
                        "WSG121",
                        "upstream URL has a fragment ('#...')",
                        ctx.column_of(loc, url, url.index("#")),
                        hint="WebSocket URLs cannot carry fragments (RFC 6455, 3); remove it",
                    )
                )
            if parts.username is not None or parts.password is not None:
                ctx.out.append(
                    warning(
                        "WSG250",
                        "upstream URL carries credentials (user:password@): they are sent as Basic auth but live "
                        "in the config, in plain text",
                        loc,
                        hint="put them in the environment instead: `upstream: {headers: {Authorization: "
                        "{env: UPSTREAM_AUTH}}}`",
                        at_credential=True,
                    )
                )
            if parts.query:
                ctx.out.append(
                    warning(
                        "WSG207",
                        "upstream URL has a query string",
                        ctx.column_of(loc, url, url.index("?")),
                        hint="it is sent on every upstream connection; make sure it holds no secret and is not "
                        "meant to come from the client",
                    )
                )
            if scheme == "ws" and e.model.upstream.tls.ca_file is not None and i == 0:
                ctx.out.append(
                    warning(
                        "WSG208",
                        "upstream TLS settings on a ws:// endpoint are never used",
                        e.doc.key_at(("upstream", "tls")),
                        hint="use wss:// or remove `upstream.tls`",
                    )
                )
            upath = parts.path
            host = (parts.hostname or "").lower()
            number = parts.port or _default_port(scheme)
            # A loop: the upstream is one of the gateway's own routes.
            if number in routes_by_number and (host in LOCAL_HOSTS or host in hosts_by_number[number]):
                hit = routes_by_number[number].get(upath or "/") or _prefix_hit(ctx, ports, number, upath or "/")
                if hit is not None:
                    ctx.out.append(
                        error(
                            "WSG119",
                            f"upstream points back at the gateway's own route {upath} "
                            f"(API '{hit[0]}' on port '{hit[1]}')",
                            loc,
                            hint="the native endpoint must be the backend server, not the gateway itself",
                        )
                    )
            # An upstream on a declared echo server must name one of its contexts.
            for echo in echoes:
                if echo.model.port != number or not (host in LOCAL_HOSTS or host == echo.model.host.lower()):
                    continue
                contexts = [c.path for c in echo.model.contexts]
                target = upath or "/"
                if target in contexts:
                    if not next(c for c in echo.model.contexts if c.path == target).published:
                        ctx.out.append(
                            warning(
                                "WSG215",
                                f"upstream points at echo server '{echo.name}' context {target}, which is unpublished",
                                loc,
                                related=(Related(_context_loc(echo, target), "the context is declared here"),),
                                hint="every upgrade gets 404 until it is published: set `published: true`, or start "
                                "it over HTTP (startDemoAPI), which is drift from this config",
                            )
                        )
                    continue
                flipped = target[:-1] if target.endswith("/") else target + "/"
                if flipped in contexts:
                    # The tutorial's classic deploy-time error: the native URL and the backend's
                    # context disagree on the trailing '/', and every upgrade gets a 404.
                    end = url.index(upath) + len(upath) if upath else len(url)
                    caret = end - 1 if target.endswith("/") else end
                    summary = (
                        f"upstream path ends with '/' but echo server '{echo.name}' serves {flipped}"
                        if target.endswith("/")
                        else f"upstream path {target} lacks the trailing '/' "
                        f"of echo server '{echo.name}' context {flipped}"
                    )
                    ctx.out.append(
                        error(
                            "WSG104",
                            summary,
                            ctx.column_of(loc, url, caret),
                            related=(Related(_context_loc(echo, flipped), "the context is declared here"),),
                            hint=f"write the upstream URL's path as {flipped}",
                        )
                    )
                else:
                    ctx.out.append(
                        error(
                            "WSG127",
                            f"echo server '{echo.name}' has no context {target}",
                            loc,
                            hint=suggestion(target, contexts, listing="its contexts"),
                        )
                    )


def _prefix_hit(ctx: RuleContext, ports: Mapping[str, Entry], number: int, path: str) -> tuple[str, str] | None:
    """The prefix route of the gateway's port ``number`` that covers ``path`` (a loop), if any."""
    for a in ctx.firsts("API").values():
        if a.model.match != "prefix" or not prefix_matches(a.model.path, path):
            continue
        for pname in a.model.ports:
            if pname in ports and ports[pname].model.port == number:
                return (a.name, pname)
    return None


def _context_loc(echo: Entry, path: str) -> Location:
    for i, c in enumerate(echo.model.contexts):
        if c.path == path:
            return echo.doc.value_at(("contexts", i, "path"))
    return echo.doc.value_at(("contexts",))


@rule
def upstream_tls(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        tls = e.model.upstream.tls
        if not tls.verify:
            ctx.out.append(
                warning(
                    "WSG206",
                    f"API '{e.name}' does not verify its upstream's TLS certificate",
                    e.doc.value_at(("upstream", "tls", "verify")),
                    hint="anyone on the path can impersonate the native server; set a `ca_file` instead",
                )
            )
        if tls.ca_file is not None:
            _must_exist(ctx, e, ("upstream", "tls", "ca_file"), tls.ca_file, "CA file")
        _cert_and_key_must_exist(ctx, e, ("upstream", "tls"), tls.cert, tls.key)
        if len(e.model.upstream.endpoints) == 1:
            for i, p in enumerate(e.model.policies):
                if p.type == "routing" and p.strategy == "round-robin":
                    ctx.out.append(
                        warning(
                            "WSG209",
                            "round-robin routing over a single endpoint",
                            e.doc.value_at(("policies", i, "strategy")),
                            hint="add endpoints under `upstream.endpoints`, or drop the routing policy",
                        )
                    )


@rule
def policy_chains(ctx: RuleContext) -> None:
    applications = ctx.of("Application")
    registered = {api for app in applications for api in app.model.apis}
    all_checked = ctx.known.get("Application", set()) <= {a.name for a in applications}  # else: cannot tell
    for e in ctx.of("API"):
        seen: dict[tuple, int] = {}
        has_identify = False
        for i, p in enumerate(e.model.policies):
            if p.type == "identify":
                has_identify = True
            key: tuple | None = None
            if p.type in SINGLE_POLICY_TYPES:
                key = (p.type,)
            elif p.type == "throttle":
                key = (p.type, p.per)
            if key is None:
                continue
            if key in seen:
                what = f"throttle per {p.per}" if p.type == "throttle" else p.type
                ctx.out.append(
                    error(
                        "WSG123",
                        f"the chain has {what} twice",
                        e.doc.value_at(("policies", i, "type")),
                        related=(Related(e.doc.value_at(("policies", seen[key], "type")), "first one here"),),
                        hint="keep one and merge their settings",
                    )
                )
            else:
                seen[key] = i
        identify = next((p for p in e.model.policies if p.type == "identify"), None)
        if identify is not None and not identify.allow_anonymous and all_checked and e.name not in registered:
            ctx.out.append(
                warning(
                    "WSG216",
                    f"API '{e.name}' requires an identified application, but no application is registered to it",
                    e.doc.value_at(("policies", e.model.policies.index(identify), "type")),
                    hint=f"add '{e.name}' to an Application's `apis`, or set `allow_anonymous: true`: "
                    "until then every upgrade gets 401",
                )
            )
        if not has_identify:
            ctx.out.append(
                warning(
                    "WSG201",
                    f"API '{e.name}' has no identify policy: anyone can connect",
                    e.doc.key_at(("policies",)) if "policies" in e.doc.data else e.doc.value_at(("name",)),
                    hint="add `- type: identify` to `policies` (or accept that the API is public)",
                )
            )


@rule
def rate_limit_bursts(ctx: RuleContext) -> None:
    """A byte burst smaller than the API's largest message: such a message could never pass."""
    for e in ctx.of("API"):
        largest = e.model.limits.max_message_size
        for i, p in enumerate(e.model.policies):
            # Without `burst_bytes` the burst is at least one largest message (RateLimit's default).
            if p.type != "rate-limit" or largest is None or p.burst_bytes is None or p.burst_bytes >= largest:
                continue
            ctx.out.append(
                error(
                    "WSG140",
                    f"rate-limit burst_bytes {p.burst_bytes} is below one message of the API's largest size "
                    f"({largest} bytes): such a message could never pass",
                    e.doc.value_at(("policies", i, "burst_bytes")),
                    hint=f"set `burst_bytes` to at least {largest}, or lower `limits.max_message_size`",
                )
            )


@rule
def message_schemas(ctx: RuleContext) -> None:
    """Every message schema is a valid JSON Schema and stands alone (each `$ref` resolves inside it)."""
    for e in ctx.of("API"):
        for i, message in enumerate(e.model.messages):
            schema = message.json_schema
            if schema is None:
                continue
            from .message_schemas import schema_problems, unresolved_refs  # jsonschema: only when there are schemas

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


def _config_root_for(ctx: RuleContext, e: Entry) -> Path:
    declaring = Path(e.doc.file).resolve()
    for root in ctx.roots:
        r = root.resolve()
        if r == declaring.parent or r in declaring.parents:
            return r
    return ctx.roots[0].resolve() if ctx.roots else declaring.parent


def check_callable(spec: str, root: Path) -> tuple[str, str] | None:
    """Import ``package.module:function`` with ``root`` on sys.path: None if fine, else (summary, hint).

    The import is isolated: modules loaded from ``root`` are removed again and
    a same-named module loaded from elsewhere is put back, so checking one
    config never changes what another config (or the runtime) imports.
    """
    module_name, _, attr_path = spec.partition(":")
    top = module_name.split(".")[0]
    # Only a module that lives under the root is isolated; `json:loads` or an installed package
    # imports as usual, so checking never reloads modules the running process already uses.
    local = (root / f"{top}.py").is_file() or (root / top).is_dir()
    # Every module of that name is set aside while checking, the running gateway's own copy included: the
    # check must see the file as it is now (an edited transform), not as the runtime imported it.
    foreign = {n: m for n, m in sys.modules.items() if local and (n == top or n.startswith(top + "."))}
    for n in foreign:
        del sys.modules[n]
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    result: tuple[str, str] | None
    try:
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attr_path.split("."):
            if not hasattr(target, part):
                names = [n for n in dir(target) if not n.startswith("_")]
                best = did_you_mean(part, names)
                raise _Missing(part, f"did you mean '{best}'?" if best else "")
            target = getattr(target, part)
        if not callable(target):
            result = (f"{spec} is not callable (it is {type(target).__name__})", "point at a function")
        else:
            result = None
    except _Missing as exc:
        result = (f"module '{module_name}' has no attribute '{exc.args[0]}'", exc.args[1] or "check the function name")
    except ModuleNotFoundError as exc:
        result = (
            f"cannot import module '{module_name}': no module named '{exc.name}'",
            f"the module must be importable with the config directory {root} on sys.path",
        )
    except BaseException as exc:  # operator code may raise anything on import; report, never crash
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = (f"importing '{module_name}' raised {type(exc).__name__}: {exc}",
                  "fix the module so it imports cleanly")
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
        for n in set(sys.modules) - before:
            if (local and (n == top or n.startswith(top + "."))) or _under(
                getattr(sys.modules.get(n), "__file__", None), root
            ):
                sys.modules.pop(n, None)
        sys.modules.update(foreign)
    return result


class _Missing(Exception):
    pass


def _under(file: str | None, root: Path) -> bool:
    if not file:
        return False
    try:
        Path(file).resolve().relative_to(root)
        return True
    except ValueError:
        return False


def transform_module_file(spec: str, root: Path) -> Path | None:
    """The file in the config tree ``root`` that holds ``package.module:function``'s module, if there is one."""
    relative = Path(*spec.partition(":")[0].split("."))
    candidates = (root / relative.with_suffix(".py"), root / relative / "__init__.py")
    return next((c for c in candidates if c.is_file()), None)


def static_callable_problem(spec: str, root: Path) -> tuple[str, str] | None:
    """Check ``package.module:function`` without running it: None if fine, else (summary, hint).

    The module must be a file under ``root`` (the config tree) that parses and defines ``function`` at
    its top level as a function that can be called with one argument (the message).
    """
    module_name, _, attr = spec.partition(":")
    path = transform_module_file(spec, root)
    opt_in = "or run `wsgate validate --import-transforms` to import it (that runs its code)"
    if path is None:
        return (f"module '{module_name}' is not a file in the config tree {root}",
                f"keep transform modules in the config tree (checked without running them), {opt_in}")
    if "." in attr:
        return (f"{spec}: only a top-level function can be checked without importing", opt_in)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        return (f"module '{module_name}' does not parse: {getattr(exc, 'msg', exc)}"
                + (f" ({path.name}, line {line})" if line else ""), "fix the module's syntax")
    except OSError as exc:
        return (f"module '{module_name}' cannot be read: {exc.strerror or exc}", "make the file readable")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    node = functions.get(attr)
    if node is None:
        defined = sorted(functions)
        best = did_you_mean(attr, defined)
        return (f"module '{module_name}' defines no function '{attr}'",
                f"did you mean '{best}'?" if best else f"define `def {attr}(message):` at the module's top level")
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    required_kw = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    if required > 1 or required_kw or (not positional and args.vararg is None):
        return (f"{spec} must take exactly one argument (the message); it takes "
                f"{ast.unparse(args) or 'none'}", f"define it as `def {attr}(message):`")
    return None


@rule
def transform_callables(ctx: RuleContext) -> None:
    # Cached per run only: a reload after the operator fixes the module must check it afresh.
    seen: dict[tuple[Path, str], tuple[str, str] | None] = {}
    check = check_callable if ctx.import_transforms else static_callable_problem
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "transform":
                continue
            key = (_config_root_for(ctx, e), p.callable)
            module = transform_module_file(p.callable, key[0])
            if module is not None and _refused(ctx, e, ("policies", i, "callable"), module):
                continue
            if key not in seen:
                seen[key] = check(p.callable, key[0])
            problem = seen[key]
            if problem is not None:
                at = e.doc.value_at(("policies", i, "callable"))
                ctx.out.append(error("WSG117", problem[0], at, hint=problem[1]))


# ------------------------------------------------------------ shared state

STATE_SCHEMES = ("redis", "rediss", "unix")


def state_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL's form (None: nothing); never quotes the URL (it may hold a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the URL does not parse ({exc})"
    if parts.scheme not in STATE_SCHEMES:
        return f"scheme '{parts.scheme}' is not redis, rediss or unix" if parts.scheme else "the URL has no scheme"
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path"
    if not parts.hostname:
        return "the URL names no host"
    if port == 0:
        return "port 0 cannot be reached"
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return f"the path must be a database number, not '{parts.path}'"
    return None


@rule
def state_backend(ctx: RuleContext) -> None:
    """The Redis URL's form, a password written into it, and a way to reach Redis where validate runs."""
    for e in ctx.of("Gateway"):
        state = e.model.state
        if state.backend != "redis":
            continue
        at = ("state", "url")
        url = state.url
        if isinstance(url, EnvKey):
            value = ctx.env.get(url.env)
            if not value:
                ctx.out.append(warning(
                    "WSG220", f"state backend is redis but environment variable {url.env} is not set",
                    e.doc.value_at(at + ("env",)),
                    hint=f"without {url.env} the gateway cannot reach Redis: every throttle falls back to its "
                         "on_state_error (allow: counted per process) until it is set"))
                continue
            problem = state_url_problem(value)
            if problem:
                ctx.out.append(error("WSG160", f"the Redis URL in {url.env} is malformed: {problem}",
                                     e.doc.value_at(at + ("env",)),
                                     hint="expected redis://host:port/db, rediss://host:port/db or unix:///path"))
            continue
        problem = state_url_problem(url)
        if problem:
            ctx.out.append(error("WSG160", f"malformed Redis URL: {problem}", e.doc.value_at(at),
                                 hint="expected redis://host:port/db, rediss://host:port/db or unix:///path"))
        elif urlsplit(url).password:
            ctx.out.append(warning("WSG221", "Redis password in plain text in the state URL", e.doc.value_at(at),
                                   at_credential=True,
                                   hint="write the URL without it and set `password: {env: VARIABLE}`, or "
                                        "`url: {env: VARIABLE}`"))
        if state.password is not None and not ctx.env.get(state.password.env):
            ctx.out.append(warning(
                "WSG220", f"state backend is redis but environment variable {state.password.env} is not set",
                e.doc.value_at(("state", "password", "env")),
                hint="a Redis that requires a password will refuse the gateway: throttles fall back to on_state_error"))
        if state.ca is not None:
            _must_exist(ctx, e, ("state", "ca"), state.ca, "CA file")
            if isinstance(url, str) and not url.startswith("rediss://"):
                ctx.out.append(warning("WSG222", "a CA file is set but the Redis URL is not rediss://",
                                       e.doc.value_at(("state", "ca")),
                                       hint="use rediss:// for TLS, or drop `ca`"))


@rule
def log_file_paths(ctx: RuleContext) -> None:
    """A log-invocation file stays inside the config tree or a directory the Gateway resource declares: a config
    change must not be able to write wherever the gateway process may."""
    allowed_extra: list[Path] = []
    for g in ctx.of("Gateway"):
        for d in g.model.log_directories:
            allowed_extra.append(Path(os.path.normpath(g.doc.base_dir / d)).resolve())
    roots = [r.resolve() for r in ctx.roots]
    outside: dict[tuple[Path, str], bool] = {}  # (declaring directory, file) -> escapes; resolve() costs a syscall
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "log-invocation" or not p.file:
                continue
            key = (e.doc.base_dir, p.file)
            if key not in outside:
                target = Path(os.path.normpath(e.doc.base_dir / p.file)).resolve()  # `..` and symlinks resolved
                mine = Path(os.path.normpath(e.doc.base_dir)).resolve()
                root = next((r for r in roots if mine.is_relative_to(r)), mine)
                outside[key] = not any(target.is_relative_to(d) for d in [root, *allowed_extra])
            if not outside[key]:
                continue
            root = next((r for r in roots if Path(e.doc.base_dir).resolve().is_relative_to(r)), e.doc.base_dir)
            what = "an absolute path" if Path(p.file).is_absolute() else f"outside the config tree {root}"
            ctx.out.append(
                error(
                    "WSG132",
                    f"log file {p.file} is {what}",
                    e.doc.value_at(("policies", i, "file")),
                    hint="write it under the config tree (e.g. `logs/api.jsonl`), or declare its directory in the "
                    "Gateway resource's `log_directories`",
                )
            )


# ------------------------------------------------------------- listeners


def named_file_refusal(roots: Iterable[Path], path: Path) -> tuple[str, str, str] | None:
    """Why a file the config names must not be read, as (code, summary, hint), or None (issue 21).

    Never: a special file (under /proc, /sys, /dev, or not a regular file: a FIFO, a device, a directory), and a
    path written inside the config tree whose real path leaves it (a link out, which hides where the file is).
    A path written outside the tree (absolute, or with `..`), such as a mounted secret, is read: a reviewer
    sees it in the YAML.
    """
    refusal = file_refusal(path, None)
    if refusal is not None:
        return refusal
    written = os.path.normpath(os.path.abspath(path))
    lexical = [os.path.normpath(os.path.abspath(r)) for r in roots]
    if any(inside(written, r) for r in lexical):
        real = os.path.realpath(path)
        if not any(inside(real, os.path.realpath(r)) for r in lexical):
            return ("WSG011", f"{path.name} in the config tree links outside it (to {real})",
                    "copy the file into the config tree, or write the path of the file itself")
    return None


def _refused(ctx: RuleContext, e: Entry, at: tuple, path: Path) -> bool:
    """Report and say whether the named file at ``path`` must not be read (see :func:`named_file_refusal`)."""
    refusal = named_file_refusal(ctx.roots, path)
    if refusal is None:
        return False
    code, summary, hint = refusal
    ctx.out.append(error(code, summary, e.doc.value_at(at), hint=hint))
    return True


def _must_exist(ctx: RuleContext, e: Entry, at: tuple, relative: str, what: str) -> None:
    path = Path(relative) if Path(relative).is_absolute() else e.doc.base_dir / relative
    if _refused(ctx, e, at, path):
        return
    if not path.is_file():
        ctx.out.append(
            error(
                "WSG118",
                f"{what} {relative} does not exist" if not path.exists() else f"{what} {relative} is not a file",
                e.doc.value_at(at),
                hint=f"relative paths start at the declaring file's directory ({e.doc.base_dir})",
            )
        )


def _cert_and_key_must_exist(ctx: RuleContext, e: Entry, at: tuple, cert: str | None, key: str | None) -> None:
    """A TLS block's ``cert`` and ``key`` files, under ``at``; an unset (optional) one is not checked."""
    if cert is not None:
        _must_exist(ctx, e, at + ("cert",), cert, "certificate file")
    if key is not None:
        _must_exist(ctx, e, at + ("key",), key, "key file")


@rule
def port_tls_files(ctx: RuleContext) -> None:
    for e in ctx.of("Port"):
        tls = e.model.tls
        if tls is not None:
            _cert_and_key_must_exist(ctx, e, ("tls",), tls.cert, tls.key)
            for i, sni in enumerate(tls.sni):
                _cert_and_key_must_exist(ctx, e, ("tls", "sni", i), sni.cert, sni.key)
            if tls.client_certificates is not None:
                _must_exist(ctx, e, ("tls", "client_certificates", "ca_file"), tls.client_certificates.ca_file,
                            "CA file")


@rule
def admin_access(ctx: RuleContext) -> None:
    for e in ctx.of("Gateway"):
        admin = e.model.admin
        if not admin.enabled:
            continue
        if admin.token is None and admin.token_file is None and not is_loopback(admin.host):
            ctx.out.append(
                error(
                    "WSG180",
                    f"the admin listener binds {admin.host}, beyond loopback, without a token",
                    e.doc.value_at(("admin", "host")),
                    hint="add `token: {env: WSGATE_ADMIN_TOKEN}` (or `token_file`) under `admin`, or bind 127.0.0.1",
                )
            )
        if admin.token is not None and admin.token.env not in ctx.env:
            ctx.out.append(
                warning(
                    "WSG203",
                    f"environment variable {admin.token.env} is not set",
                    e.doc.value_at(("admin", "token", "env")),
                    hint="every protected admin endpoint answers 401 until the gateway runs with it set",
                )
            )
        if admin.token_file is not None:
            _must_exist(ctx, e, ("admin", "token_file"), admin.token_file, "admin token file")
        if admin.tls is not None:
            _cert_and_key_must_exist(ctx, e, ("admin", "tls"), admin.tls.cert, admin.tls.key)


@rule
def upstream_header_variables(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        for name, value in e.model.upstream.headers.items():
            if value.env not in ctx.env:
                ctx.out.append(
                    warning(
                        "WSG203",
                        f"environment variable {value.env} is not set",
                        e.doc.value_at(("upstream", "headers", name, "env")),
                        hint=f"the upstream gets no {name} header until the gateway runs with {value.env} set",
                    )
                )


@rule
def listener_clashes(ctx: RuleContext) -> None:
    listeners: list[tuple[int, str, str, Location]] = []
    for e in ctx.of("Port"):
        if e.model.enabled:
            listeners.append((e.model.port, e.model.host, f"Port '{e.name}'", e.doc.value_at(("port",))))
    for e in ctx.of("EchoServer"):
        listeners.append((e.model.port, e.model.host, f"EchoServer '{e.name}'", e.doc.value_at(("port",))))
    for e in ctx.of("Gateway")[:1]:
        admin = e.model.admin
        if admin.enabled and admin.port != 0:
            label = f"the admin endpoint of Gateway '{e.name}'"
            listeners.append((admin.port, admin.host, label, e.doc.value_at(("admin", "port"))))
    for i, (number, host, label, loc) in enumerate(listeners):
        if number == 0:
            continue  # the system picks a free port
        for other_number, other_host, other_label, other_loc in listeners[:i]:
            if number != other_number:
                continue
            if host == other_host or host in WILDCARD_HOSTS or other_host in WILDCARD_HOSTS:
                ctx.out.append(
                    error(
                        "WSG115",
                        f"{label} listens on port {number}, which {other_label} already uses",
                        loc,
                        related=(Related(other_loc, f"{other_label} is here"),),
                        hint="two listeners cannot bind the same port; change one port number",
                    )
                )
                break


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


# ----------------------------------------------------------- applications


def key_fingerprint(key: str | EnvKey, env: Mapping[str, str]) -> str | None:
    """A comparable form of a key: its SHA-256, whichever way it is written (None when unknown)."""
    if isinstance(key, EnvKey):
        value = env.get(key.env)
        if value is None:
            return f"env:{key.env}"
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    if key.startswith("sha256:"):
        return key.lower() if SHA256_PATTERN.match(key.lower()) else None
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@rule
def application_keys(ctx: RuleContext) -> None:
    claimed: dict[str, tuple[str, Location]] = {}
    for e in ctx.of("Application"):
        mine: set[str] = set()
        for i, key in enumerate(e.model.identifiers.api_keys):
            at = ("identifiers", "api_keys", i)
            loc = e.doc.value_at(at)
            if isinstance(key, EnvKey):
                if key.env not in ctx.env:
                    ctx.out.append(
                        warning(
                            "WSG203",
                            f"environment variable {key.env} is not set",
                            e.doc.value_at(at + ("env",)),
                            hint=f"the key is unusable until the gateway runs with {key.env} set",
                        )
                    )
            elif key.startswith("sha256:") and not SHA256_PATTERN.match(key):
                ctx.out.append(
                    error(
                        "WSG125",
                        "malformed key hash: expected 'sha256:' and 64 lowercase hex digits",
                        loc,
                        hint="compute it with `printf %s 'KEY' | sha256sum`",
                    )
                )
                continue
            elif not key.startswith("sha256:"):
                ctx.out.append(
                    warning(
                        "WSG200",
                        "API key in plain text",
                        loc,
                        at_credential=True,
                        hint="anyone who can read this file can use the key; "
                        "write `sha256:<hash>` or `{env: VARIABLE}`",
                    )
                )
            fp = key_fingerprint(key, ctx.env)
            if fp is None:
                continue
            # Named by its fingerprint only: the key itself must not appear in a diagnostic.
            _claim_once(ctx, e, fp, loc, mine, claimed, "an API key", code="WSG116", secret=True,
                        hint="a key must identify one application; give each its own key")


@rule
def application_addresses(ctx: RuleContext) -> None:
    for e in ctx.of("Application"):
        for i, value in enumerate(e.model.identifiers.ips):
            try:
                ipaddress.ip_network(value, strict=False) if "/" in value else ipaddress.ip_address(value)
            except ValueError:
                ctx.out.append(
                    error(
                        "WSG126",
                        f"{value!r} is not an IP address or CIDR network",
                        e.doc.value_at(("identifiers", "ips", i)),
                        hint="write an address (203.0.113.7) or a network (203.0.113.0/24)",
                    )
                )


@rule
def unreachable_applications(ctx: RuleContext) -> None:
    for e in ctx.of("Application"):
        ids = e.model.identifiers
        if not e.model.apis:
            ctx.out.append(
                warning(
                    "WSG204",
                    f"application '{e.name}' is registered to no API",
                    e.doc.value_at(("name",)),
                    hint="add the APIs it may use under `apis:`",
                )
            )
        elif not (ids.api_keys or ids.hostnames or ids.ips or ids.jwt_clients or ids.basic or ids.certificates):
            ctx.out.append(
                warning(
                    "WSG204",
                    f"application '{e.name}' has no identifiers and can never be identified",
                    e.doc.value_at(("name",)),
                    hint="add `identifiers:` with api_keys, hostnames, ips, jwt_clients, basic or certificates",
                )
            )


@rule
def application_basic_and_jwt_clients(ctx: RuleContext) -> None:
    users: dict[str, tuple[str, Location]] = {}
    clients: dict[str, tuple[str, Location]] = {}
    for e in ctx.of("Application"):
        ids = e.model.identifiers
        mine: set[str] = set()
        for i, user in enumerate(ids.basic):
            at = ("identifiers", "basic", i)
            password = user.password
            ploc = e.doc.value_at(at + ("password",))
            if isinstance(password, EnvKey):
                if password.env not in ctx.env:
                    ctx.out.append(
                        warning(
                            "WSG203",
                            f"environment variable {password.env} is not set",
                            e.doc.value_at(at + ("password", "env")),
                            hint=f"user '{user.username}' cannot log in until the gateway runs with {password.env} set",
                        )
                    )
            elif slow_hash_kind(password) is not None:
                problem = slow_hash_problem(password)
                if problem is not None:
                    ctx.out.append(error("WSG181", problem[0], ploc, hint=problem[1], at_credential=True))
            elif password.startswith("sha256:") and not SHA256_PATTERN.match(password):
                ctx.out.append(
                    error(
                        "WSG125",
                        "malformed password hash: expected 'sha256:' and 64 lowercase hex digits",
                        ploc,
                        hint="compute it with `printf %s 'PASSWORD' | sha256sum`",
                    )
                )
            elif password.startswith("sha256:"):
                ctx.out.append(
                    warning(
                        "WSG251",
                        "basic password as a SHA-256 digest: a fast hash, so a leaked file lets weak passwords be "
                        "guessed at billions per second",
                        ploc,
                        at_credential=True,
                        hint="use a bcrypt or argon2 hash (`python -c \"import bcrypt; print(bcrypt.hashpw(b'PW', "
                        "bcrypt.gensalt()).decode())\"`, needs wsgate[hashes]) or `{env: VARIABLE}`",
                    )
                )
            else:
                ctx.out.append(
                    warning(
                        "WSG200",
                        "basic password in plain text",
                        ploc,
                        at_credential=True,
                        hint="anyone who can read this file can log in; write a bcrypt or argon2 hash or "
                        "`{env: VARIABLE}`",
                    )
                )
            _claim_once(ctx, e, user.username, e.doc.value_at(at + ("username",)), mine, users,
                        f"basic user name '{user.username}'")
        mine = set()
        for i, client in enumerate(ids.jwt_clients):
            _claim_once(ctx, e, client, e.doc.value_at(("identifiers", "jwt_clients", i)), mine, clients,
                        f"JWT client '{client}'")


@rule
def application_certificates(ctx: RuleContext) -> None:
    """A client certificate identifier claimed by two applications (WSG131), like basic users and JWT clients."""
    claimed: dict[str, tuple[str, Location]] = {}
    for e in ctx.of("Application"):
        mine: set[str] = set()
        for i, identifier in enumerate(e.model.identifiers.certificates):
            _claim_once(ctx, e, identifier.key(), e.doc.value_at(("identifiers", "certificates", i)), mine, claimed,
                        f"client certificate {identifier.key()}", code="WSG131")


@rule
def hash_on_application_needs_identify(ctx: RuleContext) -> None:
    """`consistent-hash` on the application of an API that identifies none: every key is missing."""
    for e in ctx.of("API"):
        types = [p.type for p in e.model.policies]
        for i, policy in enumerate(e.model.policies):
            if (policy.type == "routing" and policy.strategy == "consistent-hash" and policy.hash_on == "application"
                    and "identify" not in types):
                ctx.out.append(
                    warning(
                        "WSG214",
                        f"API '{e.name}' hashes on the application but identifies none: connections are not sticky",
                        e.doc.value_at(("policies", i, "hash_on")),
                        hint="add an identify policy, or hash on `client_ip`, a `header` or a `query` parameter",
                    )
                )


@rule
def certificate_identify_needs_mtls(ctx: RuleContext) -> None:
    """`identify: by: [certificate]` on an API none of whose ports ask clients for a certificate."""
    ports = ctx.firsts("Port")
    for e in ctx.of("API"):
        for i, policy in enumerate(e.model.policies):
            if policy.type != "identify" or "certificate" not in policy.by:
                continue
            asking = [name for name in e.model.ports if name in ports and ports[name].model.tls is not None
                      and ports[name].model.tls.client_certificates is not None]
            if not asking:
                ctx.out.append(
                    warning(
                        "WSG213",
                        f"API '{e.name}' identifies by client certificate, but none of its ports asks for one",
                        e.doc.value_at(("policies", i, "by", policy.by.index("certificate"))),
                        hint="add `tls: {client_certificates: {ca_file: ...}}` to the Port",
                    )
                )


def _claim_once(ctx: RuleContext, e: Entry, value: str, loc: Location, mine: set[str],
                claimed: dict[str, tuple[str, Location]], what: str, *, code: str = "WSG131", secret: bool = False,
                hint: str = "an identifier must name one application; give each its own") -> None:
    """An identifier names one application: warn about a repetition, refuse a second owner.

    ``what`` is how diagnostics name the identifier ("JWT client 'x'", or "an API key" for secrets).
    """
    if value in mine:
        ctx.out.append(warning("WSG205", f"{what} is listed twice", loc, hint="delete the repetition",
                               at_credential=secret))
        return
    mine.add(value)
    if value in claimed and claimed[value][0] != e.name:
        ctx.out.append(
            error(
                code,
                f"application '{e.name}' uses {what} that application '{claimed[value][0]}' also uses",
                loc,
                related=(Related(claimed[value][1], f"'{claimed[value][0]}' claims it here"),),
                hint=hint,
                at_credential=secret,
            )
        )
    else:
        claimed.setdefault(value, (e.name, loc))


# -------------------------------------------------------------- JWT keys

JWT_KEY_SOURCES = ("jwks_file", "public_key_file", "secret")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


@rule
def identify_jwt(ctx: RuleContext) -> None:
    for e in ctx.of("API"):
        for i, p in enumerate(e.model.policies):
            if p.type != "identify":
                continue
            at: tuple = ("policies", i)
            if "jwt" in p.by and p.jwt is None:
                ctx.out.append(
                    error(
                        "WSG128",
                        "`by` lists jwt but the identify policy has no `jwt:` block",
                        e.doc.value_at(at + ("by", p.by.index("jwt"))),
                        hint="add `jwt:` with `issuer` and one key source: jwks_file, public_key_file or secret",
                    )
                )
            if p.jwt is None:
                continue
            _check_jwt(ctx, e, at + ("jwt",), p.jwt, "jwt" in p.by)


def _check_jwt(ctx: RuleContext, e: Entry, at: tuple, settings: Any, used: bool) -> None:
    if not used:
        ctx.out.append(
            warning(
                "WSG211",
                "a `jwt:` block but `by` does not list jwt: tokens are never read",
                e.doc.key_at(at),
                hint="add jwt to `by`, or delete the block",
            )
        )
    sources = [name for name in JWT_KEY_SOURCES if getattr(settings, name) is not None]
    if len(sources) != 1:
        ctx.out.append(
            error(
                "WSG128",
                "the `jwt:` block has no key source" if not sources else f"the `jwt:` block has {len(sources)} key "
                f"sources ({', '.join(sources)})",
                e.doc.key_at(at) if not sources else e.doc.key_at(at + (sources[1],)),
                hint="give exactly one of jwks_file (a JWKS document), public_key_file (PEM) or "
                "secret ({env: VARIABLE}, for HS256)",
            )
        )
        return
    algorithms = set(settings.algorithms)
    hmac_algs = algorithms & HMAC_ALGORITHMS
    algs_loc = e.doc.value_at(at + ("algorithms",))
    problem: tuple[str, str] | None = None
    if hmac_algs and algorithms - hmac_algs:
        problem = ("HMAC (HS*) and public-key algorithms are allowed together",
                   "a public key must never verify an HS* token (algorithm confusion); keep one family")
    elif hmac_algs and settings.secret is None:
        problem = (f"{sorted(hmac_algs)[0]} needs a shared secret, but the key source is {sources[0]}",
                   "use `secret: {env: VARIABLE}` for HS*, or list public-key algorithms (RS256, ES256)")
    elif settings.secret is not None and not hmac_algs:
        problem = ("a `secret` verifies only HS* algorithms, and `algorithms` lists none",
                   "write `algorithms: [HS256]`, or use jwks_file/public_key_file for public-key algorithms")
    if problem is not None:
        ctx.out.append(error("WSG130", problem[0], algs_loc, hint=problem[1]))
    if settings.secret is not None:
        if settings.secret.env not in ctx.env:
            ctx.out.append(
                warning(
                    "WSG203",
                    f"environment variable {settings.secret.env} is not set",
                    e.doc.value_at(at + ("secret", "env")),
                    hint=f"every token is refused until the gateway runs with {settings.secret.env} set",
                )
            )
    else:
        # The file is checked even when the allowlist is wrong: every problem in one run.
        _check_key_file(ctx, e, at, sources[0], getattr(settings, sources[0]), algorithms if problem is None else None)
    if not settings.audience:
        ctx.out.append(
            warning(
                "WSG212",
                "no `audience`: tokens the issuer made for any other service are accepted too",
                e.doc.key_at(at),
                hint="list this API's audience under `audience:` (the `aud` the issuer puts in its tokens)",
            )
        )


def _check_key_file(ctx: RuleContext, e: Entry, at: tuple, field_name: str, relative: str,
                    algorithms: set[str] | None) -> None:
    """The key file exists and parses; with ``algorithms``, some key in it can verify one of them."""
    from ..build.jwt_keys import KeyMaterialError, parse_jwks, parse_public_key  # PyJWT only for configs that use it

    what = "JWKS file" if field_name == "jwks_file" else "public key file"
    path = Path(relative) if Path(relative).is_absolute() else e.doc.base_dir / relative
    if not path.is_file() or named_file_refusal(ctx.roots, path) is not None:
        _must_exist(ctx, e, at + (field_name,), relative, what)
        return
    loc = e.doc.value_at(at + (field_name,))
    try:
        data = path.read_bytes()
        keys = parse_jwks(data.decode("utf-8")) if field_name == "jwks_file" else [parse_public_key(data)]
    except (KeyMaterialError, OSError, UnicodeDecodeError) as exc:
        ctx.out.append(
            error(
                "WSG129",
                f"{what} {relative} cannot be used: {exc}",
                loc,
                hint="a JWKS document ({\"keys\": [...]}) with the issuer's public keys"
                if field_name == "jwks_file"
                else "a PEM public key (-----BEGIN PUBLIC KEY-----)",
            )
        )
        return
    usable = set().union(*(k.algorithms for k in keys))
    if algorithms is not None and not usable & algorithms:
        ctx.out.append(
            error(
                "WSG130",
                f"no key in {what} {relative} can verify {', '.join(sorted(algorithms))}",
                e.doc.value_at(at + ("algorithms",)),
                hint=f"its keys verify {', '.join(sorted(usable)) or 'nothing the gateway supports'}; "
                "list one of those under `algorithms`",
            )
        )

