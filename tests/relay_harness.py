"""A tiny stand-in for the listener, so relay tests run on real sockets on their own.

:class:`MiniGateway` accepts TCP connections, answers the client's upgrade by
hand, performs the upstream handshake by hand over a raw TCP connection and
then hands both transports to a :class:`~gateway.relay.fast.ByteRelay`, like the
listener will. :class:`RawServer` and :func:`raw_client` are peers that speak
frames through the websockets sans-I/O protocols, so tests can see every
frame (pings and pongs included), send hand-made (even invalid) frames and
choose not to answer at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.utils import accept_key, generate_key

from gateway.config.models import API
from gateway.policies.base import ConnectionContext
from gateway.relay.base import CLOSE_TIMEOUT
from gateway.relay.fast import ByteRelay
from gateway.relay.keepalive import KeepaliveSweeper

TIMEOUT = float(os.environ.get("WSGATE_TEST_TIMEOUT", "10"))


def make_api(
    *,
    interval: float | None = None,
    timeout: float = 20.0,
    max_message_size: int | None = 2**20,
    write_buffer: int = 256 * 1024,
) -> API:
    """A real API model with the relay settings a test needs."""
    return API.model_validate(
        {
            "kind": "API",
            "name": "relay-test",
            "path": "/",
            "ports": ["test"],
            "upstream": {"endpoints": [{"url": "ws://127.0.0.1:1/"}]},
            "keepalive": {"interval": interval, "timeout": timeout},
            "limits": {"max_message_size": max_message_size, "write_buffer": write_buffer},
        }
    )


def make_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One frame built by hand, valid or not; ``length`` overrides the announced payload length."""
    announced = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if announced < 126:
        head.append(mask_bit | announced)
    elif announced < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", announced)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", announced)
    if masked:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll a condition on the event loop until it holds, failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------ raw peers


class FramePeer(asyncio.Protocol):
    """A peer driven by a websockets sans-I/O protocol that records every frame it receives.

    With ``answer=False`` it never writes what its protocol wants to send
    (no pongs, no close replies): a half-open peer.
    """

    def __init__(
        self, protocol: ClientProtocol | ServerProtocol, *, answer: bool = True, greeting: bytes = b""
    ) -> None:
        self.protocol = protocol
        self.answer = answer
        self.greeting = greeting  # a server's raw bytes sent in the same write as its 101
        self.transport: asyncio.Transport | None = None
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()
        self.opened = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._process()

    def eof_received(self) -> None:
        self.eof = True
        self.protocol.receive_eof()
        self._process()
        # Returning None closes our side too, as peers do once the other end is gone.

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self.changed.set()

    def _process(self) -> None:
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
            elif isinstance(event, Request):
                response = self.protocol.accept(event)  # type: ignore[union-attr]
                self.protocol.send_response(response)  # type: ignore[union-attr]
                self.transport.write(b"".join(self.protocol.data_to_send()) + self.greeting)  # type: ignore[union-attr]
                self.opened.set_result(None)
                continue
            elif not self.opened.done():  # the client's Response
                self.opened.set_result(None)
        self.changed.set()
        outgoing = self.protocol.data_to_send()
        if self.answer and self.transport is not None and not self.transport.is_closing():
            for data in outgoing:
                if data:
                    self.transport.write(data)
                elif self.transport.can_write_eof():
                    self.transport.write_eof()

    def send(self, data: bytes) -> None:
        """Write raw bytes (hand-made frames)."""
        assert self.transport is not None
        self.transport.write(data)

    async def wait_frame(self, predicate: Callable[[Frame], bool], what: str, timeout: float = TIMEOUT) -> Frame:
        """The first recorded frame matching ``predicate``, waiting for it with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.frames}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def close_frame(self) -> tuple[int, str]:
        """Code and reason of the close frame this peer received."""
        frame = await self.wait_frame(lambda f: f.opcode is Opcode.CLOSE, "a close frame")
        from websockets.frames import Close

        close = Close.parse(frame.data)
        return int(close.code), close.reason


class RawServer:
    """An upstream server speaking through :class:`FramePeer`; ``peers`` holds its connections."""

    def __init__(self, *, answer: bool = True, greeting: bytes = b"") -> None:
        self.answer = answer
        self.greeting = greeting  # raw bytes written right after the 101, in the same write
        self.peers: list[FramePeer] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._make, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()
        for peer in self.peers:
            if peer.transport is not None:
                peer.transport.abort()

    def _make(self) -> FramePeer:
        peer = FramePeer(ServerProtocol(max_size=None), answer=self.answer, greeting=self.greeting)
        self.peers.append(peer)
        return peer

    async def peer(self) -> FramePeer:
        await wait_for(lambda: bool(self.peers), "an upstream connection")
        await asyncio.wait_for(self.peers[0].opened, TIMEOUT)
        return self.peers[0]


async def raw_client(port: int, *, answer: bool = True, pipelined: bytes = b"") -> FramePeer:
    """A client connected through the gateway, its handshake done; ``pipelined`` follows the request at once."""
    loop = asyncio.get_running_loop()
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), max_size=None)
    transport, peer = await loop.create_connection(lambda: FramePeer(protocol, answer=answer), "127.0.0.1", port)
    protocol.send_request(protocol.connect())
    transport.write(b"".join(protocol.data_to_send()) + pipelined)
    await asyncio.wait_for(peer.opened, TIMEOUT)
    assert protocol.handshake_exc is None, protocol.handshake_exc
    return peer


# ---------------------------------------------------------------- the gateway


class _Front(asyncio.Protocol):
    """The client side until the relay takes over: read the upgrade head, keep what follows."""

    def __init__(self, gateway: MiniGateway) -> None:
        self.gateway = gateway
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.connecting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.connecting and b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.connecting = True
            key = ""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip().decode()
            self.gateway.tasks.add(asyncio.get_running_loop().create_task(self.gateway._connect(self, key)))


class _Back(asyncio.Protocol):
    """The upstream side until the relay takes over: read the 101 head, keep what follows."""

    def __init__(self) -> None:
        self.buffer = b""
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.head.done() and b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.head.set_result(head)


class MiniGateway:
    """Accepts clients, connects each to ``backend_port`` and relays them with :class:`ByteRelay`."""

    def __init__(
        self,
        backend_port: int,
        api: API,
        *,
        close_timeout: float = CLOSE_TIMEOUT,
        upstream_rcvbuf: int | None = None,
        client_sndbuf: int | None = None,
    ) -> None:
        self.backend_port = backend_port
        self.route = SimpleNamespace(api=api)
        self.close_timeout = close_timeout
        self.upstream_rcvbuf = upstream_rcvbuf
        self.client_sndbuf = client_sndbuf
        self.relays: list[ByteRelay] = []
        self.conns: list[ConnectionContext] = []
        self.closed: list[tuple[int | None, str]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.sweeper: KeepaliveSweeper | None = None
        self.port = 0

    async def __aenter__(self) -> MiniGateway:
        loop = asyncio.get_running_loop()
        self.sweeper = KeepaliveSweeper(loop)
        self.server = await loop.create_server(lambda: _Front(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None and self.sweeper is not None
        self.server.close()
        for relay in self.relays:
            relay._client.transport.abort()
            relay._upstream.transport.abort()
        if self.relays:
            await asyncio.wait_for(asyncio.gather(*(r.done for r in self.relays)), TIMEOUT)
        self.sweeper.close()
        for task in self.tasks:
            task.cancel()

    async def relay(self, index: int = 0) -> ByteRelay:
        """The ``index``-th relay, once its handshakes are done."""
        await wait_for(lambda: len(self.relays) > index, "the relay to start")
        return self.relays[index]

    async def _connect(self, front: _Front, key: str) -> None:
        loop = asyncio.get_running_loop()
        assert front.transport is not None
        transport, back = await loop.create_connection(_Back, "127.0.0.1", self.backend_port)
        sock = transport.get_extra_info("socket")
        if self.upstream_rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.upstream_rcvbuf)
        if self.client_sndbuf is not None:
            front.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.client_sndbuf)
        upstream_key = generate_key()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.backend_port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {upstream_key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(back.head, TIMEOUT)
        lines = head.decode().split("\r\n")
        assert lines[0].split(" ")[1] == "101", lines[0]
        accepts = [
            line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("sec-websocket-accept:")
        ]
        assert accepts == [accept_key(upstream_key)], accepts
        front.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode()
        )
        conn = ConnectionContext(
            api="relay-test", api_version="1.0", port_name="test", peer=("127.0.0.1", 0), path="/"
        )
        relay = ByteRelay(
            client=front.transport,
            upstream=transport,
            client_pending=front.buffer,
            upstream_pending=back.buffer,
            route=self.route,
            conn=conn,
            on_closed=lambda code, reason: self.closed.append((code, reason)),
            keepalive=self.sweeper,
            close_timeout=self.close_timeout,
        )
        front.buffer = back.buffer = b""
        relay.start()
        self.conns.append(conn)
        self.relays.append(relay)
