"""What the edge refuses before any route is looked up, and the forwarding headers the upstream gets.

Dot segments in the path (any spelling) and Hosts with an empty label are 400; ``Forwarded`` and ``X-Real-IP``
are the gateway's, like ``X-Forwarded-*``. Real gateway, real upstream that records each request.
"""

from __future__ import annotations

import asyncio

import pytest
from config_helpers import run_check, write
from support import PORT, TIMEOUT, api_yaml, recording_backend, running_gateway, upgrade_request, write_config
from websockets.asyncio.client import connect

from gateway.build.routes import MalformedHost, request_host
from gateway.wire.request_head import has_dot_segment

# Every spelling of a dot segment an upstream (or a normalising proxy behind it) might resolve.
DOTTED = [
    "/r/../admin",
    "/r/./admin",
    "/r/..",
    "/r/%2e%2e/admin",
    "/r/%2E%2e/admin",
    "/r/.%2e/admin",
    "/r/%2e./admin",
    "/r/..%2fadmin",
    "/r/..%2Fadmin",
    "/r/%2e%2e%2fadmin",
    "/r/..\\admin",
    "/r/..%5cadmin",
    "/r/a\\..\\..\\admin",
    "/r/..;x/admin",
    "/r/%2e%2e;x=1/admin",
    "/r/%252e%252e/admin",
    "/r/%25252e%25252e/admin",
    "/r/room/../../admin",
    "/r/%2e",
    "/n/../admin",  # the prefix route that does not strip
    "/x/../r/a",  # climbs out of one route into another's path
]
PLAIN = ["/r/a.b", "/r/...", "/r/.hidden", "/r/a..b", "/r/%2e%2e%2e", "/r/a%2Fb", "/r/a;b", "/r/a%20b", "/r"]


@pytest.mark.parametrize("path", DOTTED)
def test_dot_segments_are_found_in_every_spelling(path):
    """Each spelling of '.' or '..' (escaped, double-escaped, with `\\` or an escaped `/`, with `;` params)."""
    assert has_dot_segment(path)


@pytest.mark.parametrize("path", PLAIN)
def test_dots_inside_a_name_are_no_segment(path):
    """Dots within a segment name, three dots and escaped separators without dots are ordinary paths."""
    assert not has_dot_segment(path)


async def upgrade_status(gw, request: bytes) -> int:
    """Send a raw upgrade head to the gateway's default port; the status of its answer."""
    reader, writer = await asyncio.open_connection(*gw.addresses["default"])
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


def unusual(request: bytes) -> bytes:
    """The same request in a shape the fast head parser declines (a header twice), so websockets parses it."""
    return request.replace(b"\r\n\r\n", b"\r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\n", 1)


@pytest.mark.parametrize("shape", ["plain", "unusual"])
async def test_a_dot_segment_is_refused_and_never_reaches_an_upstream(tmp_path, shape):
    """Every dotted path gets 400 on both head parsers and the upstream records nothing; a plain path still
    reaches `/up/room` through the stripping prefix route."""
    reshape = unusual if shape == "unusual" else (lambda request: request)
    async with recording_backend() as backend:
        config = write_config(
            tmp_path, PORT,
            api_yaml("R", "/r", backend.url + "/up", extra="match: prefix\nstrip_prefix: true"),
            api_yaml("N", "/n", backend.url + "/base", extra="match: prefix"),
            api_yaml("X", "/x", backend.url + "/x"),
        )
        async with running_gateway(config) as gw:
            for path in DOTTED:
                assert await upgrade_status(gw, reshape(upgrade_request(path))) == 400, path
            assert backend.requests == []
            assert await upgrade_status(gw, reshape(upgrade_request("/r/room?q=1"))) == 101
            await backend.connected.wait()
            assert [r.path for r in backend.requests] == ["/up/room?q=1"]


@pytest.mark.parametrize("value", ["a.example..", ".a.example", "a..example", ".", "..", "a.example..:80",
                                   "a.example:x", "a.example:80:80", "[::1", "[::1]x", ":80"])
def test_a_host_with_an_empty_label_or_a_bad_port_is_malformed(value):
    """Empty labels (leading dot, two dots, two trailing dots), a non-numeric port, an open bracket: refused."""
    with pytest.raises(MalformedHost):
        request_host(value)


def test_one_trailing_dot_and_a_port_name_the_same_host():
    """`a.example.` is the fully qualified form of `a.example`, with or without a port; case does not count."""
    assert request_host("A.Example.") == request_host("a.example.:8080") == request_host("a.example:") == "a.example"
    assert request_host("[::1]:80") == "[::1]"


async def test_a_host_with_an_empty_label_gets_400_and_routes_nowhere(tmp_path):
    """`a.example..`, `.a.example`, `a..example` answer 400 on a port with a host route and an any-host route;
    `a.example.` reaches the host route."""
    async with recording_backend() as mine, recording_backend() as other:
        config = write_config(
            tmp_path, PORT,
            api_yaml("A", "/ws", mine.url + "/a", extra="hosts: [a.example]"),
            api_yaml("Any", "/ws", other.url + "/any"),
        )
        async with running_gateway(config) as gw:
            for host in ("a.example..", ".a.example", "a..example", "a.example..:80"):
                for shape in (lambda request: request, unusual):
                    assert await upgrade_status(gw, shape(upgrade_request("/ws", host=host))) == 400, host
            assert mine.requests == [] and other.requests == []
            assert await upgrade_status(gw, upgrade_request("/ws", host="a.example.")) == 101
            await mine.connected.wait()
            assert [r.path for r in mine.requests] == ["/a"] and other.requests == []


async def test_forwarded_and_x_real_ip_are_the_gateways(tmp_path):
    """A client's X-Real-IP is replaced by its address; its well-formed `Forwarded` keeps its hops and gets the
    gateway's element (for, proto, host) last, like X-Forwarded-For; a malformed one is dropped."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            address, number = gw.addresses["default"]
            url = f"ws://{address}:{number}/a"
            spoofed = {"X-Real-IP": "6.6.6.6", "Forwarded": 'for=6.6.6.6;proto=https;host="bank.example"',
                       "X-Forwarded-Proto": "https"}
            async with connect(url, additional_headers=spoofed) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            headers = backend.requests[-1].headers
            mine = f'for=127.0.0.1;proto=ws;host="{address}:{number}"'
            assert headers.get_all("X-Real-IP") == ["127.0.0.1"]
            assert headers.get_all("Forwarded") == [f'for=6.6.6.6;proto=https;host="bank.example", {mine}']
            assert headers.get_all("X-Forwarded-Proto") == ["ws"]
            # An open quote would make a parser read the gateway's element as part of the client's value.
            for bad in ('for="6.6.6.6', "for=6.6.6.6 ;proto=ws", "garbage", 'for=a"b'):
                async with connect(url, additional_headers={"Forwarded": bad}) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
                assert backend.requests[-1].headers.get_all("Forwarded") == [mine], bad


async def test_an_api_key_header_in_another_spelling_is_not_forwarded(tmp_path):
    """`X_Gateway_APIKey` (which some servers read as `X-Gateway-APIKey`) never reaches the upstream."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            address, number = gw.addresses["default"]
            async with connect(f"ws://{address}:{number}/a",
                               additional_headers={"X_Gateway_APIKey": "secret-key-1", "X-Kept": "1"}) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            headers = backend.requests[-1].headers
            assert headers["X-Kept"] == "1" and "secret-key-1" not in str(headers)


@pytest.mark.parametrize("name", ["Forwarded", "X-Real-IP"])
def test_forwarding_headers_cannot_be_configured(tmp_path, name):
    """`upstream.headers` may not set Forwarded or X-Real-IP: the gateway writes them."""
    headers = f"upstream:\n  headers:\n    {name}: {{env: X}}\n"
    api = api_yaml("A", "/a", "ws://127.0.0.1:9/").replace("upstream:\n", headers, 1)
    write(tmp_path, "gateway.yaml", PORT + api)
    result = run_check(tmp_path)
    assert result.config is None
    assert any("set by the gateway itself" in (d.summary + (d.detail or "")) for d in result.diagnostics), \
        result.diagnostics
