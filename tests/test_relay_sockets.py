"""Socket options of a relayed connection (issue 17): no Nagle delay on either leg of the fast path."""

from __future__ import annotations

import asyncio
import socket

from support import PORT, TIMEOUT, api_yaml, echo_backend, gw_url, running_gateway, write_config
from websockets.asyncio.client import connect


async def test_both_legs_of_the_fast_path_send_without_nagle_delay(tmp_path):
    """The client and upstream sockets of a relayed connection both have TCP_NODELAY set.

    With Nagle on, a small frame written while an earlier one is unacknowledged waits for the peer's (delayed)
    ACK, up to 40 ms on Linux: that would show as a p99 far above the p50 at one message in flight.
    """
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo")) as ws:
                await ws.send("hello")
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "hello"
                (record,) = [r for r in gw.registry.live if r.relay is not None]
                legs = {"client": record.client, "upstream": record.upstream}
                nodelay = {
                    name: transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for name, transport in legs.items()
                }
                assert nodelay == {"client": 1, "upstream": 1}
