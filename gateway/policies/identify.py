"""Identify & authorize application: only applications registered to the API get in (else 401).

Identifiers: API key, client IP, client hostname, JWT bearer token, HTTP
Basic credentials, client certificate (mTLS: subject CN, SAN or
fingerprint). Credentials the policy consumes never travel further: the
runtime strips the API key and ``access_token`` query parameters, and this
policy removes the ``Authorization`` header lines of the schemes it reads
(``Bearer`` with ``by: [jwt]``, ``Basic`` with ``by: [basic]``) from the
request the upstream handshake is built from. Refusal reasons never echo a
credential.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ..build.credentials import jwt_client_digest, key_digest
from ..build.remote_keys import RemoteKeySet
from ..config.models import IdentifyPolicy
from .authorizer import Authorizer
from .base import ApplicationRef, ConnectionContext, Identity, Policy, PolicyBuild, Rejection, UpgradeRequest

API_KEY_NAME = "x-gateway-apikey"
TOKEN_PARAMETER = "access_token"  # RFC 6750, 2.3


def presented_keys(request: UpgradeRequest, use_header: bool) -> list[str]:
    """Every API key the client sent (query parameter, any case of its name; then the header)."""
    keys = [v for name, values in request.query.items() if name.lower() == API_KEY_NAME for v in values]
    if use_header:
        keys += request.headers.get_all(API_KEY_NAME)
    return keys


def take_authorization(request: UpgradeRequest, schemes: frozenset[str]) -> dict[str, list[str]]:
    """The credentials of every ``Authorization`` line whose scheme is in ``schemes`` (lowercase), by scheme.

    Those lines are removed from ``request.headers``: they are the gateway's
    to consume and must not reach the upstream. Lines of other schemes stay.
    """
    headers = request.headers
    values = headers.get_all("Authorization")
    taken: dict[str, list[str]] = {scheme: [] for scheme in schemes}
    if not values:
        return taken
    kept = []
    for value in values:
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() in schemes:
            taken[scheme.lower()].append(credentials.strip())
        else:
            kept.append(value)
    if len(kept) != len(values):
        del headers["Authorization"]
        for value in kept:
            headers["Authorization"] = value
    return taken


def decode_basic(credentials: str) -> tuple[str, str] | None:
    """(username, password) of an RFC 7617 credential, or None when malformed."""
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, colon, password = text.partition(":")
    return (username, password) if colon and username else None


class Identify(Policy):
    type = "identify"

    def __init__(self, spec: IdentifyPolicy, build: PolicyBuild) -> None:
        self.spec = spec
        self.api = build.api_name
        self.apps = build.apps
        self.resolver = build.state.resolver
        self._needs_lookup = "hostname" in spec.by
        self._schemes = frozenset(
            scheme for method, scheme in (("jwt", "bearer"), ("basic", "basic")) if method in spec.by
        )
        self._verifier = self.apps.verifier(self.api) if "jwt" in spec.by else None
        self._token_in_query = spec.jwt is not None and spec.jwt.query_parameter
        # `by: [authorizer]` stands alone (validate refuses it beside other methods): the endpoint decides.
        self._authorizer = (Authorizer.build(spec.authorizer, self.api, self.apps, build.state.http, build.api.resolve)
                            if "authorizer" in spec.by and spec.authorizer is not None else None)
        self._remote: RemoteKeySet | None = None
        jwt = spec.jwt
        if self._verifier is not None and jwt is not None and jwt.jwks_url is not None:
            cafile = str(build.api.resolve(jwt.jwks_ca_file)) if jwt.jwks_ca_file else None
            self._remote = build.state.jwks(jwt.jwks_url, cafile, jwt.jwks_timeout, jwt.jwks_max_age,
                                            jwt.jwks_min_refresh_interval, self._verifier.parse_document)

    def activate(self) -> None:
        remote, jwt = self._remote, self.spec.jwt
        if remote is not None and jwt is not None:
            remote.configure(jwt.jwks_timeout, jwt.jwks_max_age, jwt.jwks_min_refresh_interval)
            remote.prefetch()  # off the upgrades' path: the first one finds keys

    def on_upgrade(self, request: UpgradeRequest, conn: ConnectionContext):
        if self._authorizer is not None:
            return self._authorizer.decide(request, conn)
        # Taken before any decision, so a credential meant for the gateway is gone from the
        # upstream request whichever identifier ends up naming the application.
        auth = take_authorization(request, self._schemes) if self._schemes else {}
        slow = self._slow_basic(auth)
        fetch_keys = self._remote is not None and self._must_fetch_keys(request, auth)
        if self._needs_lookup or slow is not None or fetch_keys:
            return self._identify_async(request, conn, auth, slow, fetch_keys)
        return self._decide(request, conn, None, auth)

    def _tokens(self, request: UpgradeRequest, auth: dict[str, list[str]]) -> list[str]:
        """Every bearer token presented: the Authorization header's, then the query parameter's (when allowed)."""
        tokens = auth.get("bearer", [])
        if self._token_in_query:
            tokens = tokens + [v for name, values in request.query.items()
                               if name.lower() == TOKEN_PARAMETER for v in values]
        return tokens

    def _must_fetch_keys(self, request: UpgradeRequest, auth: dict[str, list[str]]) -> bool:
        """Whether this upgrade waits for the JWKS URL: its token's ``kid`` is unknown (a rotation, or no keys
        yet) and the refresh rate limit allows a fetch. Stale keys are refetched without waiting."""
        remote, verifier = self._remote, self._verifier
        assert remote is not None and verifier is not None
        remote.refresh_in_background()
        tokens = self._tokens(request, auth)
        if len(tokens) != 1 or not tokens[0]:
            return False
        found, kid = verifier.kid_of(tokens[0])
        return found and not remote.knows(kid) and remote.may_refresh()

    def _slow_basic(self, auth: dict[str, list[str]]) -> tuple[str, str] | None:
        """The (user, password) presented, when checking it costs a bcrypt/argon2 verification (any user name,
        known or not, once a basic password is such a hash) and it was not recently verified."""
        presented = auth.get("basic", [])
        if len(presented) != 1:
            return None
        pair = decode_basic(presented[0])
        if pair is None or not self.apps.basic_check_is_slow(pair[0]) or self.apps.basic_cached(*pair) is not None:
            return None
        return pair

    async def _identify_async(self, request: UpgradeRequest, conn: ConnectionContext,
                              auth: dict[str, list[str]], slow: tuple[str, str] | None,
                              fetch_keys: bool = False) -> Rejection | None:
        if fetch_keys and self._remote is not None:
            await self._remote.refresh()  # at most jwks_timeout; a failure keeps the last good keys
        hostname = None
        if self._needs_lookup:
            hostname = await self.resolver.lookup(request.peer[0], self.spec.hostname_lookup_timeout)
        # bcrypt/argon2 cost ~0.1-1 s of CPU: a thread, never the event loop. A success is remembered
        # briefly, so the _decide below (and the next reconnects) find it in the cache.
        if slow is not None and await asyncio.to_thread(self.apps.by_basic_slow, *slow) is not None:
            self.apps.remember_basic(*slow)
        return self._decide(request, conn, hostname, auth)

    def _decide(self, request: UpgradeRequest, conn: ConnectionContext, hostname: str | None,
                auth: dict[str, list[str]]) -> Rejection | None:
        found: tuple[str, str] | None = None
        problems: list[str] = []
        bad_token = False
        digest: str | None = None  # of the credential that identified the connection
        named: str | None = None  # the hostname that did
        expires_at: float | None = None
        for method in self.spec.by:
            if method == "api_key":
                keys = presented_keys(request, self.spec.api_key_header)
                if len(keys) > 1:
                    return self._refuse("more than one API key presented")
                if keys:
                    app = self.apps.by_api_key(keys[0])
                    if app is not None:
                        found = (app, "api_key")
                        digest = key_digest(keys[0])
                    else:
                        problems.append("unknown API key")
                else:
                    problems.append("missing API key")
            elif method == "ip":
                app = self.apps.by_ip(request.peer[0])
                found = (app, "ip") if app else None
            elif method == "hostname" and hostname:
                app = self.apps.by_hostname(hostname)
                found = (app, "hostname") if app else None
                named = hostname if app else None  # what a reload checks to revoke it
            elif method == "jwt":
                tokens = self._tokens(request, auth)
                if len(tokens) > 1:
                    return self._refuse("more than one bearer token presented")
                if not tokens or not tokens[0]:
                    problems.append("missing bearer token")
                    continue
                problem, client, expires, claims = self._verify(tokens[0])
                if client is None:
                    bad_token = problem != "unknown client"
                    problems.append(problem)
                    continue
                app = self.apps.by_jwt_client(client)
                if app is None:
                    problems.append("unknown client")
                    continue
                found = (app, "jwt")
                conn.claims = claims  # what push group rules may read (`from: claim`)
                digest = jwt_client_digest(client)
                if expires is not None and self.spec.jwt is not None and self.spec.jwt.close_at_expiry:
                    expires_at = expires + self.spec.jwt.leeway  # the listener closes it then
            elif method == "basic":
                presented = auth.get("basic", [])
                if len(presented) > 1:
                    return self._refuse("more than one set of basic credentials presented")
                if not presented:
                    problems.append("missing basic credentials")
                    continue
                pair = decode_basic(presented[0])
                matched = self.apps.by_basic(*pair) if pair else None
                if matched is None:
                    problems.append("bad credentials")
                    continue
                found = (matched[0], "basic")
                digest = matched[1]  # digest of user and stored password digest
            elif method == "certificate":
                if request.client_cert is None:
                    problems.append("missing client certificate")
                    continue
                matched = self.apps.by_certificate(request.client_cert.keys())
                if matched is None:
                    problems.append("unknown client certificate")
                    continue
                found = (matched[0], "certificate")
                digest = matched[1]  # the matched identifier's digest
            if found:
                break
        if found is None:
            if self.spec.allow_anonymous:
                conn.application = ApplicationRef("anonymous", "anonymous")
                return None
            if len(self.spec.by) == 1 and problems:
                reason = problems[0]
            elif problems:
                reason = f"no registered application identified ({'; '.join(problems)})"
            else:  # no credential is an identifier here: do not tell the client one is missing
                reason = "no registered application identified"
            return self._refuse(reason, bad_token)
        app, identified_by = found
        if not self.apps.is_registered(app, self.api):
            return self._refuse(f"application {app} is not registered to API {self.api}")
        # The credential's digest is kept for the reload's revocation (it stays in the process; never the key,
        # password or token), and the fingerprint of the configuration entry it matched, which is all the
        # admin's /connections shows of it (gateway/build/credentials.py).
        identity = Identity(
            ApplicationRef(app, identified_by),
            key_digest=digest,
            entry_fingerprint=self.apps.entry_fingerprint(digest) if digest is not None else None,
            hostname=named,
            expires_at=expires_at,
        )
        conn.identity = identity
        # Transforms see the digest and the entry's fingerprint in their context's metadata (docs/policies.md);
        # the gateway itself reads them from the Identity only.
        if identity.key_digest is not None:
            conn.metadata["key_digest"] = identity.key_digest
        if identity.entry_fingerprint is not None:
            conn.metadata["entry_fingerprint"] = identity.entry_fingerprint
        return None

    def _verify(self, token: str) -> tuple[str, str | None, float | None, Mapping[str, Any] | None]:
        """(problem, None, None, None) for an unacceptable token, else ("", client id, expiry, claims)."""
        if self._verifier is None:  # `by: [jwt]` without a `jwt:` block; validate refuses such a config
            return "bearer tokens are not configured for this API", None, None, None
        from ..build.jwt_keys import TokenError

        try:
            remote = self._remote.keys if self._remote is not None else ()
            client, expires, claims = self._verifier.decode(token, remote)
        except TokenError as exc:
            return f"invalid token: {exc.reason}", None, None, None
        return "", client, expires, claims

    def _refuse(self, reason: str, bad_token: bool = False) -> Rejection:
        return Rejection(401, "unauthorized", reason, self._challenges(bad_token))

    def _challenges(self, bad_token: bool) -> tuple[tuple[str, str], ...]:
        """``WWW-Authenticate`` for the schemes this policy reads (RFC 6750, 3; RFC 7617, 2)."""
        out = []
        if "bearer" in self._schemes:
            error = ', error="invalid_token"' if bad_token else ""
            out.append(("WWW-Authenticate", f'Bearer realm="{self.api}"{error}'))
        if "basic" in self._schemes:
            out.append(("WWW-Authenticate", f'Basic realm="{self.api}", charset="UTF-8"'))
        return tuple(out)
