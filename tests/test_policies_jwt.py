"""Identify by JWT bearer token, through a running gateway: valid tokens name the application, bad ones get 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from functools import cache
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    api_yaml,
    gw_url,
    http_request,
    recording_backend,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.config import check

ISSUER = "https://idp.example"
AUDIENCE = "echo-api"
HS_SECRET = "hs256-test-secret-that-is-long-enough-0123456789"


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwks(key, kid: str = "k1") -> str:
    entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    entry.update(kid=kid, use="sig")
    return json.dumps({"keys": [entry]})


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "azp": "dash-client", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key=None, alg: str = "RS256", kid: str | None = "k1", **overrides) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), key if key is not None else rsa_key(), algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict, body: dict, sign=lambda signing_input: b"") -> str:
    """A token PyJWT would refuse to make (alg none, HMAC keyed with a public key)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def jwt_api(name: str, path: str, url: str, jwt_block: str, by: str = "[jwt]") -> str:
    """An API whose identify policy reads tokens (``jwt_block``: the block's lines, indented 6), plus a log file."""
    extra = (f"policies:\n  - type: identify\n    by: {by}\n    jwt:\n{jwt_block}\n"
             "  - type: log-invocation\n    file: invocations.jsonl\n")
    return api_yaml(name, path, url, extra=extra)


RS_BLOCK = f"""\
      issuer: {ISSUER}
      audience: [{AUDIENCE}]
      algorithms: [RS256]
      jwks_file: jwks.json"""
HS_BLOCK = f"""\
      issuer: {ISSUER}
      audience: [{AUDIENCE}]
      algorithms: [HS256]
      secret: {{env: WSGATE_TEST_JWT_SECRET}}"""
APPS = """\
---
kind: Application
name: dashboard
identifiers:
  jwt_clients: [dash-client]
apis: [Echo, Hs]
---
kind: Application
name: stranger
identifiers:
  jwt_clients: [other-client]
apis: [Other]
"""


def make_config(tmp_path: Path, url: str):
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    (root / "jwks.json").write_text(jwks(rsa_key()))
    return write_config(
        tmp_path, PORT,
        jwt_api("Echo", "/echo", url, RS_BLOCK),
        jwt_api("Hs", "/hs", url, HS_BLOCK),
        jwt_api("Other", "/other", url, RS_BLOCK),
        APPS,
    )


def bearer(value: str) -> str:
    return f"Authorization: Bearer {value}\r\n"


async def test_valid_rs256_token_in_header_or_query_names_the_application_and_never_reaches_upstream(tmp_path):
    """A valid RS256 token (header or `access_token`) gets 101; the upstream sees the application, not the token."""
    async with recording_backend() as backend:
        config = make_config(tmp_path, backend.url + "/native")
        async with running_gateway(config) as gw:
            by_header, by_query = token(), token(jti="second")
            headers = {"Authorization": f"Bearer {by_header}"}
            async with connect(gw_url(gw, "/echo?x=1"), additional_headers=headers) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            async with connect(gw_url(gw, f"/echo?access_token={by_query}&y=2")) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            first, second = backend.requests
            assert first.headers["X-Gateway-Application"] == "dashboard"
            assert second.headers["X-Gateway-Application"] == "dashboard"
            assert "Authorization" not in first.headers and "Authorization" not in second.headers
            assert first.path == "/native?x=1" and second.path == "/native?y=2"
            for seen in (first, second):
                raw = str(seen.headers) + seen.path
                assert by_header not in raw and by_query not in raw


async def test_valid_hs256_token_and_client_id_claim(tmp_path):
    """An HS256 token signed with the secret from the environment passes; `client_id` names the client without `azp`."""
    async with recording_backend() as backend:
        config = make_config(tmp_path, backend.url + "/native")
        async with running_gateway(config, env={"WSGATE_TEST_JWT_SECRET": HS_SECRET}) as gw:
            good = token(HS_SECRET.encode(), alg="HS256", kid=None, azp=None, client_id="dash-client")
            async with connect(gw_url(gw, "/hs"), additional_headers={"Authorization": f"Bearer {good}"}):
                pass
            assert backend.requests[-1].headers["X-Gateway-Application"] == "dashboard"
            wrong_secret = token(b"another-secret-another-secret-another-secret", alg="HS256", kid=None)
            response = await http_request(gw_url(gw, "/hs"), upgrade_request("/hs", extra=bearer(wrong_secret)))
            assert (response.status, response.json()["reason"]) == (401, "invalid token: bad signature")
            response = await http_request(gw_url(gw, "/hs"), upgrade_request("/hs", extra=bearer(token())))
            assert (response.status, response.json()["reason"]) == (401, "invalid token: algorithm not allowed")


def refusals() -> dict[str, tuple[str, str]]:
    """Name -> (token, the 401 reason it must get)."""
    now = int(time.time())
    head, _, signature = token().split(".")
    forged_body = b64(json.dumps(claims(azp="other-client")).encode())
    pem = public_pem(rsa_key())
    confused = handmade({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(),
                        lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    return {
        "expired": (token(exp=now - 3600, iat=now - 7200), "invalid token: expired"),
        "not yet valid": (token(nbf=now + 3600), "invalid token: not yet valid"),
        "wrong issuer": (token(iss="https://evil.example"), "invalid token: wrong issuer"),
        "wrong audience": (token(aud="another-api"), "invalid token: wrong audience"),
        "no exp": (token(exp=None), "invalid token: missing exp claim"),
        "algorithm not in the allowlist": (token(alg="RS384"), "invalid token: algorithm not allowed"),
        "alg confusion (HS256 keyed with the public key)": (confused, "invalid token: algorithm not allowed"),
        "alg none": (handmade({"alg": "none", "typ": "JWT"}, claims()), "invalid token: algorithm not allowed"),
        "tampered payload": (f"{head}.{forged_body}.{signature}", "invalid token: bad signature"),
        "signed by another key": (token(other_rsa_key()), "invalid token: bad signature"),
        "unknown key id": (token(kid="k9"), "invalid token: unknown signing key"),
        "garbage": ("not-a-token", "invalid token: malformed"),
        "unknown client": (token(azp="nobody"), "unknown client"),
        "client of an application not registered to the API": (
            token(azp="other-client"), "application stranger is not registered to API Echo"),
    }


async def test_bad_tokens_are_refused_with_401_and_never_echoed_or_logged(tmp_path):
    """Expired, immature, wrong issuer/audience/algorithm, alg none, alg confusion, tampered and unknown tokens
    get 401 with a reason and a Bearer challenge; no response, log event or record contains a token."""
    async with recording_backend() as backend:
        config = make_config(tmp_path, backend.url + "/native")
        cases = refusals()
        with capture_logs() as events:
            async with running_gateway(config) as gw:
                for name, (bad, reason) in cases.items():
                    for request in (upgrade_request("/echo", extra=bearer(bad)),
                                    upgrade_request(f"/echo?access_token={bad}")):
                        response = await http_request(gw_url(gw, "/echo"), request)
                        assert response.status == 401, name
                        assert response.json() == {"error": "unauthorized", "reason": reason}, name
                        challenge = response.headers["www-authenticate"]
                        assert challenge.startswith('Bearer realm="Echo"'), name
                        assert ('error="invalid_token"' in challenge) == reason.startswith("invalid token"), name
                        assert bad not in response.body.decode(), name
                missing = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo"))
                assert (missing.status, missing.json()["reason"]) == (401, "missing bearer token")
                assert missing.headers["www-authenticate"] == 'Bearer realm="Echo"'
                two = await http_request(gw_url(gw, "/echo"),
                                         upgrade_request(f"/echo?access_token={token()}", extra=bearer(token())))
                assert (two.status, two.json()["reason"]) == (401, "more than one bearer token presented")
        assert not backend.requests, "no refused upgrade reached the upstream"
        refused = [e for e in events if e.get("event") == "upgrade_refused"]
        assert len(refused) >= len(cases) * 2
        logged = repr(events) + (tmp_path / "config" / "invocations.jsonl").read_text()
        assert "invalid token: expired" in logged
        for name, (bad, _) in cases.items():
            assert bad not in logged, name
            signature = bad.split(".")[-1]
            assert not signature or signature not in logged, name


async def test_token_in_query_can_be_turned_off(tmp_path):
    """With `query_parameter: false` an `access_token` parameter is not read (and still never forwarded)."""
    async with recording_backend() as backend:
        root = tmp_path / "config"
        root.mkdir()
        (root / "jwks.json").write_text(jwks(rsa_key()))
        app = "kind: Application\nname: dashboard\nidentifiers:\n  jwt_clients: [dash-client]\napis: [Echo]\n"
        block = RS_BLOCK + "\n      query_parameter: false"
        config = write_config(tmp_path, PORT, jwt_api("Echo", "/echo", backend.url + "/native", block), app)
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/echo"), upgrade_request(f"/echo?access_token={token()}"))
            assert (response.status, response.json()["reason"]) == (401, "missing bearer token")
            async with connect(gw_url(gw, "/echo?access_token=x"),
                               additional_headers={"Authorization": f"Bearer {token()}"}):
                pass
            assert backend.requests[-1].headers["X-Gateway-Application"] == "dashboard"
            assert backend.requests[-1].path == "/native"


async def test_removing_a_jwt_client_revokes_its_connections_on_reload(tmp_path):
    """A reload that removes a client id from the application closes that connection with 1008."""
    async with recording_backend() as backend:
        config = make_config(tmp_path, backend.url + "/native")
        root = tmp_path / "config"
        async with running_gateway(config, paths=[root]) as gw:
            ws = await connect(gw_url(gw, "/echo"), additional_headers={"Authorization": f"Bearer {token()}"})
            await ws.send("before")
            assert await ws.recv() == "before"
            text = (root / "gateway.yaml").read_text().replace("jwt_clients: [dash-client]", "jwt_clients: []")
            (root / "gateway.yaml").write_text(text)
            outcome = await gw.reload("test")
            assert outcome.revoked == 1
            async with asyncio.timeout(TIMEOUT):
                await ws.wait_closed()
            assert ws.close_code == 1008


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_scheme_name_is_case_insensitive(tmp_path, scheme):
    """RFC 7235: the auth scheme is case-insensitive, so any spelling of Bearer is read (and consumed)."""
    async with recording_backend() as backend:
        config = make_config(tmp_path, backend.url + "/native")
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo"), additional_headers={"Authorization": f"{scheme} {token()}"}):
                pass
            assert "Authorization" not in backend.requests[-1].headers


# ------------------------------------------------------------------ validate


def diagnostics(tmp_path: Path, jwt_block: str, files: dict[str, str] | None = None, by: str = "[jwt]"):
    """(code, line, col, summary) of every diagnostic of one API with this `jwt:` block."""
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    (root / "gateway.yaml").write_text(PORT + jwt_api("Echo", "/echo", "ws://127.0.0.1:9/x", jwt_block, by))
    return [(d.code, d.location.line, d.location.col, d.summary) for d in check([root], env={}).diagnostics]


def codes(found) -> set[str]:
    return {code for code, *_ in found}


def test_validate_requires_a_jwt_block_and_one_key_source(tmp_path):
    """`jwt` in `by` without a block is WSG128 at the list item; no key source or two are WSG128 too."""
    root = tmp_path / "config"
    root.mkdir()
    extra = "policies:\n  - type: identify\n    by: [api_key, jwt]\n"
    (root / "gateway.yaml").write_text(PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/x", extra=extra))
    found = [(d.code, d.location.line, d.location.col) for d in check([root], env={}).diagnostics]
    assert ("WSG128", 15, 19) in found, found
    no_source = diagnostics(tmp_path, f"      issuer: {ISSUER}\n      audience: [a]")
    assert any(c == "WSG128" and "no key source" in s for c, _, _, s in no_source)
    both = diagnostics(tmp_path, RS_BLOCK + "\n      public_key_file: key.pem",
                       {"jwks.json": jwks(rsa_key()), "key.pem": public_pem(rsa_key()).decode()})
    assert any(c == "WSG128" and "2 key sources" in s for c, _, _, s in both)


def test_validate_checks_key_files_exist_and_parse(tmp_path):
    """A missing key file is WSG118 and an unparsable one WSG129, both at the file field; a good one is clean."""
    missing = diagnostics(tmp_path, RS_BLOCK)
    assert [(c, line, col) for c, line, col, _ in missing if c == "WSG118"] == [("WSG118", 20, 18)]
    broken = diagnostics(tmp_path, RS_BLOCK, {"jwks.json": '{"keys": [{"kty": "RSA", "n": "x"'})
    assert [(c, line, col) for c, line, col, _ in broken if c == "WSG129"] == [("WSG129", 20, 18)]
    secret_in_jwks = diagnostics(tmp_path, RS_BLOCK, {"jwks.json": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'})
    assert any(c == "WSG129" and "symmetric" in s for c, _, _, s in secret_in_jwks)
    not_pem = diagnostics(tmp_path, RS_BLOCK.replace("jwks_file: jwks.json", "public_key_file: key.pem"),
                          {"key.pem": "hello"})
    assert "WSG129" in codes(not_pem)
    good = diagnostics(tmp_path, RS_BLOCK, {"jwks.json": jwks(rsa_key())})
    assert not [d for d in good if d[0].startswith("WSG1")], good


def test_validate_keeps_the_algorithm_allowlist_sane(tmp_path):
    """HS* mixed with RS*, HS* without a secret, a secret with RS*, `none`, and keys fitting no algorithm: refused."""
    files = {"jwks.json": jwks(rsa_key())}
    mixed = diagnostics(tmp_path, RS_BLOCK.replace("[RS256]", "[RS256, HS256]"), files)
    assert any(c == "WSG130" and "together" in s for c, _, _, s in mixed)
    hs_with_jwks = diagnostics(tmp_path, RS_BLOCK.replace("[RS256]", "[HS256]"), files)
    assert "WSG130" in codes(hs_with_jwks)
    secret_with_rs = diagnostics(tmp_path, HS_BLOCK.replace("[HS256]", "[RS256]"))
    assert "WSG130" in codes(secret_with_rs)
    none = diagnostics(tmp_path, RS_BLOCK.replace("[RS256]", "[none]"), files)
    assert "WSG103" in codes(none)
    ec_only = diagnostics(tmp_path, RS_BLOCK.replace("[RS256]", "[ES256]"), files)
    assert any(c == "WSG130" and "can verify" in s for c, _, _, s in ec_only)
    literal_secret = diagnostics(tmp_path, HS_BLOCK.replace("{env: WSGATE_TEST_JWT_SECRET}", "plain-secret"))
    assert "WSG101" in codes(literal_secret)
    unset = diagnostics(tmp_path, HS_BLOCK)
    assert "WSG203" in codes(unset) and not [c for c in codes(unset) if c.startswith("WSG1")]


def test_validate_warns_about_a_missing_audience_and_an_unused_block(tmp_path):
    """No `audience` is WSG212; a `jwt:` block that `by` does not use is WSG211."""
    files = {"jwks.json": jwks(rsa_key())}
    no_audience = diagnostics(tmp_path, RS_BLOCK.replace(f"      audience: [{AUDIENCE}]\n", ""), files)
    assert "WSG212" in codes(no_audience)
    unused = diagnostics(tmp_path, RS_BLOCK, files, by="[api_key]")
    assert "WSG211" in codes(unused)


def test_one_client_id_for_two_applications_is_an_error(tmp_path):
    """A JWT client id claimed by two applications is WSG131, pointing at the second claim."""
    root = tmp_path / "config"
    root.mkdir()
    apps = ("---\nkind: Application\nname: a\nidentifiers: {jwt_clients: [shared]}\napis: [Echo]\n"
            "---\nkind: Application\nname: b\nidentifiers:\n  jwt_clients: [own, shared]\napis: [Echo]\n")
    (root / "gateway.yaml").write_text(PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/x") + apps)
    found = [(d.code, d.location.line, d.location.col) for d in check([root], env={}).diagnostics if d.code == "WSG131"]
    assert found == [("WSG131", 22, 22)], found


async def test_connection_is_closed_with_1008_when_its_token_expires(tmp_path):
    """A token that expires while its connection is open closes it with 1008; `close_at_expiry: false` keeps it."""
    short = RS_BLOCK + "\n      leeway: 0"
    kept = short + "\n      close_at_expiry: false"

    async with recording_backend() as backend:
        root = tmp_path / "config"
        root.mkdir(exist_ok=True)
        (root / "jwks.json").write_text(jwks(rsa_key()))
        apps = APPS.replace("apis: [Echo, Hs]", "apis: [Echo, Kept]").replace("apis: [Other]", "apis: []")
        config = write_config(tmp_path, PORT, jwt_api("Echo", "/echo", backend.url + "/", short),
                              jwt_api("Kept", "/kept", backend.url + "/", kept), apps)
        async with running_gateway(config) as gw:
            expires = int(time.time()) + 2
            headers = {"Authorization": f"Bearer {token(exp=expires)}"}
            async with connect(gw_url(gw, "/echo"), additional_headers=headers) as closing, \
                    connect(gw_url(gw, "/kept"), additional_headers=headers) as staying:
                await closing.send("before expiry")
                assert await closing.recv() == "before expiry"
                with pytest.raises(ConnectionClosed) as info:
                    async with asyncio.timeout(TIMEOUT):
                        await closing.recv()
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "credential expired")
                assert time.time() >= expires - 0.05  # closed because of the expiry, not earlier
                await staying.send("after expiry")
                assert await staying.recv() == "after expiry"
