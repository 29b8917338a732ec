"""API rules about identify's `jwt:` block: one key source, an algorithm family it can verify, the audience."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..diagnostics import error, warning
from .base import Entry, RuleContext, must_exist, named_file_refusal, rule

# -------------------------------------------------------------- JWT keys

JWT_KEY_SOURCES = ("jwks_file", "public_key_file", "secret", "jwks_url")
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
                        hint="add `jwt:` with `issuer` and one key source: jwks_file, public_key_file, secret "
                        "or jwks_url",
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
                hint="give exactly one of jwks_file (a JWKS document), public_key_file (PEM), "
                "secret ({env: VARIABLE}, for HS256) or jwks_url (the issuer's published keys)",
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
    elif settings.jwks_url is None:  # a URL is checked by rules/authz.py and fetched only at run time
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
    from ...build.jwt_keys import KeyMaterialError, parse_jwks, parse_public_key  # PyJWT only for configs that use it

    what = "JWKS file" if field_name == "jwks_file" else "public key file"
    path = Path(relative) if Path(relative).is_absolute() else e.doc.base_dir / relative
    if not path.is_file() or named_file_refusal(ctx.roots, path) is not None:
        must_exist(ctx, e, at + (field_name,), relative, what)
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
