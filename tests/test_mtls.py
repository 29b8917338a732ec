"""mTLS: client certificates on wss ports (required or optional), identify by certificate, upstream client certs."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
import trustme
from support import PORT, api_yaml, gw_url, recording_backend, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

REFUSED_TLS = (OSError, InvalidHandshake, ConnectionClosed, TimeoutError)  # how a refused client cert surfaces


class PKI:
    """A server CA and certificate for the gateway, a client CA, and client certificates issued by it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.server_ca, self.client_ca = trustme.CA(), trustme.CA()
        server = self.server_ca.issue_cert("127.0.0.1", "localhost")
        server.private_key_and_cert_chain_pem.write_to_path(str(directory / "gw.pem"))
        server.private_key_pem.write_to_path(str(directory / "gw.key"))
        self.client_ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))

    def port(self, mode: str = "required") -> str:
        return PORT + (f"tls:\n  cert: {self.dir / 'gw.pem'}\n  key: {self.dir / 'gw.key'}\n"
                       f"  client_certificates:\n    ca_file: {self.dir / 'clients-ca.pem'}\n    mode: {mode}\n")

    def client(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.server_ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


def fingerprint(cert: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


def identified_api(backend_url: str) -> str:
    return api_yaml("A", "/a", backend_url + "/", extra="policies:\n  - type: identify\n    by: [certificate]")


def application(name: str, identifiers: str) -> str:
    return f"kind: Application\nname: {name}\napis: [A]\nidentifiers:\n  certificates:\n{identifiers}"


async def test_required_client_certificate_accepts_and_identifies_and_refuses_without_one(tmp_path):
    """A port requiring client certificates lets in a client whose certificate names an application (by subject,
    SAN or fingerprint), refuses a client without one or with one from another CA in the TLS handshake, and
    answers 401 to a valid certificate no application claims."""
    pki = PKI(tmp_path)
    alice = pki.client_ca.issue_cert("alice.clients.example", common_name="alice")
    bob = pki.client_ca.issue_cert("bob.clients.example", common_name="bob")
    carol = pki.client_ca.issue_cert("carol.clients.example", common_name="carol")
    stranger = pki.client_ca.issue_cert("nobody.clients.example", common_name="nobody")
    outsider = trustme.CA().issue_cert("alice.clients.example", common_name="alice")

    async with recording_backend() as backend:
        config = write_config(
            tmp_path, pki.port(), identified_api(backend.url),
            application("by-subject", "    - subject: alice\n"),
            application("by-san", "    - san: BOB.clients.example\n"),
            application("by-fingerprint", f"    - fingerprint: sha256:{fingerprint(carol)}\n"),
        )
        async with running_gateway(config) as gw:
            url = gw_url(gw, "/a", scheme="wss")
            for cert, app in ((alice, "by-subject"), (bob, "by-san"), (carol, "by-fingerprint")):
                async with connect(url, ssl=pki.client(cert)) as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                assert backend.headers["X-Gateway-Application"] == app
            seen = len(backend.requests)
            for refused in (None, outsider):
                with pytest.raises(REFUSED_TLS):
                    async with connect(url, ssl=pki.client(refused)) as ws:
                        await ws.recv()
            with pytest.raises(InvalidStatus) as unknown:
                await connect(url, ssl=pki.client(stranger))
            assert unknown.value.response.status_code == 401
            assert b"unknown client certificate" in unknown.value.response.body
            assert len(backend.requests) == seen


async def test_optional_client_certificate_and_revocation_on_reload(tmp_path):
    """On an optional-mTLS port a client without a certificate reaches identify (401 'missing client certificate');
    removing the identifier on reload closes the live connection it let in with 1008."""
    pki = PKI(tmp_path)
    alice = pki.client_ca.issue_cert("alice.clients.example", common_name="alice")

    async with recording_backend() as backend:
        config = write_config(tmp_path, pki.port("optional"), identified_api(backend.url),
                              application("alice", "    - subject: alice\n"))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            url = gw_url(gw, "/a", scheme="wss")
            with pytest.raises(InvalidStatus) as missing:
                await connect(url, ssl=pki.client())
            assert missing.value.response.status_code == 401
            assert b"missing client certificate" in missing.value.response.body
            async with connect(url, ssl=pki.client(alice)) as live:
                await live.send("in")
                assert await live.recv() == "in"
                write_config(tmp_path, pki.port("optional"), identified_api(backend.url),
                             application("alice", "    - subject: someone-else\n"))
                outcome = await gw.reload("test")
                assert outcome.ok and outcome.revoked == 1
                with pytest.raises(ConnectionClosed):
                    await live.recv()
                assert live.close_code == 1008


async def test_upstream_client_certificate_for_wss_upstreams(tmp_path):
    """A wss upstream that requires client certificates accepts the gateway with `upstream.tls.cert/key` and
    refuses it without (502)."""
    backend_ca, gateway_client_ca = trustme.CA(), trustme.CA()
    backend_ca.cert_pem.write_to_path(str(tmp_path / "backend-ca.pem"))
    gateway_cert = gateway_client_ca.issue_cert("gateway.example", common_name="gateway")
    gateway_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "gw-client.pem"))
    gateway_cert.private_key_pem.write_to_path(str(tmp_path / "gw-client.key"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    backend_ca.issue_cert("localhost").configure_cert(server_context)
    gateway_client_ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED

    async with recording_backend(ssl=server_context) as backend:
        tls = f"  tls:\n    ca_file: {tmp_path / 'backend-ca.pem'}\n"
        with_cert = tls + f"    cert: {tmp_path / 'gw-client.pem'}\n    key: {tmp_path / 'gw-client.key'}\n"
        api_with = api_yaml("With", "/with", backend.url + "/").replace("upstream:\n", "upstream:\n" + with_cert)
        api_without = api_yaml("Without", "/without", backend.url + "/").replace("upstream:\n", "upstream:\n" + tls)
        config = write_config(tmp_path, PORT, api_with, api_without)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/with")) as ws:
                await ws.send("mutual")
                assert await ws.recv() == "mutual"
            with pytest.raises(InvalidStatus) as refused:
                await connect(gw_url(gw, "/without"))
            assert refused.value.response.status_code == 502
