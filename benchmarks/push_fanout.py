"""Push fan-out: a publish to a group of 10,000 connections spread over two gateway instances (Redis between
them), next to the echo broadcaster delivering the same fan-out natively in one process.

    python benchmarks/push_fanout.py                      # 10,000 members, 20 publishes
    python benchmarks/push_fanout.py --conns 2000 --publishes 10

Push mode: a redis-server, a minimal backend (this file, ``--role backend``),
two ``wsgate run`` instances (``state: redis``, push listener) and two client
processes (``--role clients``) holding ``--conns / 2`` connections each, all
joined to ``shipment:BENCH`` by query parameter. The driver publishes through
instance A's push API one message at a time, the next once every member has
the previous one. Native mode: the echo server (``echo/``) with one room
context, the same clients connected to it directly, and one sender whose
message the room broadcasts to every client.

Reported per mode: deliveries per second (members / time until the last
member has the message), the time until the last member has it (p50, p99 over
the publishes) and the per-delivery latency (p50, p99). Every process raises
its soft RLIMIT_NOFILE to the hard limit (20,000 here: 5,000 client plus
5,000 upstream connections per instance fit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import EchoBackend, raise_open_files_limit  # noqa: E402

GROUP = "BENCH"
KEY = "bench-push-key"
STAMP = re.compile(rb"P(\d+),(\d+\.\d+)")


# ------------------------------------------------------------------ roles (child processes)


async def _backend_main() -> None:
    server = await asyncio.get_running_loop().create_server(EchoBackend, "127.0.0.1", 0, backlog=4096)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the driver closes stdin


async def _echo_room_main() -> None:
    from echo.server import EchoService
    from gateway.config.models import EchoContext, EchoServer

    model = EchoServer(kind="EchoServer", name="bench-room", port=1, control=False, max_queue=1024,
                       contexts=[EchoContext(path="/room/", mode="room", broadcast_time=False)])
    service = EchoService(model, port=0)
    await service.start()
    print(json.dumps({"port": service.port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await service.stop()


class _Member(asyncio.Protocol):
    """One client: upgrade, then note the arrival time of every stamped message (server frames are unmasked)."""

    def __init__(self, request: bytes, run: _Members) -> None:
        self.request = request
        self.run = run
        self.buffer = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"refused: {bytes(self.buffer[:60])!r}")
            del self.buffer[:end + 4]
            self.open = True
            self.run.opened()
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= 2:
            length, at = buffer[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if len(buffer) - at < 2:
                    break
                length, at = int.from_bytes(buffer[at:at + 2], "big"), at + 2
            elif length == 127:
                if len(buffer) - at < 8:
                    break
                length, at = int.from_bytes(buffer[at:at + 8], "big"), at + 8
            if len(buffer) - at < length:
                break
            match = STAMP.search(bytes(buffer[at:at + length]))
            if match:
                self.run.arrived(int(match.group(1)), float(match.group(2)), now)
            pos = at + length
        del buffer[:pos]


class _Members:
    def __init__(self, conns: int) -> None:
        self.conns = conns
        self.open = 0
        self.ready = asyncio.Event()
        self.latencies: dict[int, list[float]] = {}

    def opened(self) -> None:
        self.open += 1
        if self.open % 1000 == 0:
            print(f"{self.open} open", file=sys.stderr, flush=True)
        if self.open == self.conns:
            self.ready.set()

    def arrived(self, seq: int, sent: float, now: float) -> None:
        got = self.latencies.setdefault(seq, [])
        got.append(now - sent)
        if len(got) == self.conns:
            print(json.dumps({"done": seq}), flush=True)


async def _clients_main(host: str, port: int, path: str, conns: int) -> None:
    loop = asyncio.get_running_loop()
    run = _Members(conns)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    for start in range(0, conns, 100):  # in batches: the listen backlog and the upgrade rate stay sane
        await asyncio.gather(*(loop.create_connection(lambda: _Member(request, run), host, port)
                               for _ in range(start, min(conns, start + 100))))
    await run.ready.wait()
    print(json.dumps({"ready": conns}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the driver says when the run is over
    print(json.dumps({"latencies": run.latencies}), flush=True)


# ------------------------------------------------------------------ the driver


class Proc:
    """A child with JSON lines on stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, conns: int = 0) -> None:
        self.conns = conns
        self.proc = subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     preexec_fn=raise_open_files_limit)
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        async def read() -> None:
            assert self.proc.stdout is not None
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, self.proc.stdout.readline):
                if line.startswith(b"{"):
                    await self.lines.put(json.loads(line))
                elif not line.startswith((b" ", b"/", b"note:", b"valid:")):  # not validate's warnings: say it
                    sys.stderr.write(line.decode(errors="replace"))
        self.reader = asyncio.get_running_loop().create_task(read())

    async def next(self, key: str, timeout: float = 120.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                record = await self.lines.get()
                if key in record:
                    return record

    def say(self, text: str = "\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Close its stdin (the roles of this file end then); a gateway gets SIGTERM and SIGINT (no grace)."""
        if self.proc.poll() is None:
            stdin = self.proc.stdin
            if stdin is not None and not stdin.closed:
                stdin.close()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def _me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


async def _gateway(config: Path, instance: str) -> tuple[Proc, dict[str, int]]:
    gateway = Proc(sys.executable, "-m", "gateway", "run", str(config), "--admin", "127.0.0.1:0", "--log-format",
                   "json", env={"WSGATE_INSTANCE_ID": instance, "PYTHONPATH": str(HERE.parent)})
    gateway.start_reading()
    ports: dict[str, int] = {}
    async with asyncio.timeout(60):
        while not {"default", "push"} <= set(ports):
            record = await gateway.lines.get()
            if record.get("event") == "listening":
                ports[record["name"]] = record["port"]
    return gateway, ports


async def _redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a random free port, logging to a file (a closed stdout pipe would kill it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    for attempt in range(20):
        port = random.randint(20000, 59999)
        logfile = workdir / f"redis-{attempt}.log"
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", str(workdir), "--logfile", str(logfile)])
        while proc.poll() is None:
            if logfile.exists() and b"Ready to accept connections" in logfile.read_bytes():
                return proc, port
            await asyncio.sleep(0.05)
    raise SystemExit("redis-server did not start")


def _config(root: Path, backend: int, redis_port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(f"""\
---
kind: Port
name: default
port: 0
host: 127.0.0.1
---
kind: Gateway
name: bench
push:
  port: 0
state:
  backend: redis
  url: redis://127.0.0.1:{redis_port}/0
---
kind: API
name: Track
path: /track
ports: [default]
upstream:
  endpoints:
    - url: ws://127.0.0.1:{backend}/
  max_pending: 4096       # the members connect in bursts: no 503 from the pending-handshake breaker
keepalive:
  interval: null
push:
  credentials:
    - name: bench
      key: {KEY}
  groups:
    - from: query
      name: shipment
  queue: 1024
""")
    return root


async def _members(targets: list[tuple[int, str]], conns: int) -> list[Proc]:
    share = conns // len(targets)
    clients = [Proc(*_me("--role", "clients", "--port", str(port), "--path", path, "--conns", str(share)), conns=share)
               for port, path in targets]
    for client in clients:
        client.start_reading()
    for client in clients:
        await client.next("ready", timeout=1200)  # a busy 2-core machine upgrades a few hundred per second
    return clients


async def _rounds(clients: list[Proc], publishes: int, send: Any) -> dict[str, Any]:
    """``send(seq, stamp)`` one message per round; wait until every member of every client process has it."""
    rounds: list[float] = []
    for seq in range(publishes):
        stamp = f"P{seq},{time.time():.6f}"
        await send(seq, stamp)
        try:
            for client in clients:
                while (await client.next("done", timeout=60))["done"] != seq:
                    pass
        except TimeoutError:  # a member never got it (closed as too slow?): the report shows how many did
            _say(f"round {seq}: not every member got the message within 60 s")
    latencies: dict[int, list[float]] = {}
    for client in clients:
        client.say()
        for seq, values in (await client.next("latencies"))["latencies"].items():
            latencies.setdefault(int(seq), []).extend(values)
    members = sum(len(v) for v in latencies.values()) / max(1, len(latencies))
    rounds = sorted(max(values) for seq, values in latencies.items() if seq > 0)  # the first one warms up
    every = sorted(value for seq, values in latencies.items() if seq > 0 for value in values)

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    return {"members": int(members), "expected_members": sum(c.conns for c in clients), "publishes": len(rounds),
            "deliveries_per_s": round(members / statistics.median(rounds)),
            "last_member_ms": {"p50": round(pct(rounds, 0.50), 1), "p99": round(pct(rounds, 0.99), 1)},
            "delivery_ms": {"p50": round(pct(every, 0.50), 1), "p99": round(pct(every, 0.99), 1)}}


async def _push_mode(work: Path, conns: int, publishes: int) -> dict[str, Any]:
    import aiohttp

    redis, redis_port = await _redis(work)
    backend = Proc(*_me("--role", "backend"))
    procs: list[Proc] = [backend]
    try:
        backend.start_reading()
        backend_port = (await backend.next("port"))["port"]
        config = _config(work / "config", backend_port, redis_port)
        a, ports_a = await _gateway(config, "bench-a")
        procs.append(a)
        b, ports_b = await _gateway(config, "bench-b")
        procs.append(b)
        _say(f"two instances up: {ports_a} {ports_b}")
        path = f"/track?shipment={GROUP}"
        clients = await _members([(ports_a["default"], path), (ports_b["default"], path)], conns)
        procs += clients
        _say(f"{conns} members connected")
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{ports_a['push']}/apis/Track/groups/shipment:{GROUP}/messages"

            async def publish(seq: int, stamp: str) -> None:
                async with session.post(url, data=stamp, headers={"Authorization": f"Bearer {KEY}"}) as response:
                    answer = await response.json()
                    assert response.status == 200 and answer["processes"] == 1, answer

            return await _rounds(clients, publishes, publish)
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.terminate()
        redis.wait()


async def _native_mode(conns: int, publishes: int) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    room = Proc(*_me("--role", "echo-room"), env={"PYTHONPATH": str(HERE.parent)})
    procs = [room]
    try:
        room.start_reading()
        port = (await room.next("port"))["port"]
        clients = await _members([(port, "/room/?user=member"), (port, "/room/?user=member")], conns)
        procs += clients
        _say(f"{conns} members in the echo room")
        async with connect(f"ws://127.0.0.1:{port}/room/?user=bench", max_queue=None) as sender:

            async def send(seq: int, stamp: str) -> None:
                await sender.send(stamp)

            return await _rounds(clients, publishes, send)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def _drive(args: argparse.Namespace) -> None:
    raise_open_files_limit()
    work = Path(tempfile.mkdtemp(prefix="wsgate-push-bench-"))
    try:
        report = {"conns": args.conns, "cpus": os.cpu_count()}
        report["push_two_instances"] = await _push_mode(work, args.conns, args.publishes + 1)
        _say(json.dumps(report["push_two_instances"]))  # shown at once: the native run may take long
        report["echo_native_one_process"] = await _native_mode(args.conns, args.publishes + 1)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=10000, help="group members in all (split over two)")
    parser.add_argument("--publishes", type=int, default=20, help="measured publishes (one more warms up)")
    parser.add_argument("--role", choices=["backend", "clients", "echo-room"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_open_files_limit()
    if args.role == "backend":
        asyncio.run(_backend_main())
    elif args.role == "echo-room":
        asyncio.run(_echo_room_main())
    elif args.role == "clients":
        asyncio.run(_clients_main("127.0.0.1", args.port, args.path, args.conns))
    else:
        asyncio.run(_drive(args))


if __name__ == "__main__":
    main()
