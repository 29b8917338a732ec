"""The connect-time authorizer and remote JWKS, on a live gateway with real HTTP servers (aiohttp.web) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from support import (
    PORT,
    api_yaml,
    eventually,
    gw_url,
    http_request,
    logged,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from test_policies_jwt import AUDIENCE, ISSUER, jwks, other_rsa_key, rsa_key, token
from websockets.asyncio.client import connect
from websockets.datastructures import Headers

from gateway.policies.base import ConnectionContext, UpgradeRequest, parse_query

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def http_server(handler: Handler, path: str = "/") -> AsyncIterator[tuple[str, web.AppRunner]]:
    """A real aiohttp.web server on 127.0.0.1 port 0 answering ``path`` with ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{path}", runner
    finally:
        await runner.cleanup()


class Authorizer:
    """An authorizer endpoint: answers by the Authorization header it gets, records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answers: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self.hang = asyncio.Event()  # set: requests get no answer until `release` is set
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        document = await request.json()
        self.seen.append(document)
        if self.hang.is_set():
            await self.release.wait()
            return web.Response(status=500)
        credential = (document["headers"].get("authorization") or [""])[0]
        status, body = self.answers.get(credential, (401, None))
        return web.json_response(body, status=status) if body is not None else web.Response(status=status)


def authorizer_config(tmp_path, backend_url: str, authorizer_url: str, extra: str = "") -> Any:
    policies = f"""\
policies:
  - type: identify
    by: [authorizer]
    authorizer:
      url: {authorizer_url}
      timeout: 0.5
      forward_credentials: [authorization]
{extra}"""
    app = "kind: Application\nname: partner\napis: [Echo]\n"
    return write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend_url, extra=policies), app)


async def test_authorizer_allows_names_the_application_and_groups_and_is_cached(tmp_path):
    """An allow naming `partner` lets the client in as partner (the upstream is told, never the credential); the
    second upgrade with the same credential is answered from the cache (one call)."""
    auth = Authorizer()
    auth.answers["Bearer good"] = (200, {"application": "partner", "groups": ["room-1", "vip"]})
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            for _ in range(2):
                async with connect(gw_url(gw, "/echo?room=1"), additional_headers={"Authorization": "Bearer good"}) \
                        as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
            assert len(auth.seen) == 1
            sent = auth.seen[0]
            assert sent["path"] == "/echo" and sent["query"] == {"room": ["1"]} and sent["api"] == "Echo"
            assert sent["headers"]["authorization"] == ["Bearer good"] and sent["peer"]["address"] == "127.0.0.1"
            upstream = backend.requests[-1]
            assert upstream.headers["X-Gateway-Application"] == "partner"
            assert "Authorization" not in upstream.headers


async def test_authorizer_groups_reach_the_connection_context(tmp_path):
    """The groups an allow names are the connection context's `groups` (what push group rules read)."""
    auth = Authorizer()
    auth.answers["Bearer good"] = (200, {"groups": ["room-1", "vip"], "expires_in": 300})
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            route = gw.table.apis["Echo"]
            conn = ConnectionContext("Echo", "1.0", "default", ("127.0.0.1", 1), "/echo")
            request = UpgradeRequest("/echo", parse_query(""), Headers({"Authorization": "Bearer good"}),
                                     ("127.0.0.1", 1), "default", False)
            assert await route.chain[0].on_upgrade(request, conn) is None
            assert conn.groups == ["room-1", "vip"]
            assert conn.application is not None and conn.application.identified_by == "authorizer"
            assert conn.identity is not None and conn.identity.expires_at is not None and conn.identity.expires_at > 0
            assert "Authorization" not in request.headers


async def test_authorizer_refusal_status_reaches_the_client(tmp_path):
    """A 403 from the authorizer is the client's 403; an unknown credential's 401 is the client's 401."""
    auth = Authorizer()
    auth.answers["Bearer banned"] = (403, None)
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            banned = await http_request(gw_url(gw, "/echo"),
                                        upgrade_request("/echo", extra="Authorization: Bearer banned\r\n"))
            unknown = await http_request(gw_url(gw, "/echo"),
                                         upgrade_request("/echo", extra="Authorization: Bearer who\r\n"))
            assert (banned.status, unknown.status) == (403, 401)
            assert not backend.requests


async def test_authorizer_naming_an_unregistered_application_is_refused(tmp_path):
    """An allow naming an application not registered to the API is a 403, not a way in."""
    auth = Authorizer()
    auth.answers["Bearer other"] = (200, {"application": "stranger"})
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/echo"),
                                          upgrade_request("/echo", extra="Authorization: Bearer other\r\n"))
            assert response.status == 403
            assert "stranger" in response.json()["reason"]


async def test_authorizer_outage_refuses_within_its_timeout(tmp_path):
    """An authorizer that never answers, then one that is gone, each give the configured 503 (Retry-After), not a
    hang: the upgrade is answered although the authorizer never is, and the log never holds the credential."""
    auth = Authorizer()
    auth.hang.set()
    async with recording_backend() as backend:
        async with http_server(auth.handle) as (url, runner):
            config = authorizer_config(tmp_path, backend.url + "/native", url)
            async with running_gateway(config) as gw:
                with logged() as events:
                    hung = await http_request(gw_url(gw, "/echo"),
                                              upgrade_request("/echo", extra="Authorization: Bearer good\r\n"))
                    outage = await events.first("authorizer_unavailable")
                assert hung.status == 503 and hung.headers.get("retry-after") == "5"
                assert len(auth.seen) == 1
                assert "good" not in repr(events.entries)  # the log names the credential by digest only
                assert outage["credential"] and len(outage["credential"]) == 12
                auth.release.set()
                await runner.cleanup()  # the authorizer goes away
                gone = await http_request(gw_url(gw, "/echo"),
                                          upgrade_request("/echo", extra="Authorization: Bearer good\r\n"))
                assert gone.status == 503
                assert not backend.requests


async def test_authorizer_outage_answer_can_be_401(tmp_path):
    """`unavailable_status: 401` answers 401 while the authorizer is down."""
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500)

    async with http_server(broken) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url, extra="      unavailable_status: 401\n")
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/echo"),
                                          upgrade_request("/echo", extra="Authorization: Bearer x\r\n"))
            assert response.status == 401


async def test_credentials_not_forwarded_stay_out_of_the_authorizer_request(tmp_path):
    """Without `forward_credentials`, the Authorization and Cookie headers and the API key never reach the
    authorizer (nothing is cached then: each upgrade asks)."""
    auth = Authorizer()
    auth.answers[""] = (200, {})
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        policies = f"""\
policies:
  - type: identify
    by: [authorizer]
    authorizer: {{url: "{url}", timeout: 0.5}}
"""
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url + "/native", extra=policies))
        async with running_gateway(config) as gw:
            for _ in range(2):
                async with connect(gw_url(gw, "/echo?x-gateway-apikey=secret1&keep=1"),
                                   additional_headers={"Authorization": "Bearer secret2", "Cookie": "s=secret3"}):
                    pass
            assert len(auth.seen) == 2
            raw = json.dumps(auth.seen)
            assert "secret1" not in raw and "secret2" not in raw and "secret3" not in raw
            assert auth.seen[0]["query"] == {"keep": ["1"]}


# ------------------------------------------------------------------------------------------------ remote JWKS


class JWKSServer:
    """A JWKS endpoint whose document the test swaps (a rotation), counting fetches."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.fetches = 0
        self.down = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        return web.Response(text=self.document, content_type="application/json")


def jwks_config(tmp_path, backend_url: str, jwks_url: str, interval: float = 0) -> Any:
    policies = f"""\
policies:
  - type: identify
    by: [jwt]
    jwt:
      issuer: {ISSUER}
      audience: [{AUDIENCE}]
      jwks_url: {jwks_url}
      jwks_min_refresh_interval: {interval}
"""
    app = "kind: Application\nname: dashboard\nidentifiers:\n  jwt_clients: [dash-client]\napis: [Echo]\n"
    return write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend_url, extra=policies), app)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_jwks_rotation_is_picked_up_without_a_reload(tmp_path):
    """Keys fetched when the gateway starts (before any upgrade) verify a token; after the issuer rotates to a
    new kid, a token signed with the new key is accepted at once (one more fetch, no reload) and the old kid is
    refused."""
    server = JWKSServer(jwks(rsa_key(), kid="k1"))
    async with http_server(server.handle, "/jwks.json") as (url, _), recording_backend() as backend:
        config = jwks_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            await eventually(lambda: server.fetches == 1)  # fetched when the config started serving
            async with connect(gw_url(gw, "/echo"), additional_headers=bearer(token(kid="k1"))) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            before = server.fetches
            assert before == 1  # the first upgrade found the keys fetched at start
            server.document = jwks(other_rsa_key(), kid="k2")
            async with connect(gw_url(gw, "/echo"), additional_headers=bearer(token(other_rsa_key(), kid="k2"))):
                pass
            assert server.fetches == before + 1
            assert backend.requests[-1].headers["X-Gateway-Application"] == "dashboard"
            old = await http_request(gw_url(gw, "/echo"),
                                     upgrade_request("/echo", extra=f"Authorization: Bearer {token(kid='k1')}\r\n"))
            assert old.status == 401


async def test_jwks_server_down_keeps_the_last_good_keys(tmp_path):
    """With the JWKS server failing, tokens of the keys fetched before still pass, and an unknown kid is refused
    with 401 (the fetch it asked for failed), not a hang."""
    server = JWKSServer(jwks(rsa_key(), kid="k1"))
    async with http_server(server.handle, "/jwks.json") as (url, _), recording_backend() as backend:
        config = jwks_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo"), additional_headers=bearer(token(kid="k1"))):
                pass
            server.down = True
            unknown = await http_request(gw_url(gw, "/echo"), upgrade_request(
                "/echo", extra=f"Authorization: Bearer {token(other_rsa_key(), kid='k9')}\r\n"))
            assert unknown.status == 401
            assert server.fetches >= 2  # the unknown kid did ask
            async with connect(gw_url(gw, "/echo"), additional_headers=bearer(token(kid="k1"))) as ws:
                await ws.send("still")
                assert await ws.recv() == "still"


async def test_authorizer_expiry_closes_the_connection(tmp_path):
    """An allow with `expires_in` closes the connection with 1008 once it passes."""
    auth = Authorizer()
    auth.answers["Bearer brief"] = (200, {"expires_in": 0.2})
    async with http_server(auth.handle) as (url, _), recording_backend() as backend:
        config = authorizer_config(tmp_path, backend.url + "/native", url)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo"), additional_headers={"Authorization": "Bearer brief"}) as ws:
                await ws.wait_closed()
                assert (ws.close_code, ws.close_reason) == (1008, "credential expired")


async def test_unknown_kids_within_the_refresh_interval_fetch_nothing(tmp_path):
    """Right after the fetch at start, tokens with made-up kids are refused with 401 without another fetch: the
    refresh interval bounds what a flood of unknown kids costs the issuer."""
    server = JWKSServer(jwks(rsa_key(), kid="k1"))
    async with http_server(server.handle, "/jwks.json") as (url, _), recording_backend() as backend:
        config = jwks_config(tmp_path, backend.url + "/native", url, interval=3600)
        async with running_gateway(config) as gw:
            await eventually(lambda: server.fetches == 1)
            async with connect(gw_url(gw, "/echo"), additional_headers=bearer(token(kid="k1"))):
                pass
            for kid in ("k7", "k8", "k9"):
                made_up = token(other_rsa_key(), kid=kid)
                response = await http_request(gw_url(gw, "/echo"), upgrade_request(
                    "/echo", extra=f"Authorization: Bearer {made_up}\r\n"))
                assert (response.status, response.json()["reason"]) == (401, "invalid token: unknown signing key")
            assert server.fetches == 1
