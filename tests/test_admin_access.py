"""Admin access: a bearer token (environment or file), TLS, open probes, and no credential in `/config`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl

import pytest
import trustme
from process_support import start_wsgate
from support import PORT, TIMEOUT, api_yaml, http_request, run, running_gateway, write_config

from gateway.config import check
from gateway.operations.admin import admin_server
from gateway.serving.runtime import Gateway, StartError

TOKEN = "admin-token-" + "7" * 20
PROTECTED = [("GET", "/config"), ("GET", "/connections"), ("GET", "/metrics"), ("GET", "/reload"),
             ("POST", "/reload")]
LITERAL_KEY = "literal-api-key-for-config-view"
HASHED_KEY = hashlib.sha256(b"hashed-api-key").hexdigest()
APP = f"""\
kind: Application
name: app
identifiers:
  api_keys: [{LITERAL_KEY}, "sha256:{HASHED_KEY}", {{env: APP_KEY}}]
  basic:
    - {{username: alice, password: "sha256:{hashlib.sha256(b"pw").hexdigest()}"}}
    - {{username: bob, password: {{env: BOB_PASSWORD}}}}
apis: [A]
"""


def gateway_doc(admin: str) -> str:
    return "kind: Gateway\nname: g\nadmin:\n" + admin


def request(method: str, path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n".encode()


def config_for(tmp_path, admin: str):
    return write_config(tmp_path, PORT, gateway_doc(admin), api_yaml("A", "/a", "ws://127.0.0.1:9/"), APP)


async def test_a_token_guards_everything_but_the_probes(tmp_path, monkeypatch, process_args):
    """With `token: {env: ...}`, /healthz, /readyz and the dashboard's files answer anyone; every other endpoint
    answers 401 (with a Bearer challenge) without the token or with a wrong one, and 200 with it: one process or
    a supervisor with workers alike."""
    for name, value in {"ADMIN_TOKEN": TOKEN, "APP_KEY": "k", "BOB_PASSWORD": "p"}.items():
        monkeypatch.setenv(name, value)
    config_for(tmp_path, "  token: {env: ADMIN_TOKEN}\n")
    gateway = await start_wsgate(tmp_path / "config", *process_args)
    try:
        admin = f"http://127.0.0.1:{gateway.ports['admin']}"
        for path in ("/healthz", "/readyz", "/dashboard", "/dashboard/", "/dashboard/index.html"):
            assert (await http_request(admin, request("GET", path))).status == 200, path
        assert (await http_request(admin, request("GET", "/dashboard/nothing"))).status == 404
        for method, path in PROTECTED:
            for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", ""):
                answer = await http_request(admin, request(method, path, token))
                assert answer.status == 401, (method, path, token)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                assert answer.json()["error"] == "unauthorized"
            answer = await http_request(admin, request(method, path, TOKEN))
            assert answer.status == 200, (method, path, answer.body)
    finally:
        await gateway.kill()


def test_one_rule_for_everything_under_dashboard(tmp_path):
    """With a token set, every path under /dashboard answers the same with the token as without (its files 200,
    other paths 404); a path that only starts like it (/dashboardx) still wants the token."""

    async def scenario():
        config = config_for(tmp_path, "  token: {env: ADMIN_TOKEN}\n")
        async with running_gateway(config, env={"ADMIN_TOKEN": TOKEN, "APP_KEY": "k", "BOB_PASSWORD": "p"}) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            for path, status in (("/dashboard", 200), ("/dashboard/", 200), ("/dashboard/index.html", 200),
                                 ("/dashboard/dashboard.js", 200), ("/dashboard/nothing-here", 404)):
                answers = [await http_request(admin, request("GET", path, token)) for token in (None, TOKEN, "x")]
                assert [a.status for a in answers] == [status] * 3, path
                assert len({a.body for a in answers}) == 1, path
            index = await http_request(admin, request("GET", "/dashboard/index.html"))
            assert index.body == (await http_request(admin, request("GET", "/dashboard/"))).body
            assert (await http_request(admin, request("GET", "/dashboardx"))).status == 401

    run(scenario())


async def test_an_unset_token_variable_locks_the_admin(tmp_path, monkeypatch, process_args):
    """`token: {env: X}` with X unset: the protected endpoints refuse every request (fail closed), the probes
    still answer."""
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("APP_KEY", "k")
    monkeypatch.setenv("BOB_PASSWORD", "p")
    config_for(tmp_path, "  token: {env: ADMIN_TOKEN}\n")
    gateway = await start_wsgate(tmp_path / "config", *process_args)
    try:
        admin = f"http://127.0.0.1:{gateway.ports['admin']}"
        assert (await http_request(admin, request("GET", "/healthz"))).status == 200
        for token in (None, "", "anything"):
            assert (await http_request(admin, request("GET", "/config", token))).status == 401
    finally:
        await gateway.kill()


async def test_token_file_and_tls(tmp_path, monkeypatch, process_args):
    """`token_file` and `tls`: the admin speaks HTTPS only, and wants the file's token (whitespace trimmed)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    root = tmp_path / "config"
    root.mkdir()
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "admin.pem"))
    (root / "admin-token").write_text(TOKEN + "\n")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    monkeypatch.setenv("APP_KEY", "k")
    monkeypatch.setenv("BOB_PASSWORD", "p")
    config_for(tmp_path, "  token_file: admin-token\n  tls: {cert: admin.pem, key: admin.pem}\n")
    gateway = await start_wsgate(root, *process_args)
    try:
        admin = f"https://127.0.0.1:{gateway.ports['admin']}"
        assert (await http_request(admin, request("GET", "/healthz"), ssl=client)).status == 200
        assert (await http_request(admin, request("GET", "/connections"), ssl=client)).status == 401
        answer = await http_request(admin, request("GET", "/connections", TOKEN), ssl=client)
        assert answer.status == 200 and answer.json()["total"] == 0
        with pytest.raises((ConnectionError, ValueError, IndexError)):
            await http_request(f"http://127.0.0.1:{gateway.ports['admin']}", request("GET", "/healthz"))
    finally:
        await gateway.kill()


async def test_a_reload_rereads_the_token_file_and_the_certificate(tmp_path, monkeypatch, process_args):
    """After a reload the admin wants the token file's new token and shows the new certificate; an emptied token
    file or a broken certificate keeps the last good one, with a warning that quotes neither."""
    first_ca, second_ca = trustme.CA(), trustme.CA()
    root = tmp_path / "config"
    root.mkdir()
    first_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(root / "admin.pem"))
    (root / "admin-token").write_text(TOKEN + "\n")
    new_token = "rotated-admin-token-" + "9" * 20
    first_client, second_client = ssl.create_default_context(), ssl.create_default_context()
    first_ca.configure_trust(first_client)
    second_ca.configure_trust(second_client)
    monkeypatch.setenv("APP_KEY", "k")
    monkeypatch.setenv("BOB_PASSWORD", "p")
    config_for(tmp_path, "  token_file: admin-token\n  tls: {cert: admin.pem, key: admin.pem}\n")
    gateway = await start_wsgate(root, *process_args)
    admin = f"https://127.0.0.1:{gateway.ports['admin']}"

    async def status(token: str, client: ssl.SSLContext, method: str = "GET", path: str = "/connections"):
        return await http_request(admin, request(method, path, token), ssl=client)

    async def applied_after(reloads: int, want) -> dict:
        """The first outcome since ``reloads`` reloads that ``want`` accepts (the file watcher reloads the files
        just written, maybe one at a time), read with the new token and certificate once they serve."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    answer = await status(new_token, second_client, "GET", "/reload")
                    if answer.status == 200:
                        body = answer.json()
                        recent = body["history"][len(body["history"]) - (body["reloads"] - reloads):]
                        done = [o for o in recent if not o["noop"] and want(o)]
                        if done:
                            return done[0]
                await asyncio.sleep(0.01)

    try:
        assert (await status(TOKEN, first_client)).status == 200
        (root / "admin-token").write_text(new_token + "\n")
        second_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(root / "admin.pem"))
        outcome = await applied_after(0, lambda o: o["ok"])
        assert not outcome["problems"], outcome
        assert (await status(TOKEN, second_client)).status == 401
        assert (await status(new_token, second_client)).status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            await status(new_token, first_client)
        before = (await status(new_token, second_client, "GET", "/reload")).json()["reloads"]
        (root / "admin-token").write_text(" \n")
        (root / "admin.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        outcome = await applied_after(before, lambda o: len(o["problems"]) == 2)
        assert outcome["ok"], outcome
        await gateway.wait_for("admin_token_reload_failed")
        await gateway.wait_for("admin_certificate_reload_failed")
        assert (await status(new_token, second_client)).status == 200
    finally:
        await gateway.kill()
    assert new_token not in "".join(gateway.output) and TOKEN not in "".join(gateway.output)


def test_validate_refuses_a_public_admin_without_a_token(tmp_path):
    """`admin.host: 0.0.0.0` without a token is WSG180; with a token it is fine."""
    write_config(tmp_path, PORT)
    root = tmp_path / "config"
    (root / "gw.yaml").write_text(gateway_doc("  host: 0.0.0.0\n  port: 0\n"))
    codes = [(d.code, d.location.line) for d in check([root], env={}).diagnostics if d.is_error]
    assert codes == [("WSG180", 4)]
    (root / "gw.yaml").write_text(gateway_doc("  host: 0.0.0.0\n  port: 0\n  token: {env: T}\n"))
    assert check([root], env={"T": "x"}).ok


def test_run_refuses_a_public_admin_address_without_a_token(tmp_path):
    """`wsgate run --admin 0.0.0.0:PORT` bypasses validate's view of the Gateway resource: start refuses it with a
    StartError (the CLI's one start_failed line) before any listener binds."""
    config = write_config(tmp_path, PORT)

    async def scenario():
        gateway = Gateway(config, admin=("0.0.0.0", 0), echo=False, admin_server=admin_server)
        with pytest.raises(StartError, match="needs a token") as refused:
            await gateway.start()
        assert "admin.token" in refused.value.hint
        assert gateway.servers == {} and gateway.admin is None  # refused before anything was bound

    run(scenario())


async def test_config_shows_no_key_or_password_nor_their_digests(tmp_path, monkeypatch, process_args):
    """/config names env variables and user names, shows keys as `redacted:` and their entry fingerprint's prefix,
    and holds neither a literal key nor any `sha256:` digest."""
    monkeypatch.setenv("APP_KEY", "k")
    monkeypatch.setenv("BOB_PASSWORD", "p")
    config_for(tmp_path, "  port: 0\n")
    gateway = await start_wsgate(tmp_path / "config", *process_args)
    try:
        answer = await http_request(f"http://127.0.0.1:{gateway.ports['admin']}", request("GET", "/config"))
        assert answer.status == 200
        body = answer.json()
    finally:
        await gateway.kill()
    text = json.dumps(body["documents"])  # the config's own digest, beside them, is a digest of the whole tree
    assert LITERAL_KEY not in text and HASHED_KEY not in text and "sha256:" not in text
    app = next(d for d in body["documents"] if d["kind"] == "Application")
    from gateway.build.credentials import api_key_fingerprint, basic_fingerprint

    alice = f"sha256:{hashlib.sha256(b'pw').hexdigest()}"
    assert app["identifiers"]["api_keys"] == [f"redacted:{api_key_fingerprint(LITERAL_KEY)[:16]}",
                                              f"redacted:{api_key_fingerprint('sha256:' + HASHED_KEY)[:16]}",
                                              {"env": "APP_KEY"}]
    assert app["identifiers"]["basic"] == [
        {"username": "alice", "password": f"redacted:{basic_fingerprint('alice', alice, False)[:16]}"},
        {"username": "bob", "password": {"env": "BOB_PASSWORD"}}]


async def test_plan_from_a_protected_admin_sends_the_token(tmp_path, monkeypatch, capsys, process_args):
    """`wsgate plan PATH --from URL` reads a token-protected admin with WSGATE_ADMIN_TOKEN, and without it
    fails cleanly; an unchanged tree with literal keys is "No changes" against the redacted `/config`."""
    from gateway.cli import main

    env = {"ADMIN_TOKEN": TOKEN, "APP_KEY": "k", "BOB_PASSWORD": "p"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config_for(tmp_path, "  port: 0\n  token: {env: ADMIN_TOKEN}\n")
    gateway = await start_wsgate(tmp_path / "config", *process_args)
    try:
        admin = f"http://127.0.0.1:{gateway.ports['admin']}"
        monkeypatch.delenv("WSGATE_ADMIN_TOKEN", raising=False)
        assert await asyncio.to_thread(main, ["plan", str(tmp_path / "config"), "--from", admin]) == 1
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("WSGATE_ADMIN_TOKEN", TOKEN)
        assert await asyncio.to_thread(main, ["plan", str(tmp_path / "config"), "--from", admin]) == 0
        out = capsys.readouterr().out
        assert "No changes" in out and LITERAL_KEY not in out
    finally:
        await gateway.kill()


@pytest.mark.parametrize(("admin", "auth"),
                         [("  token: {env: ADMIN_TOKEN}\n", "token"), ("  host: 127.0.0.1\n", "none")],
                         ids=["token", "none"])
def test_the_admin_start_line_says_whether_a_token_guards_it_never_the_token(tmp_path, admin, auth):
    """The admin's `listening` line says `auth: token` or `auth: none` and carries no `token` field at all (it
    read `"token": "[redacted]"` either way)."""
    from structlog.testing import capture_logs

    async def scenario():
        config = config_for(tmp_path, admin)
        with capture_logs() as logs:
            async with running_gateway(config, env={"ADMIN_TOKEN": TOKEN, "APP_KEY": "k", "BOB_PASSWORD": "p"}):
                pass
        return logs

    logs = run(scenario())
    line = [r for r in logs if r["event"] == "listening" and r.get("name") == "admin"]
    assert len(line) == 1 and line[0]["auth"] == auth
    assert "token" not in line[0] and TOKEN not in json.dumps(logs, default=str)
