"""CPU per relayed message of the byte relay, against a bare byte copy, in one run.

    python benchmarks/byte_relay_micro.py [--seconds 5] [--rounds 3] [--conns 50] [--inflight 16] [--size 64]

This process is the gateway: it accepts clients, does both handshakes by hand
and hands the transports either to :class:`gateway.relay.fast.ByteRelay` or to
a bare copy (two asyncio protocols writing what they read, no frame scanning:
the floor for any asyncio relay). Two child processes do the rest, so their
CPU is not counted: a load generator (pre-built frames, ``--inflight`` per
connection, counting echoes) and an echo backend (raw frames: it answers each
client frame with the same payload, unmasked).

Measured over a window after a warm-up: the gateway's CPU time (user+system,
``time.process_time``) divided by the frames it relayed (each echoed message is
two frames: client → backend and back). Keepalive is on (20 s, as by default),
so its sweeper runs but, with traffic flowing, never pings.

The last row, "ByteRelay + metrics", is ByteRelay with the Prometheus metrics
of the real gateway: each connection counted as at its 101 and the message
counts moved into the series in batches every ``--scrape`` seconds (1 s, far
more often than a Prometheus scrape), as ``/metrics`` does. Its difference to
the ByteRelay row is what metrics cost per message: nothing per message, a
batch per scrape.

Then, first of all, the gateway's RSS growth per idle connection held by
ByteRelay (``--idle`` connections that complete their handshake and go quiet;
asyncio transports and sockets included, kernel buffers not).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import HEAD_END, LoadLeg  # noqa: E402
from _harness import handshake_key as _key  # noqa: E402
from _harness import switching_protocols as _response  # noqa: E402
from websockets.utils import generate_key  # noqa: E402


def _request(port: int, key: str) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _client_frame(size: int) -> bytes:
    # A zero mask key leaves the payload readable, so the backend echoes it by slicing.
    head = bytes([130, 128 | size]) if size < 126 else bytes([130, 128 | 126]) + size.to_bytes(2, "big")
    return head + b"\x00\x00\x00\x00" + bytes(size)


def _server_head(size: int) -> bytes:
    return bytes([0x82, size]) if size < 126 else bytes([0x82, 126]) + size.to_bytes(2, "big")


# ------------------------------------------------------------------ children


class _EchoBackend(asyncio.Protocol):
    def __init__(self, size: int) -> None:
        self.buffer = b""
        self.open = False
        self.in_size = len(_client_frame(size))
        self.head_size = self.in_size - 4 - size
        self.out_head = _server_head(size)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.open:
            if HEAD_END not in buffer:
                self.buffer = buffer
                return
            head, _, buffer = buffer.partition(HEAD_END)
            self.transport.write(_response(_key(head)))  # type: ignore[attr-defined]
            self.open = True
        count = len(buffer) // self.in_size
        if count:
            step, skip, out_head = self.in_size, self.head_size + 4, self.out_head
            self.transport.write(  # type: ignore[attr-defined]
                b"".join(out_head + buffer[i * step + skip : (i + 1) * step] for i in range(count))
            )
        self.buffer = buffer[count * self.in_size :]


def _load_leg(stats: list[int], size: int, inflight: int) -> LoadLeg:
    """A load leg of binary frames of ``size`` bytes, echoed back unchanged."""
    return LoadLeg(stats, _request(0, generate_key()), _client_frame(size), len(_server_head(size)) + size, inflight)



async def _child(role: str, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if role == "backend":
        server = await loop.create_server(lambda: _EchoBackend(args.size), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
    else:
        stats = [0]
        # An idle client completes its handshake and then says nothing (inflight 0).
        inflight = 0 if role == "idle" else args.inflight
        count = args.idle if role == "idle" else args.conns
        for _ in range(count):
            await loop.create_connection(lambda: _load_leg(stats, args.size, inflight), "127.0.0.1", args.port)
        print("ready", flush=True)
    # Serve until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)


# ------------------------------------------------------------------- gateway


class _Copy(asyncio.Protocol):
    """The floor: forward every read to the other transport, count bytes, nothing else."""

    __slots__ = ("out", "counter")

    def __init__(self, out: asyncio.Transport, counter: list[int]) -> None:
        self.out = out
        self.counter = counter

    def data_received(self, data: bytes) -> None:
        self.counter[0] += len(data)
        self.out.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.abort()


class _BufferedCopy(asyncio.BufferedProtocol):
    """The floor with a reused read buffer (issue 17's BufferedProtocol lever): recv_into one bytearray per
    leg instead of a new bytes object per read. A buffer the out transport kept a view of is not reused."""

    __slots__ = ("out", "counter", "buffer", "view")

    def __init__(self, out: asyncio.Transport, counter: list[int]) -> None:
        self.out = out
        self.counter = counter
        self.buffer = bytearray(65536)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.counter[0] += nbytes
        out = self.out
        out.write(self.view[:nbytes])
        if out.get_write_buffer_size():  # the transport may hold a view of what it could not send yet
            self.buffer = bytearray(65536)
            self.view = memoryview(self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.abort()


class _CoalescedCopy(asyncio.Protocol):
    """The floor with writes coalesced per event-loop iteration (issue 17's other byte-path lever): reads of
    one iteration are joined into one write at its end, scheduled with call_soon."""

    __slots__ = ("out", "counter", "pending", "loop")

    def __init__(self, out: asyncio.Transport, counter: list[int]) -> None:
        self.out = out
        self.counter = counter
        self.pending: list[bytes] = []
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.counter[0] += len(data)
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(data)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.out.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.abort()


class _Front(asyncio.Protocol):
    def __init__(self, gateway: _Gateway) -> None:
        self.gateway = gateway
        self.buffer = b""
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.started and HEAD_END in self.buffer:
            self.started = True
            head, _, self.buffer = self.buffer.partition(HEAD_END)
            asyncio.get_running_loop().create_task(self.gateway.connect(self, _key(head)))


class _Back(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.head.done() and HEAD_END in self.buffer:
            self.buffer = self.buffer.partition(HEAD_END)[2]
            self.head.set_result(None)


class _Gateway:
    def __init__(self, mode: str, backend_port: int) -> None:
        from gateway.config.models import API
        from gateway.relay.keepalive import KeepaliveSweeper

        self.mode = mode
        self.backend_port = backend_port
        self.route = SimpleNamespace(
            api=API.model_validate(
                {
                    "kind": "API",
                    "name": "micro",
                    "path": "/",
                    "ports": ["bench"],
                    "upstream": {"endpoints": [{"url": f"ws://127.0.0.1:{backend_port}/"}]},
                }
            )
        )
        self.sweeper = KeepaliveSweeper(asyncio.get_running_loop())
        self.metrics: Any = None
        if mode == "metered":
            from gateway.operations.metrics import Metrics

            self.metrics = Metrics()
        self.conns: list = []
        self.copied = [0]
        self.transports: list[asyncio.Transport] = []

    async def connect(self, front: _Front, key: str) -> None:
        from gateway.policies.base import ConnectionContext
        from gateway.relay.fast import ByteRelay

        loop = asyncio.get_running_loop()
        upstream, back = await loop.create_connection(_Back, "127.0.0.1", self.backend_port)
        upstream.write(_request(self.backend_port, generate_key()))
        await back.head
        client = front.transport
        client.write(_response(key))
        self.transports += [client, upstream]
        if self.mode in _COPIES:
            protocol = _COPIES[self.mode]
            client.set_protocol(protocol(upstream, self.copied))
            upstream.set_protocol(protocol(client, self.copied))
            for transport, pending in ((upstream, front.buffer), (client, back.buffer)):
                if pending:
                    transport.write(pending)
            return
        conn = ConnectionContext(api="micro", api_version="1", port_name="bench", peer=("127.0.0.1", 0), path="/")
        self.conns.append(conn)
        if self.metrics is not None:
            self.metrics.upgrade("bench", "micro", 101)
            self.metrics.opened("bench", "micro", "")
        ByteRelay(
            client=client,
            upstream=upstream,
            client_pending=front.buffer,
            upstream_pending=back.buffer,
            route=self.route,
            conn=conn,
            on_closed=lambda code, reason: None,
            keepalive=self.sweeper,
        ).start()

    def frames(self, frame_bytes: int) -> int:
        if self.mode in _COPIES:
            return self.copied[0] // frame_bytes  # both directions' frames are about this size
        return sum(c.counters.messages_in + c.counters.messages_out for c in self.conns)


_COPIES: dict[str, type[asyncio.BaseProtocol]] = {"copy": _Copy, "buffered": _BufferedCopy, "coalesced": _CoalescedCopy}


def _spawn(role: str, args: argparse.Namespace, port: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--port", str(port), "--size", str(args.size),
         "--conns", str(args.conns), "--inflight", str(args.inflight), "--idle", str(args.idle)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def _measure(mode: str, args: argparse.Namespace, backend_port: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    gateway = _Gateway(mode, backend_port)
    server = await loop.create_server(lambda: _Front(gateway), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    load = _spawn("load", args, port)
    try:
        assert load.stdout is not None
        line = await loop.run_in_executor(None, load.stdout.readline)
        assert line.strip() == "ready", line
        await asyncio.sleep(args.warmup)
        scraper = loop.create_task(_scrape(gateway, args.scrape)) if gateway.metrics is not None else None
        # Frames of both directions differ by the 4 mask bytes; use the mean for the copy count.
        frame_bytes = len(_client_frame(args.size)) - 2
        cpu0, wall0, frames0 = time.process_time(), time.perf_counter(), gateway.frames(frame_bytes)
        await asyncio.sleep(args.seconds)
        cpu1, wall1, frames1 = time.process_time(), time.perf_counter(), gateway.frames(frame_bytes)
        if scraper is not None:
            scraper.cancel()
    finally:
        assert load.stdin is not None
        load.stdin.close()
        load.wait(10)
        server.close()
        for transport in gateway.transports:
            transport.abort()
        gateway.sweeper.close()
        await asyncio.sleep(0.1)
    frames = frames1 - frames0
    return (cpu1 - cpu0) / frames * 1e6, frames / (wall1 - wall0) / 2


async def _scrape(gateway: _Gateway, interval: float) -> None:
    """What ``/metrics`` does per scrape: move the live connections' counts into the series, render the text."""
    while True:
        await asyncio.sleep(interval)
        gateway.metrics.flush(gateway.conns)
        gateway.metrics.render()


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


async def _idle_rss(args: argparse.Namespace, backend_port: int) -> float:
    """KiB of gateway RSS per idle connection relayed by ByteRelay (transports and sockets included)."""
    loop = asyncio.get_running_loop()
    gateway = _Gateway("byte", backend_port)
    server = await loop.create_server(lambda: _Front(gateway), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    gc.collect()
    before = _rss_kib()
    load = _spawn("idle", args, port)
    try:
        assert load.stdout is not None
        line = await loop.run_in_executor(None, load.stdout.readline)
        assert line.strip() == "ready", line
        deadline = loop.time() + 60
        while len(gateway.conns) < args.idle and loop.time() < deadline:
            await asyncio.sleep(0.05)
        gc.collect()
        after = _rss_kib()
        relayed = len(gateway.conns)
    finally:
        assert load.stdin is not None
        load.stdin.close()
        load.wait(30)
        server.close()
        for transport in gateway.transports:
            transport.abort()
        gateway.sweeper.close()
        await asyncio.sleep(0.2)
    return (after - before) / relayed


async def _main(args: argparse.Namespace) -> None:
    backend = _spawn("backend", args)
    try:
        assert backend.stdout is not None
        backend_port = int(backend.stdout.readline())
        # Idle memory first, before the throughput runs leave freed memory behind to be reused.
        idle_kib = await _idle_rss(args, backend_port) if args.idle else None
        results: dict[str, list[tuple[float, float]]] = {"copy": [], "buffered": [], "coalesced": [], "byte": [],
                                                         "metered": []}
        # Alternate the modes so that noise from a shared machine hits both alike; report medians.
        for _ in range(args.rounds):
            for mode in results:
                results[mode].append(await _measure(mode, args, backend_port))
        rows = [
            (mode, statistics.median(c for c, _ in runs), statistics.median(r for _, r in runs))
            for mode, runs in results.items()
        ]
    finally:
        assert backend.stdin is not None
        backend.stdin.close()
        backend.wait(10)
    print(
        f"{args.conns} connections x {args.inflight} in flight, {args.size} B binary messages, "
        f"median of {args.rounds} x {args.seconds:g} s"
    )
    print(f"{'relay':<22} {'echoes/s':>10} {'CPU µs/frame':>13} {'CPU µs/echo':>12}")
    names = {"copy": "bare copy (floor)", "buffered": "bare copy, recv_into", "coalesced": "bare copy, coalesced",
             "byte": "ByteRelay",
             "metered": "ByteRelay + metrics"}
    for mode, cpu, rate in rows:
        print(f"{names[mode]:<22} {rate:>10,.0f} {cpu:>13.2f} {2 * cpu:>12.2f}")
    copy_cpu, buffered_cpu, coalesced_cpu, byte_cpu, metered_cpu = (cpu for _, cpu, _ in rows)
    print(f"reused read buffer (BufferedProtocol): {buffered_cpu - copy_cpu:+.2f} µs per frame on the bare copy")
    print(f"writes coalesced per loop iteration: {coalesced_cpu - copy_cpu:+.2f} µs per frame on the bare copy")
    extra = byte_cpu - copy_cpu
    print(f"scanner and bookkeeping: {extra:+.2f} µs per frame ({byte_cpu / copy_cpu:.2f}x the bare copy)")
    print(f"metrics (batched every {args.scrape:g} s): {metered_cpu - byte_cpu:+.2f} µs per frame")
    if idle_kib is not None:
        print(f"gateway RSS per idle ByteRelay connection ({args.idle} connections): {idle_kib:.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements per relay")
    parser.add_argument("--scrape", type=float, default=1.0, help="seconds between metric batches (metered row)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections for the RSS figure (0: skip)")
    parser.add_argument("--role", choices=["backend", "load", "idle"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        asyncio.run(_child(args.role, args))
    else:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
