"""Relay speed through wsgate against a direct connection to the echo backend, in one run.

    python benchmarks/relay.py [--quick] [--seconds N] [--json out.json]

Starts the echo backend and the gateway (each in its own process, on ports
they bind themselves), then measures with load-generator processes:

* msgs/s with 1 connection and with many (default 50), 16 messages in flight
  each, for 64 B and 16 KiB text messages; a message is one round trip
  (client → backend → client), so a relayed message crosses the gateway twice;
* round-trip latency p50/p99 with 1 connection and 1 message in flight;
* gateway CPU per message (µs of user+system time over the measuring window of
  the many-connection run, divided by the messages counted in it);
* gateway RSS per idle connection (``--idle`` connections through the fast API).

Rows: direct (the ceiling of the load generator and the Python echo backend
on this machine; the echo CPU column shows when the backend is saturated), the ``fast`` API
(no message-stage policy: the byte relay) and the ``tutorial`` API (identify
by API key, client transform, log-invocation of both directions to a file,
throttle). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import LoadPool, LoadResult  # noqa: E402
from _servers import Child  # noqa: E402

log = structlog.get_logger("wsgate.bench")

REPO = Path(__file__).resolve().parent.parent
SIZES = {"64 B": 64, "16 KiB": 16 * 1024}
API_KEY = "bench-key"  # a throwaway key for the generated config; it never leaves this machine
MARKER = " Client Transformation complete"
START_TIMEOUT = 30.0
SETTINGS = ("seconds", "warmup", "repeat", "conns", "inflight", "idle", "processes", "targets")  # recorded in the report
BUSY_CORE = 0.9  # CPU-seconds per second of the echo backend at which it is the bottleneck
TARGETS = {"direct": "direct", "fast": "wsgate fast path", "tutorial": "wsgate tutorial chain"}  # option -> row


@dataclass
class Target:
    name: str
    url: str
    gateway: Child | None = None


@dataclass
class Cell:
    """The figures of one (target, message size)."""

    one_conn_rate: float | None = None
    many_rate: float | None = None
    one_inflight_rate: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    cpu_us_per_msg: float | None = None
    echo_cpu_us_per_msg: float | None = None  # the backend's share: shows when the backend is the ceiling


@dataclass
class Report:
    date: str
    machine: str
    settings: dict[str, Any]
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # target -> size label -> cell
    rss_kib_per_idle_conn: dict[str, float] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)  # every process the run started (all stopped)


# ------------------------------------------------------------------- config


def gateway_config(directory: Path, echo_port: int, apis: list[str]) -> Path:
    """Write the benchmark's gateway config: a Port, the chosen APIs (`fast`, `tutorial`), an application."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "examples" / "transforms", directory / "transforms")
    (directory / "logs").mkdir(exist_ok=True)
    upstream = f"ws://127.0.0.1:{echo_port}/echo/"
    documents = [
        """\
kind: Gateway
name: bench
admin:
  enabled: false
""",
        """\
kind: Port
name: bench
description: The benchmark listener on a free port the system picks.
host: 127.0.0.1
port: 0
""",
    ]
    if "fast" in apis:
        documents.append(
            f"""\
kind: API
name: fast
description: No message-stage policy, so the byte relay.
path: /fast
ports: [bench]
upstream:
  endpoints:
    - url: {upstream}
"""
        )
    if "tutorial" in apis:
        documents.append(
            f"""\
kind: API
name: tutorial
description: The tutorial's EchoWS chain.
path: /tutorial
ports: [bench]
upstream:
  endpoints:
    - url: {upstream}
policies:
  - type: identify
    by: [api_key]
  - type: transform
    stage: client
    messages: text
    callable: transforms.tutorial:client_transformation
  - type: log-invocation
    store_client_messages: true
    store_server_messages: true
    file: logs/tutorial.jsonl
  - type: throttle
    max_connections: 5000
"""
        )
        documents.append(
            f"""\
kind: Application
name: bench-app
identifiers:
  api_keys: [{API_KEY}]
apis: [tutorial]
"""
        )
    (directory / "gateway.yaml").write_text("---\n".join(documents))
    return directory


async def _check_tutorial(url: str) -> str:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, open_timeout=10, close_timeout=5) as ws:
        await ws.send("hello")
        reply = await asyncio.wait_for(ws.recv(), 10)
    return reply if isinstance(reply, str) else reply.decode()


def check_tutorial(url: str) -> None:
    """One real round trip through the tutorial chain: the transform must have run."""
    reply = asyncio.run(_check_tutorial(url))
    if reply != "hello" + MARKER:
        raise RuntimeError(f"the tutorial chain answered {reply!r}, expected 'hello{MARKER}'")


# -------------------------------------------------------------- measurement


class Bench:
    def __init__(self, args: argparse.Namespace, pool: LoadPool, report: Report, echo: Child) -> None:
        self.args, self.pool, self.report, self.echo = args, pool, report, echo

    def load(
        self, target: Target, size: int, conns: int, inflight: int, *, timed: bool
    ) -> tuple[LoadResult, float | None, float | None]:
        """The run with the median rate of ``--repeat`` runs, with its gateway and backend CPU µs per message."""
        runs = sorted(
            (self._load_once(target, size, conns, inflight, timed=timed, attempt=i) for i in range(self.args.repeat)),
            key=lambda run: run[0].rate,
        )
        return runs[len(runs) // 2]

    def _load_once(
        self, target: Target, size: int, conns: int, inflight: int, *, timed: bool, attempt: int
    ) -> tuple[LoadResult, float | None, float | None]:
        label = f"measuring {target.name} {size}B x{conns} conn x{inflight} in flight"
        if self.args.repeat > 1:
            label += f" (run {attempt + 1}/{self.args.repeat})"
        log.info(label + "...")
        cpu: list[float] = []
        echo_cpu: list[float] = []

        def during(t0: float, t1: float) -> None:
            for instant in (t0, t1):
                _wait_until(instant)
                echo_cpu.append(self.echo.cpu_seconds())
                if target.gateway is not None:
                    cpu.append(target.gateway.cpu_seconds())

        result = self.pool.measure(
            target.url,
            conns=conns,
            inflight=inflight,
            size=size,
            seconds=self.args.seconds,
            warmup=self.args.warmup,
            timed=timed,
            during=during,
        )
        cpu_us, echo_us = _per_message(cpu, result), _per_message(echo_cpu, result)
        log.info(
            label + " done", msgs_per_s=round(result.rate), gateway_cpu_us=_round(cpu_us), echo_cpu_us=_round(echo_us)
        )
        return result, cpu_us, echo_us

    def target(self, target: Target) -> None:
        cells = self.report.cells.setdefault(target.name, {})
        for label, size in SIZES.items():
            cell = cells.setdefault(label, Cell())
            latency, _, _ = self.load(target, size, 1, 1, timed=True)
            cell.one_inflight_rate = latency.rate
            cell.p50_us, cell.p99_us = latency.percentile_us(0.50), latency.percentile_us(0.99)
            one, _, _ = self.load(target, size, 1, self.args.inflight, timed=False)
            cell.one_conn_rate = one.rate
            many, cpu_us, echo_us = self.load(target, size, self.args.conns, self.args.inflight, timed=False)
            cell.many_rate, cell.cpu_us_per_msg, cell.echo_cpu_us_per_msg = many.rate, cpu_us, echo_us

    def idle_rss(self, target: Target) -> None:
        assert target.gateway is not None
        count = self.args.idle
        log.info(f"measuring {target.name} RSS with {count} idle connections...")
        before = target.gateway.rss_kib()
        hold = self.pool.hold_idle(target.url, count)
        try:
            opened = hold.wait_open()
            after = _settled_rss(target.gateway)
        finally:
            hold.release()
        per_conn = (after - before) / opened
        self.report.rss_kib_per_idle_conn[target.name] = per_conn
        log.info(
            f"measuring {target.name} RSS done", kib_per_conn=round(per_conn, 2), before_kib=before, after_kib=after
        )


def _per_message(cpu: list[float], result: LoadResult) -> float | None:
    return (cpu[1] - cpu[0]) * 1e6 / result.messages if len(cpu) == 2 and result.messages else None


def _wait_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # a deadline on the shared clock, not a guess


def _settled_rss(child: Child) -> int:
    """RSS once it stops growing (the last upstream handshakes may still be finishing), within 3 s."""
    deadline = time.monotonic() + 3.0
    last = child.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = child.rss_kib()
        if now <= last:
            return now
        last = now
    return last


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# -------------------------------------------------------------------- table


def _rate(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "–" if value is None or not base else f"{value / base:.2f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_table(report: Report) -> str:
    s = report.settings
    many = f"{s['conns']}×{s['inflight']}"
    one = f"1×{s['inflight']}"
    header = [
        "in front of the echo backend",
        "size",
        f"msgs/s {one}",
        "vs direct",
        f"msgs/s {many}",
        "vs direct",
        f"gateway CPU µs/msg ({many})",
        f"echo CPU µs/msg ({many})",
        "round trip p50/p99 µs (1×1)",
        "RSS KiB / idle conn",
    ]
    rows = [header, ["---"] * len(header)]
    direct = report.cells.get("direct", {})
    for name, cells in report.cells.items():
        for label, cell in cells.items():
            base = direct.get(label, Cell())
            rss = report.rss_kib_per_idle_conn.get(name)
            rows.append(
                [
                    name,
                    label,
                    _rate(cell.one_conn_rate),
                    _ratio(cell.one_conn_rate, base.one_conn_rate),
                    _rate(cell.many_rate),
                    _ratio(cell.many_rate, base.many_rate),
                    _num(cell.cpu_us_per_msg, 1),
                    _num(cell.echo_cpu_us_per_msg, 1),
                    f"{_num(cell.p50_us)}/{_num(cell.p99_us)}",
                    _num(rss, 1) if label == next(iter(SIZES)) else "",
                ]
            )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def saturation_notes(report: Report) -> list[str]:
    """Rows whose many-connection run kept the echo backend's one core busy: there the backend is the ceiling."""
    busy = []
    for name, cells in report.cells.items():
        for label, cell in cells.items():
            if cell.echo_cpu_us_per_msg is not None and cell.many_rate is not None:
                cores = cell.echo_cpu_us_per_msg * cell.many_rate / 1e6
                if cores >= BUSY_CORE:
                    busy.append(f"{name} {label} ({cores:.2f})")
    if not busy:
        return []
    return [
        "The echo backend (one Python process) used a full core in: " + ", ".join(busy) + ". "
        "There the backend is the bottleneck, and a ratio above 1 means the gateway's coalesced writes "
        "made the backend's work per message cheaper, not that the gateway is faster than no gateway."
    ]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}"


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: finishes in under a minute")
    parser.add_argument("--seconds", type=float, help="measuring window per run (default 5, quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the window (default 1, quick 0.3)")
    parser.add_argument("--conns", type=int, default=50, help="connections of the many-connection runs")
    parser.add_argument("--inflight", type=int, default=16, help="messages in flight per connection")
    parser.add_argument("--idle", type=int, help="idle connections for the RSS figure (default 1000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated rows to measure, of {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, logs)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.idle = args.idle or 1000
    for name in ("seconds", "conns", "inflight", "idle", "processes", "repeat"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def run(args: argparse.Namespace) -> Report:
    report = Report(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        settings={k: getattr(args, k) for k in SETTINGS},
    )
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, True)
        else:
            log.info("keeping the temporary directory", path=str(tmp))
        log.info("starting the echo backend...")
        echo = Child("echo", [], tmp / "echo.log")
        stack.callback(echo.stop)
        report.pids["echo"] = [echo.pid]
        echo_port = echo.wait_report(START_TIMEOUT)["port"]
        log.info("starting the load generators...", processes=args.processes)
        pool = stack.enter_context(LoadPool(args.processes))
        report.pids["load"] = pool.pids
        targets = []
        if "direct" in args.targets:
            targets.append(Target(TARGETS["direct"], f"ws://127.0.0.1:{echo_port}/echo/"))
        apis = [t for t in args.targets if t != "direct"]
        if apis:
            targets += start_gateway(stack, tmp, echo_port, apis, report)
        bench = Bench(args, pool, report, echo)
        for target in targets:
            if target.name == TARGETS["fast"]:
                bench.idle_rss(target)
            bench.target(target)
    return report


def start_gateway(stack: ExitStack, tmp: Path, echo_port: int, apis: list[str], report: Report) -> list[Target]:
    log.info("starting the gateway...", apis=apis)
    config = gateway_config(tmp / "config", echo_port, apis)
    gateway = Child("gateway", ["--config", str(config)], tmp / "gateway.log", cwd=tmp)
    stack.callback(gateway.stop)
    report.pids["gateway"] = [gateway.pid]
    port = gateway.wait_report(START_TIMEOUT)["ports"]["bench"]
    base = f"ws://127.0.0.1:{port}"
    targets = []
    if "fast" in apis:
        targets.append(Target(TARGETS["fast"], f"{base}/fast", gateway))
    if "tutorial" in apis:
        tutorial = f"{base}/tutorial?x-Gateway-APIKey={API_KEY}"
        check_tutorial(tutorial)
        log.info("the tutorial chain answers with its transform")
        targets.append(Target(TARGETS["tutorial"], tutorial, gateway))
    log.info("gateway up", port=port)
    return targets


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    args = parse_args(argv)
    # Ctrl-C and SIGTERM both unwind through the ExitStack, which stops every child.
    # (SIGINT too, even when a non-interactive shell started us with it ignored.)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        report = run(args)
    except KeyboardInterrupt:
        log.warning("interrupted; everything started was stopped")
        return 130
    table = render_table(report)
    print(f"wsgate relay benchmark, {report.date}; {report.machine}")
    print(
        f"{report.settings['seconds']:g} s per run after {report.settings['warmup']:g} s warm-up, "
        f"median of {report.settings['repeat']}; "
        f"{report.settings['processes']} load-generator processes; "
        "direct = the ceiling of this load generator and echo backend"
    )
    print()
    print(table)
    for note in saturation_notes(report):
        print()
        print(note)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    log.info("benchmark finished", seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
