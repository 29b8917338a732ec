"""The upstream TCP connect (gateway.edge.connect): addresses tried in turn, hostnames resolved once per TTL."""

from __future__ import annotations

import asyncio
import socket

import pytest
from support import PORT, TIMEOUT, api_yaml, echo_backend, gw_url, running_gateway, write_config
from websockets.asyncio.client import connect

from gateway.edge import connect as upstream_connect


@pytest.fixture(autouse=True)
def fresh_resolutions():
    upstream_connect.forget_resolutions()
    yield
    upstream_connect.forget_resolutions()


class Lookups:
    """Counts the loop's getaddrinfo calls while passing them on to the real resolver."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hosts: list[str] = []
        self._real = loop.getaddrinfo

    async def __call__(self, host, port, **kwargs):
        self.hosts.append(host)
        return await self._real(host, port, **kwargs)


async def test_an_upstream_named_by_hostname_is_resolved_once_for_many_upgrades(tmp_path, monkeypatch):
    """Ten upgrades to ws://localhost:… make one lookup (the cache keeps it for DNS_TTL), and every one is relayed."""
    loop = asyncio.get_running_loop()
    lookups = Lookups(loop)
    monkeypatch.setattr(loop, "getaddrinfo", lookups)
    async with echo_backend() as backend:
        url = backend.url("/echo/").replace("127.0.0.1", "localhost")
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", url))
        async with running_gateway(config) as gw:
            for i in range(10):
                async with connect(gw_url(gw, "/echo")) as ws:
                    await ws.send(f"m{i}")
                    async with asyncio.timeout(TIMEOUT):
                        assert await ws.recv() == f"m{i}"
    assert lookups.hosts.count("localhost") == 1  # the servers and clients of the test look up 127.0.0.1


async def test_a_lookup_older_than_the_ttl_is_made_again(monkeypatch):
    """Past DNS_TTL the next connect resolves again (a changed record is seen); an IP literal is never looked up."""
    loop = asyncio.get_running_loop()
    lookups = Lookups(loop)
    monkeypatch.setattr(loop, "getaddrinfo", lookups)
    monkeypatch.setattr(upstream_connect, "DNS_TTL", 0.0)
    await upstream_connect.resolve(loop, "localhost", 80)
    await upstream_connect.resolve(loop, "localhost", 80)
    assert await upstream_connect.resolve(loop, "127.0.0.1", 80) == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert await upstream_connect.resolve(loop, "[::1]", 80) == [(socket.AF_INET6, ("::1", 80, 0, 0))]
    assert lookups.hosts == ["localhost", "localhost"]


async def test_a_failed_lookup_is_not_kept(monkeypatch):
    """A name that does not resolve raises OSError each time and leaves nothing in the cache."""
    loop = asyncio.get_running_loop()
    for _ in range(2):
        with pytest.raises(OSError):
            await upstream_connect.resolve(loop, "no-such-host.invalid", 80)
    assert not upstream_connect._resolved


async def test_each_address_is_tried_in_turn_until_one_accepts():
    """When the first address refuses, the next one is connected (as create_connection does with several)."""
    loop = asyncio.get_running_loop()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connecting is refused
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]
    key = ("two-addresses.test", 1)
    upstream_connect._resolved[key] = (loop.time() + 60, [(socket.AF_INET, ("127.0.0.1", refused_port)),
                                                          (socket.AF_INET, ("127.0.0.1", open_port))])
    try:
        transport = await upstream_connect.open_connection(loop, *key, asyncio.Protocol)
        assert transport.get_extra_info("peername") == ("127.0.0.1", open_port)
        assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        transport.close()
        upstream_connect._resolved[key] = (loop.time() + 60, [(socket.AF_INET, ("127.0.0.1", refused_port))])
        with pytest.raises(ConnectionRefusedError):
            await upstream_connect.open_connection(loop, *key, asyncio.Protocol)
    finally:
        server.close()
        await server.wait_closed()
