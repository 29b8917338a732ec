"""Message routes on a live gateway: real WebSocket upstreams (websockets) and a real HTTP backend (aiohttp.web)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiohttp import web
from support import (
    PORT,
    TIMEOUT,
    app_yaml,
    eventually,
    gw_url,
    http_request,
    logged,
    recording_backend,
    running_gateway,
    scrape,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass
class HTTPBackend:
    """What a test HTTP backend saw: (path, headers, body) per request."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == path]


Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def http_backend(handler: Handler | None = None, tls: Any = None) -> AsyncIterator[HTTPBackend]:
    """An aiohttp.web server on 127.0.0.1:0 that records every request; answers as ``handler`` says (default:
    200 with ``echo:`` and the body, as text)."""
    backend = HTTPBackend()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        backend.requests.append((request.path, dict(request.headers), body))
        backend.arrived.set()
        if handler is not None:
            return await handler(request, body)
        return web.Response(text="echo:" + body.decode(), content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        await runner.cleanup()


def routed_api(routes: str, extra: str = "") -> str:
    return f"""---
kind: API
name: Chat
path: /chat
ports: [default]
route_selection:
  expression: action
{extra}routes:
{routes}"""


async def tagged(tag: str, ws: ServerConnection) -> None:
    """A WebSocket upstream that answers each message with ``tag:`` and the message."""
    async for message in ws:
        await ws.send(f"{tag}:{message}")


async def test_three_actions_reach_three_backends_in_order_and_default_catches_the_rest(tmp_path):
    """join and leave go to two WebSocket upstreams, say to an HTTP backend, anything else to $default; each
    route's answers come back in the order its messages were sent."""
    async with recording_backend(lambda ws: tagged("A", ws)) as a, \
            recording_backend(lambda ws: tagged("B", ws)) as b, \
            recording_backend(lambda ws: tagged("D", ws)) as d, http_backend() as h:
        routes = f"""  - key: join
    integration: {{websocket: {{url: "{a.url}/a"}}}}
  - key: leave
    integration: {{websocket: {{url: "{b.url}/b"}}}}
  - key: say
    integration: {{http: {{url: "{h.url}/say"}}}}
  - key: $default
    integration: {{websocket: {{url: "{d.url}/d"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                sent = {"join": [], "leave": [], "say": [], "other": []}
                for i in range(5):
                    for action in ("join", "leave", "say", "other"):
                        message = json.dumps({"action": action, "n": i})
                        sent[action].append(message)
                        await ws.send(message)
                await ws.send("not json")
                got: list[str] = []
                async with asyncio.timeout(TIMEOUT):
                    while len(got) < 21:
                        got.append(await ws.recv())
            assert [m for m in got if m.startswith("A:")] == [f"A:{m}" for m in sent["join"]]
            assert [m for m in got if m.startswith("B:")] == [f"B:{m}" for m in sent["leave"]]
            assert [m for m in got if m.startswith("echo:")] == [f"echo:{m}" for m in sent["say"]]
            assert [m for m in got if m.startswith("D:")] == [f"D:{m}" for m in sent["other"]] + ["D:not json"]
            # One upstream connection per route and client connection, opened when first needed.
            assert len(a.requests) == len(b.requests) == len(d.requests) == 1
            path, headers, _ = h.requests[0]
            assert path == "/say"
            assert headers["X-Gateway-Route"] == "say" and headers["X-Gateway-API"] == "Chat"
            assert headers["X-Gateway-Connection-Id"] == a.headers["X-Gateway-Connection-Id"]
            assert headers["Content-Type"].startswith("text/plain")


async def test_no_route_without_default_is_dropped_with_the_configured_answer(tmp_path):
    """Without a $default route, a message no route takes gets `error_message` back and the connection stays."""
    async with recording_backend(lambda ws: tagged("A", ws)) as a:
        routes = f"""  - key: join
    integration: {{websocket: {{url: "{a.url}/a"}}}}
"""
        extra = "  error_message: '{\"error\": \"no route\"}'\n"
        config = write_config(tmp_path, PORT, routed_api(routes, extra))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send(json.dumps({"action": "nope"}))
                assert await ws.recv() == '{"error": "no route"}'
                await ws.send(json.dumps({"action": "join"}))
                assert await ws.recv() == 'A:{"action": "join"}'
            counts = await scrape(gw)
            assert counts.value("wsgate_integration_errors_total", api="Chat", reason="no_route") == 1


async def test_http_500_replies_and_timeout_closes_as_configured(tmp_path):
    """A 500 from one HTTP route sends the configured error message (the connection goes on); a timeout on
    another closes the connection with the configured code; both are counted."""
    release = asyncio.Event()

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path == "/fail":
            return web.Response(status=500, text="boom")
        await release.wait()  # /slow: never answers in time
        return web.Response(text="late")

    async with http_backend(answer) as h:
        routes = f"""  - key: fail
    integration:
      http:
        url: {h.url}/fail
        on_error: {{action: reply, message: '{{"error": "backend", "status": {{status}}}}'}}
  - key: slow
    integration:
      http:
        url: {h.url}/slow
        timeout: 0.2
        on_error: {{action: close, close_code: 4504}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send(json.dumps({"action": "fail"}))
                assert json.loads(await ws.recv()) == {"error": "backend", "status": 500}
                await ws.send(json.dumps({"action": "slow"}))
                try:
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                except ConnectionClosed:
                    pass
                assert ws.close_code == 4504
            release.set()
            counts = await scrape(gw)
            assert counts.value("wsgate_integration_errors_total", api="Chat", route="fail", reason="status_500") == 1
            assert counts.value("wsgate_integration_errors_total", api="Chat", route="slow", reason="timeout") == 1


async def test_http_answer_is_sent_back_as_binary_per_content_type(tmp_path):
    """A 2xx answer with a binary content type reaches the client as a binary message; an empty 2xx body sends
    nothing."""

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path == "/empty":
            return web.Response(status=204)
        return web.Response(body=b"\x00\x01" + body[-3:], content_type="application/octet-stream")

    async with http_backend(answer) as h:
        routes = f"""  - key: bin
    integration: {{http: {{url: "{h.url}/bin"}}}}
  - key: empty
    integration: {{http: {{url: "{h.url}/empty"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send(json.dumps({"action": "empty"}))
                await ws.send(json.dumps({"action": "bin"}))
                assert await ws.recv() == b'\x00\x01n"}'
            assert [r[0] for r in h.requests] == ["/empty", "/bin"]


async def test_connect_and_disconnect_events_carry_the_connection_id(tmp_path):
    """$connect is POSTed before the 101 and $disconnect after the close, both with the connection id; a refused
    $connect refuses the upgrade with the configured status."""

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path == "/connect" and json.loads(body)["query"] == "deny=1":
            return web.Response(status=401)
        return web.Response(status=200)

    async with recording_backend(lambda ws: tagged("A", ws)) as a, http_backend(answer) as h:
        routes = f"""  - key: $connect
    integration: {{http: {{url: "{h.url}/connect", refuse_status: 401}}}}
  - key: $disconnect
    integration: {{http: {{url: "{h.url}/disconnect"}}}}
  - key: $default
    integration: {{websocket: {{url: "{a.url}/a", connect: at-upgrade}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                # at-upgrade: the route's upstream is open before the client sends anything.
                assert len(a.requests) == 1
                connect_id = a.headers["X-Gateway-Connection-Id"]
                await ws.send("hello")
                assert await ws.recv() == "A:hello"
            await eventually(lambda: bool(h.on("/disconnect")))
            (_, connect_headers, connect_body), = h.on("/connect")
            (_, disconnect_headers, disconnect_body), = h.on("/disconnect")
            assert connect_headers["X-Gateway-Connection-Id"] == connect_id
            assert json.loads(connect_body)["connection_id"] == connect_id
            assert disconnect_headers["X-Gateway-Connection-Id"] == connect_id
            event = json.loads(disconnect_body)
            assert event["event"] == "disconnect" and event["connection_id"] == connect_id and event["code"] == 1000
            response = await http_request(gw_url(gw, "/chat"), upgrade_request("/chat?deny=1"))
            assert response.status == 401
            assert response.json()["error"] == "connect_refused"
            assert len(a.requests) == 1  # the refused upgrade opened no route upstream


async def test_route_upstream_closing_leaves_the_client_and_reopens(tmp_path):
    """A route's upstream that closes does not close the client; the next message to it opens a new one."""

    async def once(ws: ServerConnection) -> None:
        message = await ws.recv()
        await ws.send(f"once:{message}")
        await ws.close(1000)

    async with recording_backend(once) as a:
        routes = f"""  - key: $default
    integration: {{websocket: {{url: "{a.url}/a"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send("one")
                assert await ws.recv() == "once:one"
                await eventually(lambda: len(a.closes) == 1)
                await ws.send("two")
                assert await ws.recv() == "once:two"
            assert len(a.requests) == 2


async def test_route_policies_run_after_the_apis_on_that_route_only(tmp_path):
    """A route's own validate-messages drops (with its error message) what the route's schema refuses; the other
    route, without that policy, passes the same shape."""
    async with recording_backend(lambda ws: tagged("A", ws)) as a, http_backend() as h:
        routes = f"""  - key: join
    integration: {{websocket: {{url: "{a.url}/a"}}}}
  - key: say
    integration: {{http: {{url: "{h.url}/say"}}}}
    policies:
      - type: validate-messages
        on_violation: drop
        error_message: '{{"error": "say needs text"}}'
"""
        extra = """messages:
  - name: say
    origin: client
    schema: {type: object, required: [action, text], properties: {action: {const: say}, text: {type: string}}}
  - name: join
    origin: client
    schema: {type: object, properties: {action: {const: join}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes).replace("routes:\n", extra + "routes:\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send('{"action": "say"}')
                assert await ws.recv() == '{"error": "say needs text"}'
                await ws.send('{"action": "say", "text": "hi"}')
                assert await ws.recv() == 'echo:{"action": "say", "text": "hi"}'
                await ws.send('{"action": "join"}')
                assert await ws.recv() == 'A:{"action": "join"}'
            assert [body for _, _, body in h.requests] == [b'{"action": "say", "text": "hi"}']


async def test_https_integration_with_configured_ca_and_credentials_from_the_environment(tmp_path, monkeypatch):
    """An https:// backend is verified against the route's CA file, gets the `{env: ...}` header's value, and that
    value appears in no log record."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    (tmp_path / "config").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "config" / "ca.pem"))
    secret = "route-secret-token-42"
    monkeypatch.setenv("SAY_TOKEN", secret)
    async with http_backend(tls=context) as h:
        routes = f"""  - key: say
    integration:
      http:
        url: "{h.url}/say"
        tls: {{ca_file: ca.pem}}
        headers: {{Authorization: {{env: SAY_TOKEN}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        with logged() as events:
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/chat")) as ws:
                    await ws.send('{"action": "say"}')
                    assert await ws.recv() == 'echo:{"action": "say"}'
        assert h.requests[0][1]["Authorization"] == secret
        assert events.entries and secret not in repr(events.entries)


async def test_http_requests_in_flight_are_bounded_per_api(tmp_path):
    """With `limits.max_http_requests: 1`, a second connection's request waits for the first to finish: the
    backend never sees two at once, and both get their answers."""
    release = asyncio.Event()
    in_flight = peak = 0

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return web.Response(text="ok:" + body.decode())

    async with http_backend(answer) as h:
        routes = f"""  - key: $default
    integration: {{http: {{url: "{h.url}/hold"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes, "limits: {max_http_requests: 1}\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as first, connect(gw_url(gw, "/chat")) as second:
                await first.send("one")
                await eventually(lambda: len(h.requests) == 1)
                await second.send("two")
                pool = gw.table.apis["Chat"].routes.http_client
                await eventually(lambda: bool(pool.slots._waiters))  # the second request waits for a slot
                assert len(h.requests) == 1
                release.set()
                assert await first.recv() == "ok:one"
                assert await second.recv() == "ok:two"
            assert peak == 1


async def test_disconnect_event_is_retried_until_the_backend_takes_it(tmp_path):
    """A $disconnect answered 503 twice is sent again (retries: 2) and the third attempt is taken; the failures
    are not the client's concern (its close was clean)."""
    attempts: list[int] = []

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        attempts.append(1)
        return web.Response(status=503 if len(attempts) < 3 else 200)

    async with recording_backend(lambda ws: tagged("A", ws)) as a, http_backend(answer) as h:
        routes = f"""  - key: $disconnect
    integration: {{http: {{url: "{h.url}/disconnect", retries: 2}}}}
  - key: $default
    integration: {{websocket: {{url: "{a.url}/a"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send("bye")
                assert await ws.recv() == "A:bye"
            assert ws.close_code == 1000
            await eventually(lambda: len(attempts) == 3)
            ids = {headers["X-Gateway-Connection-Id"] for _, headers, _ in h.requests}
            assert len(ids) == 1 and all(json.loads(body)["event"] == "disconnect" for _, _, body in h.requests)


async def test_http_answer_over_the_message_size_limit_is_a_failure(tmp_path):
    """An HTTP answer larger than the API's max_message_size is not sent on (nor read past the limit): the
    route's on_error reply goes to the client instead (status 0: no answer the client could get)."""

    async def answer(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(text="x" * 5000)

    async with http_backend(answer) as h:
        routes = f"""  - key: $default
    integration:
      http:
        url: "{h.url}/big"
        on_error: {{action: reply, message: 'failed {{status}}'}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes, "limits: {max_message_size: 1000}\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send("big please")
                assert await ws.recv() == "failed 0"
            counts = await scrape(gw)
            assert counts.value("wsgate_integration_errors_total", api="Chat", reason="too_large") == 1


async def test_integrations_name_the_application_and_never_see_its_key(tmp_path):
    """With identify by API key, $connect and a routed message carry X-Gateway-Application; the key the client
    sent in the query is in neither the $connect body nor any header the backend gets."""
    key = "routes-app-key-0042"
    async with http_backend() as h:
        routes = f"""  - key: $connect
    integration: {{http: {{url: "{h.url}/connect"}}}}
  - key: $default
    integration: {{http: {{url: "{h.url}/default"}}}}
"""
        api = routed_api(routes).replace("ports: [default]\n", "ports: [default]\npolicies:\n  - type: identify\n")
        config = write_config(tmp_path, PORT, api, app_yaml(key, apis="[Chat]"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, f"/chat?room=1&x-Gateway-APIKey={key}")) as ws:
                await ws.send("hi")
                assert await ws.recv() == "echo:hi"
        (_, connect_headers, connect_body), = h.on("/connect")
        (_, message_headers, _), = h.on("/default")
        assert connect_headers["X-Gateway-Application"] == message_headers["X-Gateway-Application"] == "acme"
        assert json.loads(connect_body)["application"] == "acme"
        assert key not in repr(h.requests)
        assert json.loads(connect_body)["query"].startswith("room=1")


async def test_server_stage_reply_is_not_routed_as_a_client_message(tmp_path):
    """An API's validate-messages dropping a route upstream's bad message (with an error_message) sends that reply
    nowhere: it is not taken for a client message and routed back to an upstream."""
    received: list[str] = []

    async def upstream(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(str(message))
            if message == "go":
                await ws.send("not json")
                await ws.send('{"kind": "good"}')
            else:
                await ws.send(json.dumps({"kind": "good", "seen": received}))

    async with recording_backend(upstream) as a:
        routes = f"""  - key: $default
    integration: {{websocket: {{url: "{a.url}/a"}}}}
"""
        extra = """policies:
  - type: validate-messages
    client: off
    server: enforce
    on_violation: drop
    error_message: 'bad message'
messages:
  - name: good
    origin: server
    schema: {type: object, required: [kind], properties: {kind: {const: good}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes).replace("routes:\n", extra + "routes:\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send("go")
                assert json.loads(await ws.recv()) == {"kind": "good"}
                await ws.send("again")
                assert json.loads(await ws.recv()) == {"kind": "good", "seen": ["go", "again"]}


async def test_no_route_close_closes_with_1008(tmp_path):
    """With `no_route: close` and no $default route, a binary message (which no named route can take) closes the
    connection with 1008."""
    async with recording_backend(lambda ws: tagged("A", ws)) as a:
        routes = f"""  - key: join
    integration: {{websocket: {{url: "{a.url}/a"}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes, "  no_route: close\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/chat")) as ws:
                await ws.send(json.dumps({"action": "join"}))
                assert await ws.recv() == 'A:{"action": "join"}'
                await ws.send(b"\x01\x02")
                try:
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                except ConnectionClosed:
                    pass
            assert (ws.close_code, ws.close_reason) == (1008, "no route for this message")
            await eventually(lambda: len(a.closes) == 1)  # the route's upstream is closed with the client


async def test_at_upgrade_route_that_cannot_open_refuses_the_upgrade_with_502(tmp_path):
    """A route opened at the upgrade whose upstream refuses its handshake fails the client's upgrade with 502;
    the other at-upgrade route, opened alongside, is closed again."""

    def refuse(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "no\n")

    async with recording_backend(lambda ws: tagged("A", ws)) as a, \
            serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as refusing:
        port = refusing.sockets[0].getsockname()[1]
        routes = f"""  - key: join
    integration: {{websocket: {{url: "{a.url}/a", connect: at-upgrade}}}}
  - key: leave
    integration: {{websocket: {{url: "ws://127.0.0.1:{port}/b", connect: at-upgrade}}}}
"""
        config = write_config(tmp_path, PORT, routed_api(routes))
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/chat"), upgrade_request("/chat"))
            assert response.status == 502
            assert "route leave" in response.json()["reason"]
            await eventually(lambda: len(a.closes) == 1)
