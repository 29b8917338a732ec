"""One process against ``--workers 2`` (issue 26): CPU per message and per upgrade, interleaved A/B rounds.

    python benchmarks/workers.py [--rounds 3] [--seconds 4] [--only messages,upgrades] [--syscalls] [--py-spy DIR]
    python benchmarks/workers.py --gateway-cpus 0-1 --load-cpus 2-7      # the gateway on cores of its own

Rows, each a fresh ``wsgate run`` on the byte relay (an API without message-stage policies; a throttle for
the upgrades), measured in turn within every round so the machine's other load spreads over all of them:

* ``1 process``: ``wsgate run``;
* ``1 process + multiprocess metrics``: the same with ``PROMETHEUS_MULTIPROC_DIR`` set, so its counters are
  prometheus_client's memory-mapped files, as a worker's are: the metrics mode's own cost, without a second
  process;
* ``--workers 2``: the supervisor and two workers (CPU summed over the workers; the supervisor is idle).

Figures: messages/s (compiled Go generator, 50 connections × 16 × 64 B, Go echo backend) and the gateway's
user+system CPU µs per message from /proc over the measuring window; upgrades/s and CPU µs per upgrade
(a loop of whole connections). The CPU figures are the ones to compare on a shared machine: the rates
move with whatever else runs. ``--py-spy DIR`` samples every gateway process's runs of the first round (py-spy on
PATH) and writes one raw profile per process there. Needs Go (see benchmarks/relay.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _load import GoLoad  # noqa: E402
from _servers import Child  # noqa: E402
from relay import ensure_go  # noqa: E402
from scale import Wsgate, measured, say, write_config  # noqa: E402

ROWS = ("1 process", "1 process + multiprocess metrics", "--workers 2")


def start(row: str, tmp: Path, backend_port: int, index: int) -> Wsgate:
    config = write_config(tmp / f"config-{index}", backend_port, throttle=1_000_000)
    env: dict[str, str] = {}
    extra: list[str] = []
    if row == ROWS[1]:
        directory = tmp / f"multiproc-{index}"
        directory.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    elif row == ROWS[2]:
        extra = ["--workers", "2"]
    return Wsgate(config, tmp / f"gateway-{index}.log", *extra, env=env)


def _py_spy(gateway: Wsgate, out: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    spies = []
    for pid in gateway.workers or [gateway.proc.pid]:
        spies.append(subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", "250", "--nonblocking",
             "-f", "raw", "-o", str(out.with_name(f"{out.name}-{pid}.txt"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def cpu_list(text: str) -> set[int]:
    """``0-1,4`` → {0, 1, 4} (taskset's syntax)."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def pin(gateway: Wsgate, cpus: set[int] | None) -> None:
    """Every thread of the gateway's processes (supervisor and workers) on ``cpus``."""
    if cpus is None:
        return
    for pid in {gateway.proc.pid, *gateway.workers}:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def _spies(args: argparse.Namespace, gateway: Wsgate, row: str, what: str,
           round_: int) -> list[subprocess.Popen[bytes]]:
    if args.py_spy is None or round_ != 0:
        return []
    args.py_spy.mkdir(parents=True, exist_ok=True)
    name = f"{row.replace(' ', '_').replace('+', '').replace('-', '')}-{what}"
    return _py_spy(gateway, args.py_spy / name, args.seconds + 1)


class SyscallCounter:
    """``perf stat`` of the gateway's processes over the measuring window: syscalls and context switches.

    Started from the load generator's mark (the window's start) for the window's length; what a message or an
    upgrade costs the kernel, which a Python profiler does not see and which the machine's other load changes
    less than wall-clock rates."""

    EVENTS = ("raw_syscalls:sys_enter", "context-switches")

    def __init__(self, enabled: bool, seconds: float) -> None:
        self.enabled, self.seconds = enabled and shutil.which("perf") is not None, seconds
        self.proc: subprocess.Popen[str] | None = None

    def start(self, pids: list[int]) -> None:
        if self.enabled:
            self.proc = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-e", ",".join(self.EVENTS), "-p", ",".join(map(str, pids)),
                 "--", "sleep", str(self.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def counts(self) -> dict[str, float]:
        if self.proc is None:
            return {}
        _, err = self.proc.communicate(timeout=self.seconds + 30)
        self.proc = None
        found = {}
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] in self.EVENTS and fields[0].replace(".", "").isdigit():
                found[fields[2]] = float(fields[0])
        return found


def _both(mark: Callable[[], None], counter: SyscallCounter, gateway: Wsgate) -> Callable[[], None]:
    marks = []

    def both() -> None:  # called at the window's start and at its end
        mark()
        marks.append(1)
        if len(marks) == 1:
            counter.start(gateway.workers or [gateway.proc.pid])

    return both


def _kernel(figures: dict[tuple[str, str], list[tuple[float, float]]], row: str, what: str,
            counter: SyscallCounter, units: float) -> None:
    counts = counter.counts()
    if counts and units:
        figures.setdefault((row, what + " kernel"), []).append(
            (counts.get("raw_syscalls:sys_enter", 0.0) / units, counts.get("context-switches", 0.0) / units))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring window of each run")
    parser.add_argument("--upgrade-conns", type=int, default=16, help="concurrent upgrade loops")
    parser.add_argument("--only", default="messages,upgrades")
    parser.add_argument("--gateway-cpus", type=cpu_list, help="pin the gateway's processes to these cores (0-1)")
    parser.add_argument("--load-cpus", type=cpu_list,
                        help="pin this script, the load generator and the echo backend to these cores (2-7)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows")
    parser.add_argument("--syscalls", action="store_true",
                        help="also count syscalls and context switches per message/upgrade (perf stat, as root)")
    parser.add_argument("--py-spy", type=Path, help="sample each gateway process's first runs into this folder")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows = [row for row in ROWS if row in args.rows.split(",")]
    if args.load_cpus:
        os.sched_setaffinity(0, args.load_cpus)  # inherited by the generator and the backend
    built = ensure_go(allowed=False)
    if built is None:
        raise SystemExit("the Go load generator and echo backend could not be built (Debian's golang-go)")
    load = GoLoad(built["loadgen"])
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wsgate-workers-") as name, ExitStack() as stack:
        tmp = Path(name)
        echo = Child("echo", [], tmp / "echo.log", command=[str(built["echo"])])
        stack.callback(echo.stop)
        backend_port = echo.wait_report(30)["port"]
        load_avg = os.getloadavg()
        counter = SyscallCounter(args.syscalls, args.seconds)
        index = 0
        for round_ in range(args.rounds):
            for row in rows:
                index += 1
                gateway = start(row, tmp, backend_port, index)
                try:
                    pin(gateway, args.gateway_cpus)
                    if "messages" in only:
                        spies = _spies(args, gateway, row, "messages", round_)
                        result, cpu = measured(gateway.cpu_seconds, lambda mark, g=gateway: load.run(
                            g.url(), conns=50, inflight=16, size=64, seconds=args.seconds, warmup=1.0,
                            timed=False, mark=_both(mark, counter, g)))
                        _kernel(figures, row, "messages", counter, result.rate * args.seconds)
                        for spy in spies:
                            spy.wait(30)
                        figures.setdefault((row, "messages"), []).append((result.rate, cpu / result.messages * 1e6))
                        say(f"round {round_ + 1} {row}: {result.rate:.0f} msgs/s, {cpu / result.messages * 1e6:.2f}"
                            " µs/msg")
                    if "upgrades" in only:
                        spies = _spies(args, gateway, row, "upgrades", round_)
                        result, cpu = measured(gateway.cpu_seconds, lambda mark, g=gateway: load.upgrades(
                            g.url(), conns=args.upgrade_conns, size=64, seconds=args.seconds, warmup=1.0,
                            mark=_both(mark, counter, g)))
                        _kernel(figures, row, "upgrades", counter, result.rate * args.seconds)
                        for spy in spies:
                            spy.wait(30)
                        figures.setdefault((row, "upgrades"), []).append((result.rate, cpu / result.messages * 1e6))
                        say(f"round {round_ + 1} {row}: {result.rate:.0f} upgrades/s, "
                            f"{cpu / result.messages * 1e6:.0f} µs/upgrade")
                finally:
                    gateway.stop()
        load_after = os.getloadavg()
    print(f"{os.cpu_count()} cores, shared; load average {load_avg[0]:.1f} before, {load_after[0]:.1f} after; "
          f"median of {args.rounds} interleaved rounds, {args.seconds:g} s windows; CPU = user+system from /proc")
    print("| gateway | msgs/s 50×16 64 B | CPU µs/msg | syscalls / ctx switches per msg | upgrades/s | "
          "CPU µs/upgrade | syscalls / ctx switches per upgrade |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = []
        for what in ("messages", "upgrades"):
            runs = figures.get((row, what))
            kernel = figures.get((row, what + " kernel"))
            if not runs:
                cells += ["–", "–", "–"]
                continue
            cells += [f"{statistics.median(r for r, _ in runs):.0f}",
                      f"{statistics.median(c for _, c in runs):.{2 if what == 'messages' else 0}f}",
                      f"{statistics.median(s for s, _ in kernel):.2f} / {statistics.median(c for _, c in kernel):.2f}"
                      if kernel else "–"]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
