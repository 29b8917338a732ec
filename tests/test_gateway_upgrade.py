"""The upgrade stage: upstream refusals and timeouts, smuggling, subprotocols, forwarded headers."""

from __future__ import annotations

import asyncio
import base64

import pytest
from support import (
    PORT,
    api_yaml,
    eventually,
    gw_url,
    http_request,
    raw_backend,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.policies.base import ApplicationRef, Policy, Rejection

SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: internal\r\n\r\n"


def answering(status_line: str, extra: str = ""):
    """A raw upstream that reads the request head, answers with ``status_line``, then reads until EOF."""

    async def respond(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status_line}\r\n{extra}Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
        while await reader.read(65536):
            pass

    return respond


@pytest.mark.parametrize(
    "status_line, extra",
    [
        ("404 Not Found", ""),
        ("500 Internal Server Error", ""),
        ("302 Found", "Location: http://elsewhere/\r\n"),
        ("426 Upgrade Required", ""),
    ],
)
async def test_upstream_non_101_is_502_and_pipelined_bytes_never_reach_it(tmp_path, status_line, extra):
    """An upstream answering the upgrade with a non-101 gives the client 502 naming that status; bytes the
    client pipelined after its request never reach the upstream."""
    async with raw_backend(answering(status_line, extra)) as (url, received):
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", url + "/"))
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/a"), upgrade_request("/a") + SMUGGLED)
            assert response.status == 502
            assert response.headers["connection"] == "close"
            body = response.json()
            assert body["error"] == "bad_gateway"
            assert status_line.split()[0] in body["reason"]
        assert received, "the upstream got the upgrade request"
        assert b"/admin/secret" not in b"".join(received)


async def test_upstream_invalid_101_is_502(tmp_path):
    """A 101 with a wrong Sec-WebSocket-Accept is refused with 502 and never tunnelled."""
    bad_accept = base64.b64encode(b"x" * 20).decode()
    respond = answering(
        "101 Switching Protocols",
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {bad_accept}\r\n",
    )

    async with raw_backend(respond) as (url, received):
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", url + "/"))
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/a"), upgrade_request("/a") + SMUGGLED)
            assert response.status == 502
            assert "invalid 101" in response.json()["reason"]
        assert b"/admin/secret" not in b"".join(received)


async def test_upstream_closing_at_once_is_502(tmp_path):
    """An upstream that accepts TCP and closes without answering gives 502."""

    async def respond(reader, writer):
        writer.close()

    async with raw_backend(respond) as (url, _):
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", url + "/"))
        async with running_gateway(config) as gw:
            with pytest.raises(InvalidStatus) as info:
                async with connect(gw_url(gw, "/a")):
                    pass
            assert info.value.response.status_code == 502


async def test_upstream_that_never_answers_is_504(tmp_path):
    """An upstream that accepts TCP and never answers gives 504 after connect_timeout."""
    hold = asyncio.Event()

    async def respond(reader, writer):
        await hold.wait()

    async with raw_backend(respond) as (url, _):
        api = api_yaml("A", "/a", url + "/").replace("upstream:\n", "upstream:\n  connect_timeout: 0.2\n")
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/a"), upgrade_request("/a"))
            assert response.status == 504
            assert response.json()["error"] == "gateway_timeout"
        hold.set()


async def test_subprotocol_negotiated_end_to_end(tmp_path):
    """The client's subprotocol offer goes upstream and the upstream's choice comes back."""
    async with recording_backend(subprotocols=["chat.v2"]) as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/a"), subprotocols=["chat.v1", "chat.v2"]) as ws:
                assert ws.subprotocol == "chat.v2"
                await ws.send("x")
                assert await ws.recv() == "x"
            assert backend.headers["Sec-WebSocket-Protocol"] == "chat.v1, chat.v2"
            # This upstream requires a subprotocol: a client offering none learns the upstream's 400.
            with pytest.raises(InvalidStatus) as info:
                async with connect(gw_url(gw, "/a")):
                    pass
            assert info.value.response.status_code == 502
            assert b"400" in info.value.response.body


async def test_headers_and_query_as_seen_by_the_upstream(tmp_path):
    """The upstream gets X-Forwarded-*, end-to-end headers and the query, never hop-by-hop headers,
    headers named in Connection, spoofed gateway headers or the API key."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/native?fixed=1"))
        async with running_gateway(config) as gw:
            extra = (
                "Connection: Upgrade, X-Hop-Secret\r\n"
                "X-Hop-Secret: hop\r\n"
                "Keep-Alive: timeout=5\r\n"
                "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                "x-Gateway-APIKey: header-key-123\r\n"
                "X-Gateway-Application: spoofed\r\n"
                "X-Forwarded-For: 10.9.8.7\r\n"
                "X-Custom: kept\r\n"
                "Cookie: session=abc\r\n"
                "Origin: https://app.example\r\n"
            )
            request = upgrade_request("/a?a=1&x-Gateway-APIKey=query-key-456&b=2", host="gw.example", extra=extra)
            request = request.replace(b"Connection: Upgrade\r\n", b"", 1)
            reader, writer = await asyncio.open_connection(*gw.addresses["default"])
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.close()
            seen = backend.requests[0]
            headers = seen.headers
            assert seen.path == "/native?fixed=1&a=1&b=2"
            assert headers["X-Forwarded-For"] == "10.9.8.7, 127.0.0.1"
            assert headers["X-Forwarded-Proto"] == "ws"
            assert headers["X-Forwarded-Host"] == "gw.example"
            assert headers["X-Custom"] == "kept"
            assert headers["Cookie"] == "session=abc"
            assert headers["Origin"] == "https://app.example"
            assert headers["Host"] == backend.url.split("//")[1]
            for name in ("X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "x-Gateway-APIKey",
                         "X-Gateway-Application"):
                assert name not in headers, name
            raw = str(seen.headers) + seen.path
            assert "header-key-123" not in raw and "query-key-456" not in raw
            assert headers["Sec-WebSocket-Key"] != "dGhlIHNhbXBsZSBub25jZQ=="


async def test_slow_handshake_is_closed_after_the_handshake_timeout(tmp_path):
    """A client that does not finish its request head within handshake_timeout is disconnected,
    while other clients are served meanwhile."""
    async with recording_backend() as backend:
        port = PORT + "limits:\n  handshake_timeout: 0.3\n"
        config = write_config(tmp_path, port, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            reader, writer = await asyncio.open_connection(*gw.addresses["default"])
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n")
            async with connect(gw_url(gw, "/a")) as ws:
                await ws.send("meanwhile")
                assert await ws.recv() == "meanwhile"
            async with asyncio.timeout(10):
                assert await reader.read() == b""
            writer.close()


class HookRecorder(Policy):
    """Records the observer hooks and counts deferred releases."""

    type = "recorder"

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, str | None]] = []
        self.closes: list[int | None] = []
        self.released = 0

    def on_upgrade(self, request, conn):
        conn.defer(self._release)
        return None

    def _release(self) -> None:
        self.released += 1

    def on_outcome(self, conn, status, error, reason):
        self.outcomes.append((status, error))

    def on_close(self, conn, code, reason):
        self.closes.append(code)


class AsyncKeyCheck(Policy):
    """An asynchronous identify stand-in: the key `k` names application `bob`, anything else is 401."""

    type = "identify"

    async def on_upgrade(self, request, conn):
        await asyncio.sleep(0)
        if request.query.get("x-Gateway-APIKey") == ["k"] or request.headers.get("x-Gateway-APIKey") == "k":
            conn.application = ApplicationRef("bob", "api_key")
            return None
        return Rejection(401, "unauthorized", "no registered application")


class Full(Policy):
    type = "throttle"

    def on_upgrade(self, request, conn):
        return Rejection(503, "throttled", "too many connections", (("Retry-After", "7"),))


class Broken(Policy):
    type = "broken"

    def on_upgrade(self, request, conn):
        raise RuntimeError("bug")


def chains(**by_api):
    return lambda loaded, config, apps, state: list(by_api.get(loaded.model.name, []))


async def test_policy_rejections_statuses_bodies_and_release(tmp_path):
    """Policies run in chain order: 401 and 503 (with Retry-After) from their rejections, 500 from a raising
    policy; outcomes reach every policy, the identified application goes upstream, and releases run once."""
    recorder = HookRecorder()

    async with recording_backend() as backend:
        config = write_config(
            tmp_path,
            PORT,
            api_yaml("Key", "/key", backend.url + "/"),
            api_yaml("Full", "/full", backend.url + "/"),
            api_yaml("Broken", "/broken", backend.url + "/"),
        )
        build = chains(Key=[recorder, AsyncKeyCheck()], Full=[recorder, Full()], Broken=[recorder, Broken()])
        async with running_gateway(config, build_chain=build) as gw:
            response = await http_request(gw_url(gw, "/key"), upgrade_request("/key?x-Gateway-APIKey=bad"))
            assert response.status == 401
            assert response.json() == {"error": "unauthorized", "reason": "no registered application"}
            assert b"bad" not in response.body
            response = await http_request(gw_url(gw, "/full"), upgrade_request("/full"))
            assert response.status == 503
            assert response.headers["retry-after"] == "7"
            response = await http_request(gw_url(gw, "/broken"), upgrade_request("/broken"))
            assert response.status == 500
            assert not backend.requests, "no refused upgrade reached the upstream"
            async with connect(gw_url(gw, "/key?x-Gateway-APIKey=k")) as ws:
                await ws.send("in")
                assert await ws.recv() == "in"
                counts = gw.registry.counts()
                assert counts["applications"] == {"bob": 1}
            assert backend.headers["X-Gateway-Application"] == "bob"
            assert backend.requests[0].path == "/"
            await eventually(lambda: not gw.registry.live)
    assert recorder.outcomes == [(401, "unauthorized"), (503, "throttled"), (500, "internal_error"), (101, None)]
    assert recorder.closes == [1000]
    assert recorder.released == 4


async def test_client_leaving_during_the_upgrade_drops_the_upstream_and_releases(tmp_path):
    """A client that disconnects while the upstream handshake is pending: the upstream connection is
    dropped, the policies see a 499 outcome and every release runs once."""
    recorder = HookRecorder()
    upstream_gone = asyncio.Event()
    upstream_connected = asyncio.Event()

    async def respond(reader, writer):
        upstream_connected.set()
        while await reader.read(65536):
            pass
        upstream_gone.set()

    async with raw_backend(respond) as (url, _):
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", url + "/"))
        async with running_gateway(config, build_chain=chains(A=[recorder])) as gw:
            reader, writer = await asyncio.open_connection(*gw.addresses["default"])
            writer.write(upgrade_request("/a"))
            async with asyncio.timeout(10):
                await upstream_connected.wait()
            writer.transport.abort()
            async with asyncio.timeout(10):
                await upstream_gone.wait()
            await eventually(lambda: not gw.registry.live)
    assert recorder.outcomes == [(499, "client_gone")]
    assert recorder.released == 1
