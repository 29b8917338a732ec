"""Upstream credentials: userinfo in URLs is never shown, and `upstream.headers` from the environment are
sent but never shown or logged."""

from __future__ import annotations

import json

import structlog
from support import PORT, api_yaml, gw_url, http_request, recording_backend, run, running_gateway, write_config
from websockets.asyncio.client import connect

from gateway.changes.plan import diff, render
from gateway.config import check

URL_PASSWORD = "urlpw0secret0marker"
HEADER_SECRET = "Bearer hdr0secret0marker"


def test_userinfo_is_redacted_in_plan_and_admin_and_warned_in_validate(tmp_path):
    """`ws://user:PASS@host` is WSG250 in validate, sent upstream as Basic auth, and appears in neither the plan
    (text, JSON), the admin's /config nor the log."""
    seen: list[str] = []

    async def scenario():
        async with recording_backend() as backend:
            url = backend.url.replace("ws://", f"ws://user:{URL_PASSWORD}@") + "/"
            config = write_config(tmp_path, PORT, api_yaml("A", "/a", url))
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/a")) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "x"
                answer = await http_request(f"http://127.0.0.1:{gw.admin.port}", path="/config")
                seen.append(answer.body.decode())
            assert backend.requests[0].headers["Authorization"].startswith("Basic ")
            return config

    with structlog.testing.capture_logs() as logs:
        config = run(scenario())
    assert "user:***@127.0.0.1" in seen[0]
    plan = diff(None, config)
    shown = render(plan, "text") + render(plan, "json") + seen[0] + json.dumps(logs, default=str)
    assert "user:***@127.0.0.1" in render(plan, "text")
    assert URL_PASSWORD not in shown
    warnings = [d for d in check([tmp_path / "config"]).diagnostics if d.code == "WSG250"]
    assert len(warnings) == 1 and URL_PASSWORD not in (warnings[0].source_line or "") + warnings[0].summary


def test_upstream_headers_come_from_the_environment(tmp_path):
    """`headers: {Authorization: {env: UPSTREAM_AUTH}}` reaches the upstream (replacing the client's own), and
    the value is in no log, plan or admin answer."""
    seen: list[str] = []

    async def scenario():
        async with recording_backend() as backend:
            extra = "upstream:\n  headers:\n    Authorization: {env: UPSTREAM_AUTH}\n    X-Tenant: {env: TENANT}\n"
            api = api_yaml("A", "/a", backend.url + "/").replace("upstream:\n", extra, 1)
            config = write_config(tmp_path, PORT, api)
            env = {"UPSTREAM_AUTH": HEADER_SECRET, "TENANT": "t-1"}
            async with running_gateway(config, env=env) as gw:
                async with connect(gw_url(gw, "/a"), additional_headers={"Authorization": "Bearer client"}) as ws:
                    await ws.send("x")
                    assert await ws.recv() == "x"
                seen.append((await http_request(f"http://127.0.0.1:{gw.admin.port}", path="/config")).body.decode())
            headers = backend.requests[0].headers
            assert headers.get_all("Authorization") == [HEADER_SECRET]
            assert headers["X-Tenant"] == "t-1"
            return config

    with structlog.testing.capture_logs() as logs:
        config = run(scenario())
    plan = diff(None, config)
    shown = render(plan, "text") + render(plan, "json") + seen[0] + json.dumps(logs, default=str)
    assert "UPSTREAM_AUTH" in seen[0] and "hdr0secret0marker" not in shown


def test_gateway_owned_and_literal_upstream_headers_are_refused(tmp_path):
    """A literal header value, or a header the gateway writes itself (Host, Sec-WebSocket-Key), is an error."""
    for headers in ("    Authorization: Bearer literal0marker\n", "    Host: {env: H}\n",
                    "    Sec-WebSocket-Key: {env: K}\n"):
        api = api_yaml("A", "/a", "ws://127.0.0.1:9/").replace("upstream:\n", "upstream:\n  headers:\n" + headers, 1)
        root = tmp_path / "config"
        root.mkdir(exist_ok=True)
        (root / "gateway.yaml").write_text(PORT + api)
        result = check([root], env={})
        assert not result.ok, headers
        assert all("literal0marker" not in d.summary + (d.source_line or "") for d in result.diagnostics)


def test_the_log_redacts_url_userinfo_whoever_logs_it():
    """Defence in depth: the log's redaction step cuts the userinfo of a URL in any field, nested ones too."""
    from gateway.common.log import redact_credentials

    event = {"event": "e", "where": f"ws://u:{URL_PASSWORD}@h:1/p", "nested": {"url": f"wss://{URL_PASSWORD}@h/"}}
    out = redact_credentials(None, "info", event)
    assert out["where"] == "ws://u:***@h:1/p" and out["nested"]["url"] == "wss://***@h/"
