"""A fleet you can see: each gateway reports the config it serves and its last reload's failure (/readyz,
/reload, wsgate_config_info); `plan --from` several gateways; `export config` of a live gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import PORT, api_yaml, app_yaml, http_request, running_gateway, scrape

from gateway.cli import main
from gateway.config import check

GATEWAY = "kind: Gateway\nname: gw\nadmin:\n  unready_after_failed_reload: true\n"


def tree(root: Path, *documents: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text("".join("---\n" + d for d in documents))
    return root


def documents(description: str = "v1") -> tuple[str, ...]:
    api = api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/", extra=f"description: {description}\n"
                   "policies:\n  - type: identify\n")
    env_app = "kind: Application\nname: envapp\nidentifiers:\n  api_keys:\n    - {env: FLEET_KEY}\napis: [Echo]\n"
    return (PORT, GATEWAY, api.removeprefix("---\n"), app_yaml("fleet-key-1"), env_app)


async def test_three_replicas_one_with_a_broken_tree(tmp_path, capsys, monkeypatch):
    """A replica whose reload failed answers /readyz 503 (configured so), says why in /readyz, /reload and
    wsgate_config_info, and `plan --from` the three admin URLs names it; the other two serve the tree."""
    monkeypatch.setenv("FLEET_KEY", "k")
    good = tree(tmp_path / "good", *documents())
    roots = [tree(tmp_path / f"r{i}", *documents()) for i in range(3)]
    configs = [check([r]).config for r in roots]
    assert all(configs)
    async with running_gateway(configs[0], paths=[roots[0]]) as a, \
            running_gateway(configs[1], paths=[roots[1]]) as b, \
            running_gateway(configs[2], paths=[roots[2]]) as c:
        (roots[2] / "gateway.yaml").write_text((roots[2] / "gateway.yaml").read_text().replace("port: 0", "port: x"))
        outcome = await c.reload("test")
        assert not outcome.ok
        urls = [f"http://127.0.0.1:{g.admin.port}" for g in (a, b, c)]  # type: ignore[union-attr]
        ready = [await http_request(u, path="/readyz") for u in urls]
        assert [r.status for r in ready] == [200, 200, 503]
        broken = ready[2].json()
        assert broken["status"] == "reload-failed"
        assert broken["config"]["digest"] == ready[0].json()["config"]["digest"]  # still the last good config
        assert "WSG101" in broken["config"]["last_reload"]["error"]
        assert ready[0].json()["config"]["last_reload"] is None
        reload_view = (await http_request(urls[2], path="/reload")).json()
        assert reload_view["config"]["last_reload"]["ok"] is False
        info = [s for s in (await scrape(c)).text.splitlines() if s.startswith("wsgate_config_info{")]
        assert len(info) == 1 and 'last_reload="failed"' in info[0] and info[0].endswith(" 1.0")
        ok_info = [s for s in (await scrape(a)).text.splitlines() if s.startswith("wsgate_config_info{")]
        assert 'last_reload="ok"' in ok_info[0]
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["plan", str(good), "--from", urls[0], "--from", urls[1],
                                              "--from", urls[2]])
        out = capsys.readouterr().out
        assert code == 0, out  # every replica still serves the tree's config...
        assert f"= {urls[2]}" in out and "last reload failed: " in out and "WSG101" in out  # ...one failed to reload
        assert "3 of 3 serve the tree's config; 1 distinct config in the fleet." in out
        # The tree moves on: the two healthy replicas differ from it (together), the broken one too.
        newer = tree(tmp_path / "newer", *documents("v2"))
        code = await asyncio.to_thread(main, ["plan", str(newer), "--from", urls[0], "--from", urls[1],
                                              "--from", urls[2]])
        out = capsys.readouterr().out
        assert code == 2
        assert f"~ {urls[0]}" in out and f"as {urls[1]}, {urls[2]}" in out
        assert "0 of 3 serve the tree's config" in out and f"# Plan for {', '.join(urls)}" in out


async def test_export_config_validates_and_plans_as_no_change(tmp_path, capsys, monkeypatch):
    """`export config --from URL` writes YAML that validates (placeholders warned, never values) and that plans
    as no change against the tree the gateway was started from; an env key stays a reference."""
    monkeypatch.setenv("FLEET_KEY", "env-secret-value")
    root = tree(tmp_path / "tree", *documents())
    config = check([root]).config
    assert config is not None
    async with running_gateway(config, paths=[root]) as gw:
        url = f"http://127.0.0.1:{gw.admin.port}"  # type: ignore[union-attr]
        out_file = tmp_path / "exported" / "gateway.yaml"
        assert await asyncio.to_thread(main, ["export", "config", "--from", url, "-o", str(out_file)]) == 0
    text = out_file.read_text()
    assert "apiVersion: wsgate/v1" in text and "env: FLEET_KEY" in text and "redacted:" in text
    assert "env-secret-value" not in text and "fleet-key-1" not in text
    capsys.readouterr()
    assert main(["validate", str(out_file.parent)]) == 0
    assert "warning WSG252" in capsys.readouterr().out
    assert main(["plan", str(root), "--from", str(out_file.parent)]) == 0
    assert "No changes" in capsys.readouterr().out


def test_an_exported_placeholder_is_never_a_key(tmp_path):
    """A `redacted:...` api key (an export's placeholder) is indexed as no key: presenting it identifies nobody."""
    from gateway.build.apps import AppIndex

    placeholder = "redacted:0123456789abcdef"
    app = f"kind: Application\nname: a\nidentifiers:\n  api_keys:\n    - {placeholder}\napis: [Echo]\n"
    root = tree(tmp_path / "t", PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/e/").removeprefix("---\n"), app)
    config = check([root]).config
    assert config is not None
    index = AppIndex.build(config)
    assert index.by_api_key(placeholder) is None


async def test_plan_from_counts_each_live_connection_once_with_the_reason_that_applies_first(tmp_path, capsys):
    """A port change while two connections are on it counts them under the port; when the same plan also
    revokes their key, they count under the revocation and the port's line says so instead of a bare 0."""
    from support import echo_backend, gw_url
    from websockets.asyncio.client import connect

    key = "count-once-key"
    async with echo_backend() as backend:
        api = api_yaml("Echo", "/echo", backend.url("/echo/"), extra="policies:\n  - type: identify\n")
        docs = (PORT, api.removeprefix("---\n"), app_yaml(key))
        root = tree(tmp_path / "live", *docs)
        config = check([root]).config
        assert config is not None
        async with running_gateway(config, paths=[root]) as gw:
            url = f"http://127.0.0.1:{gw.admin.port}"  # type: ignore[union-attr]
            headers = {"x-Gateway-APIKey": key}
            async with connect(gw_url(gw, "/echo"), additional_headers=headers), \
                    connect(gw_url(gw, "/echo"), additional_headers=headers):
                moved = tree(tmp_path / "moved", PORT.replace("port: 0", "port: 1"), *docs[1:])
                capsys.readouterr()
                assert await asyncio.to_thread(main, ["plan", str(moved), "--from", url]) == 2
                out = capsys.readouterr().out
                assert "port number changed (drained, then closed with 1001, 2 live connections)" in out
                revoked = tree(tmp_path / "revoked", PORT.replace("port: 0", "port: 1"), docs[1],
                               app_yaml("another-key"))
                assert await asyncio.to_thread(main, ["plan", str(revoked), "--from", url]) == 2
                out = capsys.readouterr().out
                assert "API key revoked (closed at once with 1008, 2 live connections)" in out
                assert ("port number changed (drained, then closed with 1001, 0 live connections (2 more closed "
                        "first by: API key revoked))") in out
