"""Running and stopping the gateway: clean shutdown on both relay paths, the shutdown deadline, `run` itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest
from support import (
    EXAMPLES,
    PORT,
    TIMEOUT,
    api_yaml,
    eventually,
    gw_url,
    logged,
    recording_backend,
    running_gateway,
    tutorial_tree,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.serving.runtime import Gateway


@pytest.mark.parametrize("compression", [False, True], ids=["fast", "message"])
async def test_stop_closes_clients_and_upstreams_with_1001(tmp_path, compression):
    """Stopping the gateway closes every client and its upstream with 1001 and returns once they are gone."""
    async with recording_backend() as backend:
        extra = "compression: true" if compression else ""
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/", extra=extra))
        gw = Gateway(config, admin=False, echo=False)
        await gw.start()
        clients = []
        for i in range(3):
            ws = await connect(gw_url(gw, "/a"), compression="deflate" if compression else None)
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"
            clients.append(ws)
        await gw.stop()
        assert not gw.registry.live
        for ws in clients:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1001
        async with asyncio.timeout(TIMEOUT):
            while len(backend.closes) < 3:
                await backend.closed.wait()
                backend.closed.clear()
        assert [code for code, _ in backend.closes] == [1001, 1001, 1001]
        # No longer accepting.
        with pytest.raises(OSError):
            await asyncio.open_connection(*gw.addresses["default"])


async def test_stop_aborts_peers_that_ignore_the_close_after_the_deadline(tmp_path):
    """A client that never answers the close frame is dropped once the shutdown deadline passes."""
    async with recording_backend() as backend:
        settings = "kind: Gateway\nname: g\nshutdown_timeout: 0.2\n"
        config = write_config(tmp_path, PORT, settings, api_yaml("A", "/a", backend.url + "/"))
        gw = Gateway(config, admin=False, echo=False)
        await gw.start()
        reader, writer = await asyncio.open_connection(*gw.addresses["default"])
        writer.write(upgrade_request("/a"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await gw.stop()  # returns although the raw client never completes the closing handshake
        assert not gw.registry.live
        data = await reader.read()  # the close frame, then EOF
        assert data[:1] == b"\x88"  # a close frame came first
        writer.close()


async def test_run_serves_until_sigterm_and_exits_0(tmp_path):
    """`wsgate run` logs where it listens, relays, and on SIGTERM (no shutdown grace) closes clients with 1001 and
    exits 0."""
    async with recording_backend() as backend:
        write_config(tmp_path, PORT, "kind: Gateway\nname: g\nshutdown_grace: 0\n",
                     api_yaml("A", "/a", backend.url + "/"))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", str(tmp_path / "config"),
            "--admin", "127.0.0.1:0", "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        output = []
        port = None
        try:
            async with asyncio.timeout(TIMEOUT):
                while port is None:
                    line = (await process.stdout.readline()).decode()
                    assert line, "".join(output)
                    output.append(line)
                    if line.startswith("{"):
                        record = json.loads(line)
                        if record["event"] == "listening" and record["name"] == "default":
                            assert record["tls"] is False
                            port = record["port"]
            async with connect(f"ws://127.0.0.1:{port}/a") as ws:
                await ws.send("through run")
                assert await ws.recv() == "through run"
                process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1001
            async with asyncio.timeout(TIMEOUT):
                rest = await process.stdout.read()
                assert await process.wait() == 0, "".join(output) + rest.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_tutorial_flow_through_the_examples(tmp_path):
    """The tutorial: bob's hello comes back transformed and echoed, no key is 401, a third ServerTime
    connection is 503, and ServerTime clients receive the time."""
    from echo.server import EchoService
    from gateway.config import check

    echo_model = check([EXAMPLES / "gateway" / "echo.yaml"]).config.echo_servers["demo-backend"].model
    backend = EchoService(echo_model, port=0)
    await backend.start()
    try:
        root = tutorial_tree(tmp_path, backend.port)
        result = check([root])
        assert result.config is not None, result.diagnostics
        async with running_gateway(result.config) as gw:
            echo_url = gw_url(gw, "/websocket/EchoWS/1.0")
            async with connect(echo_url + "?user=bob&x-Gateway-APIKey=tutorial-key") as bob:
                await bob.send("hello")
                assert await bob.recv() == "Message Received from bob: hello Client Transformation complete"
            with pytest.raises(InvalidStatus) as info:
                async with connect(echo_url):
                    pass
            assert info.value.response.status_code == 401
            time_url = gw_url(gw, "/websocket/ServerTime/1.0") + "?x-Gateway-APIKey=tutorial-key"
            async with connect(time_url) as first, connect(time_url) as second:
                with pytest.raises(InvalidStatus) as info:
                    async with connect(time_url):
                        pass
                assert info.value.response.status_code == 503
                assert "retry-after" in info.value.response.headers
                assert await first.recv()
                assert await second.recv()
            await eventually(lambda: not gw.registry.live)
            gw.state.log_writers.flush()
        log_text = (root / "logs" / "echows.jsonl").read_text()
        assert '"payload":"hello Client Transformation complete"' in log_text
        assert '"record":"close"' in log_text
        assert "tutorial-key" not in log_text
    finally:
        await backend.stop()


async def test_run_on_a_taken_port_says_so_in_one_line_and_exits_1(tmp_path):
    """A port another process holds ends `wsgate run` with exit 1 and one `start_failed` line naming the port,
    not a traceback."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        write_config(tmp_path, PORT.replace("port: 0", f"port: {taken}"), api_yaml("A", "/a", "ws://127.0.0.1:9/"))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", str(tmp_path / "config"),
            "--admin", "127.0.0.1:0", "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(TIMEOUT):
            output = (await process.stdout.read()).decode()
            assert await process.wait() == 1, output
    assert "Traceback" not in output
    failed = [json.loads(line) for line in output.splitlines() if '"start_failed"' in line]
    assert len(failed) == 1 and f"127.0.0.1:{taken}" in failed[0]["error"], output


async def test_serve_raises_start_error_for_a_taken_port_and_returns_no_status(tmp_path):
    """The runtime raises StartError for a port it cannot listen on (the CLI logs it and picks exit 1); it does
    not log and return an exit status itself."""
    import socket

    from gateway.operations.admin import admin_server
    from gateway.serving.runtime import serve
    from gateway.serving.view import StartError

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = write_config(tmp_path, PORT.replace("port: 0", f"port: {taken}"),
                              api_yaml("A", "/a", "ws://127.0.0.1:9/"))
        with logged() as events, pytest.raises(StartError, match=f"127.0.0.1:{taken}"):
            await serve(config, admin=("127.0.0.1", 0), watch=False, admin_server=admin_server)
    assert [e for e in events.entries if e["event"] == "start_failed"] == []
