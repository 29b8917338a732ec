"""TLS on both legs: a wss listener, and wss upstreams verified against a configured CA."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme
from support import PORT, api_yaml, gw_url, recording_backend, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


@pytest.fixture
def ca():
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("compression", [False, True], ids=["fast", "message"])
async def test_wss_listener_serves_tls(tmp_path, ca, compression):
    """A Port with a certificate and key serves wss:// to clients that trust its CA, on both relay paths."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "gw.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "gw.key"))
    tls_port = PORT + f"tls:\n  cert: {tmp_path / 'gw.pem'}\n  key: {tmp_path / 'gw.key'}\n"

    async with recording_backend() as backend:
        extra = "compression: true" if compression else ""
        config = write_config(tmp_path, tls_port, api_yaml("A", "/a", backend.url + "/", extra=extra))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/a", scheme="wss"), ssl=client_context(ca),
                               compression="deflate" if compression else None) as ws:
                await ws.send("secure")
                assert await ws.recv() == "secure"
                await ws.send(b"\x01" * 100_000)
                assert await ws.recv() == b"\x01" * 100_000
                await ws.close(4000, "tls bye")
            async with asyncio.timeout(10):
                await backend.closed.wait()
            assert backend.closes == [(4000, "tls bye")]
            assert backend.headers["X-Forwarded-Proto"] == "wss"


async def test_wss_upstream_verified_against_configured_ca(tmp_path, ca):
    """A wss:// upstream is verified with the configured CA bundle and SNI; messages flow."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    async with recording_backend(ssl=server_context(ca)) as backend:
        extra = f"  tls:\n    ca_file: {tmp_path / 'ca.pem'}\n"
        api = api_yaml("A", "/a", backend.url + "/").replace("upstream:\n", "upstream:\n" + extra)
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/a")) as ws:
                await ws.send(b"\x00binary")
                assert await ws.recv() == b"\x00binary"


async def test_wss_upstream_with_unknown_ca_is_502_unless_verification_is_off(tmp_path, ca):
    """An upstream certificate from an unknown CA is refused with 502; verify: false lets it through."""
    async with recording_backend(ssl=server_context(ca)) as backend:
        strict = api_yaml("A", "/a", backend.url + "/")
        lax = api_yaml("B", "/b", backend.url + "/").replace(
            "upstream:\n", "upstream:\n  tls:\n    verify: false\n")
        config = write_config(tmp_path, PORT, strict, lax)
        async with running_gateway(config) as gw:
            with pytest.raises(InvalidStatus) as info:
                async with connect(gw_url(gw, "/a")):
                    pass
            assert info.value.response.status_code == 502
            async with connect(gw_url(gw, "/b")) as ws:
                await ws.send("lax")
                assert await ws.recv() == "lax"


async def test_renewed_certificate_is_served_after_reload_and_live_connections_stay(tmp_path):
    """Rewriting the cert files is a config change: new handshakes get the new certificate, a live wss
    connection is untouched, and a broken renewal fails the reload (WSG170), the previous certificate serving on."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert_path, key_path = tmp_path / "gw.pem", tmp_path / "gw.key"

    def install(ca: trustme.CA) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))

    install(old_ca)
    tls_port = PORT + f"tls:\n  cert: {cert_path}\n  key: {key_path}\n"

    async with recording_backend() as backend:
        config = write_config(tmp_path, tls_port, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            url = gw_url(gw, "/a", scheme="wss")
            async with connect(url, ssl=client_context(old_ca)) as live:
                install(new_ca)
                outcome = await gw.reload("test")
                assert outcome.ok and not outcome.noop
                async with connect(url, ssl=client_context(new_ca)) as fresh:
                    await fresh.send("new cert")
                    assert await fresh.recv() == "new cert"
                with pytest.raises(ssl.SSLCertVerificationError):
                    await connect(url, ssl=client_context(old_ca))
                await live.send("still here")
                assert await live.recv() == "still here"

                key_path.write_text("not a key\n")  # a half-finished renewal: the build refuses it
                outcome = await gw.reload("test")
                assert not outcome.ok
                assert [d.code for d in outcome.diagnostics if d.severity == "error"] == ["WSG170"]
                async with connect(url, ssl=client_context(new_ca)) as fresh:
                    await fresh.send("kept")
                    assert await fresh.recv() == "kept"
