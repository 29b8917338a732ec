"""Hot reload with real sockets: untouched connections stay, drained ones get 1001, revoked ones 1008."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    api_yaml,
    echo_backend,
    gw_url,
    http_request,
    reloadable_gateway,
    running_echo,
    running_gateway,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.config import check
from gateway.serving.watch import ConfigWatcher

SECOND_PORT = "kind: Port\nname: second\nport: 0\nhost: 127.0.0.1\n"
KEY_A = "alpha-secret-key-1"
KEY_B = "beta-secret-key-1"


def settings(grace: float = 0.2) -> str:
    return f"kind: Gateway\nname: g\ndrain_grace: {grace}\nshutdown_timeout: 2\n"


def save(root: Path, *documents: str, name: str = "gateway.yaml") -> None:
    """An editor's atomic save: write a temporary file, then rename it over the config file."""
    text = "".join(doc if doc.startswith("---") else "---\n" + doc for doc in documents)
    tmp = root / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / name)


def application(name: str, key: str, apis: str = "[Echo]") -> str:
    return f"kind: Application\nname: {name}\nidentifiers:\n  api_keys: [{key}]\napis: {apis}\n"


IDENTIFY = "policies:\n  - type: identify\n"


async def watching(watcher: ConfigWatcher) -> None:
    """Wait until the watcher's OS watch is in place: a save made before that could be missed."""
    async with asyncio.timeout(TIMEOUT):
        await watcher.ready.wait()


async def reloaded_to(gw, generation: int) -> None:
    """Wait on the gateway's reload signal until its route table reached ``generation``."""
    async with asyncio.timeout(TIMEOUT):
        async with gw.reloaded:
            await gw.reloaded.wait_for(lambda: gw.table.generation >= generation)


async def closed_frame(ws) -> tuple[int, str] | None:
    """The close code and reason a client received (waits for the close)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    return (info.value.rcvd.code, info.value.rcvd.reason) if info.value.rcvd else None


async def closed_code(ws) -> int | None:
    """The close code a client received (waits for the close)."""
    frame = await closed_frame(ws)
    return frame[0] if frame else None


async def roundtrip(ws, text: str) -> None:
    await ws.send(text)
    async with asyncio.timeout(TIMEOUT):
        assert await ws.recv() == text


async def test_unrelated_change_keeps_connections_and_new_route_serves_at_once(tmp_path):
    """Adding an API leaves a live connection alone and the new API takes upgrades right after the reload."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", url)) as (gw, root):
            async with connect(gw_url(gw, "/echo")) as ws:
                await roundtrip(ws, "before")
                save(root, PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("Other", "/other", url))
                outcome = await gw.reload("test")
                assert outcome.ok and not outcome.noop
                assert (outcome.generation, outcome.drained, outcome.revoked) == (2, 0, 0)
                await roundtrip(ws, "after")
                async with connect(gw_url(gw, "/other")) as other:
                    await roundtrip(other, "new route")
                assert not gw.registry.draining


async def test_identical_config_is_a_noop(tmp_path):
    """Rewriting the same resources (a comment added) is skipped: same generation, noop recorded."""
    async with echo_backend() as backend:
        docs = (PORT, settings(), api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with reloadable_gateway(tmp_path, *docs) as (gw, root):
            table = gw.table
            save(root, "# a comment only\n" + docs[0], *docs[1:])
            with capture_logs() as logs:
                outcome = await gw.reload("test")
            assert outcome.ok and outcome.noop and outcome.generation == 1
            assert gw.table is table
            assert [e["event"] for e in logs if e["event"].startswith("reload_")] == ["reload_skipped"]


async def test_invalid_config_keeps_the_last_good_one_and_the_fix_applies(tmp_path):
    """A broken file changes nothing, every error is logged with file:line:col, and the fixed file applies."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", url)) as (gw, root):
            async with connect(gw_url(gw, "/echo")) as ws:
                broken = api_yaml("Echo", "/echo", url).replace("path: /echo", "path: 42")
                save(root, PORT, settings(), broken, "kind: Nonsense\nname: x\n")
                with capture_logs() as logs:
                    outcome = await gw.reload("test")
                assert not outcome.ok and outcome.generation == 1
                assert len(outcome.diagnostics) >= 2
                located = [e["location"] for e in logs if e["event"] == "reload_failed" and "location" in e]
                assert len(located) >= 2
                assert all(loc and loc.count(":") >= 2 and "gateway.yaml" in loc for loc in located)
                await roundtrip(ws, "still served")
                async with connect(gw_url(gw, "/echo")) as again:
                    await roundtrip(again, "old route still takes upgrades")
                save(root, PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("New", "/new", url))
                with capture_logs() as logs:
                    outcome = await gw.reload("test")
                assert outcome.ok and outcome.generation == 2
                applied = [e for e in logs if e["event"] == "reload_applied"]
                assert applied and applied[0]["generation"] == 2 and applied[0]["digest"] == gw.table.digest
                assert any('+ API "New"' in line for line in applied[0]["plan"])
                await roundtrip(ws, "untouched by the fix")


async def test_removed_api_drains_with_1001_after_the_grace(tmp_path):
    """A removed API's connection keeps working during the grace, then closes with 1001; new upgrades get 404."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(
            tmp_path, PORT, settings(0.3), api_yaml("Echo", "/echo", url), api_yaml("Gone", "/gone", url)
        ) as (gw, root):
            async with connect(gw_url(gw, "/echo")) as kept, connect(gw_url(gw, "/gone")) as gone:
                save(root, PORT, settings(0.3), api_yaml("Echo", "/echo", url))
                outcome = await gw.reload("test")
                assert outcome.drained == 1 and outcome.revoked == 0
                with pytest.raises(InvalidStatus) as refused:
                    await connect(gw_url(gw, "/gone"))
                assert refused.value.response.status_code == 404
                assert await closed_frame(gone) == (1001, "going away: API removed")
                await roundtrip(kept, "untouched")


async def test_upstream_change_drains_and_new_upgrades_follow_the_new_definition(tmp_path):
    """An API whose upstream changed drains its old connections; a new upgrade reaches the new upstream."""
    async with echo_backend("/echo/", "/v2/") as backend:
        async with reloadable_gateway(
            tmp_path, PORT, settings(0.2), api_yaml("Echo", "/echo", backend.url("/echo/"))
        ) as (gw, root):
            async with connect(gw_url(gw, "/echo")) as old:
                save(root, PORT, settings(0.2), api_yaml("Echo", "/echo", backend.url("/v2/")))
                assert (await gw.reload("test")).drained == 1
                async with connect(gw_url(gw, "/echo")) as new:
                    await roundtrip(new, "via v2")
                    assert gw.table.lookup("default", "/echo").endpoints[0].path == "/v2/"
                    assert await closed_code(old) == 1001
                    await roundtrip(new, "new one untouched by the drain")


async def test_drain_timer_is_cancelled_when_the_connection_ends_first(tmp_path):
    """A draining connection that closes by itself within the grace leaves no timer behind."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, settings(30), api_yaml("Gone", "/gone", url)) as (gw, root):
            ws = await connect(gw_url(gw, "/gone"))
            save(root, PORT, settings(30), api_yaml("Echo", "/echo", url))
            assert (await gw.reload("test")).drained == 1
            assert len(gw.registry.draining) == 1
            await ws.close()
            async with asyncio.timeout(TIMEOUT):
                while gw.registry.live:
                    await asyncio.sleep(0.01)
            assert not gw.registry.draining and ws.close_code == 1000


async def test_revoked_key_and_deregistered_application_close_with_1008_at_once(tmp_path):
    """Revoking a key closes that application's connection with 1008 immediately; others are untouched."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        api = api_yaml("Echo", "/echo", url, extra=IDENTIFY)
        other = api_yaml("Other", "/other", url, extra=IDENTIFY)
        apps = (application("alpha", KEY_A, "[Echo, Other]"), application("beta", KEY_B, "[Echo, Other]"))
        # A long grace: a 1008 seen here cannot be a drain.
        async with reloadable_gateway(tmp_path, PORT, settings(30), api, other, *apps) as (gw, root):
            a = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_A}"))
            b = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_B}"))
            b_other = await connect(gw_url(gw, f"/other?x-Gateway-APIKey={KEY_B}"))
            await roundtrip(a, "a")
            save(root, PORT, settings(30), api, other, application("alpha", "alpha-new-key", "[Echo, Other]"),
                 apps[1])
            outcome = await gw.reload("test")
            assert (outcome.revoked, outcome.drained) == (1, 0)
            assert await closed_code(a) == 1008
            await roundtrip(b, "b untouched")
            # beta deregistered from Other: only its Other connection is closed.
            save(root, PORT, settings(30), api, other, application("alpha", "alpha-new-key", "[Echo, Other]"),
                 application("beta", KEY_B, "[Echo]"))
            assert (await gw.reload("test")).revoked == 1
            assert await closed_frame(b_other) == (1008, "revoked: application deregistered from API 'Other'")
            await roundtrip(b, "b still untouched")
            # Removed altogether.
            save(root, PORT, settings(30), api, other, application("alpha", "alpha-new-key", "[Echo, Other]"))
            assert (await gw.reload("test")).revoked == 1
            assert await closed_code(b) == 1008
            with pytest.raises(InvalidStatus) as refused:
                await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_A}"))
            assert refused.value.response.status_code == 401


async def test_api_removed_with_its_registrations_drains_instead_of_revoking(tmp_path):
    """Removing an API and the registrations to it drains its connections with 1001; nothing is revoked."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        api = api_yaml("Echo", "/echo", url, extra=IDENTIFY)
        other = api_yaml("Other", "/other", url, extra=IDENTIFY)
        async with reloadable_gateway(tmp_path, PORT, settings(0.2), api, other,
                                      application("alpha", KEY_A, "[Echo, Other]")) as (gw, root):
            on_echo = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_A}"))
            on_other = await connect(gw_url(gw, f"/other?x-Gateway-APIKey={KEY_A}"))
            save(root, PORT, settings(0.2), other, application("alpha", KEY_A, "[Other]"))
            outcome = await gw.reload("test")
            assert (outcome.drained, outcome.revoked) == (1, 0)
            assert await closed_frame(on_echo) == (1001, "going away: API removed")
            await roundtrip(on_other, "kept")


async def test_lowered_throttle_closes_nobody_and_applies_to_new_upgrades(tmp_path):
    """Lowering a throttle limit below the live count keeps every connection; the next upgrade gets 503."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        throttle = "policies:\n  - type: throttle\n    max_connections: {}\n"
        async with reloadable_gateway(
            tmp_path, PORT, settings(), api_yaml("Echo", "/echo", url, extra=throttle.format(5))
        ) as (gw, root):
            clients = [await connect(gw_url(gw, "/echo")) for _ in range(3)]
            save(root, PORT, settings(), api_yaml("Echo", "/echo", url, extra=throttle.format(1)))
            outcome = await gw.reload("test")
            assert outcome.ok and (outcome.drained, outcome.revoked) == (0, 0)
            for i, ws in enumerate(clients):
                await roundtrip(ws, f"still here {i}")
            with pytest.raises(InvalidStatus) as refused:
                await connect(gw_url(gw, "/echo"))
            assert refused.value.response.status_code == 503
            for ws in clients:
                await ws.close()


async def test_ports_added_removed_and_changed(tmp_path):
    """A new port listens after the reload; a removed one stops accepting and its connections drain with 1001."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, settings(0.2), api_yaml("Echo", "/echo", url)) as (gw, root):
            default_server = gw.servers["default"]
            async with connect(gw_url(gw, "/echo")) as on_default:
                both = api_yaml("Echo", "/echo", url, ports="[default, second]")
                save(root, PORT, SECOND_PORT, settings(0.2), both)
                assert (await gw.reload("test")).ok
                assert gw.servers["default"] is default_server  # never re-bound
                second = await connect(gw_url(gw, "/echo", port="second"))
                await roundtrip(second, "on the new port")
                address = gw.addresses["second"]
                save(root, PORT, settings(0.2), api_yaml("Echo", "/echo", url))
                outcome = await gw.reload("test")
                assert outcome.drained == 1 and "second" not in gw.servers
                with pytest.raises(OSError):
                    await asyncio.open_connection(*address)
                assert await closed_code(second) == 1001
                await roundtrip(on_default, "default untouched")
                # A changed port (here: disabled) drains too.
                disabled = PORT + "enabled: false\n"
                save(root, disabled, settings(0.2), api_yaml("Echo", "/echo", url))
                assert (await gw.reload("test")).drained == 1
                assert await closed_code(on_default) == 1001
                assert not gw.servers


async def _client(index: int, url: str, stop: asyncio.Event, progress: list[int]) -> int:
    """Numbered messages in windows of 4; every echo must be the next number: none lost, none twice."""
    async with connect(url) as ws:
        sent = received = 0
        while not stop.is_set():
            for _ in range(4):
                await ws.send(f"{index}:{sent}")
                sent += 1
            for _ in range(4):
                assert await ws.recv() == f"{index}:{received}"
                received += 1
            progress[index] = received
        await ws.send(f"{index}:end")
        assert await ws.recv() == f"{index}:end"  # nothing extra was queued before the marker
        assert ws.close_code is None
    return received


async def test_100_connections_across_20_reloads_lose_nothing(tmp_path):
    """100 clients keep exchanging numbered messages through 20 reloads (add, remove, invalid, fix, no-op)
    and none is closed, every message arrives once and in order."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        base = (PORT, settings(0.1), api_yaml("Echo", "/echo", url))
        async with reloadable_gateway(tmp_path, *base) as (gw, root):
            stop = asyncio.Event()
            progress = [0] * 100
            tasks = [asyncio.create_task(_client(i, gw_url(gw, "/echo"), stop, progress)) for i in range(100)]
            outcomes = []

            async def everyone_moved() -> None:
                mark = list(progress)
                async with asyncio.timeout(TIMEOUT):
                    while any(p <= m for p, m in zip(progress, mark, strict=False)):
                        done = [t for t in tasks if t.done()]
                        if done:
                            done[0].result()  # surface a client's failure now
                        await asyncio.sleep(0.01)

            await everyone_moved()
            for r in range(4):
                extra = api_yaml(f"Extra{r}", f"/extra{r}", url)
                changed = api_yaml("Echo", "/echo", url, extra=f"description: round {r}")
                steps = [
                    (PORT, settings(0.1), base[2], extra),  # unrelated API added
                    (PORT, settings(0.1), changed),  # removed again; a description changed
                    (PORT, settings(0.1), changed, "kind: API\nname: Broken\n"),  # invalid
                    (PORT, settings(0.1), changed, api_yaml(f"Fixed{r}", f"/fixed{r}", url)),  # the fix
                    (PORT, settings(0.1), changed, api_yaml(f"Fixed{r}", f"/fixed{r}", url)),  # no-op
                ]
                for step in steps:
                    save(root, *step)
                    outcomes.append(await gw.reload("test"))
                    await everyone_moved()
            stop.set()
            counts = await asyncio.gather(*tasks)
            assert len(outcomes) == 20
            assert [o.ok for o in outcomes] == [True, True, False, True, True] * 4
            assert [o.noop for o in outcomes] == [False, False, False, False, True] * 4
            assert all(o.drained == 0 and o.revoked == 0 for o in outcomes)
            assert gw.table.generation == 1 + 12
            assert all(c >= 20 for c in counts)
            assert not gw.registry.draining


async def test_watcher_follows_an_atomic_rename_save(tmp_path):
    """With the watcher running, an editor's atomic save is picked up and the new API serves."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", url)) as (gw, root):
            watcher = ConfigWatcher([root], gw.reload, debounce_ms=50)
            await watcher.start()
            try:
                docs = (PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("New", "/new", url))
                await watching(watcher)
                save(root, *docs)
                await reloaded_to(gw, 2)
                assert gw.table.generation == 2
                assert gw.last_reload.trigger == "files"
                async with connect(gw_url(gw, "/new")) as ws:
                    await roundtrip(ws, "via the watcher")
            finally:
                await watcher.stop()


async def test_admin_reports_config_reload_and_triggers_reload(tmp_path):
    """GET /config shows resources with keys as numbered placeholders (no digest), POST /reload reloads, GET
    /reload reports it."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        docs = (PORT, settings(), api_yaml("Echo", "/echo", url, extra=IDENTIFY), application("alpha", KEY_A))
        async with reloadable_gateway(tmp_path, *docs) as (gw, root):
            admin = f"http://127.0.0.1:{gw.admin.port}"
            body = (await http_request(admin, path="/config")).json()
            assert body["generation"] == 1 and body["digest"] == gw.table.digest
            text = json.dumps(body)
            assert KEY_A not in text
            app = next(d for d in body["documents"] if d["kind"] == "Application")
            from gateway.build.credentials import api_key_fingerprint, key_digest
            assert app["identifiers"]["api_keys"] == [f"redacted:{api_key_fingerprint(KEY_A)[:16]}"]
            assert key_digest(KEY_A) not in text
            save(root, *docs[:3], application("alpha", KEY_A, "[]"))
            post = b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n"
            response = await http_request(admin, request=post)
            assert response.status == 200 and response.json()["generation"] == 2
            status = (await http_request(admin, path="/reload")).json()
            assert status["reloads"] == 1 and status["last_reload"]["trigger"] == "admin"
            save(root, "kind: Port\n")
            response = await http_request(admin, request=post)
            assert response.status == 422 and response.json()["diagnostics"]
            assert (await http_request(admin, path="/config")).json()["generation"] == 2


async def test_run_subprocess_follows_atomic_save_and_sighup(tmp_path):
    """`python -m gateway run` picks up an atomic-rename save, and a SIGHUP triggers a (no-op) reload."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        write_config(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", url))
        root = tmp_path / "config"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", str(root), "--admin", "127.0.0.1:0", "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        events: list[dict] = []
        lines: list[str] = []
        seen = asyncio.Condition()

        async def read() -> None:
            while line := (await process.stdout.readline()).decode():
                lines.append(line)
                if line.startswith("{"):
                    events.append(json.loads(line))
                    async with seen:
                        seen.notify_all()

        async def first(predicate) -> dict:
            async with asyncio.timeout(TIMEOUT):
                async with seen:
                    await seen.wait_for(lambda: any(predicate(e) for e in events))
            return next(e for e in events if predicate(e))

        reader = asyncio.create_task(read())
        try:
            port = (await first(lambda e: e["event"] == "listening" and e.get("name") == "default"))["port"]
            await first(lambda e: e["event"] == "listening" and e.get("name") == "admin")
            await first(lambda e: e["event"] == "watching")  # a save before this could be missed
            async with connect(f"ws://127.0.0.1:{port}/echo") as ws:
                await roundtrip(ws, "before")
                docs = (PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("New", "/new", url))
                save(root, *docs)
                applied = await first(lambda e: e["event"] == "reload_applied")
                assert applied["generation"] == 2 and applied["trigger"] == "files"
                async with connect(f"ws://127.0.0.1:{port}/new") as new:
                    await roundtrip(new, "new api")
                await roundtrip(ws, "untouched")
                process.send_signal(signal.SIGHUP)
                skipped = await first(lambda e: e["event"] == "reload_skipped" and e["trigger"] == "sighup")
                assert skipped["generation"] == 2
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT):
                assert await process.wait() == 0, "".join(lines)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await reader


async def test_watcher_follows_a_configmap_symlink_swap(tmp_path):
    """A Kubernetes ConfigMap update (new timestamped dir, `..data` link swapped atomically) is applied."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        root = tmp_path / "configmap"
        root.mkdir()
        versions = iter(range(1, 1000))

        def publish(*documents: str) -> None:
            version = root / f"..2026_11_28_00_00_00.{next(versions)}"
            version.mkdir()
            text = "".join(d if d.startswith("---") else "---\n" + d for d in documents)
            (version / "gateway.yaml").write_text(text)
            link = root / "..data_tmp"
            link.symlink_to(version.name)
            os.replace(link, root / "..data")

        publish(PORT, settings(), api_yaml("Echo", "/echo", url))
        (root / "gateway.yaml").symlink_to("..data/gateway.yaml")
        result = check([root])
        assert result.config is not None, result.diagnostics
        async with running_gateway(result.config, paths=[root]) as gw:
            watcher = ConfigWatcher([root], gw.reload, debounce_ms=50)
            await watcher.start()
            try:
                async with connect(gw_url(gw, "/echo")) as ws:
                    docs = (PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("New", "/new", url))
                    await watching(watcher)
                    publish(*docs)
                    await reloaded_to(gw, 2)
                    async with connect(gw_url(gw, "/new")) as new:
                        await roundtrip(new, "from the configmap")
                    await roundtrip(ws, "untouched")
            finally:
                await watcher.stop()


async def test_echo_servers_follow_the_config(tmp_path):
    """A reload adds an echo context in place (same listener), and a removed echo server stops."""
    echo = ("kind: EchoServer\nname: e1\nport: 1\nhost: 127.0.0.1\ncontexts:\n"
            "  - path: /one/\n    mode: echo\n")
    config = write_config(tmp_path, PORT, settings(), echo)
    root = tmp_path / "config"
    async with running_gateway(config, paths=[root]) as gw:
        # The model's port is fixed (>= 1); run its service on a free port and hand it to the gateway.
        from echo.server import EchoService

        service = EchoService(config.echo_servers["e1"].model, port=0)
        await service.start()
        gw.echo_services, gw._start_echo = [service], True
        async with connect(service.url("/one/")) as one:
            await roundtrip(one, "one")
            save(root, PORT, settings(), echo + "  - path: /two/\n    mode: echo\n")
            assert (await gw.reload("test")).ok
            assert gw.echo_services == [service]
            async with connect(service.url("/two/")) as two:
                await roundtrip(two, "two")
            await roundtrip(one, "one untouched")
            save(root, PORT, settings())
            assert (await gw.reload("test")).ok
            assert gw.echo_services == []
            assert await closed_code(one) == 1001


async def test_plan_from_a_running_gateway_counts_live_connections(tmp_path, capsys):
    """`wsgate plan PATH --from http://admin` diffs against the live config and counts the connections it closes."""
    from gateway.cli import main

    async with echo_backend() as backend:
        url = backend.url("/echo/")
        docs = (PORT, settings(), api_yaml("Echo", "/echo", url), api_yaml("Gone", "/gone", url),
                application("alpha", KEY_A, "[Echo, Gone]"))
        config = write_config(tmp_path, *docs)
        desired = tmp_path / "desired"
        desired.mkdir()
        save(desired, *docs)
        async with running_gateway(config) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            gone = [await connect(gw_url(gw, "/gone")) for _ in range(2)]
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["plan", str(desired), "--from", admin]) == 0
            assert "No changes" in capsys.readouterr().out  # plain keys compare equal to the live digests
            save(desired, PORT, settings(), api_yaml("Echo", "/echo", url), application("alpha", KEY_A))
            assert await asyncio.to_thread(main, ["plan", str(desired), "--from", admin]) == 2
            out = capsys.readouterr().out
            assert "API removed (drained, then closed with 1001, 2 live connections)" in out
            assert KEY_A not in out
            for ws in gone:
                await ws.close()


async def test_concurrent_reload_requests_coalesce(tmp_path):
    """Three reload requests at once make two reloads: the running one and a single one after it."""
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            outcomes = await asyncio.gather(*(gw.reload(f"t{i}") for i in range(3)))
            assert gw.reload_count == 2
            assert all(o.ok and o.noop for o in outcomes)
            assert outcomes[2] is outcomes[1]


def test_reload_benchmark_runs_end_to_end(tmp_path):
    """The reload benchmark runs in a tiny configuration and reports no lost message (no timing assertions)."""
    import subprocess

    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "reload.py"
    proc = subprocess.run([sys.executable, str(script), "--reloads", "2", "--conns", "4", "--settle", "0.1",
                           "--json", str(out)], capture_output=True, text=True, timeout=6 * TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["reloads_applied"] == 2 and result["lost_or_misordered_or_closed"] == 0
    assert result["messages"] > 0


async def test_edited_transform_module_applies_on_reload_and_live_connections_keep_theirs(tmp_path):
    """A transform kept in the config tree is config: editing it is a reload (not a no-op), new connections
    get the new code, a connection already relayed keeps the function it started with."""
    module = f"tf_{abs(hash(str(tmp_path))):x}"  # unique: sys.modules is shared by every test of the run
    root = tmp_path / "config"
    root.mkdir()

    def transform(suffix: str) -> None:
        source = f"def add(message):\n    return message.payload + {suffix!r}\n"
        (root / f".{module}.tmp").write_text(source)
        os.replace(root / f".{module}.tmp", root / f"{module}.py")  # an editor's atomic save

    async with echo_backend() as backend:
        transform(" v1")
        policy = f"policies:\n  - type: transform\n    stage: client\n    callable: {module}:add\n"
        config = write_config(tmp_path, PORT, settings(), api_yaml("Echo", "/echo", backend.url("/echo/"),
                                                                    extra=policy))
        async with running_gateway(config, paths=[root]) as gw:
            async with connect(gw_url(gw, "/echo")) as old:
                await old.send("a")
                assert await old.recv() == "a v1"
                transform(" v2")
                outcome = await gw.reload("test")
                assert outcome.ok and not outcome.noop
                async with connect(gw_url(gw, "/echo")) as new:
                    await new.send("b")
                    assert await new.recv() == "b v2"
                await old.send("c")
                assert await old.recv() == "c v1"
                transform(" v2")
                assert (await gw.reload("test")).noop  # the same source again: nothing to do


async def test_context_started_over_http_is_drift_kept_by_reloads_and_shown_by_plan(tmp_path, capsys):
    """startDemoAPI on an undeclared path publishes it (logged as drift); a reload keeps it; plan --from shows it."""
    from gateway.cli import main

    echo = ("kind: EchoServer\nname: e1\nport: 1\nhost: 127.0.0.1\ncontexts:\n"
            "  - path: /one/\n    mode: echo\n  - path: /two/\n    mode: echo\n")
    async with reloadable_gateway(tmp_path, PORT, settings(), echo) as (gw, root):
        async with running_echo(gw.config.echo_servers["e1"].model) as service:  # the model's port is fixed
            gw.echo_services, gw._start_echo = [service], True
            with capture_logs() as logs:
                control = service.url("/", scheme="http")
                started = await http_request(control, path="/startDemoAPI?relativeURI=/any/path/")
                stopped = await http_request(control, path="/stopDemoAPI?relativeURI=/two/")
            assert (started.status, stopped.status) == (200, 200)
            assert [(e["event"], e["path"]) for e in logs if e["event"] == "echo_drift"] == [
                ("echo_drift", "/any/path/"), ("echo_drift", "/two/")]
            async with connect(service.url("/any/path/")) as ws:
                await ws.send("hello")
                assert await ws.recv() == "Message Received from anonymous: hello"
                # A reload of a changed tree keeps the drift the change does not touch.
                save(root, PORT, settings(0.5), echo)
                assert (await gw.reload("test")).ok
                await ws.send("still")
                assert await ws.recv() == "Message Received from anonymous: still"
            desired = tmp_path / "desired"
            desired.mkdir()
            save(desired, PORT, settings(0.5), echo)
            capsys.readouterr()
            admin = f"http://127.0.0.1:{gw.admin.port}"
            assert await asyncio.to_thread(main, ["plan", str(desired), "--from", admin]) == 2
            out = capsys.readouterr().out
            assert '  ! EchoServer "e1" context /any/path/: started over HTTP, not declared' in out
            assert '  ! EchoServer "e1" context /two/: stopped over HTTP' in out
            assert out.endswith("No changes. The config matches.\n")
