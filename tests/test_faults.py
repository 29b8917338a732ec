"""Faults the gateway must survive, end to end through a real gateway, on both relay paths.

"fast" is an API without message-stage policies (the byte relay); "message" is the same API with a
pass-through transform, so the message relay carries it without compression being involved.
Covered elsewhere and not repeated here: upstream refusals/timeouts/non-101/invalid 101 and pipelined
bytes (test_gateway_upgrade.py), a silent upstream found by keepalive and the 1014/1001 basics
(test_gateway_relay.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import select
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog
from support import (
    PATHS,
    PORT,
    RELAY,
    TIMEOUT,
    eventually,
    gw_url,
    http_request,
    path_api,
    raw_backend,
    recording_backend,
    relay_of,
    running_gateway,
    stop_process,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.utils import accept_key

from gateway.policies.base import Policy
from gateway.relay.fast import ByteRelay
from gateway.relay.message import MessageRelay


def reset(transport) -> None:
    """Drop a TCP connection with a RST (SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# ------------------------------------------------------------------ upstream drops mid-stream

@pytest.mark.parametrize("how, code", [("close", 4003), ("reset", 1014), ("silence", 1014)])
async def test_upstream_drop_mid_stream(tmp_path, path_kind, how, code):
    """Messages the upstream sent before dropping (close frame, TCP reset, going silent) reach the client,
    then the client is closed with the upstream's code, or 1014 when it vanished."""

    async def handler(ws):
        await ws.recv()
        for i in range(3):
            await ws.send(f"before {i}")
        if how == "close":
            await ws.close(4003, "upstream bye")
        elif how == "reset":
            reset(ws.transport)
        else:
            ws.transport.pause_reading()  # neither reads the gateway's pings nor answers them
            await client_done.wait()  # paused, it would not notice the gateway dropping it either
            ws.transport.abort()

    client_done = asyncio.Event()

    async with recording_backend(handler) as backend:
        extra = "keepalive:\n  interval: 0.2\n  timeout: 0.2\n"
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, backend.url + "/", extra=extra))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/f"), ping_interval=None) as ws:
                assert type(relay_of(gw)) is RELAY[path_kind]
                await ws.send("go")
                assert [await ws.recv() for _ in range(3)] == [f"before {i}" for i in range(3)]
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None, "the client got no close frame"
                assert info.value.rcvd.code == code
                if how == "close":
                    assert info.value.rcvd.reason == "upstream bye"
            await eventually(lambda: not gw.registry.live)
            client_done.set()


# ------------------------------------------------------------------ client drops abruptly

async def test_abrupt_client_drops_release_upstream_throttle_and_registry(tmp_path, path_kind):
    """Clients that vanish (RST or FIN, no close frame) close their upstream with 1001, give back their
    throttle slot (a limit of 1 admits the next) and leave the live registry and the admin counts."""
    async with recording_backend() as backend:
        policies = "  - type: throttle\n    max_connections: 1\n"
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, backend.url + "/", policies=policies))
        async with running_gateway(config) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            throttle = gw.state.shared.slots
            for i in range(6):
                ws = await connect(gw_url(gw, "/f"))
                await ws.send(f"hi {i}")
                assert await ws.recv() == f"hi {i}"
                assert type(relay_of(gw)) is RELAY[path_kind]
                assert sum(throttle.active.values()) == 1
                assert (await http_request(admin, path="/connections")).json()["total"] == 1
                if i % 2:
                    reset(ws.transport)
                else:
                    ws.transport.abort()
                await eventually(lambda n=i + 1: len(backend.closes) == n)
                assert backend.closes[i][0] == 1001
                await eventually(lambda: not gw.registry.live)
                assert sum(throttle.active.values()) == 0
                counts = (await http_request(admin, path="/connections")).json()
                assert counts["total"] == 0 and counts["upgrading"] == 0
            gc.collect()
            leaked = [o for o in gc.get_objects() if type(o) in (ByteRelay, MessageRelay)]
            assert leaked == [], f"{len(leaked)} relays still referenced after their connections ended"


# ------------------------------------------------------------------ half-open client

async def test_half_open_client_is_found_by_keepalive(tmp_path, path_kind):
    """A client that completed its upgrade and then neither reads nor answers pings is declared dead by
    keepalive: the upstream is closed with 1001, the client's TCP connection is dropped, the registry empties."""
    async with recording_backend() as backend:
        extra = "keepalive:\n  interval: 0.2\n  timeout: 0.2\n"
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, backend.url + "/", extra=extra))
        async with running_gateway(config) as gw:
            sock = socket.create_connection(gw.addresses["default"])
            try:
                sock.sendall(upgrade_request("/f"))
                sock.settimeout(TIMEOUT)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await asyncio.to_thread(sock.recv, 1)
                assert head.startswith(b"HTTP/1.1 101")
                assert type(relay_of(gw)) is RELAY[path_kind]
                # From here on the client is silent and reads nothing (its pings pile up unanswered).
                async with asyncio.timeout(TIMEOUT):
                    await backend.closed.wait()
                assert backend.closes[0][0] == 1001
                await eventually(lambda: not gw.registry.live)

                def drained() -> bytes:
                    data = b""
                    try:
                        while chunk := sock.recv(65536):
                            data += chunk
                    except ConnectionResetError:
                        pass
                    return data

                rest = await asyncio.to_thread(drained)  # returns only once the gateway dropped the TCP
                assert rest[:1] == b"\x89", "the gateway never pinged the client"
            finally:
                sock.close()


# ------------------------------------------------------------------ slow consumer, fast producer

TOTAL = 200 * 2**20  # what a producer tries to push through a consumer that reads nothing
CHUNK = 64 * 1024
QUIET = 1.0  # seconds without progress after which the producer counts as blocked
RSS_MARGIN = 32 * 2**20


def peak_rss(pid: int, reset: bool = False) -> int:
    """Peak resident set size of a process in bytes; ``reset`` restarts the peak at the current RSS."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def frame_head(length: int, *, masked: bool) -> bytes:
    """A binary frame head; masked with a zero key (the payload then goes unchanged on the wire)."""
    head = bytes([0x82, (0x80 if masked else 0) | 127]) + struct.pack("!Q", length)
    return head + (b"\0\0\0\0" if masked else b"")


class _Upstream(socketserver.BaseRequestHandler):
    """A raw upstream: answers the upgrade, then per path stalls (reads nothing) or floods the client."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        key = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("sec-websocket-key:"))
        server: _Server = self.server  # type: ignore[assignment]
        stall = lines[0].split(" ")[1].startswith("/stall")
        flood: dict = {"sent": 0, "error": None}
        if not stall:
            server.floods.append(flood)  # before the 101: the client may look for it as soon as it is upgraded
        sock.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
        )
        if stall:
            server.stop.wait()  # never reads
            return
        frame = frame_head(CHUNK, masked=False) + bytes(CHUNK)
        try:
            while flood["sent"] < TOTAL and not server.stop.is_set():
                sock.sendall(frame)
                flood["sent"] += CHUNK
        except OSError as exc:
            flood["error"] = exc


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Upstream)
        self.stop = threading.Event()
        self.floods: list[dict] = []  # one per flooding connection: bytes sent, the error that ended it


@pytest.fixture(scope="module")
def slow_gateway(tmp_path_factory):
    """`wsgate run` in a subprocess (its RSS is the gateway's alone) fronting a stalling and a flooding
    upstream, through a fast-path and a message-path API each; yields (port, pid, upstream server)."""
    upstream = _Server()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tmp_path_factory.mktemp("slow")
    base = f"ws://127.0.0.1:{upstream.server_address[1]}"
    docs = [PORT, "kind: Gateway\nname: slow\nshutdown_timeout: 0.5\n"]
    for kind in PATHS:
        docs.append(path_api(tmp, kind, f"{base}/stall", name=f"Stall-{kind}", path=f"/stall-{kind}"))
        docs.append(path_api(tmp, kind, f"{base}/flood", name=f"Flood-{kind}", path=f"/flood-{kind}"))
    write_config(tmp, *docs)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(tmp / "config"), "--admin", "127.0.0.1:0", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        port = None
        deadline = time.monotonic() + TIMEOUT
        while port is None:
            assert time.monotonic() < deadline, "the gateway did not start"
            line = process.stdout.readline().decode()
            assert line, "the gateway exited"
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "listening" and record.get("name") == "default":
                    port = record["port"]
        # Keep the pipe drained so the gateway never blocks on its own logging.
        threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
        yield port, process.pid, upstream
    finally:
        upstream.stop.set()
        stop_process(process)
        upstream.shutdown()
        upstream.server_close()


def raw_upgrade(port: int, path: str) -> socket.socket:
    """A client socket through the gateway with its upgrade done (the 101 read exactly, nothing more)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(upgrade_request(path))
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, head
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def push_until_blocked(sock: socket.socket) -> int:
    """Write masked binary frames until TOTAL or until the socket stays unwritable for QUIET; bytes sent."""
    sock.setblocking(False)
    frame = memoryview(frame_head(CHUNK, masked=True) + bytes(CHUNK))
    sent = 0
    pos = 0
    while sent < TOTAL:
        try:
            n = sock.send(frame[pos:])
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], QUIET)
            if not writable:
                break
            continue
        pos += n
        sent += n
        if pos == len(frame):
            pos = 0
    return sent


def test_client_flooding_a_stalled_upstream_is_slowed_and_memory_stays_bounded(slow_gateway, path_kind):
    """A client pushing 200 MiB toward an upstream that reads nothing is blocked after a bounded amount,
    and the gateway's peak RSS grows by far less than what was pushed."""
    port, pid, _ = slow_gateway
    sock = raw_upgrade(port, f"/stall-{path_kind}")
    try:
        before = peak_rss(pid, reset=True)
        sent = push_until_blocked(sock)
        grown = peak_rss(pid) - before
        assert 2 * CHUNK < sent < TOTAL // 2, f"sent {sent} bytes"
        assert grown < RSS_MARGIN, f"gateway peak RSS grew by {grown} bytes after {sent} bytes were pushed"
        # Still open: the producer was slowed, not cut off.
        sock.setblocking(True)
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    finally:
        sock.close()


def test_upstream_flooding_a_client_that_reads_nothing_is_slowed_and_memory_stays_bounded(slow_gateway, path_kind):
    """An upstream pushing 200 MiB toward a client that reads nothing is blocked after a bounded amount,
    and the gateway's peak RSS grows by far less than what was pushed."""
    port, pid, upstream = slow_gateway
    known = len(upstream.floods)
    before = peak_rss(pid, reset=True)
    sock = raw_upgrade(port, f"/flood-{path_kind}")
    try:
        assert len(upstream.floods) == known + 1
        flood = upstream.floods[-1]
        last, still_since = -1, time.monotonic()
        deadline = time.monotonic() + 3 * TIMEOUT
        while flood["sent"] < TOTAL and time.monotonic() < deadline:
            if flood["sent"] != last:
                last, still_since = flood["sent"], time.monotonic()
            elif time.monotonic() - still_since > QUIET:
                break
            time.sleep(0.02)
        flooded = flood["sent"]
        grown = peak_rss(pid) - before
        assert 2 * CHUNK < flooded < TOTAL // 2, f"flooded {flooded} bytes"
        assert flood["error"] is None, f"the gateway cut the upstream off instead of slowing it: {flood['error']}"
        assert grown < RSS_MARGIN, f"gateway peak RSS grew by {grown} bytes after {flooded} bytes were pushed"
    finally:
        sock.close()


class _NoDecision(Policy):
    """A buggy message-stage policy: it returns something that is no decision (synchronously or awaited)."""

    type = "buggy"

    def __init__(self, awaited: bool) -> None:
        self.awaited = awaited

    def on_message(self, message, conn):
        if not self.awaited:
            return 42

        async def later():
            return 42

        return later()


@pytest.mark.parametrize("awaited", [False, True], ids=["sync", "async"])
async def test_a_policy_returning_no_decision_closes_1011_and_names_the_policy(tmp_path, awaited):
    """A message-stage policy that returns neither a message nor a decision ends that connection with 1011 and a
    `policy_failed` line naming it, as an exception would; the gateway keeps serving."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, path_api(tmp_path, "message", backend.url + "/", path="/a"))
        async with running_gateway(config) as gw:
            route = gw.table.lookup("default", "/a")
            assert route is not None and not route.fast_path
            route.client_policies = (_NoDecision(awaited),)
            with structlog.testing.capture_logs() as logs:
                async with connect(gw_url(gw, "/a")) as ws:
                    await ws.send("x")
                    with pytest.raises(ConnectionClosed) as info:
                        await ws.recv()
            assert info.value.rcvd.code == 1011
            failed = [e for e in logs if e["event"] == "policy_failed"]
            assert failed and failed[0]["policy"] == "buggy" and failed[0]["returned"] == "int"
            route.client_policies = ()
            async with connect(gw_url(gw, "/a")) as ws:  # the next connection is served
                await ws.send("y")
                assert await ws.recv() == "y"


@pytest.mark.parametrize("path_kind", PATHS)
async def test_frames_and_fin_sent_with_the_101_reach_the_client(tmp_path, path_kind):
    """An upstream that writes its 101, a text frame and a close frame and then closes TCP, all at once: the bytes
    past the 101 arrive before the relay takes the transport over, yet the client gets the frame and the close."""

    async def answer_and_leave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        close = struct.pack("!H", 4001) + b"bye"
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
                     + b"\x81\x07welcome" + bytes((0x88, len(close))) + close)
        await writer.drain()
        writer.close()

    async with raw_backend(answer_and_leave) as (url, _):
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, url + "/ws"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/f")) as ws:
                async with asyncio.timeout(TIMEOUT):
                    assert await ws.recv() == "welcome"
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_a_client_vanishing_under_a_flood_ends_the_message_relay_with_the_upstreams_close_reply(tmp_path,
                                                                                                      monkeypatch):
    """A client reads nothing while its upstream floods (the relay stops reading the upstream), then vanishes: the
    upstream gets 1001 and its close reply ends the connection; the relay does not wait out its close deadline."""
    monkeypatch.setattr("gateway.relay.message.CLOSE_TIMEOUT", 100 * TIMEOUT)  # only the close reply can end it
    told: list[int] = []

    async def flood_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode())
        frame = bytes((0x82, 126)) + struct.pack("!H", 16384) + bytes(16384)

        async def flood() -> None:
            while True:
                writer.write(frame)
                await writer.drain()

        flooding = asyncio.get_running_loop().create_task(flood())
        try:
            close = await reader.readexactly(8)  # the gateway's close frame: masked, a 2-byte code
        finally:
            flooding.cancel()
        told.append(struct.unpack("!H", bytes(b ^ m for b, m in zip(close[6:], close[2:4], strict=True)))[0])
        writer.write(bytes((0x88, 2)) + struct.pack("!H", 1001))
        await writer.drain()

    async with raw_backend(flood_then_answer) as (url, _):
        config = write_config(tmp_path, PORT, path_api(tmp_path, "message", url + "/ws"))
        async with running_gateway(config) as gw:
            host, port = gw.addresses["default"]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(upgrade_request("/f"))
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            await eventually(lambda: relay_of(gw).upstream.pauses > 0)  # type: ignore[attr-defined]
            writer.transport.abort()
            assert await gw.registry.wait_idle(TIMEOUT)
    assert told == [1001]
