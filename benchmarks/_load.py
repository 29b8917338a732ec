"""The load generators: the compiled Go one (:class:`GoLoad`) and the Python fallback (:class:`LoadPool`).

The Go generator (``benchmarks/go/loadgen``, built by :func:`build_go` from Debian's Go
and gorilla/websocket packages, offline) is one process per measurement, driven over
stdin/stdout; it is much cheaper per message than any Python client, so it is not the
bottleneck. The rest of this docstring describes the Python fallback, used when Go is
not installed (CI):

Each worker is a process with its own event loop, fed commands over a pipe by
:class:`LoadPool`, so one benchmark run reuses the same workers for every
measurement. A connection does the opening handshake with websockets' sans-I/O
``ClientProtocol`` (no compression offered) and then sends pre-built masked
frames and counts the echoed frames by their headers, without decoding
payloads: a client built on ``websockets.asyncio`` spends more CPU per
message than the relay under test, and on a two-core machine the generator
would then measure itself. The direct run (no gateway) shows the ceiling.

Timing: the coordinator picks the measuring window (``t0``, ``t1``) on the
shared ``time.monotonic`` clock (system-wide on Linux); workers snapshot their
counters at both instants with ``loop.call_at``, so the hot path never reads
the clock except to time round trips in latency runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

MAX_HEAD = 16 * 1024
MAX_SAMPLES = 200_000  # round-trip samples kept per worker and run
CONNECT_BATCH = 50  # concurrent connection attempts per worker: stays under listen backlogs
CONNECT_TIMEOUT = 10.0


class LoadError(RuntimeError):
    """A worker could not connect, lost a connection or broke a deadline."""


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client frame; the payload is masked with a fresh random key, as RFC 6455 wants."""
    key = os.urandom(4)
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    mask = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(length, "big")
    return head + key + masked


class _Leg(asyncio.Protocol):
    """One client connection: the handshake, then a window of messages in flight."""

    def __init__(self, url: str, run: _Run) -> None:
        self.run = run
        self.ws = ClientProtocol(parse_uri(url))  # no extensions: compression stays off
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.head = bytearray()
        self.buf = bytearray()
        self.remaining = 0  # payload bytes of the current data frame still to skip
        self.fin = False
        self.sent_at: deque[int] = deque()

    # ---------------------------------------------------------- handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        for chunk in self.ws.data_to_send():
            transport.write(chunk)

    def _handshake(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self._fail("response head too large")
            return
        self.ws.receive_data(bytes(self.head[: end + 4]))
        rest = bytes(self.head[end + 4 :])
        self.head = bytearray()
        if self.ws.handshake_exc is not None or self.ws.state is not State.OPEN:
            self._fail(f"handshake refused: {self.ws.handshake_exc!r}")
            return
        self.opened.set_result(None)
        if rest:
            self._frames(rest)

    # ------------------------------------------------------------- frames

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._handshake(data)
        else:
            self._frames(data)

    def _frames(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        done = 0
        while pos < end:
            if self.remaining:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if self.remaining:
                    break
                done += self.fin
                continue
            if end - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            length, hl = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            opcode = b0 & 0x0F
            if opcode >= 8:  # control frames are small; wait for the whole frame
                if end - pos < hl + length:
                    break
                self._control(opcode, bytes(buf[pos + hl : pos + hl + length]))
                pos += hl + length
                continue
            pos += hl
            self.fin = bool(b0 & 0x80)
            if length:
                self.remaining = length
            else:
                done += self.fin
        del buf[:pos]
        if done:
            self.run.on_echoes(self, done)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9 and self.transport is not None:  # ping: answer, keepalive must not kill us
            self.transport.write(masked_frame(0xA, payload))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._fail(f"closed by peer: {code} {payload[2:].decode(errors='replace')}")

    # -------------------------------------------------------------- close

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(LoadError(reason))
        elif not self.closed and not self.run.stopping:
            self.run.errors.append(reason)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._fail(f"connection lost: {exc!r}")

    def close(self) -> None:
        """Send a close frame (1000) and drop the socket without waiting: the run is over."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


@dataclass
class _Run:
    """Counters of one measurement in one worker."""

    frame: bytes
    inflight: int
    timed: bool  # record round-trip times (latency runs)
    received: int = 0
    at_t0: int | None = None
    at_t1: int | None = None
    stopping: bool = False
    errors: list[str] = field(default_factory=list)
    samples: array = field(default_factory=lambda: array("q"))

    def on_echoes(self, leg: _Leg, count: int) -> None:
        self.received += count
        if self.timed:
            now = time.perf_counter_ns()
            samples = self.samples
            for _ in range(min(count, len(leg.sent_at))):
                started = leg.sent_at.popleft()
                if len(samples) < MAX_SAMPLES and self.at_t0 is not None and self.at_t1 is None:
                    samples.append(now - started)
        if not self.stopping and leg.transport is not None:
            if self.timed:
                now = time.perf_counter_ns()
                leg.sent_at.extend([now] * count)
            leg.transport.write(self.frame * count)

    def start(self, leg: _Leg) -> None:
        assert leg.transport is not None
        if self.timed:
            leg.sent_at.extend([time.perf_counter_ns()] * self.inflight)
        leg.transport.write(self.frame * self.inflight)


async def _open(url: str, count: int, run: _Run) -> list[_Leg]:
    loop = asyncio.get_running_loop()
    parsed = parse_uri(url)
    legs: list[_Leg] = []

    async def one() -> _Leg:
        leg = _Leg(url, run)
        await loop.create_connection(lambda: leg, parsed.host, parsed.port)
        await leg.opened
        return leg

    try:
        for start in range(0, count, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, count - start)
            opened = await asyncio.wait_for(
                asyncio.gather(*(one() for _ in range(batch)), return_exceptions=True), CONNECT_TIMEOUT
            )
            legs += [leg for leg in opened if isinstance(leg, _Leg)]
            failed = [exc for exc in opened if isinstance(exc, BaseException)]
            if failed:
                raise LoadError(f"{len(failed)} of {batch} connections failed: {failed[0]!r}")
    except BaseException:
        for leg in legs:
            leg.close()
        raise
    return legs


def _wait_command(pipe: Connection, timeout: float) -> dict[str, Any]:
    if not pipe.poll(timeout):
        raise LoadError(f"no command from the coordinator within {timeout:.0f} s")
    return pipe.recv()


async def _load(cmd: dict[str, Any], pipe: Connection) -> dict[str, Any]:
    """Open connections, report ready, run the window the coordinator sends, return the counts."""
    payload = b"x" * cmd["size"]
    run = _Run(frame=masked_frame(0x1, payload), inflight=cmd["inflight"], timed=cmd["timed"])
    legs = await _open(cmd["url"], cmd["conns"], run)
    try:
        pipe.send({"ready": len(legs)})
        # Blocking is fine here: every connection is idle until the window opens.
        go = _wait_command(pipe, 60.0)
        if not go or go.get("abort"):
            raise LoadError("aborted: another worker failed to connect")
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def snapshot_t0() -> None:
            run.at_t0 = run.received

        def snapshot_t1() -> None:
            run.at_t1 = run.received
            run.stopping = True
            finished.set_result(None)

        loop.call_at(go["t0"], snapshot_t0)
        loop.call_at(go["t1"], snapshot_t1)
        delay = go["start"] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for leg in legs:
            run.start(leg)
        await asyncio.wait_for(finished, go["t1"] - loop.time() + 5.0)
    finally:
        run.stopping = True
        for leg in legs:
            leg.close()
    assert run.at_t0 is not None and run.at_t1 is not None
    return {
        "messages": run.at_t1 - run.at_t0,
        "samples": run.samples,
        "errors": run.errors[:5],
    }


async def _idle(cmd: dict[str, Any], pipe: Connection) -> dict[str, Any]:
    """Open idle connections, report ready, hold them until told to release."""
    run = _Run(frame=b"", inflight=0, timed=False)
    legs = await _open(cmd["url"], cmd["conns"], run)
    try:
        pipe.send({"ready": len(legs)})
        _wait_command(pipe, 120.0)
    finally:
        run.stopping = True
        for leg in legs:
            leg.close()
    return {"held": len(legs), "errors": run.errors[:5]}


def _worker(pipe: Connection) -> None:
    """A worker process: run commands until told to stop or the coordinator goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the coordinator stops us
    handlers = {"load": _load, "idle": _idle}
    while True:
        try:
            cmd = pipe.recv()
        except (EOFError, OSError):
            return
        if cmd is None:
            return
        try:
            result = asyncio.run(handlers[cmd["op"]](cmd, pipe))
        except Exception as exc:  # reported to the coordinator, which raises
            result = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            pipe.send({"result": result})
        except (BrokenPipeError, OSError):
            return


@dataclass
class LoadResult:
    """One measurement over all workers."""

    messages: int
    seconds: float
    samples_ns: list[int]
    cpu_seconds: float | None = None  # the load generator's own CPU time over the window
    percentiles_us: dict[float, float] = field(default_factory=dict)  # computed by the Go generator
    failed: int = 0  # upgrade loops: connections that did not complete

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile_us(self, q: float) -> float | None:
        if q in self.percentiles_us:
            return self.percentiles_us[q]
        if not self.samples_ns:
            return None
        ordered = self.samples_ns
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] / 1000.0


class LoadPool:
    """Worker processes reused across measurements; a context manager that always stops them."""

    def __init__(self, processes: int) -> None:
        self.size = processes
        self._ctx = multiprocessing.get_context("spawn")  # no inherited loops, sockets or threads
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def __enter__(self) -> LoadPool:
        for _ in range(self.size):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_worker, args=(child,), daemon=True, name="wsgate-bench-load")
            proc.start()
            child.close()
            self._workers.append((proc, parent))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._workers if proc.pid is not None]

    def close(self) -> None:
        for _proc, pipe in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
        for proc, pipe in self._workers:
            proc.join(3.0)  # a worker mid-run (after Ctrl-C) would finish its window first: don't wait for it
            if proc.is_alive():
                proc.terminate()
                proc.join(3.0)
            if proc.is_alive():
                proc.kill()
                proc.join(3.0)
            pipe.close()
        self._workers.clear()

    def _split(self, conns: int) -> list[tuple[Connection, int]]:
        used = self._workers[: max(1, min(len(self._workers), conns))]
        share, extra = divmod(conns, len(used))
        return [(pipe, share + (i < extra)) for i, (_, pipe) in enumerate(used)]

    def _all_ready(self, parts: list[tuple[Connection, int]], timeout: float) -> int:
        """Wait for every worker's "ready"; if one failed, abort the others and raise its error."""
        opened, failure = 0, None
        ready: list[Connection] = []
        for pipe, _ in parts:
            try:
                opened += self._reply(pipe, timeout)["ready"]
                ready.append(pipe)
            except LoadError as exc:
                failure = failure or exc
        if failure is not None:
            for pipe in ready:
                pipe.send({"abort": True})
            for pipe in ready:
                with contextlib.suppress(LoadError):
                    self._reply(pipe, 30.0)
            raise failure
        return opened

    @staticmethod
    def _reply(pipe: Connection, timeout: float) -> dict[str, Any]:
        if not pipe.poll(timeout):
            raise LoadError(f"a load worker did not answer within {timeout:.0f} s")
        try:
            reply = pipe.recv()
        except (EOFError, OSError) as exc:
            raise LoadError(f"a load worker died: {exc!r}") from exc
        if "result" in reply and "error" in reply["result"]:
            raise LoadError(reply["result"]["error"])
        return reply

    def measure(
        self,
        url: str,
        *,
        conns: int,
        inflight: int,
        size: int,
        seconds: float,
        warmup: float,
        timed: bool,
        during: Callable[[float, float], None] | None = None,
    ) -> LoadResult:
        """Run ``conns`` connections with ``inflight`` messages each; count echoes over ``seconds``.

        ``during(t0, t1)`` runs in this process while the workers load, with the measuring window on
        the ``time.monotonic`` clock (the coordinator reads the gateway's CPU time at both ends).
        """
        parts = self._split(conns)
        for pipe, n in parts:
            pipe.send({"op": "load", "url": url, "conns": n, "inflight": inflight, "size": size, "timed": timed})
        self._all_ready(parts, CONNECT_TIMEOUT * (conns // CONNECT_BATCH + 2))
        start = time.monotonic() + 0.05
        t0 = start + warmup
        t1 = t0 + seconds
        for pipe, _ in parts:
            pipe.send({"start": start, "t0": t0, "t1": t1})
        if during is not None:
            during(t0, t1)
        total, samples, errors = 0, [], []
        for pipe, _ in parts:
            result = self._reply(pipe, t1 - time.monotonic() + 15.0)["result"]
            total += result["messages"]
            samples += result["samples"]
            errors += result["errors"]
        if errors:
            raise LoadError(f"connections failed during the run: {errors[:3]}")
        samples.sort()
        return LoadResult(total, seconds, samples)

    def run(
        self,
        url: str,
        *,
        conns: int,
        inflight: int,
        size: int,
        seconds: float,
        warmup: float,
        timed: bool,
        mark: Callable[[], None],
    ) -> LoadResult:
        """:meth:`measure` with ``mark()`` called at both ends of the window (the interface of :class:`GoLoad`)."""
        cpu: list[float] = []

        def during(t0: float, t1: float) -> None:
            for instant in (t0, t1):
                delay = instant - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # a deadline on the shared clock, not a guess
                cpu.append(sum(_cpu_seconds(pid) for pid in self.pids))
                mark()

        result = self.measure(
            url, conns=conns, inflight=inflight, size=size, seconds=seconds, warmup=warmup, timed=timed, during=during
        )
        if len(cpu) == 2:
            result.cpu_seconds = cpu[1] - cpu[0]
        return result

    def upgrades(self, url: str, **_: Any) -> LoadResult | None:
        """Not measured by the Python generator (its own handshake cost would dominate): None."""
        return None

    def hold_idle(self, url: str, conns: int) -> IdleHold:
        """Open ``conns`` idle connections spread over the workers; release them by closing the hold."""
        parts = self._split(conns)
        for pipe, n in parts:
            pipe.send({"op": "idle", "url": url, "conns": n})
        return IdleHold(self, parts, CONNECT_TIMEOUT * (conns // CONNECT_BATCH + 2))


class IdleHold:
    """Idle connections held by the workers; ``wait_open`` then ``release``."""

    def __init__(self, pool: LoadPool, parts: list[tuple[Connection, int]], timeout: float) -> None:
        self._pool, self._parts, self._timeout = pool, parts, timeout
        self.opened = 0

    def wait_open(self) -> int:
        self.opened = self._pool._all_ready(self._parts, self._timeout)
        return self.opened

    def release(self) -> dict[str, int]:
        held = 0
        for pipe, _ in self._parts:
            pipe.send({"release": True})
        for pipe, _ in self._parts:
            held += self._pool._reply(pipe, 30.0)["result"]["held"]
        return {"held": held, "lost": self.opened - held, "pings": -1}


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------- the compiled generator

GO_SOURCES = Path(__file__).resolve().parent / "go"
GO_PROGRAMS = ("loadgen", "echo")
GOPATH = "/usr/share/gocode"  # Debian's Go libraries (golang-github-gorilla-websocket-dev) live here
GORILLA = Path(GOPATH) / "src/github.com/gorilla/websocket"


def go_binary() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/lib/go/bin/go",) if os.access(p, os.X_OK)), None)


def build_go(cache: Path, log: Any) -> dict[str, Path]:
    """Build the Go load generator and echo backend into ``cache`` unless a binary of these sources is there.

    Offline: GOPATH mode (GO111MODULE=off) with Debian's gorilla/websocket under /usr/share/gocode.
    A binary's name carries a hash of its source, so an edited source is rebuilt.
    """
    go = go_binary()
    if go is None:
        raise LoadError("no Go toolchain (apt-get install golang-go golang-github-gorilla-websocket-dev)")
    if not GORILLA.is_dir():
        raise LoadError(f"gorilla/websocket is not at {GORILLA} (apt-get install golang-github-gorilla-websocket-dev)")
    cache.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in GO_PROGRAMS:
        source = GO_SOURCES / name
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(source.glob("*.go")))).hexdigest()[:12]
        binary = cache / f"{name}-{digest}"
        if not binary.exists():
            log.info(f"building the Go {name} (first run only)...", output=str(binary))
            started = time.monotonic()
            env = {
                **os.environ,
                "GO111MODULE": "off",
                "GOPATH": GOPATH,
                "GOFLAGS": "",
                "GOCACHE": str(cache / "gocache"),
                "CGO_ENABLED": "0",
            }
            proc = subprocess.run(
                [go, "build", "-o", str(binary) + ".tmp", "."],
                cwd=source,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise LoadError(f"go build of {name} failed:\n{proc.stderr[-2000:]}")
            os.replace(str(binary) + ".tmp", binary)
            log.info(f"built the Go {name}", seconds=round(time.monotonic() - started, 1))
        built[name] = binary
    return built


class GoLoad:
    """The compiled load generator: one process per measurement, driven over its stdin/stdout."""

    def __init__(self, binary: Path, *, coalesce: bool = False) -> None:
        self.binary = binary
        self.coalesce = coalesce  # one write for the replacements of a batch of echoes
        self.pids: list[int] = []

    def _start(self, mode: str, url: str, **flags: Any) -> subprocess.Popen[bytes]:
        argv = [str(self.binary), mode, "-url", url]
        for key, value in flags.items():
            if value is True:
                argv.append(f"-{key}")
            elif value is not False:
                argv += [f"-{key}", str(value)]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self.pids.append(proc.pid)
        return proc

    @staticmethod
    def _line(proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
        assert proc.stdout is not None
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
        if not ready:
            raise LoadError("the Go load generator missed its deadline")
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().decode(errors="replace")[-1000:] if proc.stderr else ""
            raise LoadError(f"the Go load generator exited ({proc.wait()}): {err}")
        message = json.loads(line)
        if "error" in message:
            raise LoadError(message["error"])
        return message

    def _drive(self, proc: subprocess.Popen[bytes], timeout: float, mark: Callable[[], None]) -> LoadResult:
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = self._line(proc, deadline)
                if "mark" in message:
                    mark()
                elif "result" in message:
                    result = message["result"]
                    break
        finally:
            _finish(proc)
        if result.get("errors"):
            raise LoadError(f"connections failed during the run: {result['errors'][:3]}")
        percentiles = {0.50: result["p50_us"], 0.99: result["p99_us"]} if "p50_us" in result else {}
        return LoadResult(
            result["messages"], result["seconds"], [], result["cpu_seconds"], percentiles, result.get("failed", 0)
        )

    def run(
        self,
        url: str,
        *,
        conns: int,
        inflight: int,
        size: int,
        seconds: float,
        warmup: float,
        timed: bool,
        mark: Callable[[], None],
    ) -> LoadResult:
        proc = self._start(
            "load",
            url,
            conns=conns,
            inflight=inflight,
            size=size,
            seconds=seconds,
            warmup=warmup,
            timed=timed,
            coalesce=self.coalesce,
        )
        return self._drive(proc, CONNECT_TIMEOUT * (conns // CONNECT_BATCH + 2) + warmup + seconds + 15.0, mark)

    def upgrades(
        self, url: str, *, conns: int, size: int, seconds: float, warmup: float, mark: Callable[[], None]
    ) -> LoadResult:
        """A concurrent loop of whole connections: connect, handshake, one message, close handshake."""
        proc = self._start("upgrades", url, conns=conns, size=size, seconds=seconds, warmup=warmup)
        return self._drive(proc, warmup + seconds + 30.0, mark)

    def hold_idle(self, url: str, conns: int) -> GoIdleHold:
        return GoIdleHold(self._start("idle", url, conns=conns), CONNECT_TIMEOUT * (conns // CONNECT_BATCH + 2))


class GoIdleHold:
    """Idle connections held by one Go process (which answers the gateway's keepalive pings)."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.proc, self.timeout = proc, timeout
        self.opened = 0

    def wait_open(self) -> int:
        try:
            self.opened = GoLoad._line(self.proc, time.monotonic() + self.timeout)["ready"]
        except BaseException:
            _finish(self.proc)
            raise
        return self.opened

    def release(self) -> dict[str, int]:
        """Close the connections; the counts of held, lost (closed by the other side) and answered pings."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            return GoLoad._line(self.proc, time.monotonic() + 60.0)["result"]
        finally:
            _finish(self.proc)


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a generator process to exit; end it (by its own pid) if it does not within 10 s."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
