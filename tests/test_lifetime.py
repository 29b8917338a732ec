"""Per-API connection lifetime on both relays: the idle timeout (pings do not count) and the maximum lifetime
close with 1001 and a reason."""

from __future__ import annotations

import asyncio

from support import PORT, TIMEOUT, echo_backend, gw_url, path_api, running_gateway, write_config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State


async def _closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason


async def _chatter(ws: ClientConnection, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await ws.send("tick")
        await ws.recv()
        await asyncio.sleep(0.05)  # paces the traffic; nothing waits on this for a result


async def _pings(ws: ClientConnection, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await (await ws.ping())
        await asyncio.sleep(0.05)


async def test_idle_timeout_counts_data_messages_not_pings(tmp_path, path_kind) -> None:
    """A client that only pings is closed with 1001 "idle timeout"; one that keeps sending messages is not."""
    async with echo_backend() as backend:
        api = path_api(tmp_path, path_kind, backend.url("/echo/"), extra="limits:\n  idle_timeout: 0.6\n")
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/f"), ping_interval=None) as quiet, \
                    connect(gw_url(gw, "/f"), ping_interval=None) as chatty:
                stop = asyncio.Event()
                tasks = [asyncio.create_task(_pings(quiet, stop)), asyncio.create_task(_chatter(chatty, stop))]
                try:
                    assert await _closed(quiet) == (1001, "idle timeout")
                    assert chatty.state is State.OPEN
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                await chatty.send("still here")
                assert await chatty.recv() == "still here"


async def test_max_lifetime_closes_a_busy_connection(tmp_path, path_kind) -> None:
    """Past its maximum lifetime a connection is closed with 1001, however busy it is."""
    async with echo_backend() as backend:
        api = path_api(tmp_path, path_kind, backend.url("/echo/"), extra="limits:\n  max_lifetime: 0.5\n")
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/f")) as ws:
                stop = asyncio.Event()
                task = asyncio.create_task(_chatter(ws, stop))
                try:
                    async with asyncio.timeout(TIMEOUT):
                        await ws.wait_closed()
                finally:
                    stop.set()
                    await asyncio.gather(task, return_exceptions=True)
                assert (ws.close_code, ws.close_reason) == (1001, "maximum lifetime reached")
