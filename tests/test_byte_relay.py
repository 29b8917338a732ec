"""The byte relay (fast path) on real sockets: data, closes, violations, keepalive, flow control."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest
from relay_harness import TIMEOUT, MiniGateway, RawServer, make_api, make_frame, raw_client, wait_for
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from gateway.relay.keepalive import PING_PREFIX, KeepaliveSweeper


class EchoBackend:
    """A websockets echo server that records how each connection closed.

    ``close:<code>:<reason>`` makes it close; ``flood:<count>:<size>`` makes it send numbered binary messages.
    """

    def __init__(self) -> None:
        self.closes: list[tuple[int | None, str | None]] = []
        self.connections: list[ServerConnection] = []
        self.received: list[str | bytes] = []
        self.sent = 0
        self.flood_done = asyncio.Event()
        self.port = 0
        self._server: Any = None

    async def __aenter__(self) -> EchoBackend:
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        try:
            async for message in ws:
                self.received.append(message)
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(int(code), reason)
                elif isinstance(message, str) and message.startswith("flood:"):
                    _, count, size = message.split(":")
                    for index in range(int(count)):
                        await ws.send(index.to_bytes(4, "big") * (int(size) // 4))
                        self.sent += 1
                    self.flood_done.set()
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        self.closes.append((ws.close_code, ws.close_reason))


def uri(gateway: MiniGateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/"


# ------------------------------------------------------------------ messages


async def test_messages_round_trip_unchanged_and_counted() -> None:
    """Text stays text, binary stays binary, fragments and large messages arrive whole, counters follow."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        big = os.urandom(200_000)
        async with connect(uri(gateway), compression=None, max_size=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"
            await ws.send(["frag", "mented"])
            assert await ws.recv() == "fragmented"
            await ws.send(big)
            assert await ws.recv() == big
        relay = await gateway.relay()
        await asyncio.wait_for(relay.done, TIMEOUT)
        counters = gateway.conns[0].counters
        size = 5 + 2 + 10 + len(big)
        assert (counters.messages_in, counters.bytes_in) == (4, size)
        assert (counters.messages_out, counters.bytes_out) == (4, size)
        assert gateway.closed == [(1000, "")]


async def test_bytes_read_past_the_handshakes_are_relayed() -> None:
    """Frames pipelined after the client's request and after the upstream's 101 are delivered first."""
    greeting = make_frame(0x1, b"welcome", masked=False)
    async with RawServer(greeting=greeting) as server, MiniGateway(server.port, make_api()) as gateway:
        client = await raw_client(gateway.port, pipelined=make_frame(0x1, b"early", masked=True))
        upstream = await server.peer()
        frame = await upstream.wait_frame(lambda f: f.opcode is Opcode.TEXT, "the pipelined frame")
        assert frame.data == b"early"
        frame = await client.wait_frame(lambda f: f.opcode is Opcode.TEXT, "the upstream's greeting")
        assert frame.data == b"welcome"


async def test_frames_sent_one_byte_at_a_time() -> None:
    """A client writing its frames one byte per segment still gets its ping answered and its message echoed."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        data = make_frame(0x9, b"slow ping", masked=True) + make_frame(0x1, b"slow text" * 20, masked=True)
        for index in range(len(data)):
            client.send(data[index : index + 1])
            await asyncio.sleep(0)  # let each byte go out on its own
        pong = await client.wait_frame(lambda f: f.opcode is Opcode.PONG, "the pong")
        assert pong.data == b"slow ping"
        echo = await client.wait_frame(lambda f: f.opcode is Opcode.TEXT, "the echo")
        assert echo.data == b"slow text" * 20
        assert backend.received == ["slow text" * 20]


async def test_peer_pings_and_pongs_pass_through() -> None:
    """A client's own ping reaches the upstream and the upstream's pong comes back."""
    async with RawServer() as server, MiniGateway(server.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            pong = await ws.ping(b"mine")
            await asyncio.wait_for(pong, TIMEOUT)
            upstream = await server.peer()
            assert any(f.opcode is Opcode.PING and f.data == b"mine" for f in upstream.frames)


# -------------------------------------------------------------------- closes


async def test_client_close_code_reaches_upstream() -> None:
    """The client's close code and reason pass to the upstream; its answer comes back."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            await ws.close(4001, "bye")
        await wait_for(lambda: bool(backend.closes), "the backend to see the close")
        assert backend.closes == [(4001, "bye")]
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(4001, "bye")]


async def test_upstream_close_code_reaches_client() -> None:
    """The upstream's close code and reason pass to the client; both TCP connections end."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            await ws.send("close:4002:server bye")
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (4002, "server bye")
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(4002, "server bye")]
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(4002, "server bye")]


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_upstream_vanishing_closes_client_with_1014(how: str) -> None:
    """What the upstream sent before it vanished arrives, then the client gets 1014 bad gateway."""
    async with RawServer() as server, MiniGateway(server.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            upstream = await server.peer()
            upstream.send(make_frame(0x1, b"last words", masked=False))
            assert await ws.recv() == "last words"
            assert upstream.transport is not None
            if how == "reset":
                upstream.transport.abort()
            else:
                upstream.transport.close()
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1014, "bad gateway")
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1014, "bad gateway")]


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_client_vanishing_closes_upstream_with_1001(how: str) -> None:
    """A client that drops its TCP connection without a close frame makes the upstream see 1001."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        client.send(make_frame(0x1, b"hi", masked=True))
        await client.wait_frame(lambda f: f.opcode is Opcode.TEXT, "the echo")
        assert client.transport is not None
        if how == "reset":
            client.transport.abort()
        else:
            client.transport.close()
        await wait_for(lambda: bool(backend.closes), "the backend to see the close")
        assert backend.closes == [(1001, "going away")]
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1006, "connection lost")]


async def test_half_close_after_close_frame_still_gets_the_answer() -> None:
    """A client that sends its close frame and then shuts down its sending side still receives the reply."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        client.send(make_frame(0x8, (4000).to_bytes(2, "big") + b"half", masked=True))
        assert client.transport is not None
        client.transport.write_eof()
        assert await client.close_frame() == (4000, "half")
        await asyncio.wait_for(client.lost, TIMEOUT)
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(4000, "half")]
        assert backend.closes == [(4000, "half")]


async def test_upstream_half_close_after_close_frame() -> None:
    """An upstream that sends close then EOF gets the client's reply, and both legs end without the deadline."""
    async with RawServer(answer=False) as server, MiniGateway(server.port, make_api(), close_timeout=30) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            upstream = await server.peer()
            assert upstream.transport is not None
            upstream.send(make_frame(0x8, (4003).to_bytes(2, "big") + b"bye", masked=False))
            upstream.transport.write_eof()
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (4003, "bye")
        assert await upstream.close_frame() == (4003, "bye")  # the client's echo of the code
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(4003, "bye")]


async def test_gateway_close_reaches_both_legs() -> None:
    """ByteRelay.close sends its code to the client and the upstream, then both connections end."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            await ws.send("x")
            await ws.recv()
            relay = await gateway.relay()
            relay.close(1001, "drain")
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1001, "drain")
        await asyncio.wait_for(relay.done, TIMEOUT)
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(1001, "drain")]
        assert gateway.closed == [(1001, "drain")]


async def test_gateway_close_waits_for_the_frame_in_flight() -> None:
    """A close injected while a frame is half relayed goes out right after that frame, never inside it."""
    # The upstream answers by hand: it must finish its frame after the gateway's close arrived.
    async with RawServer(answer=False) as server, MiniGateway(server.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        upstream = await server.peer()
        relay = await gateway.relay()
        frame = make_frame(0x2, b"z" * 10_000, masked=False)
        upstream.send(frame[:5000])
        await wait_for(lambda: relay._upstream.remaining > 0, "half a frame relayed")
        relay.close(1001, "drain")
        assert await upstream.close_frame() == (1001, "drain")  # that direction was at a boundary
        assert relay._client.pending  # the client's close waits for the frame's end
        upstream.send(frame[5000:] + make_frame(0x8, (1001).to_bytes(2, "big"), masked=False))
        assert upstream.transport is not None
        upstream.transport.close()
        assert await client.close_frame() == (1001, "drain")
        assert [f.opcode for f in client.frames] == [Opcode.BINARY, Opcode.CLOSE]
        assert client.frames[0].data == b"z" * 10_000
        await asyncio.wait_for(relay.done, TIMEOUT)
        assert gateway.closed == [(1001, "drain")]


async def test_gateway_close_aborts_a_frame_that_never_ends() -> None:
    """If the frame in flight never ends, the deadline aborts the leg rather than cut the frame."""
    async with RawServer() as server, MiniGateway(server.port, make_api(), close_timeout=0.3) as gateway:
        client = await raw_client(gateway.port)
        upstream = await server.peer()
        relay = await gateway.relay()
        upstream.send(make_frame(0x2, b"z" * 10_000, masked=False)[:5000])
        await wait_for(lambda: relay._upstream.remaining > 0, "half a frame relayed")
        relay.close(1001, "drain")
        await asyncio.wait_for(relay.done, TIMEOUT)
        await asyncio.wait_for(client.lost, TIMEOUT)
        assert not any(f.opcode is Opcode.CLOSE for f in client.frames)
        assert len(gateway.closed) == 1


async def test_unanswered_close_is_bounded_by_the_deadline() -> None:
    """A client close that the upstream never answers ends both legs at the deadline, on_closed once."""
    server = RawServer(answer=False)
    async with server, MiniGateway(server.port, make_api(), close_timeout=0.3) as gateway:
        client = await raw_client(gateway.port)
        await server.peer()
        client.send(make_frame(0x8, (1000).to_bytes(2, "big") + b"done", masked=True))
        relay = await gateway.relay()
        await asyncio.wait_for(relay.done, TIMEOUT)
        await asyncio.wait_for(client.lost, TIMEOUT)
        assert gateway.closed == [(1000, "done")]


# ---------------------------------------------------------------- violations


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (make_frame(0x1, b"hi", masked=False), "unmasked frame from client"),
        (make_frame(0x1, b"hi", masked=True, rsv=4), "reserved bits must be 0"),
        (make_frame(0x3, b"hi", masked=True), "invalid opcode 0x3"),
        (make_frame(0x9, b"hi", fin=False, masked=True), "fragmented control frame"),
        (make_frame(0x0, b"hi", masked=True), "unexpected continuation frame"),
        (make_frame(0x8, b"\x03\xed", masked=True), "invalid status code"),  # 1005 may not be sent
    ],
)
async def test_client_protocol_violation_gets_1002(frame: bytes, reason: str) -> None:
    """A protocol violation by the client closes it with 1002 and the upstream with 1001."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        client.send(make_frame(0x1, b"fine", masked=True) + frame)
        assert await client.close_frame() == (1002, reason)
        await asyncio.wait_for(client.lost, TIMEOUT)
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(1001, "going away")]
        assert backend.received == ["fine"]  # what came before the violation was relayed
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1002, reason)]


async def test_upstream_protocol_violation_gets_1002() -> None:
    """A masked frame from the upstream closes it with 1002 and the client with 1014 (its upstream broke)."""
    async with RawServer() as server, MiniGateway(server.port, make_api()) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            upstream = await server.peer()
            upstream.send(make_frame(0x1, b"masked", masked=True))
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1014, "bad gateway")
        assert await upstream.close_frame() == (1002, "masked frame from server")
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1014, "bad gateway")]


async def test_oversized_message_gets_1009() -> None:
    """A message over max_message_size closes the sender with 1009 and the other leg with 1001."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api(max_message_size=1000)) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            await ws.send("a" * 1000)
            assert await ws.recv() == "a" * 1000  # exactly the limit passes
            await ws.send("a" * 1001)
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.close_code == 1009
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(1001, "going away")]


async def test_huge_announced_length_gets_1009_from_the_head_alone() -> None:
    """A frame head announcing a terabyte gets 1009 at once: the relay never waits for (or holds) the payload."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api()) as gateway:
        client = await raw_client(gateway.port)
        client.send(make_frame(0x2, b"", masked=True, length=1 << 40))  # the head and mask only
        code, _ = await client.close_frame()
        assert code == 1009
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(1001, "going away")]


async def test_oversized_message_from_upstream_gets_1009() -> None:
    """The limit holds the other way too: the upstream gets 1009 and the client 1014 (its upstream broke)."""
    async with RawServer() as server, MiniGateway(server.port, make_api(max_message_size=1000)) as gateway:
        async with connect(uri(gateway), compression=None) as ws:
            upstream = await server.peer()
            upstream.send(make_frame(0x2, b"", masked=False, length=2000))  # the head alone
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1014, "bad gateway")
        assert (await upstream.close_frame())[0] == 1009
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1014, "bad gateway")]


@pytest.mark.parametrize(("limit", "expected"), [(4096, None), (1000, 1009)])
async def test_thousands_of_tiny_fragments(limit: int, expected: int | None) -> None:
    """3,000 one-byte fragments pass as one message under the limit, and get 1009 over it."""
    async with EchoBackend() as backend, MiniGateway(backend.port, make_api(max_message_size=limit)) as gateway:
        client = await raw_client(gateway.port)
        client.send(
            b"".join(make_frame(0x2 if i == 0 else 0x0, b"f", fin=i == 2999, masked=True) for i in range(3000))
        )
        if expected is None:
            frame = await client.wait_frame(lambda f: f.opcode is Opcode.BINARY, "the echo")
            assert frame.data == b"f" * 3000
            assert gateway.conns[0].counters.messages_in == 1
        else:
            assert (await client.close_frame())[0] == expected
            await wait_for(lambda: bool(backend.closes), "the backend's close")
            assert backend.closes == [(1001, "going away")]


# ----------------------------------------------------------------- keepalive


async def test_keepalive_pongs_are_stripped() -> None:
    """Both legs get gateway pings; their pongs are not forwarded, while data still is."""
    api = make_api(interval=0.2, timeout=30)
    async with RawServer() as server, MiniGateway(server.port, api) as gateway:
        client = await raw_client(gateway.port)
        upstream = await server.peer()

        def gateway_ping(frame: Any) -> bool:
            return frame.opcode is Opcode.PING and frame.data.startswith(PING_PREFIX)

        await client.wait_frame(gateway_ping, "a gateway ping to the client")
        await upstream.wait_frame(gateway_ping, "a gateway ping to the upstream")
        # Both peers answered (FramePeer answers pings at once); the markers follow the pongs.
        client.send(make_frame(0x1, b"marker", masked=True))
        upstream.send(make_frame(0x1, b"marker", masked=False))
        await client.wait_frame(lambda f: f.data == b"marker", "the upstream's marker")
        await upstream.wait_frame(lambda f: f.data == b"marker", "the client's marker")
        assert not any(f.opcode is Opcode.PONG for f in client.frames)
        assert not any(f.opcode is Opcode.PONG for f in upstream.frames)


async def test_half_open_upstream_is_found() -> None:
    """An upstream that stops answering is declared dead: client gets 1014, upstream TCP is aborted."""
    api = make_api(interval=0.2, timeout=0.2)
    async with RawServer(answer=False) as server, MiniGateway(server.port, api) as gateway:
        async with connect(uri(gateway), compression=None, ping_interval=None) as ws:
            upstream = await server.peer()
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1014, "bad gateway")
        await asyncio.wait_for(upstream.lost, TIMEOUT)
        assert any(f.opcode is Opcode.PING and f.data.startswith(PING_PREFIX) for f in upstream.frames)
        assert not any(f.opcode is Opcode.CLOSE for f in upstream.frames)  # aborted, not closed
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert gateway.closed == [(1014, "bad gateway")]


async def test_half_open_client_is_found() -> None:
    """A client that stops answering is declared dead: upstream gets 1001, the client's TCP is aborted."""
    api = make_api(interval=0.2, timeout=0.2)
    async with EchoBackend() as backend, MiniGateway(backend.port, api) as gateway:
        client = await raw_client(gateway.port, answer=False)
        await wait_for(lambda: bool(backend.closes), "the backend's close")
        assert backend.closes == [(1001, "going away")]
        await asyncio.wait_for(client.lost, TIMEOUT)
        assert any(f.opcode is Opcode.PING and f.data.startswith(PING_PREFIX) for f in client.frames)
        assert not any(f.opcode is Opcode.CLOSE for f in client.frames)
        await asyncio.wait_for((await gateway.relay()).done, TIMEOUT)
        assert len(gateway.closed) == 1


async def test_active_connection_is_not_pinged_to_death() -> None:
    """A connection whose peers answer keeps running across many keepalive periods."""
    api = make_api(interval=0.1, timeout=0.1)
    async with EchoBackend() as backend, MiniGateway(backend.port, api) as gateway:
        async with connect(uri(gateway), compression=None, ping_interval=None) as ws:
            relay = await gateway.relay()
            client_leg = relay._client
            # Wait until the gateway has pinged this quiet client several times (each ping follows a silence).
            seen: set[float] = set()
            await wait_for(lambda: seen.add(client_leg.ka_sent) or len(seen) > 4, "several keepalive pings")
            await ws.send("still here")
            assert await ws.recv() == "still here"
            assert not relay.done.done()


# -------------------------------------------------------------- flow control


async def test_slow_client_slows_the_upstream() -> None:
    """A client that stops reading makes the upstream's sends block while the gateway's buffers stay bounded."""
    write_buffer = 64 * 1024
    api = make_api(write_buffer=write_buffer, max_message_size=None)
    # Small kernel buffers on the gateway's sockets, so backpressure reaches the backend sooner.
    async with EchoBackend() as backend, MiniGateway(
        backend.port, api, upstream_rcvbuf=64 * 1024, client_sndbuf=64 * 1024
    ) as gateway:
        count, size = 2048, 16 * 1024  # 32 MiB: far more than every buffer on the way
        async with connect(uri(gateway), compression=None, max_size=None, max_queue=2) as ws:
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            await ws.send(f"flood:{count}:{size}")
            relay = await gateway.relay()
            client_transport = relay._client.transport
            upstream_transport = relay._upstream.transport
            # One read (256 KiB at most) may land after the limit was crossed, plus an injected frame.
            bound = write_buffer + 256 * 1024 + 1024
            peak = 0

            def backend_blocked() -> bool:
                nonlocal peak
                buffered = client_transport.get_write_buffer_size(), upstream_transport.get_write_buffer_size()
                peak = max(peak, *buffered)
                backend_transport = backend.connections[0].transport
                # Bytes the backend's kernel refused: its send is waiting on the network, not on CPU.
                return relay._upstream.reading_paused and backend_transport.get_write_buffer_size() > 32 * 1024

            await wait_for(backend_blocked, "the backend's sends to block")
            assert not backend.flood_done.is_set() and backend.sent < count
            assert peak <= bound
            # Reading again lets everything through, in order.
            for index in range(count):
                message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert message[:4] == index.to_bytes(4, "big") and len(message) == size
                peak = max(peak, client_transport.get_write_buffer_size())
            assert peak <= bound
            await asyncio.wait_for(backend.flood_done.wait(), TIMEOUT)


async def test_slow_upstream_slows_the_client() -> None:
    """An upstream that stops reading makes the client's sends block while the gateway's buffers stay bounded."""
    write_buffer = 64 * 1024
    api = make_api(write_buffer=write_buffer, max_message_size=None)
    async with RawServer() as server, MiniGateway(server.port, api, upstream_rcvbuf=64 * 1024) as gateway:
        async with connect(uri(gateway), compression=None, max_size=None) as ws:
            upstream = await server.peer()
            assert upstream.transport is not None
            upstream.transport.pause_reading()
            upstream.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            relay = await gateway.relay()
            count, size = 2048, 16 * 1024
            sent = 0

            async def flood() -> None:
                nonlocal sent
                for index in range(count):
                    await ws.send(index.to_bytes(4, "big") * (size // 4))
                    sent += 1

            task = asyncio.create_task(flood())
            bound = write_buffer + 256 * 1024 + 1024
            peak = 0

            def client_blocked() -> bool:
                nonlocal peak
                peak = max(peak, relay._upstream.transport.get_write_buffer_size())
                return relay._client.reading_paused and ws.transport.get_write_buffer_size() > 0 and not task.done()

            await wait_for(client_blocked, "the client's sends to block")
            assert sent < count and peak <= bound
            upstream.transport.resume_reading()
            await upstream.wait_frame(
                lambda f: f.fin and f.data[:4] == (count - 1).to_bytes(4, "big"), "the last message", 3 * TIMEOUT
            )
            await asyncio.wait_for(task, TIMEOUT)
            data = [f for f in upstream.frames if f.opcode is Opcode.BINARY]
            assert [f.data[:4] for f in data] == [i.to_bytes(4, "big") for i in range(count)]


# ------------------------------------------------------------------ sweeper


class FakeLeg:
    """A leg as the sweeper sees it: plain values and two recorded callbacks."""

    def __init__(self, last_rx: float) -> None:
        self.last_rx = last_rx
        self.ka_sent = 0.0
        self.reading_paused = False
        self.pings: list[bytes] = []
        self.deaths = 0

    def keepalive_ping(self, payload: bytes) -> None:
        self.pings.append(payload)

    def keepalive_dead(self) -> None:
        self.deaths += 1


async def test_sweeper_pings_once_per_silence_then_declares_dead() -> None:
    """Silent for interval: one ping; answered: a new silence gets a new ping; silent for interval+timeout: dead."""
    sweeper = KeepaliveSweeper()
    leg = FakeLeg(last_rx=100.0)
    sweeper.register(leg, 1.0, 2.0)
    assert sweeper.tick == 0.5  # half the smallest interval
    sweeper.sweep(100.9)
    assert leg.pings == []
    sweeper.sweep(101.0)
    sweeper.sweep(101.5)
    assert len(leg.pings) == 1 and leg.pings[0].startswith(PING_PREFIX) and len(leg.pings[0]) == 13
    leg.last_rx = 101.6  # the pong (or anything) arrived
    sweeper.sweep(102.6)
    assert len(leg.pings) == 2 and leg.pings[0] != leg.pings[1]
    sweeper.sweep(104.5)
    assert leg.deaths == 0
    sweeper.sweep(104.6)
    assert leg.deaths == 1 and len(sweeper) == 0
    assert sweeper.tick == 1.0  # nothing registered: back to the 1 s ceiling
    sweeper.close()


async def test_sweeper_skips_legs_held_back_by_flow_control() -> None:
    """A leg the relay stopped reading is neither pinged nor declared dead, whatever its silence."""
    sweeper = KeepaliveSweeper()
    leg = FakeLeg(last_rx=0.0)
    leg.reading_paused = True
    sweeper.register(leg, 1.0, 1.0)
    sweeper.sweep(1000.0)
    assert leg.pings == [] and leg.deaths == 0 and len(sweeper) == 1
    sweeper.close()


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers scheduled on the loop and not cancelled (asyncio keeps cancelled ones for a while)."""
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


async def test_idle_connections_cost_no_task_and_no_timer() -> None:
    """Twenty idle relayed connections add no task and no timer to the loop beyond those of one connection."""
    loop = asyncio.get_running_loop()
    api = make_api(interval=20, timeout=20)
    async with RawServer() as server, MiniGateway(server.port, api) as gateway:
        await raw_client(gateway.port)
        await gateway.relay(0)
        await asyncio.gather(*gateway.tasks)  # the harness's handshake tasks are done
        tasks_one = len(asyncio.all_tasks())
        timers_one = live_timers(loop)
        for _ in range(19):
            await raw_client(gateway.port)
        await gateway.relay(19)
        await asyncio.gather(*gateway.tasks)
        assert len(asyncio.all_tasks()) == tasks_one
        assert live_timers(loop) == timers_one
        assert len(gateway.sweeper or ()) == 40  # both legs of each connection, in the one sweeper
