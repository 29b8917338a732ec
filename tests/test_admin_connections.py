"""The admin's `/connections` names each live connection's credential only by the fingerprint of the configuration
entry it matched, and `plan --from` still tells from it which connections a change revokes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import bcrypt
import jwt
from process_support import start_wsgate
from support import PORT, TIMEOUT, api_yaml, gw_url, http_request, recording_backend, running_gateway, write_config
from websockets.asyncio.client import ClientConnection, connect

from gateway.build.credentials import (
    api_key_fingerprint,
    basic_digest,
    entry_fingerprint,
    jwt_client_digest,
    key_digest,
)
from gateway.config.models import EnvKey

PLAIN_KEY = "plain-key-written-in-the-file"
HASHED_KEY = "key-whose-sha256-is-in-the-file"
ENV_KEY = "key-only-in-the-environment"
ALICE_PASSWORD = "alice's pass phrase"
BOB_PASSWORD = "bob's pass phrase"
ALICE_HASH = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
BOB_HASH = bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
JWT_SECRET = "hs256-secret-for-the-fingerprint-tests-0123456789"
ISSUER = "https://idp.example"
ENV = {"CREDFP_API_KEY": ENV_KEY, "CREDFP_JWT_SECRET": JWT_SECRET}

IDENTIFY = f"""\
policies:
  - type: identify
    by: [api_key, basic, jwt]
    jwt:
      issuer: {ISSUER}
      audience: [echo]
      algorithms: [HS256]
      secret: {{env: CREDFP_JWT_SECRET}}
"""


def application(keys: str, basic: str, clients: str) -> str:
    return (f"kind: Application\nname: acme\nidentifiers:\n  api_keys: {keys}\n  basic:\n{basic}"
            f"  jwt_clients: {clients}\napis: [Echo]\n")


ALL_KEYS = f'[{PLAIN_KEY}, "sha256:{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}", {{env: CREDFP_API_KEY}}]'
ALICE = f'    - {{username: alice, password: "{ALICE_HASH}"}}\n'
BOB = f'    - {{username: bob, password: "{BOB_HASH}"}}\n'


def documents(url: str, keys: str = ALL_KEYS, basic: str = ALICE + BOB, clients: str = "[client-a, client-b]"):
    return (PORT, api_yaml("Echo", "/echo", url, extra=IDENTIFY), application(keys, basic, clients))


def bearer(client: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "echo", "azp": client, "iat": now, "exp": now + 300}
    return {"Authorization": "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def open_one_per_credential(base: str) -> dict[str, ClientConnection]:
    """One connection per credential of the application (``base``: the gateway's ws://host:port), by name; each
    has echoed a message."""
    out = {}
    for name, key in (("plain", PLAIN_KEY), ("hashed", HASHED_KEY), ("env", ENV_KEY)):
        out[name] = await connect(f"{base}/echo?x-Gateway-APIKey={key}")
    out["alice"] = await connect(f"{base}/echo", additional_headers=basic("alice", ALICE_PASSWORD))
    out["bob"] = await connect(f"{base}/echo", additional_headers=basic("bob", BOB_PASSWORD))
    out["client-a"] = await connect(f"{base}/echo", additional_headers=bearer("client-a"))
    out["client-b"] = await connect(f"{base}/echo", additional_headers=bearer("client-b"))
    for ws in out.values():
        await ws.send("hello")
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "hello"
    return out


def unsalted_hashes(secret: str) -> set[str]:
    """Every HMAC-free hash of ``secret`` a reader of the admin could check a guess against, in hex."""
    data = secret.encode()
    out = {hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                                             "sha3_256", "sha3_512", "blake2b", "blake2s")}
    return out | {h.upper() for h in out}


async def test_connections_shows_entry_fingerprints_and_nothing_a_secret_can_be_checked_against(
        tmp_path, monkeypatch, process_args):
    """Connections by plain, sha256 and env API key, bcrypt basic user and JWT list an entry fingerprint each (from
    one process, or gathered from every worker); the body holds no secret, no unsalted hash of one, and none of
    the in-process digests."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    async with recording_backend() as backend:
        write_config(tmp_path, *documents(backend.url))
        gateway = await start_wsgate(tmp_path / "config", *process_args)
        try:
            connections = await open_one_per_credential(f"ws://127.0.0.1:{gateway.ports['default']}")
            answer = await http_request(f"http://127.0.0.1:{gateway.ports['admin']}", path="/connections")
            for ws in connections.values():
                await ws.close()
        finally:
            await gateway.kill()
    assert answer.status == 200
    text = answer.body.decode()
    listed = json.loads(text)["connections"]
    assert sorted(c["identified_by"] for c in listed) == ["api_key"] * 3 + ["basic"] * 2 + ["jwt"] * 2
    assert all("key_digest" not in c and len(c["entry_fingerprint"]) == 64 for c in listed)
    assert len({c["entry_fingerprint"] for c in listed}) == 7
    # The environment key is named by its variable: the fingerprint is the same whatever the variable holds.
    assert api_key_fingerprint(EnvKey(env="CREDFP_API_KEY")) == entry_fingerprint("api_key", "env:CREDFP_API_KEY")
    assert api_key_fingerprint(EnvKey(env="CREDFP_API_KEY")) in text
    tokens = [bearer(client)["Authorization"].split()[1] for client in ("client-a", "client-b")]
    for secret in (PLAIN_KEY, HASHED_KEY, ENV_KEY, ALICE_PASSWORD, BOB_PASSWORD, JWT_SECRET, *tokens):
        assert secret not in text
        assert not any(h in text for h in unsalted_hashes(secret)), secret
    in_process = {key_digest(k) for k in (PLAIN_KEY, HASHED_KEY, ENV_KEY)}
    in_process |= {basic_digest("alice", ALICE_HASH), basic_digest("bob", BOB_HASH)}
    in_process |= {jwt_client_digest("client-a"), jwt_client_digest("client-b")}
    assert not any(d in text for d in in_process)


async def test_plan_from_predicts_which_credentials_are_revoked_and_the_reload_agrees(
        tmp_path, monkeypatch, capsys, process_args):
    """Removing the plain and env keys, basic user alice and JWT client-a: `plan --from` counts 2, 1 and 1 live
    connections revoked from `/connections` alone (the plan's machine has no API key variable); the reload then
    closes exactly those four with 1008 and keeps the sha256 key's, bob's and client-b's open. One process, or
    workers: the same answers."""
    from gateway.cli import main

    monkeypatch.delenv("WSGATE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("CREDFP_JWT_SECRET", JWT_SECRET)  # the desired tree's JWT verifier reads it
    monkeypatch.setenv("CREDFP_API_KEY", ENV_KEY)  # for the gateway only: the plan runs without it
    async with recording_backend() as backend:
        write_config(tmp_path, *documents(backend.url))
        desired = tmp_path / "desired"
        desired.mkdir()
        hashed_only = f'["sha256:{hashlib.sha256(HASHED_KEY.encode()).hexdigest()}"]'
        changed = documents(backend.url, keys=hashed_only, basic=BOB, clients="[client-b]")
        (desired / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in changed))
        gateway = await start_wsgate(tmp_path / "config", *process_args)
        try:
            connections = await open_one_per_credential(f"ws://127.0.0.1:{gateway.ports['default']}")
            admin = f"http://127.0.0.1:{gateway.ports['admin']}"
            monkeypatch.delenv("CREDFP_API_KEY")
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["plan", str(desired), "--from", admin]) == 2
            out = capsys.readouterr().out
            assert "API key revoked (closed at once with 1008, 2 live connections)" in out
            assert "basic credentials revoked (closed at once with 1008, 1 live connection)" in out
            assert "JWT client revoked (closed at once with 1008, 1 live connection)" in out
            (tmp_path / "config" / "gateway.yaml").write_text((desired / "gateway.yaml").read_text())
            # The file watcher may reload first; either way one reload revokes the four.
            await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")
            history = (await http_request(admin, path="/reload")).json()["history"]
            assert sum(o["revoked"] for o in history) == 4 and all(o["ok"] for o in history), history
            for name in ("plain", "env", "alice", "client-a"):
                async with asyncio.timeout(TIMEOUT):
                    await connections[name].wait_closed()
                assert connections[name].close_code == 1008, name
            for name in ("hashed", "bob", "client-b"):
                await connections[name].send("still open")
                async with asyncio.timeout(TIMEOUT):
                    assert await connections[name].recv() == "still open", name
                await connections[name].close()
        finally:
            await gateway.kill()


def test_a_key_moved_from_plain_text_to_its_sha256_form_keeps_its_fingerprint():
    """Plain text and the `sha256:` form of one key are one entry (the reload keeps such a connection too)."""
    digest = hashlib.sha256(PLAIN_KEY.encode()).hexdigest()
    assert api_key_fingerprint(PLAIN_KEY) == api_key_fingerprint(f"sha256:{digest.upper()}")
    assert api_key_fingerprint(PLAIN_KEY) not in (digest, key_digest(PLAIN_KEY))
    assert api_key_fingerprint(EnvKey(env="A")) != api_key_fingerprint(EnvKey(env="B"))


async def test_plan_from_sees_a_key_replaced_in_place_and_counts_its_connection(tmp_path, monkeypatch, capsys):
    """The plain key replaced by another one in the same place, nothing else changed: `/config` shows each key by
    its entry fingerprint, so `plan --from` sees the application change and counts the one connection the reload
    will revoke (with numbered placeholders the two trees looked identical: "No changes")."""
    from gateway.cli import main

    monkeypatch.delenv("WSGATE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("CREDFP_JWT_SECRET", JWT_SECRET)
    async with recording_backend() as backend:
        config = write_config(tmp_path, *documents(backend.url))
        desired = tmp_path / "desired"
        desired.mkdir()
        replaced = ALL_KEYS.replace(PLAIN_KEY, "a-new-key-in-the-same-place")
        changed = documents(backend.url, keys=replaced)
        (desired / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in changed))
        async with running_gateway(config, env=ENV, paths=[tmp_path / "config"]) as gw:
            plain = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={PLAIN_KEY}"))
            hashed = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={HASHED_KEY}"))
            admin = f"http://127.0.0.1:{gw.admin.port}"
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["plan", str(desired), "--from", admin]) == 2
            out = capsys.readouterr().out
            assert "No changes" not in out
            assert "API key revoked (closed at once with 1008, 1 live connection)" in out
            await plain.close()
            await hashed.close()
