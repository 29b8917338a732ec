"""Connection setup (issue 17): upgrades per second and CPU per upgrade next to nginx, and a reconnect storm.

    python benchmarks/upgrades.py                        # upgrades/s and CPU µs per upgrade: nginx, fast, tutorial
    python benchmarks/upgrades.py --profile /tmp/up      # ... with py-spy on each gateway (PATH.fast.txt, ...)
    python benchmarks/upgrades.py --storm 5000           # 5,000 clients connect at once to a fresh gateway

*Upgrades*: the compiled Go generator's upgrade loop (``--conns`` concurrent loops, each: connect,
handshake, one 64 B message and its echo, close handshake) against nginx, the gateway's
``identify + throttle`` API (row "fast") and the tutorial chain, one proxy at a time in front of the same
Go echo backend. Besides upgrades/s it reports the proxy's CPU time per upgrade (user + system over the
window from ``/proc/PID/stat``), which holds up on a shared machine where the rate does not.

*Storm*: a freshly started gateway (the ``identify + throttle`` API) and ``--storm`` clients in
``--storm-processes`` processes (the gateway holds two files per connection, the clients one each, so they
cannot share a process under a 20,000 open-files limit). At one instant every client connects, sends its
upgrade, and waits for the answer (an ordinary client's deadline, ``--storm-deadline``); a client that got
its 101 sends one message, waits for its echo and holds the connection until every client is done, so the
gateway really holds the whole storm at once. The report: how many were served (101 and their echo), every
other status, connections dropped without an answer (what a handshake timeout looks like to a client), the
slowest handshake, and the total time from the start to the last echo.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    HEAD_END,
    api_doc,
    application_doc,
    cpu_model,
    frame_head,
    gateway_doc,
    identify_and_throttle,
    port_doc,
    raise_open_files_limit,
    write_gateway_config,
)
from _load import GoLoad  # noqa: E402
from _servers import Child, Nginx  # noqa: E402
from relay import API_KEY, START_TIMEOUT, ensure_go, ensure_nginx, gateway_config  # noqa: E402

log = structlog.get_logger("wsgate.bench")


# ------------------------------------------------------------------ upgrades/s


@dataclass
class UpgradeRow:
    """One proxy's upgrade loop."""

    target: str
    per_s: float
    cpu_us: float | None  # the proxy's CPU time per completed upgrade
    failed: int
    profile: list[str] = field(default_factory=list)


def _py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy") if (Path(sys.executable).parent / "py-spy").exists() else None
    )


def measure_upgrades(load: GoLoad, url: str, proxy: Any, args: argparse.Namespace, key: str,
                     profile: Path | None) -> UpgradeRow:
    """Run the upgrade loop against ``url``; CPU per upgrade from ``proxy`` over the window."""
    marks: list[float] = []  # the proxy's CPU seconds at the window's start and end (the generator's two marks)
    spy: subprocess.Popen[bytes] | None = None
    out = profile.with_suffix(f".{key}.txt") if profile is not None else None

    def mark() -> None:
        nonlocal spy
        marks.append(proxy.cpu_seconds())
        binary = _py_spy()
        if len(marks) == 1 and out is not None and binary is not None and key != "nginx":
            spy = subprocess.Popen(
                [binary, "record", "--pid", str(proxy.pid), "--duration", str(max(1, int(args.seconds))),
                 "--format", "raw", "--rate", "500", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    result = load.upgrades(url, conns=args.conns, size=64, seconds=args.seconds, warmup=args.warmup, mark=mark)
    cpu = marks[1] - marks[0] if len(marks) == 2 else None
    completed = result.messages
    row = UpgradeRow(key, result.rate, cpu / completed * 1e6 if cpu is not None and completed else None,
                     result.failed)
    if spy is not None and out is not None:
        spy.wait(timeout=args.seconds + 30)
        row.profile = own_time(out)
    return row


def own_time(raw: Path, top: int = 25) -> list[str]:
    """The top frames by own time of a py-spy ``raw`` (collapsed stacks) file."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [f"{n / total * 100:5.1f} %  {frame}" for frame, n in own.most_common(top)] if total else []


def run_upgrades(args: argparse.Namespace) -> list[UpgradeRow]:
    built = ensure_go(not args.no_install)
    if built is None:
        raise SystemExit("the upgrades benchmark needs the compiled Go generator (Debian's golang and gorilla)")
    load = GoLoad(built["loadgen"])
    rows: list[UpgradeRow] = []
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="wsgate-upgrades-"))
        stack.callback(shutil.rmtree, tmp, True)
        echo = Child("echo", [], tmp / "echo.log", command=[str(built["echo"])])
        stack.callback(echo.stop)
        backend_port = echo.wait_report(START_TIMEOUT)["port"]
        for key in args.targets:
            with ExitStack() as one:
                if key == "nginx":
                    binary = ensure_nginx(not args.no_install)
                    if binary is None:
                        log.warning("nginx is not available: no nginx row")
                        continue
                    proxy: Any = Nginx(binary, tmp / "nginx", backend_port, tmp / "nginx.log")
                    one.callback(proxy.stop)
                    proxy.wait_ready(START_TIMEOUT)
                    url = f"ws://127.0.0.1:{proxy.port}/echo/"
                    cpu_of: Any = _Worker(proxy)
                else:
                    config = gateway_config(tmp / f"config-{key}", backend_port, key)
                    flags = ["--log-level", "info", "--log-json"] if args.logs else []
                    gateway = Child("gateway", ["--config", str(config), *flags], tmp / f"gateway-{key}.log", cwd=tmp)
                    one.callback(gateway.stop)
                    port = gateway.wait_report(START_TIMEOUT)["ports"]["bench"]
                    path = "upgrade" if key == "fast" else "tutorial"
                    url = f"ws://127.0.0.1:{port}/{path}?x-Gateway-APIKey={API_KEY}"
                    cpu_of = gateway
                best: UpgradeRow | None = None
                for attempt in range(args.repeat):
                    log.info(f"{key}: upgrade loop {attempt + 1}/{args.repeat}...")
                    row = measure_upgrades(load, url, cpu_of, args, key, args.profile if attempt == 0 else None)
                    log.info(f"{key}: done", per_s=round(row.per_s), cpu_us=row.cpu_us and round(row.cpu_us))
                    if best is None or (row.cpu_us or 1e9) < (best.cpu_us or 1e9):
                        best, row.profile = row, row.profile or (best.profile if best else [])
                assert best is not None
                rows.append(best)
    return rows


class _Worker:
    """nginx's worker process as the thing whose CPU is read (the master only forks it)."""

    def __init__(self, nginx: Nginx) -> None:
        self.nginx = nginx
        self.pid = nginx.worker_pid

    def cpu_seconds(self) -> float:
        return self.nginx.cpu_seconds()


def render_upgrades(rows: list[UpgradeRow], args: argparse.Namespace) -> str:
    nginx = next((r for r in rows if r.target == "nginx"), None)
    lines = [
        f"wsgate upgrade benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores "
        f"({cpu_model()}), Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}",
        f"{args.conns} concurrent loops of connect, handshake, one 64 B message, close; {args.seconds:g} s after "
        f"{args.warmup:g} s warm-up; the run with the least CPU per upgrade of {args.repeat}; gateway logs: "
        + ("info, JSON lines to a file" if args.logs else "warnings only"),
        "",
        "| proxy | upgrades/s | vs nginx | proxy CPU µs / upgrade | vs nginx | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row.per_s / nginx.per_s:.2f}" if nginx and nginx.per_s else "–"
        cpu = f"{row.cpu_us:.0f}" if row.cpu_us is not None else "–"
        cpu_ratio = f"{row.cpu_us / nginx.cpu_us:.2f}" if nginx and nginx.cpu_us and row.cpu_us else "–"
        lines.append(f"| {LABELS[row.target]} | {row.per_s:,.0f} | {ratio} | {cpu} | {cpu_ratio} | {row.failed} |")
    for row in rows:
        if row.profile:
            lines += ["", f"py-spy, {LABELS[row.target]}, own time:", *row.profile]
    return "\n".join(lines)


LABELS = {"nginx": "nginx, 1 worker", "fast": "wsgate identify + throttle", "tutorial": "wsgate tutorial chain"}


# ------------------------------------------------------------------ the storm


@dataclass
class StormResult:
    """What the storm's clients saw."""

    clients: int
    served: int  # 101 and the echo of their message
    statuses: dict[str, int]  # status line code -> clients ("none": dropped without an answer)
    slowest_handshake_s: float
    total_s: float  # start -> last client done
    deadline_s: float
    late: int  # handshakes that took longer than the deadline (never answered in time)
    load_average: float
    max_pending: int | None

    @property
    def ok(self) -> bool:
        return self.served == self.clients and not self.late


def _upgrade_request(path: str, host: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


MESSAGE = b"storm"
FRAME = frame_head(1, len(MESSAGE), mask=True) + b"\0\0\0\0" + MESSAGE  # zero mask: payload as is


class _Storm:
    """One worker's clients: counts them down as each finishes its handshake and echo (or fails)."""

    def __init__(self, clients: int) -> None:
        self.left = clients
        self.all_done = asyncio.Event()
        self.release = asyncio.Event()
        if not clients:
            self.all_done.set()

    def one_done(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.all_done.set()


async def _client(port: int, request: bytes, deadline: float, storm: _Storm) -> tuple[str, float, bool]:
    """One client: (status or 'none', handshake seconds, echoed); holds a served connection until released."""
    started = time.monotonic()
    writer = None
    counted = False
    try:
        async with asyncio.timeout(deadline):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(HEAD_END)
            took = time.monotonic() - started
            status = head.split(b" ", 2)[1].decode()
            if status != "101":
                return status, took, False
            writer.write(FRAME)
            echo = await reader.readexactly(2 + len(MESSAGE))
        storm.one_done()
        counted = True
        await storm.release.wait()
        return status, took, echo[2:] == MESSAGE
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return "none", time.monotonic() - started, False
    finally:
        if not counted:
            storm.one_done()
        if writer is not None:
            writer.transport.abort()


def _storm_worker(pipe: Connection, port: int, path: str, clients: int, deadline: float) -> None:
    raise_open_files_limit()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        request = _upgrade_request(path, f"127.0.0.1:{port}")
        storm = _Storm(clients)
        pipe.send("ready")
        await loop.run_in_executor(None, pipe.recv)  # "go"
        tasks = [asyncio.ensure_future(_client(port, request, deadline, storm)) for _ in range(clients)]
        await storm.all_done.wait()
        pipe.send({"done_at": time.time()})
        await loop.run_in_executor(None, pipe.recv)  # "release": every worker is done, the storm is held
        storm.release.set()
        statuses: Counter[str] = Counter()
        served = late = 0
        slowest = 0.0
        for status, took, echoed in await asyncio.gather(*tasks):
            statuses[status] += 1
            served += echoed
            late += took > deadline
            slowest = max(slowest, took)
        pipe.send({"statuses": dict(statuses), "served": served, "late": late, "slowest": slowest})

    asyncio.run(main())


def storm_config(directory: Path, backend_port: int, max_pending: int | None) -> Path:
    """The identify + throttle API; ``max_pending`` sets the upstream's circuit breaker (default: the model's)."""
    upstream = f"ws://127.0.0.1:{backend_port}/echo/"
    api = api_doc("upgrade", "/upgrade", "bench", upstream, policies=identify_and_throttle(),
                  description="Identify and throttle, for the reconnect storm.")
    if max_pending is not None:
        api = api.replace("upstream:\n", f"upstream:\n  max_pending: {max_pending}\n", 1)
    return write_gateway_config(directory, gateway_doc("bench"), port_doc("bench"), api,
                                application_doc("bench-app", API_KEY, "upgrade"))


def run_storm(args: argparse.Namespace) -> StormResult:
    raise_open_files_limit()
    built = ensure_go(not args.no_install) if args.backend == "go" else None
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="wsgate-storm-"))
        stack.callback(shutil.rmtree, tmp, True)
        if built is not None:
            echo = Child("echo", [], tmp / "echo.log", command=[str(built["echo"])])
        else:
            echo = Child("echo", [], tmp / "echo.log")
        stack.callback(echo.stop)
        backend_port = echo.wait_report(START_TIMEOUT)["port"]
        # Workers first, so that the gateway is as fresh as can be when the storm breaks.
        ctx = multiprocessing.get_context("spawn")
        per = [args.storm // args.storm_processes + (i < args.storm % args.storm_processes)
               for i in range(args.storm_processes)]
        config = storm_config(tmp / "config-storm", backend_port, args.storm_max_pending)
        gateway = Child("gateway", ["--config", str(config)], tmp / "gateway-storm.log", cwd=tmp)
        stack.callback(gateway.stop)
        port = gateway.wait_report(START_TIMEOUT)["ports"]["bench"]
        path = f"/upgrade?x-Gateway-APIKey={API_KEY}"
        pipes: list[Connection] = []
        for n in per:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_storm_worker, args=(theirs, port, path, n, args.storm_deadline), daemon=True)
            proc.start()
            stack.callback(proc.join, 10)
            pipes.append(mine)
        for pipe in pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise SystemExit("a storm worker did not start")
        started = time.time()
        for pipe in pipes:
            pipe.send("go")
        wait = args.storm_deadline + 60
        done = [pipe.recv() if pipe.poll(wait) else {"done_at": time.time()} for pipe in pipes]
        total = max(d["done_at"] for d in done) - started
        for pipe in pipes:
            pipe.send("release")
        results = [pipe.recv() if pipe.poll(60) else {} for pipe in pipes]
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r.get("statuses", {}))
    return StormResult(
        clients=args.storm,
        served=sum(r.get("served", 0) for r in results),
        statuses=dict(statuses),
        slowest_handshake_s=max((r.get("slowest", 0.0) for r in results), default=0.0),
        total_s=total,
        deadline_s=args.storm_deadline,
        late=sum(r.get("late", 0) for r in results),
        load_average=os.getloadavg()[0],
        max_pending=args.storm_max_pending,
    )


def render_storm(result: StormResult) -> str:
    fivexx = sum(n for status, n in result.statuses.items() if status.startswith("5"))
    return "\n".join([
        f"reconnect storm, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu_model()}), "
        f"load average {result.load_average:.1f}",
        f"{result.clients} clients at once on a fresh gateway (identify + throttle, upstream connect, one echo each; "
        f"upstream max_pending {result.max_pending or 'default'})",
        f"served: {result.served} of {result.clients}; statuses: "
        + ", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items())),
        f"5xx: {fivexx}; handshakes past {result.deadline_s:g} s: {result.late}; "
        f"slowest handshake {result.slowest_handshake_s:.2f} s; total {result.total_s:.2f} s",
        "all served, none past the deadline" if result.ok else "NOT all served in time",
    ])


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="nginx,fast,tutorial", help="of nginx, fast, tutorial")
    parser.add_argument("--conns", type=int, default=16, help="concurrent upgrade loops (default 16)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--logs", action="store_true",
                        help="gateways log at info as JSON lines (as `wsgate run` does) to a file; default: warnings")
    parser.add_argument("--profile", type=Path, help="py-spy each gateway's first run into PATH.<row>.txt")
    parser.add_argument("--storm", type=int, default=0, help="instead: this many clients at once (e.g. 5000)")
    parser.add_argument("--storm-processes", type=int, default=4)
    parser.add_argument("--storm-deadline", type=float, default=10.0,
                        help="seconds a client waits for its 101 (the port's handshake timeout, 10 s by default)")
    parser.add_argument("--storm-max-pending", type=int,
                        help="the upstream's max_pending (circuit breaker on upstream handshakes in flight; "
                        "default: the model's 256; upgrades past it queue for a slot)")
    parser.add_argument("--backend", choices=("go", "python"), default="go", help="the storm's echo backend")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    return args


def main(argv: list[str] | None = None) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    args = parse_args(argv)
    if args.storm:
        result = run_storm(args)
        print(render_storm(result))
        if args.json:
            args.json.write_text(json.dumps({"storm": asdict(result) | {"ok": result.ok}}, indent=2))
        return 0 if result.ok else 1
    rows = run_upgrades(args)
    print(render_upgrades(rows, args))
    if args.json:
        args.json.write_text(json.dumps({"upgrades": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
