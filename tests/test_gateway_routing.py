"""Routing by port and exact path, refusals before any API is involved, and the admin endpoints."""

from __future__ import annotations

from support import (
    PORT,
    api_yaml,
    echo_backend,
    echo_gateway,
    eventually,
    gw_url,
    http_request,
    running_gateway,
    scrape,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

from gateway.build.routes import RouteTable
from gateway.config.tree import Config


async def test_exact_path_routes_and_trailing_slash_counts(tmp_path):
    """An API at /echo is reached at exactly /echo; /echo/ and /other answer 404 with a JSON body."""
    async with echo_gateway(tmp_path) as gw:
        async with connect(gw_url(gw, "/echo")) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
        for path in ("/echo/", "/other", "/ech"):
            response = await http_request(gw_url(gw, path), upgrade_request(path))
            assert response.status == 404
            assert response.headers["connection"] == "close"
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"] == "not_found"


async def test_query_string_does_not_change_the_route(tmp_path):
    """A query string is not part of the routed path."""
    async with echo_gateway(tmp_path) as gw:
        async with connect(gw_url(gw, "/echo?a=1")) as ws:
            await ws.send("q")
            assert await ws.recv() == "q"


async def test_plain_get_on_an_api_path_is_426(tmp_path):
    """A plain HTTP GET on an API path is answered 426 Upgrade Required with a JSON body."""
    async with echo_gateway(tmp_path) as gw:
        response = await http_request(gw_url(gw, "/echo"), path="/echo")
        assert response.status == 426
        assert response.headers["upgrade"] == "websocket"
        assert response.json()["error"] == "upgrade_required"
        # An Upgrade to anything but websocket is refused the same way.
        h2c = upgrade_request("/echo").replace(b"Upgrade: websocket", b"Upgrade: h2c")
        assert (await http_request(gw_url(gw, "/echo"), h2c)).status == 426


async def test_malformed_handshake_is_400_and_oversized_head_is_431(tmp_path):
    """A websocket upgrade without a key or a non-HTTP head is 400; a head past 16 KiB or with too many
    headers is 431."""
    async with echo_gateway(tmp_path) as gw:
        no_key = upgrade_request("/echo").replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"")
        response = await http_request(gw_url(gw, "/echo"), no_key)
        assert response.status == 400
        huge = b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * (20 * 1024)
        response = await http_request(gw_url(gw, "/echo"), huge)
        assert response.status == 431
        many = upgrade_request("/echo", extra="".join(f"X-H{i}: v\r\n" for i in range(200)))
        assert (await http_request(gw_url(gw, "/echo"), many)).status == 431
        garbage = b"\x16\x03\x01 not http\r\n\r\n"
        assert (await http_request(gw_url(gw, "/echo"), garbage)).status == 400


async def test_api_on_two_ports_and_port_isolation(tmp_path):
    """An API is served only on the ports it names."""
    async with echo_backend() as backend:
        other_port = PORT.replace("name: default", "name: other")
        config = write_config(
            tmp_path,
            PORT,
            other_port,
            api_yaml("A", "/a", backend.url("/echo/"), ports="[default, other]"),
            api_yaml("B", "/b", backend.url("/echo/"), ports="[other]"),
        )
        async with running_gateway(config) as gw:
            for port in ("default", "other"):
                async with connect(gw_url(gw, "/a", port)) as ws:
                    await ws.send(port)
                    assert await ws.recv() == port
            assert (await http_request(gw_url(gw, "/b"), upgrade_request("/b"))).status == 404
            async with connect(gw_url(gw, "/b", "other")) as ws:
                await ws.send("b")
                assert await ws.recv() == "b"


def test_round_robin_rotates_and_straight_through_takes_the_first(tmp_path):
    """Round-robin routing alternates endpoints; straight-through always picks the first."""
    config: Config = write_config(
        tmp_path,
        PORT,
        api_yaml("RR", "/rr", "ws://a.example/", "ws://b.example/",
                 extra="policies:\n  - type: routing\n    strategy: round-robin"),
        api_yaml("ST", "/st", "ws://a.example/", "ws://b.example/"),
    )
    table = RouteTable.compile(config, None, None, build_chain=lambda *args: [])
    rr = table.lookup("default", "/rr")
    st = table.lookup("default", "/st")
    assert [rr.pick_endpoint().host for _ in range(4)] == ["a.example", "b.example", "a.example", "b.example"]
    assert [st.pick_endpoint().host for _ in range(3)] == ["a.example"] * 3
    assert st.fast_path and rr.fast_path
    assert table.lookup("default", "/st/") is None


async def test_admin_endpoints(tmp_path):
    """The admin listener answers healthz, readyz, config (digest, generation, names) and live connection counts."""
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with running_gateway(config) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            assert (await http_request(admin, path="/healthz")).status == 200
            assert (await http_request(admin, path="/readyz")).status == 200
            body = (await http_request(admin, path="/config")).json()
            assert body["digest"] == config.digest()
            assert body["generation"] == 1
            assert body["resources"]["API"] == ["Echo"]
            assert (await http_request(admin, path="/nope")).status == 404
            async with connect(gw_url(gw, "/echo")) as ws:
                await ws.send("x")
                await ws.recv()
                counts = (await http_request(admin, path="/connections")).json()
                assert counts["total"] == 1
                assert counts["apis"] == {"Echo": 1}
                assert counts["ports"] == {"default": 1}
            await eventually(lambda: not gw.registry.live)
            counts = (await http_request(admin, path="/connections")).json()
            assert counts["total"] == 0


async def test_admin_metrics_in_prometheus_format(tmp_path):
    """/metrics counts upgrades by status, active and closed connections, messages both ways and reloads."""
    async with echo_gateway(tmp_path, paths=[tmp_path / "config"]) as gw:
        admin = f"http://127.0.0.1:{gw.admin.port}"
        assert (await http_request(gw_url(gw, "/nope"), upgrade_request("/nope"))).status == 404
        async with connect(gw_url(gw, "/echo")) as ws:
            for text in ("one", "two"):
                await ws.send(text)
                await ws.recv()
            response = await http_request(admin, path="/metrics")
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            live = await scrape(gw)
            assert live.value("wsgate_connections_active", port="default", api="Echo", application="") == 1
            assert live.value("wsgate_messages_total", api="Echo", direction="client") == 2
        await eventually(lambda: not gw.registry.live)
        await gw.reload("test")
        after = await scrape(gw)
        assert after.value("wsgate_upgrades_total", port="default", api="Echo", status="101") == 1
        assert after.value("wsgate_upgrades_total", port="default", api="", status="404") == 1
        assert after.value("wsgate_connections_closed_total", api="Echo", code="1000") == 1
        assert after.value("wsgate_messages_total", api="Echo", direction="server") == 2
        assert after.value("wsgate_message_bytes_total", api="Echo", direction="client") == 6
        assert after.value("wsgate_reloads_total", outcome="unchanged") == 1
        assert after.value("wsgate_connections_active", port="default", api="Echo", application="") == 0
        assert after.value("wsgate_config_generation") == 1


async def test_port_connection_cap_refuses_with_503(tmp_path):
    """Past a port's max_connections, a new connection is refused with 503 and Retry-After while existing ones
    keep working."""
    async with echo_backend() as backend:
        port = PORT + "limits:\n  max_connections: 1\n"
        config = write_config(tmp_path, port, api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo")) as ws:
                response = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo"))
                assert response.status == 503
                assert response.headers["retry-after"] == "5"  # as the throttle's and the upstream's 503s
                assert response.json() == {"error": "unavailable", "reason": "too many connections on this port"}
                await ws.send("still here")
                assert await ws.recv() == "still here"
            # Once the first connection is gone, its slot is free again.
            await eventually(lambda: not gw.registry.live)
            for _ in range(3):
                async with connect(gw_url(gw, "/echo")) as ws:
                    await ws.send("next")
                    assert await ws.recv() == "next"
                await eventually(lambda: not gw.registry.live)
            assert (await http_request(gw_url(gw, "/nope"), upgrade_request("/nope"))).status == 404
            await eventually(lambda: gw.servers and all(lst.count == 0 for lst in gw.listeners.values()))


async def test_reload_routes_new_upgrades_and_keeps_live_connections(tmp_path):
    """After a reload, new upgrades follow the new table while a connection accepted before keeps relaying."""
    async with echo_backend() as backend:
        old = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url("/echo/")))
        async with running_gateway(old) as gw:
            async with connect(gw_url(gw, "/a")) as ws:
                new = write_config(tmp_path, PORT, api_yaml("B", "/b", backend.url("/echo/")))
                outcome = await gw.reload()
                assert outcome.ok and outcome.generation == 2 and outcome.digest == new.digest()
                assert (await http_request(gw_url(gw, "/a"), upgrade_request("/a"))).status == 404
                async with connect(gw_url(gw, "/b")) as other:
                    await other.send("new")
                    assert await other.recv() == "new"
                await ws.send("old")
                assert await ws.recv() == "old"
            admin = f"http://127.0.0.1:{gw.admin.port}"
            assert (await http_request(admin, path="/config")).json()["generation"] == 2
