"""Renames without drains: `previous_names` on an API and an Application; plan says renamed, and the reload
carries the live connections, their identification and the throttle counts over."""

from __future__ import annotations

import asyncio

from support import PORT, TIMEOUT, api_yaml, app_yaml, echo_backend, gw_url, http_request, reloadable_gateway
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.changes.plan import diff, render_text
from gateway.cli import main
from gateway.config import check

KEY = "rename-test-key"


def documents(url: str, api: str = "Chat", app: str = "acme", previous_api: str = "",
              previous_app: str = "", path: str = "/chat") -> tuple[str, ...]:
    extra = ("policies:\n  - type: identify\n  - type: throttle\n    max_connections: 2\n"
             + (f"previous_names: [{previous_api}]\n" if previous_api else ""))
    application = app_yaml(KEY, name=app, apis=f"[{api}]")
    if previous_app:
        application += f"previous_names: [{previous_app}]\n"
    return (PORT, api_yaml(api, path, url, extra=extra), application)


def test_plan_shows_a_rename_not_a_destroy_and_create(tmp_path, capsys):
    """Renaming an API and an application with previous_names plans as two renames, no connection disrupted."""
    for side, docs in (("old", documents("ws://127.0.0.1:9/echo/")),
                       ("new", documents("ws://127.0.0.1:9/echo/", "Talk", "acme-corp", "Chat", "acme"))):
        root = tmp_path / side
        root.mkdir()
        (root / "gateway.yaml").write_text("".join("---\n" + d.removeprefix("---\n") for d in docs))
    old, new = check([tmp_path / "old"]).config, check([tmp_path / "new"]).config
    assert old is not None and new is not None
    plan = diff(old, new)
    text = render_text(plan)
    assert '# API "Talk" will be renamed from "Chat", no connection disrupted' in text
    assert '~ API "Chat" → "Talk"' in text
    assert '# Application "acme-corp" will be renamed from "acme", no connection disrupted' in text
    assert "Plan: 0 to add, 2 to change, 0 to destroy." in text
    assert not plan.disruptive
    assert main(["plan", str(tmp_path / "new"), "--from", str(tmp_path / "old")]) == 2
    assert "renamed from" in capsys.readouterr().out


async def test_a_rename_on_a_live_gateway_disrupts_no_connection(tmp_path):
    """Two live connections through API 'Chat' (application 'acme') stay open and working across the rename to
    'Talk'/'acme-corp'; /connections lists them under the new names; the throttle still counts them (a third
    client gets 503); a later removal of the renamed resources closes them (known by the new names)."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, *documents(url)) as (gw, root):
            headers = {"x-Gateway-APIKey": KEY}
            async with connect(gw_url(gw, "/chat"), additional_headers=headers) as one, \
                    connect(gw_url(gw, "/chat"), additional_headers=headers) as two:
                renamed = documents(url, "Talk", "acme-corp", "Chat", "acme")
                (root / "gateway.yaml").write_text("".join("---\n" + d.removeprefix("---\n") for d in renamed))
                outcome = await gw.reload("test")
                assert outcome.ok, outcome
                assert (outcome.drained, outcome.revoked) == (0, 0)
                for ws in (one, two):
                    await ws.send("still here")
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still here"
                admin = f"http://127.0.0.1:{gw.admin.port}"  # type: ignore[union-attr]
                listed = (await http_request(admin, path="/connections")).json()["connections"]
                assert {(c["api"], c["application"]) for c in listed} == {("Talk", "acme-corp")}
                try:
                    async with connect(gw_url(gw, "/chat"), additional_headers=headers):
                        raise AssertionError("a third connection passed a throttle of 2")
                except InvalidStatus as exc:
                    assert exc.response.status_code == 503
                # Removing the renamed API drains its connections: they are known by the new name.
                (root / "gateway.yaml").write_text("---\n" + PORT)
                outcome = await gw.reload("test")
                assert outcome.ok and outcome.drained + outcome.revoked == 2
