"""Rules of the connect-time authorizer, remote JWKS, limits per application and conditioned routes (issue 24).

Codes (docs/diagnostics.md): WSG190-WSG194 (errors; WSG140 for a tier's byte burst), WSG270 and WSG272-WSG274
(warnings; WSG231 shared with rules/ineffective.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..diagnostics import Related, error, warning
from ..document_checks import suggestion
from ..models import is_loopback
from ..tree import Location
from .base import Entry, RuleContext, must_exist, rule

LIMIT_TYPES = ("throttle", "rate-limit")


# -------------------------------------------------------------- authorizer and JWKS URLs


def _url_problem(ctx: RuleContext, e: Entry, at: tuple, url: str, what: str) -> None:
    """An authorizer or JWKS URL: HTTPS, or plain HTTP to this machine only (warned: tests and local sidecars)."""
    loc = e.doc.value_at(at)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        ctx.out.append(error("WSG193", f"{what} {url!r} is not a URL: {exc}", loc,
                             hint="write it as https://host[:port]/path"))
        return
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host and is_loopback(host):
        ctx.out.append(warning("WSG270", f"{what} is plain http:// (allowed only to this machine)", loc,
                               hint="use https:// anywhere but a local test or sidecar"))
        return
    ctx.out.append(error(
        "WSG193", f"{what} must be https:// (plain http:// only to 127.0.0.1 or localhost): {url!r}", loc,
        hint="what it answers decides who gets in: it must come over TLS"))


def _identify_policies(e: Entry) -> Iterator[tuple[int, Any]]:
    for i, policy in enumerate(e.model.policies):
        if policy.type == "identify":
            yield i, policy


@rule
def identify_authorizer(ctx: RuleContext) -> None:
    """`by: [authorizer]` needs its block and stands alone; the block's URL and files; a block never used."""
    for e in ctx.of("API"):
        for i, policy in _identify_policies(e):
            at: tuple = ("policies", i)
            uses = "authorizer" in policy.by
            if uses and policy.authorizer is None:
                ctx.out.append(error(
                    "WSG190", "`by` lists authorizer but the identify policy has no `authorizer:` block",
                    e.doc.value_at(at + ("by", policy.by.index("authorizer"))),
                    hint="add `authorizer: {url: https://...}`"))
            if uses and len(policy.by) > 1:
                ctx.out.append(error(
                    "WSG190", "the authorizer decides alone: `by` cannot list it with other methods",
                    e.doc.value_at(at + ("by",)),
                    hint="write `by: [authorizer]` and forward the credentials it reads (`forward_credentials`)"))
            settings = policy.authorizer
            if settings is None:
                continue
            block = at + ("authorizer",)
            if not uses:
                ctx.out.append(warning(
                    "WSG274", "an `authorizer:` block but `by` does not list authorizer: it is never asked",
                    e.doc.key_at(block), hint="add authorizer to `by`, or delete the block"))
            _url_problem(ctx, e, block + ("url",), settings.url, "the authorizer URL")
            for field_name, what in (("ca_file", "CA file"), ("cert", "certificate file"), ("key", "key file")):
                value = getattr(settings, field_name)
                if value is not None:
                    must_exist(ctx, e, block + (field_name,), value, what)


@rule
def identify_jwks_url(ctx: RuleContext) -> None:
    """A `jwt.jwks_url`: HTTPS (loopback http warned) and its CA file."""
    for e in ctx.of("API"):
        for i, policy in _identify_policies(e):
            settings = policy.jwt
            if settings is None:
                continue
            at: tuple = ("policies", i, "jwt")
            if settings.jwks_url is not None:
                _url_problem(ctx, e, at + ("jwks_url",), settings.jwks_url, "the JWKS URL")
            if settings.jwks_ca_file is not None:
                must_exist(ctx, e, at + ("jwks_ca_file",), settings.jwks_ca_file, "CA file")


# -------------------------------------------------------------- limits per application


def _limit_applications(policy: Any) -> Iterator[tuple[tuple, str, str | None]]:
    """Every application a throttle or rate-limit names: (path under the policy, name, its tier or None)."""
    for j, name in enumerate(policy.applications):
        yield ("applications", j), name, None
    for tier_name, tier in policy.tiers.items():
        for j, name in enumerate(tier.applications):
            yield ("tiers", tier_name, "applications", j), name, tier_name


@rule
def limits_per_application(ctx: RuleContext) -> None:
    """Applications named by a limit: declared (WSG191), in one tier only (WSG192), registered to the API
    (WSG272); and an identify policy before the limit (WSG231), else every connection is anonymous there."""
    apps = ctx.firsts("Application")
    known = set(apps) | ctx.known.get("Application", set())
    for e in ctx.of("API"):
        identify_at = next((i for i, _ in _identify_policies(e)), None)
        for i, policy in enumerate(e.model.policies):
            if policy.type not in LIMIT_TYPES or not (policy.applications or policy.tiers):
                continue
            at: tuple = ("policies", i)
            # As WSG231 (rules/ineffective.py), which already reports `per: application`: a throttle decides at
            # the upgrade, in chain order; a rate-limit counts messages, after every upgrade step.
            anonymous = identify_at is None or (policy.type == "throttle" and identify_at > i)
            if anonymous and policy.per != "application":
                field_name = "applications" if policy.applications else "tiers"
                ctx.out.append(warning(
                    "WSG231",
                    f"a {policy.type} for named applications "
                    + ("before the identify policy" if identify_at is not None else "on an API that identifies none")
                    + ": every connection is the anonymous application there, so it never applies",
                    e.doc.key_at(at + (field_name,)),
                    hint="move identify before it in `policies`" if identify_at is not None
                    else "add an identify policy before it"))
            tier_of: dict[str, tuple[str, Location]] = {}
            for path, name, tier in _limit_applications(policy):
                loc = e.doc.value_at(at + path)
                if name not in known:
                    ctx.out.append(error(
                        "WSG191", f"{policy.type} names an unknown application '{name}'", loc,
                        hint=suggestion(name, sorted(known), listing="known applications")
                        or "declare it with `kind: Application`"))
                    continue
                if tier is not None:
                    if name in tier_of and tier_of[name][0] != tier:
                        ctx.out.append(error(
                            "WSG192", f"application '{name}' is in tiers '{tier_of[name][0]}' and '{tier}'", loc,
                            related=(Related(tier_of[name][1], f"first in tier '{tier_of[name][0]}' here"),),
                            hint="an application gets one tier's numbers: keep it in one"))
                        continue
                    tier_of.setdefault(name, (tier, loc))
                app = apps.get(name)
                if app is not None and e.name not in app.model.apis:
                    ctx.out.append(warning(
                        "WSG272", f"application '{name}' is not registered to API '{e.name}': this limit never "
                        "applies to it", loc, hint=f"add {e.name} to its `apis`, or drop it here"))


# -------------------------------------------------------------- conditioned routes


def _compatible(a: Any, b: Any) -> bool:
    """Whether one request can meet both APIs' conditions (no header or parameter wanted with two values)."""
    wanted: dict[tuple[str, str], str] = {}
    for kind, name, value in (*a.match_conditions(), *b.match_conditions()):
        if wanted.setdefault((kind, name), value) != value:
            return False
    return True


@rule
def route_condition_ties(ctx: RuleContext) -> None:
    """Two APIs of one port, host and path with as many conditions, different but compatible: a request meeting
    both goes to the first by name, which is seldom what was meant (WSG273). Identical ones are WSG111's."""
    seen: dict[tuple[str, str | None, str, str], list[Entry]] = {}
    warned: set[tuple[str, str]] = set()
    for e in ctx.of("API"):
        model = e.model
        for port in dict.fromkeys(model.ports):
            for host in dict.fromkeys([*model.hosts] or [None]):
                group = seen.setdefault((port, host, model.match, model.path), [])
                for other in group:
                    a, b = other.model, model
                    pair = tuple(sorted((other.name, e.name)))
                    if (pair in warned or a.match_conditions() == b.match_conditions()
                            or len(a.match_conditions()) != len(b.match_conditions()) or not _compatible(a, b)):
                        continue
                    warned.add(pair)  # type: ignore[arg-type]
                    winner = min(other.name, e.name)
                    ctx.out.append(warning(
                        "WSG273",
                        f"APIs '{other.name}' and '{e.name}' both match a request that meets the conditions of "
                        f"each ({model.path} on port '{port}'): '{winner}' gets it, by name",
                        e.doc.key_at(("match_headers",) if model.match_headers else ("match_query",)),
                        related=(Related(other.doc.value_at(("path",)), f"'{other.name}' is declared here"),),
                        hint="add a condition to the one that should win, or make them exclusive (one header "
                        "with two values)"))
                group.append(e)


@rule
def rate_limit_tier_numbers(ctx: RuleContext) -> None:
    """A rate-limit tier's numbers, merged with the policy's as the runtime merges them: a burst needs a rate
    (WSG194), and a byte burst below the API's largest message lets such a message never pass (WSG140)."""
    for e in ctx.of("API"):
        largest = e.model.limits.max_message_size
        for i, policy in enumerate(e.model.policies):
            if policy.type != "rate-limit":
                continue
            for name, tier in policy.tiers.items():
                at: tuple = ("policies", i, "tiers", name)
                for burst, rate in (("burst_messages", "messages_per_second"), ("burst_bytes", "bytes_per_second")):
                    if getattr(tier, burst) is not None and getattr(tier, rate) is None \
                            and getattr(policy, rate) is None:
                        ctx.out.append(error(
                            "WSG194", f"tier '{name}' sets `{burst}` but neither it nor the policy sets `{rate}`",
                            e.doc.value_at(at + (burst,)), hint=f"add `{rate}` to the tier or the policy"))
                burst_bytes = tier.burst_bytes if tier.burst_bytes is not None else (
                    policy.burst_bytes if tier.bytes_per_second is None else None)
                if largest is not None and tier.burst_bytes is not None and burst_bytes is not None \
                        and burst_bytes < largest:
                    ctx.out.append(error(
                        "WSG140", f"tier '{name}' burst_bytes {burst_bytes} is below one message of the API's "
                        f"largest size ({largest} bytes): such a message could never pass",
                        e.doc.value_at(at + ("burst_bytes",)),
                        hint=f"set `burst_bytes` to at least {largest}, or lower `limits.max_message_size`"))


@rule
def ineffective_authz_settings(ctx: RuleContext) -> None:
    """WSG230 (a setting that can never take effect; only written ones): an authorizer's `cache_ttl` when it is
    forwarded no credential (nothing is cached then), `jwks_*` tuning without `jwks_url`."""
    for e in ctx.of("API"):
        for i, policy in _identify_policies(e):
            at: tuple = ("policies", i)
            settings = policy.authorizer
            if settings is not None and "cache_ttl" in settings.model_fields_set and not settings.forward_credentials:
                ctx.out.append(warning(
                    "WSG230", "`cache_ttl` never takes effect: the authorizer is forwarded no credential, and "
                    "answers are cached per credential", e.doc.key_at(at + ("authorizer", "cache_ttl")),
                    related=(Related(e.doc.key_at(at + ("authorizer",)), "no `forward_credentials` here"),),
                    hint="list the credentials it decides on under `forward_credentials`, or delete `cache_ttl`"))
            jwt = policy.jwt
            if jwt is None or jwt.jwks_url is not None:
                continue
            for name in ("jwks_timeout", "jwks_max_age", "jwks_min_refresh_interval", "jwks_ca_file"):
                if name in jwt.model_fields_set:
                    ctx.out.append(warning(
                        "WSG230", f"`{name}` never takes effect: the keys do not come from a `jwks_url`",
                        e.doc.key_at(at + ("jwt", name)),
                        related=(Related(e.doc.key_at(at + ("jwt",)), "the key source is set here"),),
                        hint=f"delete `{name}`, or take the keys from `jwks_url`"))
