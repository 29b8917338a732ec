"""wsgate against nginx in front of the same echo backend, measured side by side in one run (issue 7).

    python benchmarks/relay.py [--quick] [--repeat 3] [--json out.json]
    python benchmarks/relay.py --idle 9500 [--idle-duration 600]      # the idle-connections hold

Starts the echo backend (compiled Go + gorilla/websocket, or the Python one), then one
proxy at a time in front of it, and measures with a load generator (compiled Go, or
Python worker processes when Go is not there):

* msgs/s: 50 connections × 16 messages of 64 B in flight (the main figure), the same with
  16 KiB, and 200 connections × 1 in flight; a message is one round trip
  (client → backend → client), so a relayed message crosses the proxy twice;
* ratios to direct (no proxy: the reference for this generator and backend) and to nginx;
* proxy CPU µs per message: the proxy process's user+system CPU time over the measuring
  window divided by the messages counted in it (robust to other load on the machine);
* round trip p50/p99 with 1 connection and 1 message in flight, 64 B and 16 KiB;
* RSS per idle connection: RSS delta of the proxy over ``--idle-conns`` idle connections;
* upgrades/s: a concurrent loop of whole connections (connect, handshake, one message,
  close handshake); through wsgate's identify + throttle API and the tutorial chain, and
  through nginx;
* the load generator's and backend's own CPU µs per message, to show who is the ceiling.

Rows: direct, nginx (1 worker; installed with apt-get when missing; generated config),
Caddy (Debian's ``caddy``, its ``reverse_proxy`` with GOMAXPROCS=1: one core, as nginx's one worker;
installed with apt-get when missing; skipped with a warning when it cannot be),
wsgate fast path (an API without message-stage policies: the byte relay) and wsgate with
the tutorial's EchoWS chain (identify by API key, throttle, client transform, log-invocation
of client and server payloads to a file). Each wsgate row has a gateway process of its own.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    TUTORIAL_MARKER,
    api_doc,
    application_doc,
    cpu_model,
    gateway_doc,
    identify_and_throttle,
    port_doc,
    tutorial_policies,
    write_gateway_config,
)
from _load import GoLoad, LoadError, LoadPool, LoadResult, build_go, go_binary  # noqa: E402
from _servers import Caddy, Child, Nginx, caddy_binary, caddy_version, nginx_binary, nginx_version  # noqa: E402

log = structlog.get_logger("wsgate.bench")

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"  # a throwaway key for the generated config; it never leaves this machine
MARKER = TUTORIAL_MARKER
START_TIMEOUT = 30.0
BUSY_CORE = 0.9  # CPU-seconds per second at which a process is the bottleneck
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wsgate-bench"
TARGETS = {  # option -> row label (nginx's gets its version)
    "direct": "direct",
    "nginx": "nginx",
    "caddy": "Caddy",
    "fast": "wsgate fast path",
    "tutorial": "wsgate tutorial chain",
}
APT_NGINX = (["nginx-light"], ["nginx"])
APT_CADDY = (["caddy"],)
APT_GO = ["golang-go", "golang-github-gorilla-websocket-dev"]


@dataclass(frozen=True)
class Workload:
    key: str
    size: int
    conns: str  # "1", "conns" or "wide": resolved from the arguments
    inflight: str  # "1" or "inflight"
    timed: bool = False


WORKLOADS = (
    Workload("rt 64 B", 64, "1", "1", timed=True),
    Workload("rt 16 KiB", 16 * 1024, "1", "1", timed=True),
    Workload("main 64 B", 64, "conns", "inflight"),
    Workload("main 16 KiB", 16 * 1024, "conns", "inflight"),
    Workload("wide 64 B", 64, "wide", "1"),
)


@dataclass
class Figures:
    """One workload on one row: the median run of ``--repeat``."""

    rate: float
    conns: int
    inflight: int
    size: int
    proxy_cpu_us: float | None = None
    backend_cpu_us: float | None = None
    loadgen_cpu_us: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    failed: int = 0
    runs: list[float] = field(default_factory=list)  # the rate of every run


@dataclass
class Report:
    date: str
    machine: dict[str, str]
    settings: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)  # row key -> label
    rows: dict[str, dict[str, Figures]] = field(default_factory=dict)  # row key -> workload key -> figures
    rss_kib_per_idle_conn: dict[str, float] = field(default_factory=dict)
    idle_hold: dict[str, Any] | None = None
    profile: list[str] = field(default_factory=list)
    pids: dict[str, list[int]] = field(default_factory=dict)  # every process the run started (all stopped)


class Proxy(Protocol):
    pid: int

    def cpu_seconds(self) -> float: ...

    def rss_kib(self) -> int: ...

    def stop(self, timeout: float = 10.0) -> int | None: ...


class Generator(Protocol):
    pids: list[int]

    def run(self, url: str, **kw: Any) -> LoadResult: ...

    def upgrades(self, url: str, **kw: Any) -> LoadResult | None: ...

    def hold_idle(self, url: str, conns: int) -> Any: ...


@dataclass
class Target:
    key: str
    url: str
    upgrade_url: str
    proxy: Proxy | None = None


# ------------------------------------------------------------------- config


def gateway_config(directory: Path, backend_port: int, api: str) -> Path:
    """Write a gateway config with the API under test: ``fast`` (and ``upgrade``: identify, throttle), ``tutorial``."""
    upstream = f"ws://127.0.0.1:{backend_port}/echo/"
    documents = [gateway_doc("bench"), port_doc("bench", "The benchmark listener on a free port the system picks.")]
    if api == "fast":
        documents.append(api_doc("fast", "/fast", "bench", upstream,
                                 description="No message-stage policy, so the byte relay."))
        documents.append(api_doc("upgrade", "/upgrade", "bench", upstream, policies=identify_and_throttle(),
                                 description="Identify and throttle only, for upgrades per second."))
        apis = "upgrade"
    else:
        documents.append(api_doc("tutorial", "/tutorial", "bench", upstream, policies=tutorial_policies(),
                                 description="The tutorial's EchoWS chain."))
        apis = "tutorial"
    documents.append(application_doc("bench-app", API_KEY, apis))
    return write_gateway_config(directory, *documents, tutorial=True)


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


# ------------------------------------------------------------ tools (apt)


def apt_install(alternatives: list[list[str]] | tuple[list[str], ...], allowed: bool) -> bool:
    """Install the first package set that apt-get can install (root only); True on success."""
    if not allowed:
        return False
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.warning("cannot install packages (not root or no apt-get)", packages=alternatives)
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("apt-get update...")
    subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
    for packages in alternatives:
        log.info("apt-get install -y " + " ".join(packages) + "...")
        proc = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *packages],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if proc.returncode == 0:
            return True
        log.warning("apt-get install failed", packages=packages, tail=proc.stderr[-500:])
    return False


def ensure_nginx(allowed: bool) -> str | None:
    binary = nginx_binary()
    if binary is None and apt_install(APT_NGINX, allowed):
        binary = nginx_binary()
    return binary


def ensure_caddy(allowed: bool) -> str | None:
    binary = caddy_binary()
    if binary is None and apt_install(APT_CADDY, allowed):
        binary = caddy_binary()
    return binary


def ensure_go(allowed: bool) -> dict[str, Path] | None:
    """The built Go programs, installing Debian's Go and gorilla/websocket first when missing."""
    from _load import GORILLA

    if (go_binary() is None or not GORILLA.is_dir()) and not apt_install([APT_GO], allowed):
        return None
    try:
        return build_go(CACHE / "go", log)
    except LoadError as exc:
        log.warning("the Go programs could not be built", error=str(exc))
        return None


# -------------------------------------------------------------- measurement


def _median_run(runs: list[tuple[LoadResult, dict[str, float | None]]]) -> tuple[LoadResult, dict[str, float | None]]:
    return sorted(runs, key=lambda run: run[0].rate)[len(runs) // 2]


class Bench:
    def __init__(self, args: argparse.Namespace, load: Generator, report: Report, backend: Proxy) -> None:
        self.args, self.load, self.report, self.backend = args, load, report, backend

    def _cpu_reader(self, proxy: Proxy | None) -> tuple[Callable[[], None], Callable[[LoadResult], dict]]:
        """A ``mark`` callback for both ends of the window, and the per-message CPU it gathered."""
        proxy_cpu: list[float] = []
        backend_cpu: list[float] = []

        def mark() -> None:
            backend_cpu.append(self.backend.cpu_seconds())
            if proxy is not None:
                proxy_cpu.append(proxy.cpu_seconds())

        def per_message(result: LoadResult) -> dict[str, float | None]:
            return {
                "proxy_cpu_us": _per_message(proxy_cpu, result),
                "backend_cpu_us": _per_message(backend_cpu, result),
                "loadgen_cpu_us": result.cpu_seconds * 1e6 / result.messages
                if result.cpu_seconds is not None and result.messages
                else None,
            }

        return mark, per_message

    def workload(self, target: Target, work: Workload) -> Figures:
        conns = {"1": 1, "conns": self.args.conns, "wide": self.args.wide}[work.conns]
        inflight = {"1": 1, "inflight": self.args.inflight}[work.inflight]
        runs = []
        for attempt in range(self.args.repeat):
            label = f"measuring {target.key} {work.size}B x{conns} conn x{inflight} in flight"
            if self.args.repeat > 1:
                label += f" (run {attempt + 1}/{self.args.repeat})"
            log.info(label + "...")
            mark, per_message = self._cpu_reader(target.proxy)
            spy = self._py_spy(target, work, attempt)
            result = self.load.run(
                target.url,
                conns=conns,
                inflight=inflight,
                size=work.size,
                seconds=self.args.seconds,
                warmup=self.args.warmup,
                timed=work.timed,
                mark=mark,
            )
            cpu = per_message(result)
            if spy is not None:
                self.report.profile = _finish_py_spy(spy)
            log.info(label + " done", msgs_per_s=round(result.rate), **{k: _round(v) for k, v in cpu.items()})
            runs.append((result, cpu))
        result, cpu = _median_run(runs)
        return Figures(
            rate=result.rate,
            conns=conns,
            inflight=inflight,
            size=work.size,
            p50_us=result.percentile_us(0.50) if work.timed else None,
            p99_us=result.percentile_us(0.99) if work.timed else None,
            runs=[run.rate for run, _ in runs],
            **cpu,
        )

    def _py_spy(self, target: Target, work: Workload, attempt: int) -> tuple[subprocess.Popen[bytes], Path] | None:
        """Sample the profiled gateway with py-spy over its first main 64 B run (with ``--profile`` and py-spy)."""
        chosen = target.key == self.args.profile_target and work.key == "main 64 B" and attempt == 0
        if not (self.args.py_spy and chosen):
            return None
        assert target.proxy is not None
        out = self.args.profile.with_suffix(".py-spy.txt")
        log.info(f"sampling the {target.key} gateway with py-spy", output=str(out))
        duration = max(1, int(self.args.warmup + self.args.seconds))
        proc = subprocess.Popen(
            [self.args.py_spy, "record", "-p", str(target.proxy.pid), "-d", str(duration), "-r", "200",
             "--nonblocking", "-f", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.report.pids.setdefault("py-spy", []).append(proc.pid)
        return proc, out

    def upgrades(self, target: Target) -> Figures | None:
        runs = []
        for attempt in range(self.args.repeat):
            log.info(f"measuring {target.key} upgrades/s (run {attempt + 1}/{self.args.repeat})...")
            mark, per_message = self._cpu_reader(target.proxy)
            result = self.load.upgrades(
                target.upgrade_url,
                conns=self.args.upgrade_conns,
                size=64,
                seconds=self.args.seconds,
                warmup=self.args.warmup,
                mark=mark,
            )
            if result is None:
                return None
            cpu = per_message(result)
            log.info(f"measuring {target.key} upgrades/s done", per_s=round(result.rate), failed=result.failed)
            runs.append((result, cpu))
        result, cpu = _median_run(runs)
        return Figures(
            rate=result.rate,
            conns=self.args.upgrade_conns,
            inflight=1,
            size=64,
            failed=result.failed,
            runs=[run.rate for run, _ in runs],
            **cpu,
        )

    def idle_rss(self, target: Target) -> None:
        proxy = target.proxy
        assert proxy is not None
        warm = self.load.hold_idle(target.url, 20)  # first connections build caches: not per-connection memory
        try:
            warm.wait_open()
        finally:
            warm.release()
        count = self.args.idle_conns
        log.info(f"measuring {target.key} RSS with {count} idle connections...")
        before = proxy.rss_kib()
        hold = self.load.hold_idle(target.url, count)
        try:
            opened = hold.wait_open()
            after = _settled_rss(proxy)
        finally:
            hold.release()
        per_conn = (after - before) / opened
        self.report.rss_kib_per_idle_conn[target.key] = per_conn
        log.info(
            f"measuring {target.key} RSS done", kib_per_conn=round(per_conn, 2), before_kib=before, after_kib=after
        )

    def target(self, target: Target) -> None:
        figures = self.report.rows.setdefault(target.key, {})
        if target.proxy is not None:
            self.idle_rss(target)
        for work in WORKLOADS:
            figures[work.key] = self.workload(target, work)
        upgrades = self.upgrades(target)
        if upgrades is not None:
            figures["upgrades"] = upgrades


def _per_message(cpu: list[float], result: LoadResult) -> float | None:
    return (cpu[1] - cpu[0]) * 1e6 / result.messages if len(cpu) == 2 and result.messages else None


def _settled_rss(proxy: Proxy) -> int:
    """RSS once it stops growing (the last upstream handshakes may still be finishing), within 3 s."""
    deadline = time.monotonic() + 3.0
    last = proxy.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = proxy.rss_kib()
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


def _get(report: Report, row: str, work: str) -> Figures | None:
    return report.rows.get(row, {}).get(work)


def _attr(figures: Figures | None, name: str) -> float | None:
    return None if figures is None else getattr(figures, name)


def render_table(report: Report) -> str:
    s = report.settings
    many, wide = f"{s['conns']}×{s['inflight']}", f"{s['wide']}×1"
    header = [
        "in front of the echo backend",
        f"msgs/s {many} 64 B",
        "vs direct",
        "vs nginx",
        "proxy CPU µs/msg",
        f"msgs/s {many} 16 KiB",
        "vs nginx",
        "proxy CPU µs/msg 16 KiB",
        f"msgs/s {wide} 64 B",
        "vs nginx",
        "round trip p50/p99 µs 64 B (1×1)",
        "p50/p99 µs 16 KiB (1×1)",
        "RSS KiB / idle conn",
        "upgrades/s",
        "vs nginx",
        f"load-gen / backend CPU µs/msg ({many} 64 B)",
    ]
    rows = [header, ["---"] * len(header)]
    for key, label in report.labels.items():
        if key not in report.rows:
            continue

        def rate(work: str, row: str = key) -> float | None:
            return _attr(_get(report, row, work), "rate")

        main, big, rt, rt_big = (_get(report, key, w) for w in ("main 64 B", "main 16 KiB", "rt 64 B", "rt 16 KiB"))
        rss = report.rss_kib_per_idle_conn.get(key)
        rows.append(
            [
                label,
                _rate(rate("main 64 B")),
                _ratio(rate("main 64 B"), rate("main 64 B", "direct")),
                _ratio(rate("main 64 B"), rate("main 64 B", "nginx")),
                _num(_attr(main, "proxy_cpu_us"), 1),
                _rate(rate("main 16 KiB")),
                _ratio(rate("main 16 KiB"), rate("main 16 KiB", "nginx")),
                _num(_attr(big, "proxy_cpu_us"), 1),
                _rate(rate("wide 64 B")),
                _ratio(rate("wide 64 B"), rate("wide 64 B", "nginx")),
                f"{_num(_attr(rt, 'p50_us'))}/{_num(_attr(rt, 'p99_us'))}",
                f"{_num(_attr(rt_big, 'p50_us'))}/{_num(_attr(rt_big, 'p99_us'))}",
                _num(rss, 1),
                _rate(rate("upgrades")),
                _ratio(rate("upgrades"), rate("upgrades", "nginx")),
                f"{_num(_attr(main, 'loadgen_cpu_us'), 1)} / {_num(_attr(main, 'backend_cpu_us'), 1)}",
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


ISSUE_7 = "7"
ISSUE_17 = "17"


def verdicts(report: Report, issue: str = ISSUE_7) -> list[str]:
    """Issue 7's (or 17's) targets, as ratios measured in this run (only those this run can judge)."""
    nginx = report.rows.get("nginx")
    lines: list[str] = []

    profiled = [k for k in ("fast", "tutorial") if "under cProfile" in report.labels.get(k, "")]

    def line(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        if any(name.startswith({"fast": "fast path", "tutorial": "tutorial"}[k]) for k in profiled):
            return  # the profiler's cost is in that row's figures
        if value is not None and ok is not None:
            lines.append(f"- {name}: {value:.2f} (target {goal}) — {'met' if ok else 'NOT met'}")

    def ratio(row: str, work: str, attr: str = "rate") -> float | None:
        a, b = _attr(_get(report, row, work), attr), _attr(_get(report, "nginx", work), attr)
        return a / b if a is not None and b else None

    if issue == ISSUE_17:
        if nginx:
            for row, name in (("fast", "identify + throttle"), ("tutorial", "the tutorial chain")):
                r = ratio(row, "upgrades")
                line(f"upgrades/s through {name} vs nginx", r, "≥ 0.6", None if r is None else r >= 0.6)
            r = ratio("tutorial", "main 64 B")
            line("tutorial chain msgs/s vs nginx (50×16, 64 B)", r, "≥ 0.6", None if r is None else r >= 0.6)
            r = ratio("fast", "main 64 B")
            line("fast path msgs/s vs nginx (50×16, 64 B)", r, "≥ 1.0", None if r is None else r >= 1.0)
            for work in ("rt 64 B", "rt 16 KiB"):
                r = ratio("fast", work, "p99_us")
                line(f"fast path round-trip p99 vs nginx ({work[3:]})", r, "≤ 1.2", None if r is None else r <= 1.2)
        rss = report.rss_kib_per_idle_conn.get("fast")
        line("fast path RSS KiB per idle connection", rss, "≤ 8", None if rss is None else rss <= 8)
        return lines
    if nginx:
        r = ratio("fast", "main 64 B")
        line("fast path msgs/s vs nginx (50×16, 64 B)", r, "≥ 0.9", None if r is None else r >= 0.9)
        r = ratio("fast", "rt 64 B", "p99_us")
        line("fast path round-trip p99 vs nginx (64 B)", r, "≤ 1.2", None if r is None else r <= 1.2)
        r = ratio("tutorial", "main 64 B")
        line("tutorial chain msgs/s vs nginx (50×16, 64 B)", r, "≥ 0.5", None if r is None else r >= 0.5)
        r = ratio("fast", "upgrades")
        line("upgrades/s through identify + throttle vs nginx", r, "≥ 0.5", None if r is None else r >= 0.5)
    rss = report.rss_kib_per_idle_conn.get("fast")
    line("fast path RSS KiB per idle connection", rss, "≤ 8", None if rss is None else rss <= 8)
    cpu = _attr(_get(report, "tutorial", "main 64 B"), "proxy_cpu_us")
    line("tutorial chain proxy CPU µs per message", cpu, "≈ 12 or less", None if cpu is None else cpu <= 12)
    return lines


def ceiling_notes(report: Report) -> list[str]:
    """Who was the ceiling: the cores the generator and backend used in each main run."""
    many = f"{report.settings['conns']}×{report.settings['inflight']}"
    notes = []
    for key, label in report.labels.items():
        main = _get(report, key, "main 64 B")
        if main is None:
            continue
        parts = []
        for who, attr in (
            ("load generator", "loadgen_cpu_us"),
            ("backend", "backend_cpu_us"),
            ("proxy", "proxy_cpu_us"),
        ):
            us = getattr(main, attr)
            if us is not None:
                parts.append(f"{who} {us * main.rate / 1e6:.2f}")
        estimate = cpu_bound_estimate(main)
        if estimate is not None:
            nginx = cpu_bound_estimate(_get(report, "nginx", "main 64 B"))
            versus = f" ({estimate / nginx:.2f}× nginx's)" if nginx and key not in ("nginx", "direct") else ""
            parts.append(f"CPU-bound estimate {_rate(estimate)} msgs/s{versus}")
        notes.append(f"- {label}, {many} 64 B: " + ", ".join(parts))
    return notes


def cpu_bound_estimate(figures: Figures | None, cores: int | None = None) -> float | None:
    """msgs/s if generator, backend and proxy had the machine's cores to themselves: what the CPU columns imply.

    Every process needs its CPU µs per message; together they cannot exceed the cores, and the proxy (one
    thread, one process) cannot exceed one core.
    """
    if figures is None or figures.loadgen_cpu_us is None or figures.backend_cpu_us is None:
        return None
    cores = cores or os.cpu_count() or 1
    total = figures.loadgen_cpu_us + figures.backend_cpu_us + (figures.proxy_cpu_us or 0.0)
    limits = [cores * 1e6 / total] if total else []
    if figures.proxy_cpu_us:
        limits.append(1e6 / figures.proxy_cpu_us)
    return min(limits) if limits else None


def machine(nginx: str | None, loadgen: str, backend: str, caddy: str | None = None) -> dict[str, str]:
    model = cpu_model()
    go = go_binary()
    go_version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.split()[2] if go else "–"
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "nginx": nginx or "not measured",
        "caddy": caddy or "not measured",
        "go": go_version,
        "loadgen": loadgen,
        "backend": backend,
    }


def describe(report: Report) -> str:
    m, s = report.machine, report.settings
    return (
        f"wsgate relay benchmark, {report.date}; {m['cores']} cores ({m['cpu']}), {m['kernel']}, "
        f"Python {m['python']}, nginx {m['nginx']}, Caddy {m.get('caddy', 'not measured')}, {m['go']}\n"
        f"load generator: {m['loadgen']}; echo backend: {m['backend']}"
        + (
            ""
            if report.idle_hold is not None
            else f"; {s['seconds']:g} s per run after {s['warmup']:g} s warm-up, median of {s['repeat']}; "
            f"RSS over {s['idle_conns']} idle connections; upgrades with {s['upgrade_conns']} concurrent loops"
        )
    )


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (1 s windows, 300 idle connections)")
    parser.add_argument("--seconds", type=float, help="measuring window per run (default 3, quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of load before the window (default 1, quick 0.3)")
    parser.add_argument("--conns", type=int, default=50, help="connections of the main runs (default 50)")
    parser.add_argument("--inflight", type=int, default=16, help="messages in flight per connection (default 16)")
    parser.add_argument("--wide", type=int, default=200, help="connections of the 1-in-flight run (default 200)")
    parser.add_argument("--idle-conns", type=int, help="idle connections for the RSS column (default 1000, quick 300)")
    parser.add_argument("--upgrade-conns", type=int, default=16, help="concurrent upgrade loops (default 16)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is reported")
    parser.add_argument("--loadgen", choices=["auto", "go", "python"], default="auto", help="default: go if it builds")
    parser.add_argument("--backend", choices=["auto", "go", "python"], default="auto", help="default: as --loadgen")
    parser.add_argument("--processes", type=int, default=2, help="processes of the Python load generator")
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="Go generator and backend write all the messages a read answered in one write (bulk relaying)",
    )
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx row")
    parser.add_argument("--no-caddy", action="store_true", help="skip the Caddy row")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get (missing tools are skipped)")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated rows, of {', '.join(TARGETS)} (default: all)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="profile the tutorial gateway: with py-spy (on PATH or $PY_SPY) sample its main 64 B run into "
        "PATH.py-spy.txt; without py-spy run it under cProfile (its figures then include the profiler's cost) "
        "and write the stats to PATH; either way print the top functions",
    )
    parser.add_argument(
        "--idle",
        type=int,
        help="instead of the table: hold this many idle connections through the fast path (keepalive on) "
        "and sample the gateway's RSS",
    )
    parser.add_argument(
        "--profile-target", choices=["fast", "tutorial"], default="tutorial", help="the gateway --profile profiles"
    )
    parser.add_argument("--idle-duration", type=float, default=60.0, help="seconds to hold them (default 60)")
    parser.add_argument("--idle-interval", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    args.py_spy = (os.environ.get("PY_SPY") or shutil.which("py-spy")) if args.profile else None
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if args.no_nginx and "nginx" in args.targets:
        args.targets.remove("nginx")
    if args.no_caddy and "caddy" in args.targets:
        args.targets.remove("caddy")
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.idle_conns = args.idle_conns or (300 if args.quick else 1000)
    for name in ("seconds", "conns", "inflight", "wide", "idle_conns", "upgrade_conns", "processes", "repeat"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


SETTINGS = (
    "seconds",
    "warmup",
    "repeat",
    "conns",
    "inflight",
    "wide",
    "idle_conns",
    "upgrade_conns",
    "coalesce",
    "targets",
)


def tools(args: argparse.Namespace, stack: ExitStack) -> tuple[Generator, dict[str, Path] | None, str]:
    """The load generator (Go when it builds, unless told otherwise) and the Go programs, if any."""
    built = None
    if args.loadgen != "python" or args.backend == "go":
        built = ensure_go(not args.no_install)
        if built is None and "go" in (args.loadgen, args.backend):
            raise LoadError("--loadgen/--backend go: the Go programs are not available")
    if args.loadgen != "python" and built is not None:
        writes = "one write per batch of echoes" if args.coalesce else "one write per message"
        return GoLoad(built["loadgen"], coalesce=args.coalesce), built, f"compiled Go (one process, {writes})"
    if args.loadgen == "auto":
        log.warning("falling back to the Python load generator: it may be the bottleneck")
    pool = stack.enter_context(LoadPool(args.processes))
    return pool, built, f"Python ({args.processes} processes, sans-I/O)"


def start_backend(
    args: argparse.Namespace, stack: ExitStack, tmp: Path, built: dict[str, Path] | None
) -> tuple[Child, str]:
    use_go = args.backend == "go" or (args.backend == "auto" and built is not None and args.loadgen != "python")
    log.info("starting the echo backend...", go=use_go)
    if use_go:
        assert built is not None
        flags = ["-coalesce"] if args.coalesce else []
        echo = Child("echo", flags, tmp / "echo.log", command=[str(built["echo"])])
        name = "compiled Go (gorilla/websocket, " + ("coalesced writes)" if args.coalesce else "one write per message)")
    else:
        echo = Child("echo", [], tmp / "echo.log")
        name = "Python (wsgate echo, one process)"
    stack.callback(echo.stop)
    return echo, name


def start_gateway(stack: ExitStack, tmp: Path, backend_port: int, api: str, profile: Path | None) -> tuple[Child, int]:
    log.info(f"starting a gateway for the {api} API...")
    config = gateway_config(tmp / f"config-{api}", backend_port, api)
    extra = ["--profile", str(profile)] if profile is not None else []
    gateway = Child("gateway", ["--config", str(config), *extra], tmp / f"gateway-{api}.log", cwd=tmp)
    stack.callback(gateway.stop)
    port = gateway.wait_report(START_TIMEOUT)["ports"]["bench"]
    log.info("gateway up", api=api, port=port)
    return gateway, port


def run(args: argparse.Namespace) -> Report:
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="wsgate-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, True)
        else:
            log.info("keeping the temporary directory", path=str(tmp))
        load, built, loadgen_name = tools(args, stack)
        nginx_bin = ensure_nginx(not args.no_install) if "nginx" in args.targets else None
        if "nginx" in args.targets and nginx_bin is None:
            log.warning("nginx is not available: no nginx row")
            args.targets.remove("nginx")
        caddy_bin = ensure_caddy(not args.no_install) if "caddy" in args.targets else None
        if "caddy" in args.targets and caddy_bin is None:
            log.warning("caddy is not available: no Caddy row")
            args.targets.remove("caddy")
        backend, backend_name = start_backend(args, stack, tmp, built)
        report = Report(
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine(nginx_version(nginx_bin) if nginx_bin else None, loadgen_name, backend_name,
                            caddy_version(caddy_bin) if caddy_bin else None),
            settings={k: getattr(args, k) for k in SETTINGS},
        )
        report.pids["echo"] = [backend.pid]
        report.pids["load"] = load.pids  # the Go generator adds one per measurement
        backend_port = backend.wait_report(START_TIMEOUT)["port"]
        direct = f"ws://127.0.0.1:{backend_port}/echo/"
        if args.idle:
            report.idle_hold = idle_hold(args, stack, tmp, backend_port, load, report)
            return report
        bench = Bench(args, load, report, backend)
        for key in TARGETS:
            if key not in args.targets:
                continue
            with ExitStack() as one:  # one proxy at a time, stopped before the next starts
                target = start_target(args, one, tmp, key, backend_port, direct, (nginx_bin, caddy_bin), report)
                bench.target(target)
            if key == args.profile_target and args.profile is not None and not args.py_spy:
                report.profile = profile_summary(args.profile)
        report.labels = {k: v for k, v in report.labels.items() if k in report.rows}
    return report


def start_target(
    args: argparse.Namespace,
    stack: ExitStack,
    tmp: Path,
    key: str,
    backend_port: int,
    direct: str,
    binaries: tuple[str | None, str | None],
    report: Report,
) -> Target:
    nginx_bin, caddy_bin = binaries
    report.labels[key] = TARGETS[key]
    if key == "direct":
        return Target(key, direct, direct)
    if key == "nginx":
        assert nginx_bin is not None
        log.info("starting nginx...")
        nginx = Nginx(nginx_bin, tmp / "nginx", backend_port, tmp / "nginx.log")
        stack.callback(nginx.stop)
        nginx.wait_ready(START_TIMEOUT)
        report.pids["nginx"] = [nginx.pid, nginx.worker_pid]
        report.labels[key] = f"nginx {report.machine['nginx'].removeprefix('nginx/')}, 1 worker"
        url = f"ws://127.0.0.1:{nginx.port}/echo/"
        return Target(key, url, url, nginx)
    if key == "caddy":
        assert caddy_bin is not None
        log.info("starting caddy...")
        caddy = Caddy(caddy_bin, tmp / "caddy", backend_port, tmp / "caddy.log")
        stack.callback(caddy.stop)
        caddy.wait_ready(START_TIMEOUT)
        report.pids["caddy"] = [caddy.pid]
        report.labels[key] = f"Caddy {report.machine['caddy'].removeprefix('v')}, GOMAXPROCS=1"
        url = f"ws://127.0.0.1:{caddy.port}/echo/"
        return Target(key, url, url, caddy)
    profile = args.profile if key == args.profile_target and not args.py_spy else None
    gateway, port = start_gateway(stack, tmp, backend_port, key, profile)
    report.pids.setdefault("gateway", []).append(gateway.pid)
    base = f"ws://127.0.0.1:{port}"
    if profile is not None:
        report.labels[key] += " (under cProfile)"
    if key == "fast":
        return Target(key, f"{base}/fast", f"{base}/upgrade?x-Gateway-APIKey={API_KEY}", gateway)
    url = f"{base}/tutorial?x-Gateway-APIKey={API_KEY}"
    check_tutorial(url)
    log.info("the tutorial chain answers with its transform")
    return Target(key, url, url, gateway)


def _finish_py_spy(spy: tuple[subprocess.Popen[bytes], Path], top: int = 20) -> list[str]:
    """Wait for py-spy; the top functions by own samples, then by inclusive samples (idle waits included)."""
    proc, out = spy
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return ["py-spy did not finish"]
    if proc.returncode != 0 or not out.exists():
        return [f"py-spy failed: {err.decode(errors='replace')[-300:]}"]
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    lines = [f"py-spy, {total} samples of the gateway (all threads) — own time:"]
    for frame, n in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"{n / total * 100:5.1f} %  {frame}")
    lines.append("inclusive (gateway code and asyncio transport calls):")
    interesting = [f for f in inclusive if "gateway/" in f or "selector_events" in f or "transports.py" in f]
    for frame in sorted(interesting, key=lambda f: -inclusive[f])[:top]:
        lines.append(f"{inclusive[frame] / total * 100:5.1f} %  {frame}")
    return lines


def profile_summary(path: Path, top: int = 25) -> list[str]:
    """The gateway's top functions by own time, one line each."""
    if not path.exists():
        return []
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1.0  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    lines = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        lines.append(
            f"{tottime / total * 100:5.1f} %  own {tottime:6.2f} s  cum {cumtime:6.2f} s  "
            f"{calls:>9} calls  {name} ({where})"
        )
    return lines


def idle_hold(
    args: argparse.Namespace, stack: ExitStack, tmp: Path, backend_port: int, load: Generator, report: Report
) -> dict[str, Any]:
    """Hold ``--idle`` connections through the fast path and sample the gateway's RSS every interval."""
    gateway, port = start_gateway(stack, tmp, backend_port, "fast", None)
    report.pids["gateway"] = [gateway.pid]
    url = f"ws://127.0.0.1:{port}/fast"
    warm = load.hold_idle(url, 20)
    try:
        warm.wait_open()
    finally:
        warm.release()
    before = gateway.rss_kib()
    log.info(f"opening {args.idle} idle connections through the fast path...", rss_kib=before)
    started = time.monotonic()
    hold = load.hold_idle(url, args.idle)
    samples: list[tuple[float, int]] = []
    try:
        opened = hold.wait_open()
        log.info("opened", connections=opened, seconds=round(time.monotonic() - started, 1))
        t0 = time.monotonic()
        while True:
            now = time.monotonic() - t0
            samples.append((round(now, 1), gateway.rss_kib()))
            log.info("holding", seconds=round(now), rss_kib=samples[-1][1], fds=_fds(gateway.pid))
            if now >= args.idle_duration:
                break
            time.sleep(min(args.idle_interval, args.idle_duration - now))  # the sampling period itself
    finally:
        counts = hold.release()
    first, last = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    growth = (last - first) / first if first else 0.0
    # The first keepalive rounds allocate (pings, pongs, timers); flat means no growth once they are done.
    middle = next(rss for t, rss in samples if t >= samples[-1][0] / 2)
    late_growth = (last - middle) / middle if middle else 0.0
    result = {
        "connections": opened,
        "held_to_the_end": counts.get("held"),
        "lost": counts.get("lost"),
        "pings_answered": counts.get("pings"),
        "rss_before_kib": before,
        "rss_first_kib": first,
        "rss_last_kib": last,
        "rss_peak_kib": peak,
        "kib_per_conn": (first - before) / opened if opened else None,
        "growth_percent": round(growth * 100, 2),
        "second_half_growth_percent": round(late_growth * 100, 2),
        "flat": late_growth <= 0.01 and counts.get("lost", 0) == 0,
        "duration_s": args.idle_duration,
        "samples": samples,
    }
    return result


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def render_idle(report: Report) -> str:
    r = report.idle_hold or {}
    return "\n".join(
        [
            "| idle connections through the fast path | RSS KiB / conn | RSS first → last (peak) MiB | growth | "
            "growth, second half | lost | keepalive pings answered | flat (second half ≤ 1 %, none lost) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['connections']} for {r['duration_s']:g} s | {r['kib_per_conn']:.1f} | "
            f"{r['rss_first_kib'] / 1024:.1f} → {r['rss_last_kib'] / 1024:.1f} ({r['rss_peak_kib'] / 1024:.1f}) | "
            f"{r['growth_percent']:+.2f} % | {r['second_half_growth_percent']:+.2f} % | {r['lost']} | "
            f"{r['pings_answered']} | {'yes' if r['flat'] else 'NO'} |",
        ]
    )


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
    print(describe(report))
    print()
    if report.idle_hold is not None:
        print(render_idle(report))
    else:
        print(render_table(report))
        for title, lines in (
            ("Issue 7's targets in this run:", verdicts(report)),
            ("Issue 17's targets in this run:", verdicts(report, ISSUE_17)),
            ("Who is the ceiling (CPU cores each process used in the main run):", ceiling_notes(report)),
            (f"Profile of the {args.profile_target} gateway:", report.profile),
        ):
            if lines:
                print()
                print(title)
                print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    log.info("benchmark finished", seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
