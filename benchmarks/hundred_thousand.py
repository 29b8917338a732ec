"""Many concurrent connections through `wsgate run --workers N` (issue 26): the 100,000-connection run.

    python benchmarks/hundred_thousand.py [--conns 100000] [--grace 60] [--json out.json]

What it does, in order, and reports:

1. sizes the run from the open-files limit (RLIMIT_NOFILE, raised to the hard limit as the Deployment's
   securityContext/ulimit would): a gateway worker holds 2 files per relayed connection (client and upstream
   socket), a client process and a backend process 1 each, so ``--workers`` is ``ceil(2 × conns / (limit −
   reserve))`` (at least 2), and clients and backends are split the same way;
2. starts that many minimal backends (raw asyncio: 101, pong, close echo; benchmarks/idle_connections.py's),
   one gateway (`wsgate run --workers N`, the API balancing over every backend), and the client processes,
   each bound to its own source address 127.0.0.x (a source address has ~28,000 ephemeral ports towards one
   destination);
3. opens ``--conns`` idle connections (clients answer keepalive pings): upgrades/s on the way up (every
   second), then the total RSS of the gateway (supervisor + workers);
4. reloads the config under them (an API added): time to ``reload_handed_out`` and connections lost (must be 0);
5. ``wsgate plan NEW --from http://ADMIN``: how long plan takes against the running gateway;
6. SIGTERM: how long the gateway takes to drain them (each gets a close frame) within ``--grace``, and how
   many were closed by a close frame rather than cut.

Progress goes to stderr, the figures (a Markdown table) to stdout. Needs nothing beyond the package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _harness import raise_open_files_limit  # noqa: E402
from _servers import _rss_kib  # noqa: E402
from idle_connections import _backend_main, _frame, _IdleClient, _request  # noqa: E402

RESERVE = 400  # files a process keeps besides connections (libraries, logs, listeners, pipes)
SOURCE_PORTS = 28_000  # ephemeral ports towards one destination from one source address (32768-60999)
CONNECT_BATCH = 200  # handshakes in flight per client process
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ client


class Client(_IdleClient):
    """Upgrades, answers pings, answers a close frame; counts a loss when cut before release or a close frame."""

    def __init__(self, opened: asyncio.Future[bool], stats: dict[str, int]) -> None:
        super().__init__(opened, stats)
        self.closed_by_frame = False

    def control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 8:
            self.closed_by_frame = True
            self.stats["close_frames"] += 1
            self.transport.write(_frame(0x8, payload, masked=True))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if self.open and not self.released:
            self.stats["ended"] += 1
            if not self.closed_by_frame:
                self.stats["lost"] += 1


async def _client_main(port: int, path: str, conns: int, source: str) -> None:
    loop = asyncio.get_running_loop()
    stats = {"pings": 0, "lost": 0, "ended": 0, "close_frames": 0, "opened": 0, "connect_failed": 0,
             "refused": 0}
    clients: list[Client] = []
    sem = asyncio.Semaphore(CONNECT_BATCH)

    async def one() -> None:
        async with sem:
            opened = loop.create_future()
            client = Client(opened, stats)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # The port is picked at connect(), per destination, rather than reserved at bind(): a port bound
                # with bind() is withheld from every other connect()'s ephemeral choice, the gateway's upstream
                # connects included, and 100,000 of them would crowd the 28,000-port range.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", port))
                transport, _ = await loop.create_connection(lambda: client, sock=sock)
            except OSError:
                sock.close()
                stats["connect_failed"] += 1
                return
            transport.write(_request(port, path))
            try:
                ok = await asyncio.wait_for(opened, 60)
            except TimeoutError:
                ok = False
            if ok:
                clients.append(client)
                stats["opened"] += 1
            else:
                stats["refused"] += 1  # not answered 101 (e.g. 502: the upstream connect failed) or timed out

    async def progress() -> None:
        while True:
            print(json.dumps({"progress": stats["opened"], "t": time.monotonic()}), flush=True)
            await asyncio.sleep(1.0)  # the reporting period itself

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(one() for _ in range(conns)))
    reporter.cancel()
    print(json.dumps({"ready": stats["opened"], "refused": stats["refused"],
                      "connect_failed": stats["connect_failed"], "t": time.monotonic()}), flush=True)
    while (command := await loop.run_in_executor(None, sys.stdin.readline)).strip() != "release":
        if not command:
            return
        print(json.dumps({**stats, "open": sum(1 for c in clients if not c.transport.is_closing())}), flush=True)
    for client in clients:
        client.released = True
        client.transport.abort()
    print(json.dumps(stats), flush=True)


# ------------------------------------------------------------- coordinator


class Proc:
    """A child of this file (``--role``), spoken to in JSON lines over stdin/stdout."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise RuntimeError(f"process {self.proc.args[2:4]} ended (code {self.proc.wait()})")
        return json.loads(text)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LogTail:
    """The gateway's JSON log, read on from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def records(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.startswith(b"{")]

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("event") == event:
                    return record
            time.sleep(0.1)  # polling a log file under a deadline
        raise RuntimeError(f"no {event!r} in the gateway log within {timeout:.0f} s")


def config_text(backends: list[int], grace: float, extra_api: bool, keepalive: float) -> str:
    endpoints = "".join(f"    - url: ws://127.0.0.1:{port}/\n" for port in backends)
    text = (f"kind: Gateway\nname: hundred-thousand\nadmin:\n  host: 127.0.0.1\n  port: 0\nshutdown_grace: {grace}\n"
            "---\nkind: Port\nname: bench\nport: 0\nhost: 127.0.0.1\n"
            f"---\nkind: API\nname: idle\npath: /idle\nports: [bench]\nkeepalive:\n  interval: {keepalive}\n"
            f"  timeout: {keepalive}\npolicies:\n  - type: routing\n    strategy: round-robin\n"  # over every backend
            "upstream:\n  endpoints:\n" + endpoints)
    if extra_api:  # the reload's change: an API added, nothing the live connections use
        text += ("---\nkind: API\nname: added\npath: /added\nports: [bench]\nupstream:\n  endpoints:\n"
                 f"    - url: ws://127.0.0.1:{backends[0]}/\n")
    return text


def sizing(conns: int, limit: int, workers: int | None) -> dict[str, int]:
    per_process = limit - RESERVE
    return {
        "limit": limit,
        "workers": workers or max(2, math.ceil(2 * conns / per_process)),
        "clients": max(1, math.ceil(conns / min(per_process, SOURCE_PORTS))),
        "backends": max(1, math.ceil(conns / min(per_process, SOURCE_PORTS))),
    }


def gateway_rss(pids: list[int]) -> int:
    return sum(_rss_kib(pid, "gateway") for pid in pids)


def gateway_pss(pids: list[int]) -> int:
    """Proportional set size summed (KiB): pages the workers share (the interpreter, imported modules, the
    pre-fork heap) counted once overall rather than once per process, as RSS does."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_open_files_limit()
    size = sizing(args.conns, limit, args.workers)
    say(f"open-files limit {limit} per process: {size['workers']} workers, {size['clients']} client processes, "
        f"{size['backends']} backends for {args.conns} connections")
    figures: dict[str, Any] = {"conns": args.conns, **size, "load_average_before": os.getloadavg()[0]}
    tmp = Path(tempfile.mkdtemp(prefix="wsgate-100k-"))
    backends = [Proc("--role", "backend") for _ in range(size["backends"])]
    clients: list[Proc] = []
    gateway: subprocess.Popen[bytes] | None = None
    try:
        ports = [b.line()["port"] for b in backends]
        (tmp / "config").mkdir()
        (tmp / "config" / "gateway.yaml").write_text(config_text(ports, args.grace, False, args.keepalive))
        log_file = tmp / "gateway.log"
        with open(log_file, "wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", str(tmp / "config"), "--log-format", "json",
                 "--workers", str(size["workers"])],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        tail = LogTail(log_file)
        listening: dict[str, int] = {}
        workers: list[int] = []
        deadline = time.monotonic() + 60
        while len(workers) < size["workers"] or "bench" not in listening or "admin" not in listening:
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wsgate did not start: {log_file.read_text()[-2000:]}")
            for record in tail.records():
                if record.get("event") == "listening":
                    listening[record["name"]] = record["port"]
                elif record.get("event") == "worker_started" and record["pid"] not in workers:
                    workers.append(record["pid"])
            time.sleep(0.1)  # polling the child's log under a deadline
        pids = [gateway.pid, *workers]
        figures["rss_idle_mib"] = gateway_rss(pids) / 1024
        figures["pss_idle_mib"] = gateway_pss(pids) / 1024
        say(f"gateway up: workers {workers}, RSS {figures['rss_idle_mib']:.0f} MiB; opening {args.conns}...")

        # 3. open them
        parts = [args.conns // size["clients"] + (1 if i < args.conns % size["clients"] else 0)
                 for i in range(size["clients"])]
        started = time.monotonic()
        clients = [Proc("--role", "client", "--port", str(listening["bench"]), "--path", "/idle",
                        "--conns", str(n), "--source", f"127.0.0.{10 + i}") for i, n in enumerate(parts)]
        done: dict[int, int] = {}
        progress: dict[int, int] = {}
        curve: list[tuple[float, int]] = []
        last_sample = started
        while len(done) < len(clients):  # every client prints a progress line each second until it is ready
            for i, client in enumerate(clients):
                if i in done:
                    continue
                line = client.line()
                if "ready" in line:
                    done[i] = line["ready"]
                    progress[i] = line["ready"]
                    figures["refused"] = figures.get("refused", 0) + line["refused"]
                    figures["connect_failed"] = figures.get("connect_failed", 0) + line["connect_failed"]
                else:
                    progress[i] = line["progress"]
            now = time.monotonic()
            if now - last_sample >= 1.0:
                curve.append((round(now - started, 1), sum(progress.values())))
                last_sample = now
        opened = sum(done.values())
        seconds = time.monotonic() - started
        figures.update(opened=opened, open_seconds=seconds, upgrades_per_s=opened / seconds, curve=curve)
        time.sleep(2.0)  # the last upstream handshakes and the first keepalive timers settle
        figures["rss_mib"] = gateway_rss(pids) / 1024
        figures["pss_mib"] = gateway_pss(pids) / 1024
        figures["rss_per_worker_mib"] = [_rss_kib(pid, "worker") / 1024 for pid in workers]
        figures["kib_per_conn"] = (figures["rss_mib"] - figures["rss_idle_mib"]) * 1024 / max(opened, 1)
        say(f"opened {opened} in {seconds:.1f} s ({opened / seconds:.0f}/s); gateway RSS {figures['rss_mib']:.0f} MiB")

        # 4. reload under them
        (tmp / "config" / "gateway.yaml").write_text(config_text(ports, args.grace, True, args.keepalive))
        started = time.monotonic()
        gateway.send_signal(signal.SIGHUP)
        record = tail.wait_for("reload_handed_out", 120)
        figures["reload_seconds"] = time.monotonic() - started
        figures["reload_applied"] = f"{record.get('applied')}/{record.get('workers')}"
        counts = _counts(clients)
        figures["lost_in_reload"] = counts["lost"] + counts["ended"]
        figures["open_after_reload"] = counts["open"]
        say(f"reload applied by {figures['reload_applied']} workers in {figures['reload_seconds']:.2f} s; "
            f"open {counts['open']}, lost {figures['lost_in_reload']}")

        # 5. plan --from the running gateway
        started = time.monotonic()
        plan = subprocess.run([sys.executable, "-m", "gateway", "plan", str(tmp / "config"), "--from",
                               f"http://127.0.0.1:{listening['admin']}"], capture_output=True, text=True, cwd=tmp,
                              timeout=300)
        figures["plan_seconds"] = time.monotonic() - started
        figures["plan_exit"] = plan.returncode
        say(f"plan --from the admin: exit {plan.returncode} in {figures['plan_seconds']:.2f} s")

        # 6. drain at shutdown
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(args.grace + 60)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        figures["drain_seconds"] = time.monotonic() - started
        counts = _counts(clients)
        figures.update(still_open=counts["open"], closed_by_frame=counts["close_frames"], cut=counts["lost"])
        say(f"shutdown in {figures['drain_seconds']:.1f} s (grace {args.grace:g}); close frames "
            f"{counts['close_frames']}, cut {counts['lost']}, still open {counts['open']}")
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for proc in [*clients, *backends]:
            proc.stop()
    figures["load_average_after"] = os.getloadavg()[0]
    figures["grace"] = args.grace
    figures["keepalive"] = args.keepalive
    return figures


def _counts(clients: list[Proc]) -> dict[str, int]:
    for client in clients:
        client.send("count")
    total: dict[str, int] = {}
    for client in clients:
        for key, value in client.line().items():
            total[key] = total.get(key, 0) + value
    return total


def render(f: dict[str, Any]) -> str:
    extrapolated = f["rss_idle_mib"] + f["kib_per_conn"] * 100_000 / 1024
    return "\n".join([
        f"{f['opened']} of {f['conns']} connections; open-files limit {f['limit']} per process → "
        f"{f['workers']} workers, {f['clients']} client processes, {f['backends']} backends; keepalive "
        f"{f['keepalive']:g} s; "
        f"{os.cpu_count()} cores, load average {f['load_average_before']:.1f} before, "
        f"{f['load_average_after']:.1f} after",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| upgrades/s on the way up (mean) | {f['upgrades_per_s']:.0f} ({f['open_seconds']:.1f} s; "
        f"{f.get('refused', 0)} not answered 101, {f.get('connect_failed', 0)} connects failed) |",
        f"| gateway RSS total (supervisor + workers) | {f['rss_mib']:.0f} MiB "
        f"(idle {f['rss_idle_mib']:.0f} MiB; workers {', '.join(f'{w:.0f}' for w in f['rss_per_worker_mib'])}) |",
        f"| gateway PSS total (shared pages counted once) | {f['pss_mib']:.0f} MiB "
        f"(idle {f['pss_idle_mib']:.0f} MiB) |",
        f"| KiB per connection (RSS growth) | {f['kib_per_conn']:.1f} |",
        f"| extrapolated RSS at 100,000 ({f['workers']} workers, idle RSS + KiB per connection) | "
        f"{extrapolated / 1024:.2f} GiB |",
        f"| reload under them | applied by {f['reload_applied']} workers in {f['reload_seconds']:.2f} s, "
        f"{f['lost_in_reload']} lost, {f['open_after_reload']} open after |",
        f"| plan --from the running gateway | {f['plan_seconds']:.2f} s (exit {f['plan_exit']}) |",
        f"| shutdown drain (grace {f['grace']:g} s) | {f['drain_seconds']:.1f} s; {f['closed_by_frame']} closed with "
        f"a close frame, {f['cut']} cut, {f['still_open']} left open |",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=100_000, help="connections to hold (default 100000)")
    parser.add_argument("--workers", type=int, help="gateway workers (default: from the open-files limit)")
    parser.add_argument("--grace", type=float, default=60.0, help="the gateway's shutdown_grace (default 60)")
    parser.add_argument("--keepalive", type=float, default=20.0,
                        help="the API's keepalive interval and pong timeout, seconds (default 20, as by default); "
                        "on a machine whose cores the clients share, a longer one keeps slow clients from being "
                        "closed as dead")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--role", choices=["backend", "client"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        raise_open_files_limit()
        if args.role == "backend":
            asyncio.run(_backend_main())
        else:
            asyncio.run(_client_main(args.port, args.path, args.conns, args.source))
        return
    figures = run(args)
    print(render(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    resource.getrlimit(resource.RLIMIT_NOFILE)  # POSIX only: fail here on a system without it
    main()
