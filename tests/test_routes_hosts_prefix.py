"""Routes beyond port + exact path: several hosts on one port (plain and TLS with SNI), prefixes and strip_prefix."""

from __future__ import annotations

import ssl

import pytest
import trustme
from config_helpers import found, run_check, write
from support import (
    PORT,
    api_yaml,
    gw_url,
    http_request,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

from gateway.build.routes import request_host
from gateway.config.models import prefix_matches


def via(gw, host: str, path: str, scheme: str = "ws", **kwargs):
    """A real client for ``scheme://host/path`` that dials the gateway's port (Host header and SNI say ``host``)."""
    address, number = gw.addresses["default"]
    return connect(f"{scheme}://{host}:{number}{path}", host=address, port=number, **kwargs)


def test_request_host_and_prefix_rules():
    """Host headers lose port and case; a prefix covers itself and what lies below a '/', never a longer name."""
    assert request_host("Chat.Example.com:8443") == "chat.example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host(None) is None
    assert prefix_matches("/chat", "/chat") and prefix_matches("/chat", "/chat/room")
    assert not prefix_matches("/chat", "/chatter")
    assert prefix_matches("/chat/", "/chat/room") and not prefix_matches("/chat/", "/chat")


async def test_two_hosts_share_a_port_and_a_path(tmp_path):
    """Two APIs at /ws on one port are told apart by Host; a host claimed by neither falls to the any-host API."""
    async with recording_backend() as a, recording_backend() as b, recording_backend() as other:
        config = write_config(
            tmp_path, PORT,
            api_yaml("A", "/ws", a.url + "/a", extra="hosts: [a.example]"),
            api_yaml("B", "/ws", b.url + "/b", extra="hosts: ['*.b.example']"),
            api_yaml("Any", "/ws", other.url + "/any"),
        )
        async with running_gateway(config) as gw:
            for host, backend, path in (("a.example", a, "/a"), ("x.b.example", b, "/b"),
                                        ("c.example", other, "/any")):
                async with via(gw, host, "/ws") as ws:
                    await ws.send(host)
                    assert await ws.recv() == host
                assert backend.requests[-1].path == path
                assert backend.headers["X-Forwarded-Host"].startswith(host)
            assert len(a.requests) == len(b.requests) == len(other.requests) == 1


async def test_host_routes_without_a_fallback_answer_404_for_other_hosts(tmp_path):
    """With only host-specific APIs on a port, an unknown Host is 404 (nothing is served to the wrong host)."""
    async with recording_backend() as a:
        config = write_config(tmp_path, PORT, api_yaml("A", "/ws", a.url + "/a", extra="hosts: [a.example]"))
        async with running_gateway(config) as gw:
            async with via(gw, "a.example", "/ws") as ws:
                await ws.send("mine")
                assert await ws.recv() == "mine"
            response = await http_request(gw_url(gw, "/ws"), upgrade_request("/ws", host="b.example"))
            assert response.status == 404


def _issue(ca: trustme.CA, directory, name: str, *hosts: str) -> tuple[str, str]:
    cert = ca.issue_cert(*hosts)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def _trusting(*cas: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        ca.configure_trust(context)
    return context


async def test_sni_picks_each_hosts_certificate_and_renewal_works_per_host(tmp_path):
    """On one wss port, each host gets its own certificate by SNI (verified by name), the default one serves the
    rest, and renewing one host's certificate on reload changes only that host's."""
    ca, renewed_ca = trustme.CA(), trustme.CA()
    default = _issue(ca, tmp_path, "default", "localhost")
    a_files = _issue(ca, tmp_path, "a", "a.example")
    b_files = _issue(ca, tmp_path, "b", "b.example")
    tls_port = PORT + (f"tls:\n  cert: {default[0]}\n  key: {default[1]}\n  sni:\n"
                       f"    - hosts: [a.example]\n      cert: {a_files[0]}\n      key: {a_files[1]}\n"
                       f"    - hosts: [b.example]\n      cert: {b_files[0]}\n      key: {b_files[1]}\n")

    async with recording_backend() as a, recording_backend() as b:
        config = write_config(tmp_path, tls_port,
                              api_yaml("A", "/ws", a.url + "/a", extra="hosts: [a.example]"),
                              api_yaml("B", "/ws", b.url + "/b", extra="hosts: [b.example]"))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            for host, backend in (("a.example", a), ("b.example", b)):
                async with via(gw, host, "/ws", scheme="wss", ssl=_trusting(ca)) as ws:
                    await ws.send(host)
                    assert await ws.recv() == host
                assert len(backend.requests) == 1
            # No SNI match: the default certificate, which is not valid for a.example's name.
            with pytest.raises(ssl.SSLCertVerificationError):
                await via(gw, "c.example", "/ws", scheme="wss", ssl=_trusting(ca))

            _issue(renewed_ca, tmp_path, "b", "b.example")
            outcome = await gw.reload("test")
            assert outcome.ok and not outcome.noop and not outcome.problems
            async with via(gw, "b.example", "/ws", scheme="wss", ssl=_trusting(renewed_ca)) as ws:
                await ws.send("renewed")
                assert await ws.recv() == "renewed"
            with pytest.raises(ssl.SSLCertVerificationError):
                await via(gw, "b.example", "/ws", scheme="wss", ssl=_trusting(ca))
            async with via(gw, "a.example", "/ws", scheme="wss", ssl=_trusting(ca)) as ws:
                await ws.send("unchanged")
                assert await ws.recv() == "unchanged"


async def test_prefix_routes_with_and_without_strip_and_the_longest_prefix_wins(tmp_path):
    """A prefix API serves its subtree: with strip_prefix the rest joins the endpoint's path, without it the whole
    request path does; the longest prefix wins; exact paths keep their trailing-slash rule."""
    async with recording_backend() as backend:
        config = write_config(
            tmp_path, PORT,
            api_yaml("Chat", "/chat", backend.url + "/ws", extra="match: prefix\nstrip_prefix: true"),
            api_yaml("VIP", "/chat/vip", backend.url + "/vip/", extra="match: prefix\nstrip_prefix: true"),
            api_yaml("Raw", "/raw", backend.url + "/base", extra="match: prefix"),
            api_yaml("Exact", "/echo", backend.url + "/echo/"),
        )
        async with running_gateway(config) as gw:
            expected = {
                "/chat": "/ws",
                "/chat/room1?x=1": "/ws/room1?x=1",
                "/chat/vip/gold": "/vip/gold",
                "/raw/a/b": "/base/raw/a/b",
                "/echo": "/echo/",
            }
            for path, upstream_path in expected.items():
                async with connect(gw_url(gw, path)) as ws:
                    await ws.send(path)
                    assert await ws.recv() == path
                assert backend.requests[-1].path == upstream_path, path
            for path in ("/chatter", "/echo/", "/ech", "/rawx"):
                assert (await http_request(gw_url(gw, path), upgrade_request(path))).status == 404, path


ROUTE_PORT = "kind: Port\nname: default\nport: 8082\n"


def _api(name: str, extra: str = "", path: str = "/ws") -> str:
    return (f"kind: API\nname: {name}\npath: {path}\nports: [default]\n{extra}"
            "upstream:\n  endpoints:\n    - url: ws://backend.example/ws\n")


def test_validate_reports_equal_route_claims_at_both_and_accepts_ordered_overlaps(tmp_path):
    """Two APIs claiming the same prefix (or the same host and path) is WSG111 at the second, noting the first;
    a longer prefix, an exact path under a prefix, or another host is fine."""
    write(tmp_path, "ports.yaml", ROUTE_PORT)
    write(tmp_path, "apis/a.yaml", _api("A", "match: prefix\n"))
    write(tmp_path, "apis/b.yaml", _api("B", "match: prefix\n"))
    write(tmp_path, "apis/c.yaml", _api("C", "match: prefix\n", path="/ws/deeper"))
    write(tmp_path, "apis/d.yaml", _api("D"))
    write(tmp_path, "apis/e.yaml", _api("E", "hosts: [a.example]\nmatch: prefix\n"))
    write(tmp_path, "apis/f.yaml", _api("F", "hosts: [b.example, a.example]\n", path="/x"))
    write(tmp_path, "apis/g.yaml", _api("G", "hosts: [A.example]\n", path="/x"))
    result = run_check(tmp_path)
    errors = [d for d in found(result) if d[0].startswith("WSG1")]
    assert errors == [("WSG111", "b.yaml", 3, 7), ("WSG111", "g.yaml", 3, 7)]
    by_file = {d.location.file.rsplit("/", 1)[-1]: d for d in result.diagnostics if d.code == "WSG111"}
    assert by_file["b.yaml"].related[0].location.file.endswith("a.yaml")
    assert "for host a.example" in by_file["g.yaml"].summary
    assert by_file["g.yaml"].related[0].location.file.endswith("f.yaml")


def test_strip_prefix_needs_a_prefix_route(tmp_path):
    """`strip_prefix` on an exact route is refused with a hint, at the API."""
    write(tmp_path, "ports.yaml", ROUTE_PORT)
    write(tmp_path, "apis/a.yaml", _api("A", "strip_prefix: true\n"))
    result = run_check(tmp_path)
    assert [d[0] for d in found(result)] == ["WSG108"]
    assert "match: prefix" in result.diagnostics[0].summary


async def test_two_host_headers_are_refused(tmp_path):
    """A request with two Host headers is 400 before any route is chosen (it could otherwise pick either)."""
    async with recording_backend() as a:
        config = write_config(tmp_path, PORT, api_yaml("A", "/ws", a.url + "/a", extra="hosts: [a.example]"))
        async with running_gateway(config) as gw:
            request = upgrade_request("/ws", host="a.example", extra="Host: b.example\r\n")
            assert (await http_request(gw_url(gw, "/ws"), request)).status == 400
            assert a.requests == []


def test_validate_warns_about_hashing_on_an_application_nobody_identifies(tmp_path):
    """consistent-hash on the application without identify is WSG214 at `hash_on`."""
    write(tmp_path, "ports.yaml", ROUTE_PORT)
    write(tmp_path, "apis/a.yaml", _api("A") + "policies:\n  - type: routing\n    strategy: consistent-hash\n"
          "    hash_on: application\n")
    assert found(run_check(tmp_path)) == [("WSG201", "a.yaml", 8, 1), ("WSG214", "a.yaml", 11, 14)]
