"""The connect-time authorizer: identify `by: [authorizer]` asks an HTTP endpoint whether an upgrade may go on.

What the endpoint gets: one ``POST`` of JSON, ``{"api", "port", "path",
"query", "headers", "peer": {"address", "port"}, "secure"}``. Credentials
travel only as ``forward_credentials`` says: the ``Authorization``,
``Proxy-Authorization`` and ``Cookie`` headers, the ``x-Gateway-APIKey``
header and query parameter and the ``access_token`` query parameter are
taken out of what it is sent unless listed.

What it answers (docs/integrations.md):

- a 2xx allows; a JSON object body may name the ``application`` (it must be
  registered to the API), the ``groups`` to join (``ConnectionContext.groups``)
  and ``expires_in`` (seconds: the connection is closed with 1008 then);
- a 4xx refuses, and the client gets that status;
- anything else (a 3xx or 5xx, a body that is not what is described above,
  no answer within ``timeout``, a refused connection) means the authorizer is
  down: the client gets ``unavailable_status``, never a way in.

Answers are kept for ``cache_ttl`` seconds (an allow no longer than its own
``expires_in``), keyed by a digest of the API and the forwarded credentials;
a request that forwards none is not cached (it would be one answer for
everyone). Logs name an answer by the first characters of that digest,
never the credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ..common.http_client import SharedHTTPClient, client_ssl_context
from .base import ApplicationRef, ConnectionContext, Identity, Rejection, UpgradeRequest

if TYPE_CHECKING:
    from ..build.apps import AppIndex
    from ..config.models import AuthorizerSettings

log = structlog.get_logger("wsgate.authorizer")

# Which headers and query parameters each `forward_credentials` entry lets through (lowercase).
CREDENTIAL_HEADERS = {"authorization": ("authorization", "proxy-authorization"), "cookie": ("cookie",),
                      "api_key": ("x-gateway-apikey",)}
CREDENTIAL_PARAMETERS = {"api_key": ("x-gateway-apikey",), "access_token": ("access_token",)}
ALL_CREDENTIAL_HEADERS = frozenset(h for names in CREDENTIAL_HEADERS.values() for h in names)
ALL_CREDENTIAL_PARAMETERS = frozenset(p for names in CREDENTIAL_PARAMETERS.values() for p in names)
# The handshake's own headers say nothing an authorizer decides on.
HANDSHAKE_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                               "connection", "upgrade"})
MAX_CACHED = 10_000  # answers kept per policy; the least recently used go first
MAX_ANSWER_BYTES = 64 * 1024
MAX_GROUPS = 256
UNAVAILABLE_RETRY_AFTER = (("Retry-After", "5"),)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the authorizer decided for one set of credentials."""

    status: int  # 200: allowed; else the status the client gets
    application: str | None = None
    groups: tuple[str, ...] = ()
    expires_at: float | None = None  # wall clock (epoch seconds)


class Unavailable(Exception):
    """The authorizer gave no usable answer; ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_answer(status: int, body: bytes, now: float) -> Answer:
    """The decision in an authorizer's response; raises :class:`Unavailable` when it holds none."""
    if 400 <= status < 500:
        return Answer(status)
    if not 200 <= status < 300:
        raise Unavailable(f"answered {status}")
    if not body.strip():
        return Answer(200)
    try:
        document = json.loads(body)
    except ValueError:
        raise Unavailable("a 2xx body that is not JSON") from None
    if not isinstance(document, dict):
        raise Unavailable("a 2xx body that is not a JSON object")
    application = document.get("application")
    groups = document.get("groups", [])
    expires_in = document.get("expires_in")
    if application is not None and not isinstance(application, str):
        raise Unavailable("`application` is not a string")
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS or not all(isinstance(g, str) and g for g in groups):
        raise Unavailable("`groups` is not a list of names")
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                                   or expires_in < 0):
        raise Unavailable("`expires_in` is not a number of seconds")
    return Answer(200, application or None, tuple(groups), now + expires_in if expires_in is not None else None)


class Authorizer:
    """One identify policy's authorizer: what it sends, its answers' cache, and the decision for the client."""

    def __init__(self, settings: AuthorizerSettings, api: str, apps: AppIndex, http: SharedHTTPClient,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self.api = api
        self.apps = apps
        self.http = http
        self.ssl_context = ssl_context
        forwarded = set(settings.forward_credentials)
        self.forward_headers = frozenset(h for k in forwarded for h in CREDENTIAL_HEADERS.get(k, ()))
        self.forward_parameters = frozenset(p for k in forwarded for p in CREDENTIAL_PARAMETERS.get(k, ()))
        self.strip_authorization = "authorization" in forwarded
        self.cache: OrderedDict[str, tuple[float, Answer]] = OrderedDict()  # digest -> (kept until, answer)
        self.calls = 0  # requests sent (the tests count them)

    @classmethod
    def build(cls, settings: AuthorizerSettings, api: str, apps: AppIndex, http: SharedHTTPClient,
              resolve: Any) -> Authorizer:
        """``resolve`` turns a configured file name into its path (relative to the declaring file)."""
        context = None
        if settings.url.lower().startswith("https://"):
            context = client_ssl_context(
                str(resolve(settings.ca_file)) if settings.ca_file else None,
                str(resolve(settings.cert)) if settings.cert else None,
                str(resolve(settings.key)) if settings.key else None)
        return cls(settings, api, apps, http, context)

    # ------------------------------------------------------------- what is sent
    def document(self, request: UpgradeRequest) -> dict[str, Any]:
        """The JSON the authorizer gets: the request minus the credentials it is not meant to see."""
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.raw_items():
            lower = name.lower()
            if lower in HANDSHAKE_HEADERS or (lower in ALL_CREDENTIAL_HEADERS and lower not in self.forward_headers):
                continue
            headers.setdefault(lower, []).append(value)
        query = {name: list(values) for name, values in request.query.items()
                 if name.lower() not in ALL_CREDENTIAL_PARAMETERS or name.lower() in self.forward_parameters}
        return {"api": self.api, "port": request.port_name, "path": request.path, "query": query,
                "headers": headers, "peer": {"address": request.peer[0], "port": request.peer[1]},
                "secure": request.secure}

    def cache_key(self, document: Mapping[str, Any]) -> str | None:
        """The digest of the API and the forwarded credentials; None when none was presented."""
        parts: list[str] = []
        for name in sorted(self.forward_headers):
            parts += [f"h:{name}:{value}" for value in document["headers"].get(name, ())]
        for name, values in sorted(document["query"].items()):
            if name.lower() in self.forward_parameters:
                parts += [f"q:{name.lower()}:{value}" for value in values]
        if not parts:
            return None
        return hashlib.sha256("\0".join([self.api, *parts]).encode()).hexdigest()

    # ------------------------------------------------------------- the decision
    async def decide(self, request: UpgradeRequest, conn: ConnectionContext) -> Rejection | None:
        document = self.document(request)
        if self.strip_authorization and "Authorization" in request.headers:  # the authorizer's, never the upstream's
            del request.headers["Authorization"]
        key = self.cache_key(document)
        now = time.time()
        answer = self._cached(key, now)
        if answer is None:
            try:
                answer = await self._ask(document, now)
            except Unavailable as exc:
                log.warning("authorizer_unavailable", api=self.api, reason=exc.reason, connection=conn.id,
                            credential=key[:12] if key else None)
                return self._unavailable()
            self._remember(key, answer, now)
        return self._apply(answer, conn, now)

    def _cached(self, key: str | None, now: float) -> Answer | None:
        if key is None:
            return None
        found = self.cache.get(key)
        if found is None:
            return None
        until, answer = found
        if now >= until:
            del self.cache[key]
            return None
        self.cache.move_to_end(key)
        return answer

    def _remember(self, key: str | None, answer: Answer, now: float) -> None:
        ttl = self.settings.cache_ttl
        if key is None or ttl <= 0:
            return
        until = now + ttl
        if answer.expires_at is not None:
            until = min(until, answer.expires_at)
        if until <= now:
            return
        self.cache[key] = (until, answer)
        self.cache.move_to_end(key)
        while len(self.cache) > MAX_CACHED:
            self.cache.popitem(last=False)

    async def _ask(self, document: dict[str, Any], now: float) -> Answer:
        import aiohttp  # ~0.2 s to import: loaded by the first upgrade that asks, not by `wsgate validate`

        settings = self.settings
        self.calls += 1
        try:
            # asyncio's timeout bounds the whole exchange (connect, TLS, headers, body): the upgrade waits no
            # longer than `timeout`, however the authorizer misbehaves.
            async with asyncio.timeout(settings.timeout):
                async with self.http.session().post(
                        settings.url, json=document, ssl=self.ssl_context if self.ssl_context is not None else True,
                        allow_redirects=False, timeout=aiohttp.ClientTimeout(total=settings.timeout)) as response:
                    body = await response.content.read(MAX_ANSWER_BYTES + 1)
                    status = response.status
        except TimeoutError:
            raise Unavailable(f"no answer within {settings.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{exc.__class__.__name__}: {exc}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise Unavailable("the answer is larger than 64 KiB")
        return parse_answer(status, body, now)

    def _apply(self, answer: Answer, conn: ConnectionContext, now: float) -> Rejection | None:
        if answer.status != 200:
            error = {401: "unauthorized", 403: "forbidden", 429: "too_many_requests"}.get(answer.status, "refused")
            return Rejection(answer.status, error, "the authorizer refused the request")
        if answer.expires_at is not None and answer.expires_at <= now:
            return Rejection(401, "unauthorized", "the authorization has expired")
        if answer.application is not None:
            if not self.apps.is_registered(answer.application, self.api):
                return Rejection(403, "forbidden",
                                 f"application {answer.application} is not registered to API {self.api}")
            application = ApplicationRef(answer.application, "authorizer")
        else:
            application = ApplicationRef("anonymous", "authorizer")
        # The listener closes the connection with 1008 at the Identity's expires_at, as for an expiring JWT.
        conn.identity = Identity(application, expires_at=answer.expires_at)
        conn.groups = list(answer.groups)
        return None

    def _unavailable(self) -> Rejection:
        if self.settings.unavailable_status == 503:
            return Rejection(503, "authorizer_unavailable", "the authorizer is not answering; try again later",
                             UNAVAILABLE_RETRY_AFTER)
        return Rejection(401, "unauthorized", "the request could not be authorized")
