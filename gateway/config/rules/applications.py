"""Application rules: the APIs it is registered to, its identifiers (keys, addresses, users, JWT clients,
certificates), each claimed by one application."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping

from ...build.hashes import slow_hash_kind, slow_hash_problem
from ...common.redaction import CREDENTIAL_PLACEHOLDER
from ..diagnostics import Related, error, warning
from ..models import SHA256_PATTERN, EnvKey
from ..tree import Location
from .base import Entry, RuleContext, listed_once, rule, unknown_reference


@rule
def application_api_references(ctx: RuleContext) -> None:
    apis = ctx.firsts("API")
    known = set(apis) | ctx.known.get("API", set())
    for e in ctx.of("Application"):
        for name, loc in listed_once(ctx, e, "apis", "API"):
            if name not in known:
                unknown_reference(ctx, "WSG113", f"application '{e.name}' is registered to an unknown API '{name}'",
                                  loc, name, known, "declared APIs", "declare an API with this name")




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
            elif key.startswith(CREDENTIAL_PLACEHOLDER):
                _placeholder(ctx, loc)
                continue
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
    # An authorizer names applications itself: one registered to such an API needs no identifiers of its own.
    authorized = {a.name for a in ctx.of("API")
                  if any(p.type == "identify" and "authorizer" in p.by for p in a.model.policies)}
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
        elif not (ids.api_keys or ids.hostnames or ids.ips or ids.jwt_clients or ids.basic or ids.certificates
                  or authorized.intersection(e.model.apis)):
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
            elif password.startswith(CREDENTIAL_PLACEHOLDER):
                _placeholder(ctx, ploc)
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


def _placeholder(ctx: RuleContext, loc: Location) -> None:
    ctx.out.append(warning(
        "WSG252", "a credential placeholder (redacted:..., from `wsgate export config`): it matches no client",
        loc, hint="replace it with the credential's `{env: VARIABLE}` or its hash (bcrypt/argon2 for passwords)"))
