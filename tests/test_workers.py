"""`wsgate run --workers N`: a supervisor and worker processes sharing every port, one admin for all."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket

import pytest
from process_support import admin_json, start_wsgate, two_workers
from support import PORT, TIMEOUT, Scrape, api_yaml, http_request, recording_backend, write_config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.workers.ports import hold_port
from gateway.workers.supervisor import worker_count


def test_worker_count_parses_auto_and_numbers():
    """`auto` is one worker per usable core; a number is itself; zero is refused."""
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        worker_count("0")


async def test_workers_share_the_port_answer_as_one_and_reload_together(tmp_path):
    """Two workers serve one port: connections land on both, /connections is their sum, /readyz lists each
    worker's generation, and an edited config reaches both as the next generation (not split)."""
    async with recording_backend() as backend:
        write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with two_workers(tmp_path / "config") as (gateway, admin):
            url = f"ws://127.0.0.1:{gateway.ports['default']}/a"
            ready = await admin_json(admin, "/readyz")
            assert ready["status"] == "ready" and ready["split"] is False
            assert [w["generation"] for w in ready["workers"]] == [1, 1]
            assert len({w["pid"] for w in ready["workers"]}) == 2
            clients = [await connect(url) for _ in range(8)]
            for i, ws in enumerate(clients):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
            counts = await admin_json(admin, "/connections")
            assert counts["total"] == 8 and counts["apis"] == {"A": 8}
            # prometheus_client's multiprocess aggregation of both workers' files (livesum for this gauge).
            metrics = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert metrics.value("wsgate_connections_active", port="default", api="A", application="") == 8
            assert metrics.value("wsgate_upgrades_total", port="default", api="A", status="101") == 8
            assert metrics.value("wsgate_messages_total", api="A", direction="client") == 8  # flushed on request
            assert metrics.value("wsgate_config_generation") == 1
            upstreams = await admin_json(admin, "/upstreams")  # one entry per endpoint, each worker's view inside
            assert [[w["index"] for w in e["workers"]] for e in upstreams["apis"]["A"]] == [[0, 1]]
            (tmp_path / "config" / "more.yaml").write_text(api_yaml("B", "/b", backend.url + "/"))
            outcome = (await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")).json()
            assert outcome["ok"] is True and outcome["split"] is False and outcome["generation"] == 2
            assert [w["generation"] for w in outcome["workers"]] == [2, 2]
            history = await admin_json(admin, "/reload")  # what the ops dashboard lists
            # The watcher may have seen the new file too: then a second, unchanged reload follows the applied one.
            assert [h["noop"] for h in history["history"]] in ([False], [False, True])
            assert all(h["ok"] and h["generation"] == 2 for h in history["history"])
            page = await http_request(admin, path="/dashboard/")
            assert page.status == 200 and page.headers["content-type"].startswith("text/html")
            after = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert after.value("wsgate_config_generation") == 2
            assert after.value("wsgate_reloads_total", outcome="applied") == 1  # the supervisor's, not per worker
            async with connect(f"ws://127.0.0.1:{gateway.ports['default']}/b") as ws:
                await ws.send("new route")
                assert await ws.recv() == "new route"
            for ws in clients:
                await ws.close()
            gateway.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT):
                assert await gateway.exit_code() == 0, "".join(gateway.output)


async def test_a_killed_worker_is_restarted_and_the_others_connections_are_untouched(tmp_path):
    """SIGKILL of one worker: its clients lose their connection, every other client keeps relaying, the
    supervisor logs the death and starts a new process in the slot, which serves the current generation."""
    async with recording_backend() as backend:
        write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with two_workers(tmp_path / "config") as (gateway, admin):
            url = f"ws://127.0.0.1:{gateway.ports['default']}/a"
            clients = await clients_on_every_worker(url, admin)
            victim = (await admin_json(admin, "/readyz"))["workers"][0]
            survivors_expected = (await worker_totals(admin))[1]
            os.kill(victim["pid"], signal.SIGKILL)
            died = await gateway.wait_for("worker_died", worker=0)
            assert died["how"] == "signal SIGKILL"
            alive = 0
            for i, ws in enumerate(clients):
                try:
                    await ws.send(f"still there {i}")
                    assert await ws.recv() == f"still there {i}"
                    alive += 1
                except ConnectionClosed:
                    pass
            assert alive == survivors_expected
            restarted = await gateway.wait_for("worker_started", worker=0)
            assert restarted["restarts"] == 1 and restarted["pid"] != victim["pid"]
            ready = await admin_json(admin, "/readyz")
            assert [w["generation"] for w in ready["workers"]] == [1, 1] and ready["split"] is False
            fresh = [await connect(url) for _ in range(6)]
            assert (await admin_json(admin, "/connections"))["total"] == alive + 6
            for ws in clients + fresh:
                await ws.close()


async def clients_on_every_worker(url: str, admin: str) -> list[ClientConnection]:
    """At least four clients of ``url``, opened until every worker holds some."""
    # The kernel hashes connections over the workers: keep opening until none is left empty.
    clients = []
    async with asyncio.timeout(TIMEOUT):
        while len(clients) < 4 or not all(await worker_totals(admin)):
            clients.append(await connect(url))
    return clients


async def worker_totals(admin: str) -> list[int]:
    """Live connections per worker on API A's one endpoint, asked of the workers now (``/upstreams``; the
    per-worker count in ``/readyz`` is the workers' last report, up to a second old)."""
    endpoint = (await admin_json(admin, "/upstreams"))["apis"]["A"][0]
    return [w["open"] for w in sorted(endpoint["workers"], key=lambda w: w["index"])]


async def test_each_reload_is_counted_once_by_the_supervisor(tmp_path):
    """With two workers /metrics counts every reload once, failed ones included (the supervisor decides them;
    the workers only apply what it hands over), and a failed reload keeps both workers on the last good
    config."""
    async with recording_backend() as backend:
        write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        root = tmp_path / "config"
        async with two_workers(root) as (gateway, admin):
            post = b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n"
            start = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert start.value("wsgate_last_reload_success_timestamp_seconds") > 0
            (root / "broken.yaml").write_text("kind: API\nname: B\n")
            failed = await http_request(admin, post)
            assert failed.status == 422 and failed.json()["diagnostics"]
            assert [w["generation"] for w in failed.json()["workers"]] == [1, 1]
            failing = Scrape((await http_request(admin, path="/metrics")).body.decode())
            assert failing.value("wsgate_reload_failing") == 1
            # Every worker's wsgate_config_info says so too (the supervisor tells them), and /readyz says why.

            async def info_failed() -> bool:
                text = (await http_request(admin, path="/metrics")).body.decode()
                return any(line.startswith("wsgate_config_info{") and 'last_reload="failed"' in line
                           and line.endswith(" 1.0") for line in text.splitlines())

            async with asyncio.timeout(TIMEOUT):
                while not await info_failed():
                    await asyncio.sleep(0.05)
            ready = (await http_request(admin, path="/readyz")).json()
            assert ready["config"]["last_reload"]["ok"] is False and ready["config"]["generation"] == 1
            (root / "broken.yaml").write_text(api_yaml("B", "/b", backend.url + "/"))
            applied = (await http_request(admin, post)).json()
            assert applied["ok"] and [w["generation"] for w in applied["workers"]] == [2, 2]
            after = Scrape((await http_request(admin, path="/metrics")).body.decode())
            # The watcher may have reloaded too (the same edits): more failed or unchanged ones, never a second
            # applied one, since generation 2 was reached once.
            assert after.value("wsgate_reloads_total", outcome="applied") == 1
            assert after.value("wsgate_reloads_total", outcome="failed") >= 1
            assert after.value("wsgate_reload_duration_seconds_count") >= 2
            assert after.value("wsgate_reload_failing") == 0


async def test_a_revoked_key_closes_its_connections_in_every_worker(tmp_path):
    """Connections of one application spread over two workers: removing its key on reload closes every one of
    them with 1008, whichever worker holds it."""
    async with recording_backend() as backend:
        api = api_yaml("A", "/a", backend.url + "/", extra="policies:\n  - type: identify\n    by: [api_key]\n")
        app = "kind: Application\nname: app\nidentifiers:\n  api_keys: [{key}]\napis: [A]\n"
        write_config(tmp_path, PORT, api, app.format(key="old-key"))
        async with two_workers(tmp_path / "config") as (gateway, admin):
            url = f"ws://127.0.0.1:{gateway.ports['default']}/a?x-Gateway-APIKey=old-key"
            clients = await clients_on_every_worker(url, admin)
            write_config(tmp_path, PORT, api, app.format(key="new-key"))
            outcome = (await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")).json()
            assert outcome["ok"] is True and outcome["split"] is False
            for ws in clients:
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1008


def test_split_is_reported_when_workers_serve_different_generations():
    """The supervisor's view: ready workers on different generations, or behind its own, are a split."""
    from gateway.workers.supervisor import Supervisor, Worker

    supervisor = Supervisor.__new__(Supervisor)
    supervisor.workers = [Worker(0), Worker(1)]
    supervisor.generation = 2
    for worker, generation in zip(supervisor.workers, (2, 2), strict=True):
        worker.ready, worker.generation = True, generation
    assert supervisor.split()[0] is False
    supervisor.workers[1].generation = 1
    assert supervisor.split()[0] is True
    supervisor.workers[1].ready = False  # a worker being restarted is not serving: no split, but listed
    split, workers = supervisor.split()
    assert split is False and [w.ready for w in workers] == [True, False]


async def test_supervisor_reload_reads_only_changed_files(tmp_path):
    """The supervisor's reload goes through the check cache of its start-up check: an unchanged tree parses no
    file, as a single-process gateway's reload does."""
    from gateway.config import CheckCache, check
    from gateway.workers.supervisor import Supervisor

    write_config(tmp_path, PORT, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    root = tmp_path / "config"
    cache = CheckCache()
    config = check([root], cache=cache).config
    assert config is not None
    supervisor = Supervisor(config, 2, paths=[root], check_cache=cache)
    outcome = await supervisor.reload("test")
    assert outcome.ok and outcome.noop
    assert (cache.parsed, cache.checked) == (0, 0)


async def test_a_second_gateway_with_workers_on_the_same_port_fails_to_start(tmp_path):
    """A second `wsgate run --workers 2` on a port the first one's workers serve exits 1 with start_failed (as
    without workers) instead of splitting the port's connections with it; the first keeps serving all of them."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    async with recording_backend() as backend:
        write_config(tmp_path / "first", PORT, api_yaml("A", "/a", backend.url + "/"))
        async with two_workers(tmp_path / "first" / "config") as (first, admin):
            number = first.ports["default"]
            taken = f"kind: Port\nname: default\nport: {number}\nhost: 127.0.0.1\n"
            write_config(tmp_path / "second", taken, api_yaml("B", "/a", backend.url + "/"))
            second = await start_wsgate(tmp_path / "second" / "config", "--workers", "2", ready=())
            try:
                async with asyncio.timeout(TIMEOUT):
                    assert await second.exit_code() == 1, "".join(second.output)
            finally:
                await second.kill()
            failed = [r for r in second.records if r.get("event") == "start_failed"]
            assert len(failed) == 1, "".join(second.output)
            assert f"127.0.0.1:{number}" in failed[0]["error"] and "another process holds" in failed[0]["hint"]
            assert not any(r.get("event") == "worker_started" for r in second.records)
            clients = [await connect(f"ws://127.0.0.1:{number}/a") for _ in range(8)]
            for i, ws in enumerate(clients):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
            assert (await admin_json(admin, "/connections"))["apis"] == {"A": 8}
            for ws in clients:
                await ws.close()


async def test_a_taken_admin_address_fails_the_start_with_one_line_and_no_traceback(tmp_path):
    """`wsgate run --workers 2` whose admin address another process holds exits 1 with one start_failed line and its
    hint (as a single gateway does), stopping the workers it had started, and prints no traceback."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        async with recording_backend() as backend:
            write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
            process = await start_wsgate(tmp_path / "config", "--workers", "2", "--admin", f"127.0.0.1:{taken}",
                                         ready=())
            try:
                async with asyncio.timeout(3 * TIMEOUT):
                    assert await process.exit_code() == 1, "".join(process.output)
            finally:
                await process.kill()
        failed = [r for r in process.records if r.get("event") == "start_failed"]
        assert len(failed) == 1, "".join(process.output)
        assert f"127.0.0.1:{taken}" in failed[0]["error"] and "admin.port" in failed[0]["hint"]
        assert "Traceback" not in "".join(process.output)
    finally:
        holder.close()


def test_port_holds_keep_other_gateways_out_and_let_the_workers_in():
    """A held number fails another process's probe, its lock fails a second supervisor that got past the
    probe, the lock is free again once closed, and the workers' SO_REUSEPORT sockets still bind it."""
    fresh = hold_port("127.0.0.1", 0)
    number = fresh.number
    with pytest.raises(OSError) as probed:
        hold_port("127.0.0.1", number)
    assert probed.value.errno == errno.EADDRINUSE
    lock = hold_port("127.0.0.1", number, probe=False)
    with pytest.raises(OSError) as locked:
        hold_port("127.0.0.1", number, probe=False)
    assert locked.value.errno == errno.EADDRINUSE
    lock.close()
    again = hold_port("127.0.0.1", number, probe=False)
    with socket.socket() as worker:
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", number))
        worker.listen()
        with pytest.raises(OSError) as listening:
            hold_port("127.0.0.1", number)  # what another gateway's supervisor meets once the workers listen
        assert listening.value.errno == errno.EADDRINUSE
    again.close()
    fresh.close()


def test_supervisor_keeps_its_own_ports_across_reloads_and_a_second_supervisor_out(tmp_path):
    """A port renamed or moved from 0 to its number on reload stays held without tripping over the supervisor's
    own hold; a second supervisor on that address fails with start_failed's StartError naming it."""
    from gateway.serving.runtime import StartError
    from gateway.workers.supervisor import Supervisor

    backend = "ws://127.0.0.1:9/"
    first = Supervisor(write_config(tmp_path, PORT, api_yaml("A", "/a", backend)), 2)
    number = first.reserve_ports(first.config)["default"]
    fixed = f"kind: Port\nname: default\nport: {number}\nhost: 127.0.0.1\n"
    assert first.reserve_ports(write_config(tmp_path, fixed, api_yaml("A", "/a", backend))) == {"default": number}
    renamed = write_config(tmp_path, fixed.replace("default", "main"), api_yaml("A", "/a", backend, ports="[main]"))
    assert first.reserve_ports(renamed) == {"main": number}
    second = Supervisor(renamed, 2)
    with pytest.raises(StartError) as refused:
        second.reserve_ports(renamed)
    assert f"port 'main' cannot listen on 127.0.0.1:{number}" in str(refused.value)
    assert second.holders == {}
    for held in first.holders.values():
        held.close()
