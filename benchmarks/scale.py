"""Scale-out figures (issue 11), each run short: what shared state costs, workers against nginx, lease expiry.

    python benchmarks/scale.py [--seconds 8] [--only upgrades,messages,kill]

* upgrades/s through `wsgate run` (one process, an API with a throttle) with `state: memory` and with
  `state: redis` (a local redis-server), in one run; the gateway's CPU µs per upgrade in each, so the
  difference is what the Redis round trip (one Lua script to take the slot, one to give it back) costs;
* messages/s through `wsgate run --workers 2` (byte relay) and through nginx with 2 workers, same compiled Go
  load generator (50 connections × 16 messages of 64 B in flight) and Go echo backend;
* the kill test: 3 instances on one Redis, a throttle of 10, one instance holding 5 of them is SIGKILLed;
  the time until an upgrade through another instance is admitted again (the lease bound is 2 × heartbeat).

Needs Go (the load generator and echo backend, as benchmarks/relay.py), nginx and redis-server.
Progress goes to stderr, the figures to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _load import GoLoad, LoadResult  # noqa: E402
from _servers import Child, Nginx, _cpu_seconds, nginx_binary  # noqa: E402
from redis_support import RedisServer  # noqa: E402 - the tests' redis-server starter: one copy of it
from relay import ensure_go  # noqa: E402


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_config(directory: Path, backend_port: int, *, state: str = "", throttle: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    policies = f"policies:\n  - type: throttle\n    max_connections: {throttle}\n" if throttle else ""
    (directory / "bench.yaml").write_text(
        "kind: Gateway\nname: bench\nadmin:\n  host: 127.0.0.1\n  port: 0\nshutdown_grace: 0\n" + state
        + "---\nkind: Port\nname: bench\nport: 0\nhost: 127.0.0.1\n"
        + "---\nkind: API\nname: B\npath: /bench\nports: [bench]\nupstream:\n  endpoints:\n"
        + f"    - url: ws://127.0.0.1:{backend_port}/echo/\n" + policies)
    return directory


def redis_state(server: RedisServer, heartbeat: float = 2.0) -> str:
    return f"state:\n  backend: redis\n  url: {server.url}\n  heartbeat: {heartbeat}\n"


class Wsgate:
    """`wsgate run` as a child process, with its ports and worker pids read from its JSON log."""

    def __init__(self, config: Path, log_file: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log = open(log_file, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(config), "--log-format", "json", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.ports: dict[str, int] = {}
        self.workers: list[int] = []
        deadline = time.monotonic() + 30
        while "bench" not in self.ports or "admin" not in self.ports:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wsgate did not start: {log_file.read_text()[-2000:]}")
            for line in log_file.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("event") == "listening":
                        self.ports[record["name"]] = record["port"]
                    # The whole log is read again on every poll: each worker once (a duplicate pid counted
                    # its CPU twice, which made --workers 2 look 2-5× dearer per message than it is).
                    if record.get("event") == "worker_started" and record["pid"] not in self.workers:
                        self.workers.append(record["pid"])
            time.sleep(0.05)  # polling the child's log file under a deadline

    def url(self, path: str = "/bench") -> str:
        return f"ws://127.0.0.1:{self.ports['bench']}{path}"

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in (self.workers or [self.proc.pid]))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def measured(cpu: Callable[[], float], run: Callable[[Callable[[], None]], LoadResult]) -> tuple[LoadResult, float]:
    """A load run and the CPU seconds ``cpu`` counted between the generator's mark and its end."""
    start: list[float] = []
    result = run(lambda: start.append(cpu()))
    return result, cpu() - (start[0] if start else 0.0)


@contextmanager
def redis(tmp: Path) -> Iterator[RedisServer]:
    directory = tmp / "redis"
    directory.mkdir(exist_ok=True)
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bench_upgrades(args: argparse.Namespace, load: GoLoad, tmp: Path, backend_port: int) -> None:
    say(f"upgrades/s: state memory vs redis, {args.repeat} round(s), best CPU per upgrade kept")
    best: dict[str, float] = {}
    with redis(tmp) as server:
        for round_ in range(args.repeat):
            for name, state in (("memory", ""), ("redis", redis_state(server))):
                gateway = Wsgate(write_config(tmp / f"up-{name}", backend_port, state=state, throttle=1_000_000),
                                 tmp / f"up-{name}-{round_}.log")
                try:
                    redis_cpu_before = _cpu_seconds(server.process.pid)
                    result, cpu = measured(gateway.cpu_seconds, lambda mark, g=gateway: load.upgrades(
                        g.url(), conns=args.upgrade_conns, size=64, seconds=args.seconds, warmup=1.0, mark=mark))
                    redis_cpu = _cpu_seconds(server.process.pid) - redis_cpu_before
                    per = cpu / result.messages * 1e6 if result.messages else float("nan")
                    best[name] = min(best.get(name, per), per)
                    extra = f", redis-server {redis_cpu / result.messages * 1e6:.0f} µs" if name == "redis" else ""
                    print(f"upgrades/s state={name:6} {result.rate:8.0f}/s  gateway CPU {per:.0f} µs/upgrade{extra}"
                          f"  (failed {result.failed})", flush=True)
                finally:
                    gateway.stop()
                if name == "redis":
                    say(f"  {_coalescing(tmp / f'up-{name}-{round_}.log')}")
    if len(best) == 2:
        print(f"best gateway CPU per upgrade: memory {best['memory']:.0f} µs, redis {best['redis']:.0f} µs "
              f"(+{best['redis'] - best['memory']:.0f} µs, +{(best['redis'] / best['memory'] - 1) * 100:.0f} %)",
              flush=True)


def _coalescing(log_file: Path) -> str:
    """What the Redis store logged at its clean stop: script calls made for how many takes (warm-up included)."""
    for line in log_file.read_text().splitlines():
        if line.startswith("{") and (record := json.loads(line)).get("event") == "state_backend_closed":
            calls, takes = record["script_calls"], record["takes"]
            return f"{calls} slot script calls for {takes} takes ({takes / max(calls, 1):.2f} takes per call)"
    return "no state_backend_closed line"


def bench_messages(args: argparse.Namespace, load: GoLoad, tmp: Path, backend_port: int) -> None:
    say("messages/s: wsgate --workers 2 vs nginx 2 workers")
    binary = nginx_binary()
    rows: list[tuple[str, Callable[[], float], str, Callable[[], None]]] = []
    with ExitStack() as stack:
        gateway = Wsgate(write_config(tmp / "msg", backend_port), tmp / "msg.log", "--workers", "2")
        stack.callback(gateway.stop)
        rows.append(("wsgate --workers 2", gateway.cpu_seconds, gateway.url(), lambda: None))
        if binary is not None:
            nginx = Nginx(binary, tmp / "nginx", backend_port, tmp / "nginx.log", workers=2)
            stack.callback(nginx.stop)
            nginx.wait_ready(30)
            rows.append(("nginx 2 workers", nginx.cpu_seconds, f"ws://127.0.0.1:{nginx.port}/echo/", lambda: None))
        else:
            say("  nginx not installed: no nginx row")
        for label, cpu_of, url, _ in rows:
            result, cpu = measured(cpu_of, lambda mark, u=url: load.run(
                u, conns=50, inflight=16, size=64, seconds=args.seconds, warmup=1.0, timed=False, mark=mark))
            print(f"messages/s {label:20} {result.rate:8.0f}/s  proxy CPU {cpu / result.messages * 1e6:.1f} µs/msg",
                  flush=True)


async def _kill_test(urls: list[str], victim: Wsgate, limit: int) -> tuple[float, int]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    held = [await connect(urls[0]) for _ in range(limit // 2)] + [await connect(urls[1]) for _ in range(limit // 2)]
    try:
        await connect(urls[2])
        raise RuntimeError("the limit did not hold before the kill")
    except InvalidStatus:
        pass
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    killed = time.monotonic()
    while True:
        try:
            ws = await connect(urls[2])
            break
        except InvalidStatus:
            await asyncio.sleep(0.01)
    freed = time.monotonic() - killed
    opened = [ws]
    for _ in range(limit // 2 - 1):
        opened.append(await connect(urls[2]))
    for ws in opened + held[limit // 2:]:
        await ws.close()
    for ws in held[: limit // 2]:
        ws.transport.abort()
    return freed, len(opened)


def bench_kill(args: argparse.Namespace, tmp: Path, backend_port: int) -> None:
    say("kill test: 3 instances, one SIGKILLed holding half the slots")
    with redis(tmp) as server, ExitStack() as stack:
        config = write_config(tmp / "kill", backend_port, state=redis_state(server, args.heartbeat), throttle=10)
        instances = [Wsgate(config, tmp / f"kill-{i}.log") for i in range(3)]
        for instance in instances:
            stack.callback(instance.stop)
        freed, reopened = asyncio.run(_kill_test([i.url() for i in instances], instances[0], 10))
        print(f"kill test: heartbeat {args.heartbeat} s (bound {2 * args.heartbeat} s): the killed instance's 5 slots "
              f"free {freed:.2f} s after SIGKILL ({reopened} reopened through another instance)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring window of each run")
    parser.add_argument("--upgrade-conns", type=int, default=20, help="concurrent upgrade loops")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the upgrades pair (best CPU kept)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="lease heartbeat of the kill test")
    parser.add_argument("--only", default="upgrades,messages,kill")
    args = parser.parse_args()
    only = set(args.only.split(","))
    built = ensure_go(allowed=True)  # relay.py's: apt-get installs Go and gorilla/websocket when missing
    if built is None:
        raise SystemExit("the Go load generator and echo backend could not be built")
    load = GoLoad(built["loadgen"])
    with tempfile.TemporaryDirectory(prefix="wsgate-scale-") as name, ExitStack() as stack:
        tmp = Path(name)
        echo = Child("echo", [], tmp / "echo.log", command=[str(built["echo"])])
        stack.callback(echo.stop)
        backend_port = echo.wait_report(30)["port"]
        print(f"machine: {os.cpu_count()} cores, shared; each window {args.seconds} s", flush=True)
        if "upgrades" in only:
            bench_upgrades(args, load, tmp, backend_port)
        if "messages" in only:
            bench_messages(args, load, tmp, backend_port)
        if "kill" in only:
            bench_kill(args, tmp, backend_port)


if __name__ == "__main__":
    main()
