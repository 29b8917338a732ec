"""Idle connections and upgrades per second through one gateway process.

    python benchmarks/idle_connections.py --conns 1000 --duration 10        # RSS per idle connection
    python benchmarks/idle_connections.py --conns 9500 --duration 600       # the 9,500-connection hold
    python benchmarks/idle_connections.py --upgrades --seconds 5 --loops 8  # upgrades/s (identify + throttle)

The gateway, a minimal WebSocket backend and the clients each run in their
own process (this file, ``--role ...``), each with its soft RLIMIT_NOFILE
raised to the hard limit. The gateway serves two APIs on one port: ``/fast``
(no policies: the byte relay, keepalive on with a 20 s interval) and
``/upgrade`` (identify by API key + throttle).

Idle mode: 20 connections warm the gateway's caches and stay open, then RSS
(``VmRSS`` of ``/proc/PID/status``) is read, ``--conns`` more connections
open, and RSS is sampled every ``--sample`` seconds for ``--duration``
seconds. Reported: KiB per connection (settled RSS minus RSS before, over
the connections opened) and drift (last sample minus first sample after the
connections opened). Clients answer the gateway's keepalive pings, so a
connection lost during the hold means a real failure.

Upgrades mode: ``--clients`` processes each run ``--loops`` concurrent loops
of connect, upgrade (through identify + throttle + the upstream connect),
close handshake, for ``--seconds`` after one second of warm-up. Reported:
upgrades/s and gateway CPU time per upgrade (robust on a shared machine).

The backend is deliberately minimal (raw asyncio: 101, pong, close echo,
data echo) so that 9,500 upstream connections cost it little.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    EchoBackend,
    api_doc,
    application_doc,
    gateway_doc,
    identify_and_throttle,
    port_doc,
    raise_open_files_limit,
    write_gateway_config,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
API_KEY = "idle-bench-key"  # a throwaway key for the generated config
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONNECT_BATCH = int(os.environ.get("IDLE_CONNECT_BATCH", "200"))  # handshakes in flight per client process


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (/proc/PID/stat utime, stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


# ------------------------------------------------------------------ backend


def _frame(opcode: int, payload: bytes, masked: bool, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + payload


async def _backend_main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoBackend, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the coordinator closes our stdin


# ------------------------------------------------------------------ gateway


def write_config(directory: Path, backend_port: int) -> Path:
    upstream = f"ws://127.0.0.1:{backend_port}/echo/"
    return write_gateway_config(
        directory,
        gateway_doc("idle-bench"),
        port_doc("bench", "The benchmark listener."),
        api_doc("fast", "/fast", "bench", upstream, description="No message-stage policy, so the byte relay."),
        api_doc("upgrade", "/upgrade", "bench", upstream, description="Identify and throttle.",
                policies=identify_and_throttle()),
        application_doc("bench-app", API_KEY, "upgrade"),
    )


async def _gateway_main(config_dir: str, profile: str | None) -> None:
    import logging

    import structlog

    from gateway.config import check
    from gateway.serving.runtime import Gateway

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = check([Path(config_dir)])
    if result.config is None:
        raise RuntimeError(f"config does not check: {result.diagnostics}")
    gateway = Gateway(result.config, admin=False, echo=False)
    await gateway.start()
    gc_time = _gc_timer() if os.environ.get("IDLE_BENCH_GC_TIMES") else None
    port = next(iter(gateway.addresses.values()))[1]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    if gc_time is not None:
        print(f"gc: {gc_time[0]:.3f} s in {gc_time[1]} collections", file=sys.stderr)
    await gateway.stop()


def _gc_timer() -> list[Any]:
    """Seconds spent in the cyclic garbage collector and collections so far (a diagnostic)."""
    import gc

    totals: list[Any] = [0.0, 0, 0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            totals[2] = time.perf_counter()
        else:
            totals[0] += time.perf_counter() - totals[2]
            totals[1] += 1

    gc.callbacks.append(callback)
    return totals


# ------------------------------------------------------------------ clients


def _request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class _IdleClient(asyncio.Protocol):
    """Upgrades, then answers pings; counts as lost if the connection ends before release."""

    def __init__(self, opened: asyncio.Future[bool], stats: dict[str, int]) -> None:
        self.opened = opened
        self.stats = stats
        self.buf = b""
        self.open = False
        self.released = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            ok = buf.startswith(b"HTTP/1.1 101")
            if not self.opened.done():
                self.opened.set_result(ok)
            if not ok:
                self.transport.close()
                return
            self.open = True
            buf = buf[end + 4 :]
        while len(buf) >= 2:
            length = buf[1] & 0x7F  # server frames: unmasked; only small control frames are expected
            if length >= 126 or len(buf) < 2 + length:
                break
            opcode, payload = buf[0] & 0x0F, buf[2 : 2 + length]
            buf = buf[2 + length :]
            if opcode == 9:
                self.stats["pings"] += 1
                self.transport.write(_frame(0xA, payload, masked=True))
            else:
                self.control_frame(opcode, payload)
        self.buf = buf

    def control_frame(self, opcode: int, payload: bytes) -> None:
        """A server frame other than a ping: ignored here (benchmarks/hundred_thousand.py answers close frames)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if self.open and not self.released:
            self.stats["lost"] += 1


async def _idle_main(port: int, path: str, conns: int) -> None:
    loop = asyncio.get_running_loop()
    stats = {"pings": 0, "lost": 0}
    clients: list[_IdleClient] = []
    sem = asyncio.Semaphore(CONNECT_BATCH)

    async def one() -> bool:
        async with sem:
            opened = loop.create_future()
            client = _IdleClient(opened, stats)
            try:
                transport, _ = await loop.create_connection(lambda: client, "127.0.0.1", port)
            except OSError:
                return False
            transport.write(_request(port, path))
            try:
                ok = await asyncio.wait_for(opened, 30)
            except TimeoutError:
                ok = False
            if ok:
                clients.append(client)
            return ok

    results = await asyncio.gather(*(one() for _ in range(conns)))
    print(json.dumps({"ready": sum(results)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    held = sum(1 for c in clients if not c.transport.is_closing())
    for c in clients:
        c.released = True
        c.transport.abort()
    print(json.dumps({"held": held, "lost": stats["lost"], "pings": stats["pings"]}), flush=True)


async def _upgrade_loop(port: int, path: str, until: float, counts: list[int], start: float) -> None:
    request_close = _frame(0x8, (1000).to_bytes(2, "big"), masked=True)
    while True:
        now = time.monotonic()
        if now >= until:
            return
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_request(port, path))
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                counts[1] += 1
                writer.close()
                continue
            writer.write(request_close)
            await reader.readexactly(4)  # the close frame relayed back from the backend
            writer.close()
            await writer.wait_closed()
            if time.monotonic() >= start:
                counts[0] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts[1] += 1


async def _upgrades_main(port: int, path: str, loops: int, seconds: float, warmup: float) -> None:
    counts = [0, 0]
    start = time.monotonic() + warmup
    await asyncio.gather(*(_upgrade_loop(port, path, start + seconds, counts, start) for _ in range(loops)))
    print(json.dumps({"upgrades": counts[0], "errors": counts[1], "seconds": seconds}), flush=True)


# ------------------------------------------------------------------ coordinator


class Proc:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"process {self.proc.args[2:4]} ended (code {self.proc.wait()})")
        return json.loads(text)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _settled(pid: int, limit: float = 5.0) -> int:
    """RSS once it stops growing (upstream handshakes may still finish), within ``limit`` seconds."""
    deadline = time.monotonic() + limit
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now == last:
            break
        last = now
    return last


def _hold(port: int, path: str, conns: int, clients: int) -> list[Proc]:
    parts = [conns // clients + (1 if i < conns % clients else 0) for i in range(clients)]
    procs = [Proc("--role", "idle", "--port", str(port), "--path", path, "--conns", str(n)) for n in parts if n]
    ready = sum(p.line()["ready"] for p in procs)
    if ready != conns:
        print(f"warning: {ready} of {conns} connections opened", file=sys.stderr)
    return procs


def _release(procs: list[Proc]) -> dict[str, int]:
    total = {"held": 0, "lost": 0, "pings": 0}
    for p in procs:
        p.send("release\n")
    for p in procs:
        for key, value in p.line().items():
            total[key] += value
        p.stop()
    return total


def run_idle(args: argparse.Namespace, gateway: Proc, port: int) -> dict[str, Any]:
    warm = _hold(port, "/fast", 20, 1)
    time.sleep(0.5)
    before = _settled(gateway.pid)
    held = _hold(port, "/fast", args.conns, args.clients)
    after = _settled(gateway.pid)
    per_conn = (after - before) / args.conns
    print(f"{args.conns} idle connections: RSS {before} -> {after} KiB, {per_conn:.2f} KiB/conn", file=sys.stderr)
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        samples.append((round(elapsed, 1), rss_kib(gateway.pid)))
        if args.verbose:
            print(f"  t={elapsed:6.1f}s RSS {samples[-1][1]} KiB", file=sys.stderr)
        if elapsed >= args.duration:
            break
        time.sleep(min(args.sample, max(0.0, args.duration - elapsed)))
    cpu = cpu_seconds(gateway.pid)
    outcome = _release(held)
    _release(warm)
    return {
        "conns": args.conns,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": round(per_conn, 2),
        "drift_kib": samples[-1][1] - samples[0][1],
        "samples": samples,
        "held": outcome["held"],
        "lost": outcome["lost"],
        "pings_answered": outcome["pings"],
        "gateway_cpu_s": cpu,
    }


def run_upgrades(args: argparse.Namespace, gateway: Proc, port: int) -> dict[str, Any]:
    path = f"/upgrade?x-Gateway-APIKey={API_KEY}"
    procs = [Proc("--role", "upgrades", "--port", str(port), "--path", path, "--loops", str(args.loops),
                  "--seconds", str(args.seconds)) for _ in range(args.clients)]
    time.sleep(1.0)  # the clients' warm-up second
    user0, sys0 = cpu_split(gateway.pid)
    results = [p.line() for p in procs]
    user1, sys1 = cpu_split(gateway.pid)
    user, system = user1 - user0, sys1 - sys0
    cpu = user + system
    for p in procs:
        p.stop()
    count = sum(r["upgrades"] for r in results)
    errors = sum(r["errors"] for r in results)
    return {
        "upgrades_per_s": round(count / args.seconds, 1),
        "errors": errors,
        "gateway_cpu_us_per_upgrade": round(cpu / count * 1e6, 1) if count else None,
        "gateway_user_us_per_upgrade": round(user / count * 1e6, 1) if count else None,
        "gateway_sys_us_per_upgrade": round(system / count * 1e6, 1) if count else None,
        "loops": args.loops * args.clients,
    }


def coordinate(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files_limit()
    backend = Proc("--role", "backend")
    gateway = None
    try:
        backend_port = backend.line()["port"]
        with tempfile.TemporaryDirectory(prefix="wsgate-idle-") as tmp:
            config = write_config(Path(tmp), backend_port)
            gateway_args = ["--role", "gateway", "--config", str(config)]
            if args.profile:
                gateway_args += ["--profile", args.profile]
            gateway = Proc(*gateway_args)
            port = gateway.line()["port"]
            if args.upgrades:
                return run_upgrades(args, gateway, port)
            return run_idle(args, gateway, port)
    finally:
        if gateway is not None:
            gateway.stop()
        backend.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=1000, help="idle connections to open (default 1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to hold them, sampling RSS")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--upgrades", action="store_true", help="measure upgrades per second instead")
    parser.add_argument("--loops", type=int, default=4, help="upgrades: concurrent loops per client process")
    parser.add_argument("--seconds", type=float, default=5.0, help="upgrades: measured seconds")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--profile", help="run the gateway under cProfile, stats to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every RSS sample")
    # internal: the child processes
    parser.add_argument("--role", choices=["backend", "gateway", "idle", "upgrades"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        raise_open_files_limit()
        if args.role == "backend":
            asyncio.run(_backend_main())
        elif args.role == "gateway":
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
                try:
                    asyncio.run(_gateway_main(args.config, None))
                finally:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
            else:
                asyncio.run(_gateway_main(args.config, None))
        elif args.role == "idle":
            asyncio.run(_idle_main(args.port, args.path, args.conns))
        else:
            asyncio.run(_upgrades_main(args.port, args.path, args.loops, args.seconds, 1.0))
        return
    figures = coordinate(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
