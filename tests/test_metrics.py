"""/metrics on prometheus_client: series at zero from startup, histograms, failures by reason, bounded labels,
and the multiprocess aggregation of several worker processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    api_yaml,
    app_yaml,
    echo_backend,
    eventually,
    gw_url,
    http_request,
    path_api,
    run,
    running_gateway,
    scrape,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect

from gateway.common.connection_ids import parse as parse_connection_id

KEY = "metrics-test-key-7f3a"
APP = app_yaml(KEY)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_series_of_a_declared_api_exist_at_zero_from_startup_and_after_a_reload(tmp_path):
    """Before any traffic every per-API series is exported at 0; an API added by a reload gets its series too."""

    async def scenario():
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", "ws://127.0.0.1:9/echo/"), APP)
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            first = await scrape(gw)
            assert first.value("wsgate_connections_active", port="default", api="Echo", application="") == 0
            assert first.value("wsgate_connections_active", port="default", api="Echo", application="acme") == 0
            assert first.value("wsgate_upgrades_total", port="default", api="Echo", status="101") == 0
            for direction in ("client", "server"):
                assert first.value("wsgate_messages_total", api="Echo", direction=direction) == 0
                assert first.value("wsgate_message_size_bytes_count", api="Echo", direction=direction) == 0
            for stage in ("policies", "upstream_connect", "total"):
                assert first.value("wsgate_upgrade_duration_seconds_count", api="Echo", stage=stage) == 0
            assert first.value("wsgate_connection_duration_seconds_count", api="Echo") == 0
            assert first.value("wsgate_upstream_connect_failures_total", api="Echo",
                               endpoint="ws://127.0.0.1:9/echo/", reason="refused") == 0
            for outcome in ("applied", "unchanged", "failed"):
                assert first.value("wsgate_reloads_total", outcome=outcome) == 0
            assert first.value("wsgate_config_generation") == 1
            assert first.value("wsgate_reload_failing") == 0
            assert first.value("wsgate_accept_errors_total", listener="default") == 0
            assert first.value("wsgate_config_info", digest=gw.table.digest) == 1
            assert first.value("wsgate_last_reload_success_timestamp_seconds") > 0
            assert first.value("wsgate_build_info") == 1
            assert first.value("process_open_fds") > 0
            assert first.value("wsgate_connections_active", api="Chat") is None

            broken = tmp_path / "config" / "broken.yaml"
            broken.write_text("kind: API\nname: Broken\n")
            assert not (await gw.reload("test")).ok
            failing = await scrape(gw)
            assert failing.value("wsgate_reload_failing") == 1
            assert failing.value("wsgate_reloads_total", outcome="failed") == 1
            assert failing.value("wsgate_config_generation") == 1
            broken.unlink()

            old_digest = gw.table.digest
            with open(tmp_path / "config" / "gateway.yaml", "a") as f:
                f.write(api_yaml("Chat", "/chat", "ws://127.0.0.1:9/chat/"))
            outcome = await gw.reload("test")
            assert outcome.ok and not outcome.noop
            second = await scrape(gw)
            assert second.value("wsgate_connections_active", port="default", api="Chat", application="") == 0
            assert second.value("wsgate_messages_total", api="Chat", direction="client") == 0
            assert second.value("wsgate_config_generation") == 2
            assert second.value("wsgate_config_info", digest=gw.table.digest) == 1
            assert second.value("wsgate_config_info", digest=old_digest) is None
            assert second.value("wsgate_reloads_total", outcome="applied") == 1
            assert second.value("wsgate_reload_duration_seconds_count") == 2
            assert second.value("wsgate_reload_failing") == 0

            # The API a reload removes loses its active-connection series (its counters stay).
            (tmp_path / "config" / "gateway.yaml").write_text(
                (tmp_path / "config" / "gateway.yaml").read_text().replace("name: Echo\n", "name: Gone\n")
                .replace("apis: [Echo]", "apis: [Gone]"))
            assert (await gw.reload("test")).ok
            third = await scrape(gw)
            assert third.value("wsgate_connections_active", api="Echo") is None
            assert third.value("wsgate_connections_active", port="default", api="Gone", application="acme") == 0
            assert third.value("wsgate_messages_total", api="Echo", direction="client") == 0

    run(scenario())


def test_histograms_count_upgrades_connections_and_message_sizes(tmp_path):
    """One relayed connection lands in the upgrade stage histograms, the connection duration and the size histogram."""

    async def scenario():
        async with echo_backend() as backend:
            config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/")))
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/echo")) as ws:
                    for payload in ("a" * 10, "b" * 30, "c" * 2000):
                        await ws.send(payload)
                        await ws.recv()
                    live = await scrape(gw)
                    # Live connections are flushed into the series at the scrape.
                    assert live.value("wsgate_message_size_bytes_count", api="Echo", direction="client") == 3
                    assert live.value("wsgate_message_size_bytes_sum", api="Echo", direction="client") == 2040
                    # 3 messages of mean 680 bytes: all in the first bucket at or above 680 (1024).
                    assert live.value("wsgate_message_size_bytes_bucket", api="Echo", direction="client",
                                      le="256.0") == 0
                    assert live.value("wsgate_message_size_bytes_bucket", api="Echo", direction="client",
                                      le="1024.0") == 3
                    await ws.send("d" * 20)
                    await ws.recv()
                await eventually(lambda: not gw.registry.live)
                done = await scrape(gw)
                for stage in ("policies", "upstream_connect", "total"):
                    assert done.value("wsgate_upgrade_duration_seconds_count", api="Echo", stage=stage) == 1
                assert done.value("wsgate_connection_duration_seconds_count", api="Echo") == 1
                # The close flushed the rest: nothing is counted twice.
                assert done.value("wsgate_message_size_bytes_count", api="Echo", direction="client") == 4
                assert done.value("wsgate_message_size_bytes_sum", api="Echo", direction="server") == 2060
                assert done.value("wsgate_messages_total", api="Echo", direction="server") == 4

    run(scenario())


def test_message_relay_is_counted_too(tmp_path):
    """An API on the message relay (a transform) feeds the same message series as the byte relay."""

    async def scenario():
        async with echo_backend() as backend:
            config = write_config(tmp_path, PORT, path_api(tmp_path, "message", backend.url("/echo/")))
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/f")) as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                await eventually(lambda: not gw.registry.live)
                done = await scrape(gw)
                assert done.value("wsgate_messages_total", api="F", direction="client") == 1
                assert done.value("wsgate_message_size_bytes_sum", api="F", direction="server") == 5

    run(scenario())


def test_upstream_failures_and_refusals_are_counted_by_reason_and_logged_as_warnings(tmp_path):
    """A refused upstream counts per endpoint with reason refused, the 502 is a refusal by reason, logged at warning."""

    async def scenario():
        dead = closed_port()
        url = f"ws://127.0.0.1:{dead}/echo/"
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", url))
        async with running_gateway(config) as gw:
            with capture_logs() as logs:
                response = await http_request(gw_url(gw, "/echo"), upgrade_request("/echo"))
            assert response.status == 502
            assert (await http_request(gw_url(gw, "/nope"), upgrade_request("/nope"))).status == 404
            result = await scrape(gw)
            assert result.value("wsgate_upstream_connect_failures_total", api="Echo", endpoint=url,
                                reason="refused") == 1
            assert result.value("wsgate_upgrades_refused_total", port="default", api="Echo",
                                reason="bad_gateway") == 1
            assert result.value("wsgate_upgrades_refused_total", port="default", api="", reason="not_found") == 1
            assert result.value("wsgate_upgrade_duration_seconds_count", api="Echo", stage="policies") == 1
            assert result.value("wsgate_upgrade_duration_seconds_count", api="Echo", stage="upstream_connect") == 0
        refused = [e for e in logs if e["event"] == "upgrade_refused"]
        assert [(e["status"], e["log_level"]) for e in refused] == [(502, "warning")]

    run(scenario())


def test_labels_never_hold_a_connection_id_a_client_address_or_a_key(tmp_path):
    """After identified and refused upgrades, no label is named for a peer or connection, and no value is the key."""

    async def scenario():
        async with echo_backend() as backend:
            api = api_yaml("Echo", "/echo", backend.url("/echo/"), extra="policies:\n  - type: identify\n")
            config = write_config(tmp_path, PORT, api, APP)
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/echo"), additional_headers={"x-Gateway-APIKey": KEY}) as ws:
                    await ws.send("x")
                    await ws.recv()
                    result = await scrape(gw)
                    assert result.value("wsgate_connections_active", api="Echo", application="acme") == 1
                refused = await http_request(gw_url(gw, "/echo"),
                                             upgrade_request("/echo", extra="x-Gateway-APIKey: wrong-key\r\n"))
                assert refused.status in (401, 403)
                await eventually(lambda: not gw.registry.live)
                result = await scrape(gw)
        wsgate = [s for s in result.samples if s.name.startswith("wsgate_")]
        names = {name for s in wsgate for name in s.labels}
        assert names <= {"port", "api", "application", "status", "reason", "stage", "endpoint", "code",
                         "direction", "outcome", "digest", "version", "python", "le", "backend", "action", "kind",
                         "listener", "commit", "last_reload"}
        values = {value for s in wsgate for value in s.labels.values()}
        assert KEY not in result.text and "wrong-key" not in result.text
        assert not any(parse_connection_id(value) for value in values)  # connection ids: <instance>.<worker>.<n>
        assert "127.0.0.1" not in {v for s in wsgate for k, v in s.labels.items() if k != "endpoint"}

    run(scenario())


WORKER = textwrap.dedent("""
    import asyncio, sys
    from gateway.config import check
    from gateway.common.log import configure_logging
    from gateway.operations.admin import admin_server
    from gateway.serving.runtime import Gateway

    async def main():
        configure_logging("json")  # to stderr: stdout tells the test the ports
        config = check([sys.argv[1]]).config
        gateway = Gateway(config, admin=("127.0.0.1", 0), echo=False, admin_server=admin_server)
        await gateway.start()
        print(gateway.addresses["default"][1], gateway.admin.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await gateway.stop()

    asyncio.run(main())
""")


@pytest.mark.slow
def test_multiprocess_mode_aggregates_the_workers_series(tmp_path):
    """Two gateway processes sharing PROMETHEUS_MULTIPROC_DIR: either one's /metrics sums both (livesum gauges too)."""

    async def scenario():
        async with echo_backend() as backend:
            write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/")))
            shared = tmp_path / "prometheus"
            shared.mkdir()
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared),
                   "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            workers = [await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, str(tmp_path / "config"), env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
            try:
                ports = []
                for worker in workers:
                    assert worker.stdout is not None
                    async with asyncio.timeout(TIMEOUT * 3):
                        line = await worker.stdout.readline()
                    ports.append([int(n) for n in line.split()])
                clients = [await connect(f"ws://127.0.0.1:{port}/echo").__aenter__() for port, _ in ports]
                for ws in clients:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
                from support import Scrape

                response = await http_request(f"http://127.0.0.1:{ports[0][1]}", path="/metrics")
                both = Scrape(response.body.decode())
                assert both.value("wsgate_upgrades_total", port="default", api="Echo", status="101") == 2
                assert both.value("wsgate_connections_active", port="default", api="Echo", application="") == 2
                assert both.value("wsgate_build_info") == 1  # livemax: one series, not one per worker
                await clients[1].close()
                for ws in clients[:1]:
                    await ws.close()

                async def closed_in_both() -> bool:
                    response = await http_request(f"http://127.0.0.1:{ports[1][1]}", path="/metrics")
                    other = Scrape(response.body.decode())
                    return other.value("wsgate_connections_closed_total", api="Echo", code="1000") == 2

                async with asyncio.timeout(TIMEOUT):
                    while not await closed_in_both():
                        await asyncio.sleep(0.05)
                response = await http_request(f"http://127.0.0.1:{ports[1][1]}", path="/metrics")
                after = Scrape(response.body.decode())
                assert after.value("wsgate_connections_active", port="default", api="Echo", application="") == 0
                assert after.value("wsgate_messages_total", api="Echo", direction="client") == 2
            finally:
                for worker in workers:
                    assert worker.stdin is not None
                    worker.stdin.write(b"\n")
                    await worker.stdin.drain()
                for worker in workers:
                    await worker.wait()

    run(scenario(), timeout=TIMEOUT * 6)
