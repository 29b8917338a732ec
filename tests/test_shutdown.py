"""Graceful shutdown of `wsgate run`: unready at once, listeners closed, a grace for live connections, then 1001."""

from __future__ import annotations

import asyncio
import signal

import pytest
from process_support import start_wsgate
from support import PORT, TIMEOUT, api_yaml, http_request, recording_backend, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def config_with_grace(tmp_path, backend, grace: float):
    return write_config(tmp_path, PORT, f"kind: Gateway\nname: g\nshutdown_grace: {grace}\n",
                        api_yaml("A", "/a", backend.url + "/"))


async def wait_unready(admin: str) -> None:
    """Poll /readyz until it answers 503 (the gateway received its stop signal)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            answer = await http_request(admin, path="/readyz")
            if answer.status == 503:
                assert answer.json()["status"] == "stopping"
                return
            await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_sigterm_gives_live_connections_the_grace_then_closes_the_rest_with_1001(tmp_path):
    """After SIGTERM: /readyz is 503 and new connections are refused at once; a client that finishes within the
    grace keeps relaying and closes normally (1000); one that does not is closed with 1001; the exit code is 0."""
    async with recording_backend() as backend:
        config_with_grace(tmp_path, backend, TIMEOUT / 2)
        gateway = await start_wsgate(tmp_path / "config")
        try:
            url = f"ws://127.0.0.1:{gateway.ports['default']}/a"
            admin = f"http://127.0.0.1:{gateway.ports['admin']}"
            finisher = await connect(url)
            lingerer = await connect(url)
            gateway.process.send_signal(signal.SIGTERM)
            await wait_unready(admin)
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", gateway.ports["default"])
            await finisher.send("last words")  # still relayed during the grace
            assert await finisher.recv() == "last words"
            await finisher.close()
            assert finisher.close_code == 1000
            with pytest.raises(ConnectionClosed) as info:
                await lingerer.recv()  # nothing comes until the grace is over
            assert info.value.rcvd.code == 1001
            async with asyncio.timeout(TIMEOUT):
                assert await gateway.exit_code() == 0, "".join(gateway.output)
            events = [r["event"] for r in gateway.records]
            assert events.index("shutdown_grace") < events.index("shutdown_grace_over")
            over = next(r for r in gateway.records if r["event"] == "shutdown_grace_over")
            assert over["remaining"] == 1 and over["cut_short"] is False
        finally:
            await gateway.kill()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_ends_the_grace_at_once(tmp_path, second):
    """With a grace far longer than the test's deadline, a second SIGTERM or SIGINT closes the client with 1001
    and the process exits 0 at once."""
    async with recording_backend() as backend:
        config_with_grace(tmp_path, backend, 10 * TIMEOUT)
        gateway = await start_wsgate(tmp_path / "config")
        try:
            admin = f"http://127.0.0.1:{gateway.ports['admin']}"
            client = await connect(f"ws://127.0.0.1:{gateway.ports['default']}/a")
            gateway.process.send_signal(signal.SIGTERM)
            await wait_unready(admin)
            gateway.process.send_signal(second)
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(ConnectionClosed) as info:
                    await client.recv()
                assert info.value.rcvd.code == 1001
                assert await gateway.exit_code() == 0, "".join(gateway.output)
            over = next(r for r in gateway.records if r["event"] == "shutdown_grace_over")
            assert over["cut_short"] is True
        finally:
            await gateway.kill()
