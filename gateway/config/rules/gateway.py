"""Gateway-resource rules: the shared-state backend and the admin listener."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..diagnostics import error, warning
from ..models import EnvKey, is_loopback
from .base import RuleContext, cert_and_key_must_exist, must_exist, rule

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
            must_exist(ctx, e, ("state", "ca"), state.ca, "CA file")
            if isinstance(url, str) and not url.startswith("rediss://"):
                ctx.out.append(warning("WSG222", "a CA file is set but the Redis URL is not rediss://",
                                       e.doc.value_at(("state", "ca")),
                                       hint="use rediss:// for TLS, or drop `ca`"))




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
            must_exist(ctx, e, ("admin", "token_file"), admin.token_file, "admin token file")
        if admin.tls is not None:
            cert_and_key_must_exist(ctx, e, ("admin", "tls"), admin.tls.cert, admin.tls.key)
