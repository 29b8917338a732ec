"""The relay, on both paths: messages, order, fragments, close codes, vanishing peers, size limits."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from support import (
    PORT,
    api_yaml,
    eventually,
    gw_url,
    raw_backend,
    recording_backend,
    relay_of,
    running_gateway,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.policies.base import DROP, Close, Message, Policy
from gateway.relay.fast import ByteRelay
from gateway.relay.message import MessageRelay


# "fast": an API without message-stage policies and without compression takes the byte relay;
# "message": compression on (and a client that negotiates it) forces the message relay.
# conftest's ``path_kind`` fixture runs each test below on both.
def relay_api(path_kind: str, url: str, extra: str = "") -> str:
    lines = extra
    if path_kind == "message":
        lines = "compression: true\n" + extra
    return api_yaml("Relay", "/r", url, extra=lines)


def client_compression(path_kind: str) -> str | None:
    return "deflate" if path_kind == "message" else None


def expected_relay(path_kind: str) -> type:
    return ByteRelay if path_kind == "fast" else MessageRelay


@contextlib.asynccontextmanager
async def relayed(tmp_path, path_kind: str, handler=None, extra: str = ""):
    """A recording backend behind a running gateway, and a client connected through the API at ``/r``."""
    async with recording_backend(handler) if handler else recording_backend() as backend:
        config = write_config(tmp_path, PORT, relay_api(path_kind, backend.url + "/", extra))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/r"), compression=client_compression(path_kind)) as ws:
                yield backend, gw, ws


async def test_text_binary_and_order_both_ways(tmp_path, path_kind):
    """Text stays text, binary stays binary, and 200 mixed messages come back in order."""
    async with relayed(tmp_path, path_kind) as (backend, gw, ws):
        assert type(relay_of(gw)) is expected_relay(path_kind)
        sent = [f"text {i}" if i % 2 else f"bin {i}".encode() for i in range(200)]
        for message in sent:
            await ws.send(message)
        received = [await ws.recv() for _ in sent]
        assert received == sent
        conn = next(iter(gw.registry.live)).conn
        assert conn.counters.messages_in == 200
        await eventually(lambda: conn.counters.messages_out == 200)


async def test_fragmented_and_large_messages(tmp_path, path_kind):
    """A fragmented message and a 512 KiB message arrive whole and unchanged."""
    async with relayed(tmp_path, path_kind) as (backend, gw, ws):
        await ws.send(["frag", "ment", "ed"])
        assert await ws.recv() == "fragmented"
        big = bytes(range(256)) * 2048
        await ws.send(big)
        assert await ws.recv() == big


async def test_client_close_code_reaches_upstream(tmp_path, path_kind):
    """The client's close code and reason reach the upstream unchanged."""
    async with relayed(tmp_path, path_kind) as (backend, gw, ws):
        await ws.send("hi")
        await ws.recv()
        await ws.close(4001, "bye")
        async with asyncio.timeout(10):
            await backend.closed.wait()
        assert backend.closes == [(4001, "bye")]
        await eventually(lambda: not gw.registry.live)


async def test_upstream_close_code_reaches_client(tmp_path, path_kind):
    """The upstream's close code and reason reach the client, after the messages it sent before."""

    async def handler(ws):
        await ws.recv()
        await ws.send("last words")
        await ws.close(4002, "server bye")

    async with relayed(tmp_path, path_kind, handler) as (backend, gw, ws):
        await ws.send("go")
        assert await ws.recv() == "last words"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 4002
        assert info.value.rcvd.reason == "server bye"
        await eventually(lambda: not gw.registry.live)


async def test_upstream_vanishing_closes_client_with_1014(tmp_path, path_kind):
    """An upstream that drops its TCP connection without a close frame closes the client with 1014."""

    async def handler(ws):
        await ws.recv()
        await ws.send("before")
        ws.transport.abort()

    async with relayed(tmp_path, path_kind, handler) as (backend, gw, ws):
        await ws.send("go")
        assert await ws.recv() == "before"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1014
        await eventually(lambda: not gw.registry.live)


async def test_client_vanishing_closes_upstream_with_1001(tmp_path, path_kind):
    """A client that drops its TCP connection closes the upstream with 1001."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, relay_api(path_kind, backend.url + "/"))
        async with running_gateway(config) as gw:
            ws = await connect(gw_url(gw, "/r"), compression=client_compression(path_kind))
            await ws.send("hi")
            await ws.recv()
            ws.transport.abort()
            async with asyncio.timeout(10):
                await backend.closed.wait()
            assert backend.closes[0][0] == 1001
            await eventually(lambda: not gw.registry.live)


async def test_oversized_message_closes_sender_with_1009(tmp_path, path_kind):
    """A client message over max_message_size closes the client with 1009 and the upstream with 1001."""
    async with relayed(tmp_path, path_kind, extra="limits:\n  max_message_size: 1000\n") as (backend, gw, ws):
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
        await ws.send(b"y" * 1001)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1009
        async with asyncio.timeout(10):
            await backend.closed.wait()
        assert backend.closes[0][0] == 1001
        await eventually(lambda: not gw.registry.live)


async def test_invalid_utf8_from_client_is_1007_on_the_message_path(tmp_path):
    """On the message path, a text message that is not UTF-8 closes the client with 1007."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, relay_api("message", backend.url + "/"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/r"), compression=None) as ws:
                assert type(relay_of(gw)) is MessageRelay
                ws.protocol.send_text(b"\xff\xfe")
                ws.send_data()
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1007


def silent_upstream_after_101():
    """A raw upstream that completes the handshake, then never says anything again (half-open)."""
    from websockets.utils import accept_key

    async def respond(reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = re.search(r"(?im)^sec-websocket-key:\s*(\S+)", head).group(1)
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )
        await writer.drain()
        while await reader.read(65536):  # reads (and records) but never answers a ping
            pass

    return respond


async def test_keepalive_finds_a_silent_upstream(tmp_path, path_kind):
    """An upstream that stops answering (no pongs) is declared dead by keepalive: the client gets 1014."""
    async with raw_backend(silent_upstream_after_101()) as (url, received):
        extra = "keepalive:\n  interval: 0.2\n  timeout: 0.2\n"
        config = write_config(tmp_path, PORT, relay_api(path_kind, url + "/", extra))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/r"), compression=client_compression(path_kind),
                               ping_interval=0.05) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1014
        # The gateway pinged the upstream (a masked ping frame: 0x89) before giving up on it.
        assert any(chunk[:1] == b"\x89" for chunk in received[1:])


class Upper(Policy):
    """Client stage, synchronous: upper-cases text, drops "drop", closes on "close", raises on "raise"."""

    type = "transform"
    message_stages = frozenset({"client"})

    def on_message(self, message, conn):
        if message.payload == "drop":
            return DROP
        if message.payload == "close":
            return Close(4005, "policy said so")
        if message.payload == "raise":
            raise ValueError("operator bug")
        if message.is_text:
            return Message(message.direction, True, message.payload.upper())
        return message


class AsyncSuffix(Policy):
    """Server stage, asynchronous: appends a suffix after yielding to the loop (order must still hold)."""

    type = "transform"
    message_stages = frozenset({"server"})

    async def on_message(self, message, conn):
        await asyncio.sleep(0)
        if message.is_text:
            return Message(message.direction, True, message.payload + "!")
        return Message(message.direction, False, message.payload + b"!")


def with_chain(*policies):
    return lambda loaded, config, apps, state: list(policies)


async def test_message_policies_transform_in_order_both_ways(tmp_path):
    """Message-stage policies take the message relay: sync and async transforms apply in order, DROP swallows."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("P", "/p", backend.url + "/"))
        async with running_gateway(config, build_chain=with_chain(Upper(), AsyncSuffix())) as gw:
            async with connect(gw_url(gw, "/p")) as ws:
                assert type(relay_of(gw)) is MessageRelay
                for i in range(100):
                    await ws.send("drop" if i % 10 == 0 else f"m{i}")
                await ws.send(b"raw")
                expected = [f"M{i}!" for i in range(100) if i % 10] + [b"raw!"]
                assert [await ws.recv() for _ in expected] == expected


@pytest.mark.parametrize("word, code", [("close", 4005), ("raise", 1011)])
async def test_policy_close_or_exception_closes_both_legs(tmp_path, word, code):
    """A policy's Close closes both legs with its code; a raising policy closes both with 1011."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("P", "/p", backend.url + "/"))
        async with running_gateway(config, build_chain=with_chain(Upper())) as gw:
            async with connect(gw_url(gw, "/p")) as ws:
                await ws.send("fine")
                assert await ws.recv() == "FINE"
                await ws.send(word)
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == code
            async with asyncio.timeout(10):
                await backend.closed.wait()
            assert backend.closes[0][0] == code
            await eventually(lambda: not gw.registry.live)
