"""Identify by HTTP Basic credentials, through a running gateway: good passwords pass, anything else is 401."""

from __future__ import annotations

import asyncio
import base64
import hashlib

from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    api_yaml,
    gw_url,
    http_request,
    recording_backend,
    run,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

from gateway.build.apps import AppIndex
from gateway.changes.impact import Accepted, Action, decide
from gateway.config import check
from gateway.config.tree import Config

HASHED_PASSWORD = "correct horse battery staple"
ENV_PASSWORD = "env-password-42"
LITERAL_PASSWORD = "literal-password-7"
ENV = {"WSGATE_TEST_BASIC_PASSWORD": ENV_PASSWORD}


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def apps_yaml(carol_password: str = LITERAL_PASSWORD) -> str:
    return f"""\
---
kind: Application
name: dashboard
identifiers:
  basic:
    - {{username: alice, password: "{sha(HASHED_PASSWORD)}"}}
    - {{username: bob, password: {{env: WSGATE_TEST_BASIC_PASSWORD}}}}
apis: [Echo]
---
kind: Application
name: legacy
identifiers:
  basic:
    - {{username: carol, password: {carol_password}}}
apis: [Echo]
---
kind: Application
name: stranger
identifiers:
  basic:
    - {{username: dave, password: "{sha(HASHED_PASSWORD)}"}}
apis: [Other]
"""


def documents(url: str, by: str = "[basic]", carol_password: str = LITERAL_PASSWORD) -> tuple[str, ...]:
    identify = f"policies:\n  - type: identify\n    by: {by}\n  - type: log-invocation\n    file: invocations.jsonl\n"
    return (PORT, api_yaml("Echo", "/echo", url, extra=identify), api_yaml("Other", "/other", url, extra=identify),
            apps_yaml(carol_password))


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def test_good_credentials_in_every_password_form_name_the_application(tmp_path):
    """A hashed, an environment and a literal password each let their user in; the upstream never sees them."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, *documents(backend.url + "/native"))
        async with running_gateway(config, env=ENV) as gw:
            for user, password, app in (("alice", HASHED_PASSWORD, "dashboard"), ("bob", ENV_PASSWORD, "dashboard"),
                                        ("carol", LITERAL_PASSWORD, "legacy")):
                headers = {"Authorization": basic(user, password)}
                async with connect(gw_url(gw, "/echo"), additional_headers=headers) as ws:
                    await ws.send(user)
                    assert await ws.recv() == user
                seen = backend.requests[-1]
                assert seen.headers["X-Gateway-Application"] == app
                assert "Authorization" not in seen.headers
                assert password not in str(seen.headers)


async def test_bad_unknown_and_malformed_credentials_get_401_with_a_basic_challenge(tmp_path):
    """A wrong password and an unknown user get the same 401 'bad credentials'; nothing echoes or logs the password."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, *documents(backend.url + "/native"))
        with capture_logs() as events:
            async with running_gateway(config, env=ENV) as gw:
                cases = {
                    "wrong password": (basic("alice", "wrong-password-1"), "bad credentials"),
                    "unknown user": (basic("mallory", HASHED_PASSWORD), "bad credentials"),
                    "password of another user": (basic("alice", ENV_PASSWORD), "bad credentials"),
                    "hash instead of password": (basic("alice", sha(HASHED_PASSWORD)), "bad credentials"),
                    "not base64": ("Basic !!!not-base64!!!", "bad credentials"),
                    "no colon": ("Basic " + base64.b64encode(b"alice").decode(), "bad credentials"),
                    "other application's user": (basic("dave", HASHED_PASSWORD),
                                                 "application stranger is not registered to API Echo"),
                    "no credentials": ("", "missing basic credentials"),
                    "a bearer token only": ("Bearer abc.def.ghi", "missing basic credentials"),
                }
                for name, (authorization, reason) in cases.items():
                    extra = f"Authorization: {authorization}\r\n" if authorization else ""
                    response = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo", extra=extra))
                    assert (response.status, response.json()["reason"]) == (401, reason), name
                    assert response.headers["www-authenticate"] == 'Basic realm="Echo", charset="UTF-8"', name
                two = f"Authorization: {basic('alice', HASHED_PASSWORD)}\r\nAuthorization: {basic('bob', 'x')}\r\n"
                response = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo", extra=two))
                assert response.json()["reason"] == "more than one set of basic credentials presented"
        assert not backend.requests, "no refused upgrade reached the upstream"
        assert [e for e in events if e.get("event") == "upgrade_refused"]
        logged = repr(events) + (tmp_path / "config" / "invocations.jsonl").read_text()
        assert "bad credentials" in logged
        for secret in ("wrong-password-1", HASHED_PASSWORD, ENV_PASSWORD, basic("alice", "wrong-password-1")[6:]):
            assert secret not in logged


async def test_other_authorization_schemes_pass_through_when_not_consumed(tmp_path):
    """With `by: [api_key]` an Authorization header is the upstream's business and is forwarded untouched."""
    async with recording_backend() as backend:
        api = api_yaml("Echo", "/echo", backend.url + "/native", extra="policies:\n  - type: identify\n")
        app = "kind: Application\nname: k\nidentifiers:\n  api_keys: [key-123]\napis: [Echo]\n"
        config = write_config(tmp_path, PORT, api, app)
        async with running_gateway(config) as gw:
            headers = {"Authorization": basic("alice", "for-the-upstream")}
            async with connect(gw_url(gw, "/echo?x-Gateway-APIKey=key-123"), additional_headers=headers):
                pass
            assert backend.requests[-1].headers["Authorization"] == headers["Authorization"]


async def test_basic_with_api_key_fallback(tmp_path):
    """With `by: [basic, api_key]` either identifies; the reason names both problems when neither does."""
    async with recording_backend() as backend:
        docs = list(documents(backend.url + "/native", by="[basic, api_key]"))
        docs.append("kind: Application\nname: keyed\nidentifiers:\n  api_keys: [key-123]\napis: [Echo]\n")
        config = write_config(tmp_path, *docs)
        async with running_gateway(config, env=ENV) as gw:
            async with connect(gw_url(gw, "/echo?x-Gateway-APIKey=key-123")):
                pass
            assert backend.requests[-1].headers["X-Gateway-Application"] == "keyed"
            response = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo"))
            assert response.json()["reason"] == (
                "no registered application identified (missing basic credentials; missing API key)")


async def test_changed_password_revokes_the_connection_on_reload(tmp_path):
    """A reload that changes a basic user's password closes that user's connection with 1008; others stay."""
    async with recording_backend() as backend:
        url = backend.url + "/native"
        config = write_config(tmp_path, *documents(url))
        root = tmp_path / "config"
        async with running_gateway(config, env=ENV, paths=[root]) as gw:
            carol = await connect(gw_url(gw, "/echo"),
                                  additional_headers={"Authorization": basic("carol", LITERAL_PASSWORD)})
            alice = await connect(gw_url(gw, "/echo"),
                                  additional_headers={"Authorization": basic("alice", HASHED_PASSWORD)})
            for ws in (carol, alice):
                await ws.send("before")
                assert await ws.recv() == "before"
            changed = documents(url, carol_password="new-pw")
            text = "".join(d if d.startswith("---") else "---\n" + d for d in changed)
            (root / "gateway.yaml").write_text(text)
            outcome = await gw.reload("test")
            assert (outcome.revoked, outcome.drained) == (1, 0)
            async with asyncio.timeout(TIMEOUT):
                await carol.wait_closed()
            assert carol.close_code == 1008
            await alice.send("after")
            assert await alice.recv() == "after"
            await alice.close()


def test_reload_decision_for_basic_users(tmp_path):
    """The pure reload rule keeps an unchanged basic user and revokes a removed one."""
    config = write_config(tmp_path, *documents("ws://127.0.0.1:9/x"))
    apps = AppIndex.build(config, env=ENV)
    app, digest = apps.by_basic("alice", HASHED_PASSWORD)
    accepted = Accepted(port="default", api="Echo", application=app, identified_by="basic", key_digest=digest)
    assert decide(config, config, apps, accepted).action is Action.KEEP
    without_alice = apps_yaml().replace(f'    - {{username: alice, password: "{sha(HASHED_PASSWORD)}"}}\n', "")
    docs = [*documents("ws://127.0.0.1:9/x")[:3], without_alice]
    (tmp_path / "config" / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in docs))
    new = check([tmp_path / "config"], env=ENV).config
    assert isinstance(new, Config)
    decision = decide(config, new, AppIndex.build(new, env=ENV), accepted)
    assert (decision.action, decision.reason) == (Action.REVOKE, "basic credentials revoked")


def test_validate_checks_basic_credentials(tmp_path):
    """A plain-text password is WSG200, a bad hash WSG125, an unset variable WSG203, a user of two apps WSG131."""
    root = tmp_path / "config"
    root.mkdir()
    apps = """\
---
kind: Application
name: a
identifiers:
  basic:
    - {username: u1, password: plain}
    - {username: u2, password: "sha256:abc"}
    - {username: u3, password: {env: WSGATE_UNSET_VARIABLE}}
apis: [Echo]
---
kind: Application
name: b
identifiers:
  basic:
    - {username: u1, password: "sha256:%s"}
apis: [Echo]
""" % ("0" * 64)
    (root / "gateway.yaml").write_text(PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/x") + apps)
    found = {(d.code, d.location.line, d.location.col) for d in check([root], env={}).diagnostics}
    assert {("WSG200", 18, 32), ("WSG125", 19, 32), ("WSG203", 20, 38), ("WSG131", 27, 18)} <= found, found
    colon = apps.replace("username: u2", "username: 'u:2'")
    (root / "gateway.yaml").write_text(PORT + api_yaml("Echo", "/echo", "ws://127.0.0.1:9/x") + colon)
    assert "WSG103" in {d.code for d in check([root], env={}).diagnostics}


def test_admin_config_and_plan_never_show_a_password(tmp_path):
    """The admin's /config shows basic passwords as placeholders, not even digests; a plan marks them sensitive
    and counts the revocation."""
    from gateway.changes.plan import diff, render
    from gateway.operations.live import config_from_documents, redacted_credentials

    async def scenario():
        config = write_config(tmp_path, *documents("ws://127.0.0.1:9/x"))
        async with running_gateway(config, env=ENV) as gw:
            body = (await http_request(f"http://127.0.0.1:{gw.admin.port}", path="/config"))
            assert LITERAL_PASSWORD not in body.body.decode()
            assert sha(LITERAL_PASSWORD) not in body.body.decode() and "redacted:" in body.body.decode()
            return body.json()

    loaded = run(scenario())
    running = config_from_documents(loaded["documents"], "admin")
    assert diff(running, redacted_credentials(config_with(tmp_path))).empty
    plan = diff(config_with(tmp_path), config_with(tmp_path, carol_password="new-secret-pw"))
    text = render(plan, "text") + render(plan, "json")
    assert LITERAL_PASSWORD not in text and "new-secret-pw" not in text
    assert "basic credentials revoked" in text


def config_with(tmp_path, carol_password: str = LITERAL_PASSWORD) -> Config:
    root = tmp_path / f"tree-{hashlib.sha256(carol_password.encode()).hexdigest()[:8]}"
    root.mkdir(exist_ok=True)
    docs = documents("ws://127.0.0.1:9/x", carol_password=carol_password)
    (root / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in docs))
    result = check([root], env=ENV)
    assert result.config is not None, result.diagnostics
    return result.config
