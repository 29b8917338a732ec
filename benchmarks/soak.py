"""Soak: many connections exchange numbered messages through the gateway while faults are injected.

    python benchmarks/soak.py [--duration S | --short] [--conns N] [--json FILE]

Runs ``python -m gateway run DIR`` (the real watcher and admin endpoint) on a
generated config tree in a temporary directory, in front of an echo backend
that runs in this process. Two APIs cover both relay paths: ``/fast`` (no
message-stage policy: the byte relay) and ``/policy`` (a pass-through
transform and log-invocation: the message relay). Half of the ``--conns``
client slots use each.

Every message is ``<connection id>:<sequence number>:<padding>``. The clients
check that each echo arrives exactly once and in order; the echo backend
checks the same on its side (a gap or a repeat within one connection is a
loss or a duplicate between client and upstream). When a connection is closed
with a code, the messages still in flight are "lost at close" (explained);
messages in flight on a connection this script killed are "abandoned"; any
other missing message is unexplained loss.

Faults, one every ``--fault-every`` seconds, in a cycle:

- ``upstream_restart``: the echo backend stops (its connections close with
  1001) and starts again on the same port after ``--downtime`` seconds;
  clients reconnect (502s in between are counted, not failures);
- ``client_kill``: a share of the live clients abort their sockets (no close frame);
- ``reload_unrelated``: an atomic-rename save adds or removes an unrelated API;
  the gateway must close nothing;
- ``reload_drain``: both APIs' upstream URLs change, so their connections are
  drained with 1001 after the (1 s) grace and reconnect.

The gateway's RSS and open file descriptors are sampled from ``/proc``; after
every client left, fds must be back to the baseline (measured after a warm-up,
with the gateway idle) and RSS within ``--rss-tolerance-mib`` of it (CPython
keeps freed memory in its arenas and the C heap, so RSS does not fall back
exactly). Exit status 1 when anything is unexplained, duplicated, reordered,
an unrelated reload closed a connection, or fds/RSS did not come back.
Progress goes to stderr through structlog, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog  # noqa: E402
from _harness import cpu_model  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.asyncio.server import ServerConnection  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus  # noqa: E402

from echo.server import EchoService  # noqa: E402
from gateway.config.models import EchoContext, EchoServer  # noqa: E402

log = structlog.get_logger("wsgate.soak")

PATHS = ("fast", "policy")
FAULTS = ("upstream_restart", "client_kill", "reload_unrelated", "reload_drain")
DRAIN_GRACE = 1.0
APPLY_TIMEOUT = 20.0
SETTLE_TIMEOUT = 20.0

TRANSFORM = '''\
"""Pass-through transform: puts the soak traffic on the message relay without changing it."""


def passthrough(message):
    return message.payload
'''


# ----------------------------------------------------------------- the config tree


def write_config(root: Path, echo_port: int, generation: int = 0, unrelated: int = 0) -> None:
    """The whole tree: gateway settings and port, the two soak APIs, one unrelated API file."""
    (root / "apis").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    (root / "soak_transforms.py").write_text(TRANSFORM)
    _save(root / "gateway.yaml", f"""\
kind: Gateway
name: soak
drain_grace: {DRAIN_GRACE}
shutdown_timeout: 5
log_format: json
---
kind: Port
name: soak
host: 127.0.0.1
port: 0
""")
    write_soak_apis(root, echo_port, generation)
    write_unrelated(root, unrelated)


def write_soak_apis(root: Path, echo_port: int, generation: int) -> None:
    """Both soak APIs; a new ``generation`` changes their upstream URLs, which drains their connections."""
    def upstream(path: str) -> str:
        return f"ws://127.0.0.1:{echo_port}/echo/?via={path}&gen={generation}"

    _save(root / "apis" / "soak.yaml", f"""\
kind: API
name: soak-fast
description: No message-stage policy, so the byte relay.
path: /fast
ports: [soak]
upstream:
  endpoints:
    - url: "{upstream('fast')}"
---
kind: API
name: soak-policy
description: A pass-through transform and log-invocation, so the message relay.
path: /policy
ports: [soak]
upstream:
  endpoints:
    - url: "{upstream('policy')}"
policies:
  - type: transform
    stage: client
    messages: all
    callable: soak_transforms:passthrough
  - type: log-invocation
    file: ../logs/invocations.jsonl
    max_file_bytes: 1048576
    backups: 1
""")


def write_unrelated(root: Path, count: int) -> None:
    """An API no soak client uses: ``count`` even adds it, odd removes it (both are reloads)."""
    text = "# an unrelated API; the soak toggles it\n"
    if count % 2 == 0:
        text += f"""\
kind: API
name: unrelated
description: Toggled by the soak ({count}); nobody connects here.
path: /unrelated-{count}
ports: [soak]
upstream:
  endpoints:
    - url: ws://127.0.0.1:9/never
"""
    _save(root / "apis" / "unrelated.yaml", text)


def _save(path: Path, text: str) -> None:
    """An editor's atomic save: write a temporary file, then rename it over the target."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------- the echo backend


@dataclass
class UpstreamStats:
    received: int = 0
    duplicated: int = 0
    gaps: int = 0  # messages missing within one connection before a later one arrived


class CountingEcho(EchoService):
    """The echo backend, checking order per client connection on the upstream side too."""

    def __init__(self, model: EchoServer, stats: dict[str, UpstreamStats], last_seen: dict[int, int],
                 port: int) -> None:
        super().__init__(model, port=port)
        self.stats = stats
        self.last_seen = last_seen  # client connection id -> last sequence number seen (across restarts)

    async def _handle(self, ws: ServerConnection) -> None:  # the echo mode only, plus the bookkeeping
        via = parse_qs(urlsplit(ws.request.path).query).get("via", ["?"])[0]  # type: ignore[union-attr]
        stats = self.stats.setdefault(via, UpstreamStats())
        try:
            async for message in ws:
                cid, seq = _ids(message)
                last = self.last_seen.get(cid, -1)
                if seq <= last:
                    stats.duplicated += 1
                else:
                    stats.gaps += seq - last - 1
                    self.last_seen[cid] = seq
                stats.received += 1
                await ws.send(message)
        except ConnectionClosed:
            pass


def _ids(message: str | bytes) -> tuple[int, int]:
    text = message if isinstance(message, str) else message.decode()
    cid, seq, _ = text.split(":", 2)
    return int(cid), int(seq)


class Upstream:
    """Starts, stops and restarts the echo backend on one port."""

    def __init__(self) -> None:
        self.model = EchoServer(kind="EchoServer", name="soak-echo", host="127.0.0.1", port=1,
                                contexts=[EchoContext(path="/echo/", mode="echo")], control=False)
        self.stats: dict[str, UpstreamStats] = {}
        self.last_seen: dict[int, int] = {}
        self.port = 0
        self.service: CountingEcho | None = None

    async def start(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            service = CountingEcho(self.model, self.stats, self.last_seen, self.port)
            try:
                await service.start()
                break
            except OSError:  # the old socket's port still in TIME_WAIT-like limbo: try again shortly
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        self.service = service
        self.port = service.port

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None


# ----------------------------------------------------------------- the gateway process


class GatewayProcess:
    """``python -m gateway run DIR`` as a child; its ports come from its JSON log on stdout."""

    def __init__(self, root: Path, log_file: Path) -> None:
        self.root = root
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None
        self.ports: dict[str, int] = {}
        self.ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", str(self.root), "--admin", "127.0.0.1:0",
            "--log-format", "json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=str(REPO), env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self.ready.wait(), 30)
        except TimeoutError:
            raise RuntimeError(f"the gateway did not start; see {self.log_file}") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_file, "ab") as out:
            while line := await self.process.stdout.readline():
                out.write(line)
                if not line.startswith(b"{") or b'"listening"' not in line:
                    continue
                event = json.loads(line)
                if event.get("event") == "listening":
                    self.ports[event["name"]] = event["port"]
                    if {"soak", "admin"} <= set(self.ports):
                        self.ready.set()

    async def admin(self, path: str) -> dict[str, Any]:
        """GET an admin endpoint; reads to EOF, so the gateway's side of the socket is closed after."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.ports["admin"])
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> Counter[str]:
        """What the open fds point at (socket:[inode] numbers reduced to "socket"), to name a leak."""
        targets: Counter[str] = Counter()
        directory = f"/proc/{self.pid}/fd"
        for name in os.listdir(directory):
            try:
                target = os.readlink(f"{directory}/{name}")
            except OSError:
                continue  # closed while listing
            targets["socket" if target.startswith("socket:") else target] += 1
        return targets

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader
        return self.process.returncode


# ----------------------------------------------------------------- the clients


@dataclass
class PathStats:
    opened: int = 0
    sent: int = 0
    received: int = 0
    lost: int = 0  # unexplained: missing, and not explained by a close code or a kill
    lost_at_close: int = 0  # in flight when the gateway closed the connection with a code
    abandoned_at_kill: int = 0  # in flight when this script aborted the socket
    duplicated: int = 0
    out_of_order: int = 0
    misrouted: int = 0  # an echo carrying another connection's id
    killed: int = 0
    closes: Counter[str] = field(default_factory=Counter)  # close code received from the gateway -> count
    refused: Counter[str] = field(default_factory=Counter)  # failed upgrade attempts by status or error


@dataclass
class Conn:
    id: int
    path: str
    ws: ClientConnection
    window: asyncio.Semaphore
    outstanding: deque[int] = field(default_factory=deque)
    next_seq: int = 0
    max_seen: int = -1
    killed: bool = False
    finishing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Soak:
    def __init__(self, args: argparse.Namespace, gateway: GatewayProcess) -> None:
        self.args = args
        self.gateway = gateway
        self.stats = {path: PathStats() for path in PATHS}
        self.live: dict[int, Conn] = {}
        self.next_id = 0
        self.stopping = asyncio.Event()
        self.gateway_closes: list[float] = []  # when a connection was closed by the gateway (any code)
        self.padding = "x" * max(0, args.size - 16)

    # one client slot: connect, exchange until closed, reconnect, until the soak ends
    async def slot(self, path: str) -> None:
        stats = self.stats[path]
        url = f"ws://127.0.0.1:{self.gateway.ports['soak']}/{path}"
        backoff = 0.05
        await asyncio.sleep(random.uniform(0, 1))  # spread the first upgrades
        while not self.stopping.is_set():
            try:
                ws = await connect(url, compression=None, open_timeout=10, max_queue=None, ping_interval=None)
            except InvalidStatus as exc:
                stats.refused[str(exc.response.status_code)] += 1
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                stats.refused[type(exc).__name__] += 1
            else:
                backoff = 0.05
                await self.exchange(path, ws)
                await asyncio.sleep(random.uniform(0, 0.2))
                continue
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(1.0, backoff * 2)

    async def exchange(self, path: str, ws: ClientConnection) -> None:
        stats = self.stats[path]
        self.next_id += 1
        conn = Conn(self.next_id, path, ws, asyncio.Semaphore(self.args.window))
        conn.idle.set()
        stats.opened += 1
        self.live[conn.id] = conn
        sender = asyncio.create_task(self.send(conn))
        try:
            async for message in ws:
                self.receive(conn, message)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            del self.live[conn.id]
        self.account_close(conn)

    async def send(self, conn: Conn) -> None:
        stats = self.stats[conn.path]
        try:
            while not self.stopping.is_set():
                await conn.window.acquire()
                seq = conn.next_seq
                conn.next_seq += 1
                conn.outstanding.append(seq)  # before sending: the echo may be read while send() drains
                conn.idle.clear()
                stats.sent += 1
                await conn.ws.send(f"{conn.id}:{seq}:{self.padding}")
                await asyncio.sleep(self.args.interval * random.uniform(0.5, 1.5))
            # The soak ends: wait for the echoes in flight, then close normally.
            conn.finishing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.idle.wait(), 10)
            await conn.ws.close()
        except ConnectionClosed:
            pass

    def receive(self, conn: Conn, message: str | bytes) -> None:
        stats = self.stats[conn.path]
        cid, seq = _ids(message)
        if cid != conn.id:
            stats.misrouted += 1
            return
        if seq in conn.outstanding:
            if seq != conn.outstanding[0]:
                stats.out_of_order += 1
            conn.outstanding.remove(seq)
            conn.max_seen = max(conn.max_seen, seq)
            stats.received += 1
            conn.window.release()
            if not conn.outstanding:
                conn.idle.set()
        else:
            stats.duplicated += 1  # already echoed once (or never sent)

    def account_close(self, conn: Conn) -> None:
        protocol = conn.ws.protocol
        received = protocol.close_rcvd
        ended_by_us = (conn.finishing and protocol.close_sent is not None and protocol.close_sent.code == 1000
                       and received is not None and received.code == 1000)
        self.settle(conn, received.code if received is not None else None, ended_by_us)

    def settle(self, conn: Conn, code: int | None, ended_by_us: bool) -> None:
        """Account for the messages still in flight when ``conn`` closed (``code`` None: no close frame)."""
        stats = self.stats[conn.path]
        # A message missing although a later one arrived was lost on an open connection.
        gap = sum(1 for seq in conn.outstanding if seq < conn.max_seen)
        in_flight = len(conn.outstanding) - gap
        stats.lost += gap
        if conn.killed:
            stats.killed += 1
            stats.abandoned_at_kill += in_flight
        elif code is None:
            stats.closes["1006"] += 1  # the gateway dropped the TCP connection without a close frame
            stats.lost += in_flight
            self.gateway_closes.append(time.monotonic())
        elif ended_by_us:
            stats.closes["1000 (end)"] += 1
            stats.lost += in_flight  # the soak waited for every echo before closing
        else:
            stats.closes[str(code)] += 1
            stats.lost_at_close += in_flight
            self.gateway_closes.append(time.monotonic())

    def kill(self, share: float) -> int:
        victims = [c for c in self.live.values() if not c.finishing]
        victims = random.sample(victims, max(1, int(share * len(victims)))) if victims else []
        for conn in victims:
            conn.killed = True
            conn.ws.transport.abort()  # RST, no close frame: a client that vanished
        return len(victims)

    def totals(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for stats in self.stats.values():
            for name, value in _figures(stats).items():
                if isinstance(value, dict):
                    merged = total.setdefault(name, Counter())
                    merged.update(value)
                else:
                    total[name] = total.get(name, 0) + value
        return {name: dict(value) if isinstance(value, Counter) else value for name, value in total.items()}


def _figures(stats: PathStats) -> dict[str, Any]:
    """A PathStats as plain JSON values (``asdict`` would turn a Counter into a Counter of pairs)."""
    return {name: dict(value) if isinstance(value, Counter) else value for name, value in vars(stats).items()}


# ----------------------------------------------------------------- faults and sampling


@dataclass
class Sampler:
    gateway: GatewayProcess
    rss_start: int = 0
    fds_start: int = 0
    rss_peak: int = 0
    fds_peak: int = 0
    rss_end: int = 0
    fds_end: int = 0

    rss_first_half_peak: int = 0  # a leak keeps climbing: compare with the peak of the whole run
    half_time: float = float("inf")

    def sample(self) -> tuple[int, int]:
        rss, fds = self.gateway.rss_kib(), self.gateway.fds()
        self.rss_peak, self.fds_peak = max(self.rss_peak, rss), max(self.fds_peak, fds)
        if time.monotonic() < self.half_time:
            self.rss_first_half_peak = self.rss_peak
        return rss, fds

    async def run(self, every: float) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every)


class Faults:
    def __init__(self, soak: Soak, upstream: Upstream, root: Path, args: argparse.Namespace) -> None:
        self.soak = soak
        self.upstream = upstream
        self.root = root
        self.args = args
        self.counts: Counter[str] = Counter()
        self.killed = 0
        self.drained = 0
        self.unrelated_closes = 0  # gateway closes during unrelated reloads: must stay 0
        self.not_applied = 0  # reloads the gateway did not apply within the deadline
        self.apply_seconds: list[float] = []
        self.generation = 0
        self.unrelated = 0
        self.last_drain = 0.0

    async def run(self) -> None:
        index = 0
        while True:
            await asyncio.sleep(self.args.fault_every)
            kind = FAULTS[index % len(FAULTS)]
            index += 1
            log.info("fault", kind=kind, number=index)
            await getattr(self, kind)()
            self.counts[kind] += 1

    async def upstream_restart(self) -> None:
        await self.upstream.stop()
        await asyncio.sleep(self.args.downtime)
        await self.upstream.start()

    async def client_kill(self) -> None:
        self.killed += self.soak.kill(self.args.kill_share)

    async def reload_unrelated(self) -> None:
        started = time.monotonic()
        self.unrelated += 1
        outcome = await self._reload(lambda: write_unrelated(self.root, self.unrelated))
        # Anything the gateway closed from the write until a moment after the swap is the reload's doing.
        await asyncio.sleep(min(1.0, self.args.fault_every / 3))
        closes = sum(1 for t in self.soak.gateway_closes if t >= started)
        if closes or (outcome and (outcome.get("drained") or outcome.get("revoked"))):
            log.error("unrelated reload closed connections", closes=closes, outcome=outcome)
        self.unrelated_closes += closes

    async def reload_drain(self) -> None:
        self.generation += 1
        self.last_drain = time.monotonic()
        outcome = await self._reload(lambda: write_soak_apis(self.root, self.upstream.port, self.generation))
        if outcome:
            self.drained += int(outcome.get("drained") or 0)

    async def _reload(self, edit: Any) -> dict[str, Any] | None:
        before = (await self.soak.gateway.admin("/reload"))["reloads"]
        written = time.monotonic()
        edit()
        deadline = written + APPLY_TIMEOUT
        while time.monotonic() < deadline:
            state = await self.soak.gateway.admin("/reload")
            last = state.get("last_reload") or {}
            if state["reloads"] > before and last.get("ok") and not last.get("noop"):
                self.apply_seconds.append(time.monotonic() - written)
                return last
            await asyncio.sleep(0.05)
        self.not_applied += 1
        log.error("reload not applied", deadline=APPLY_TIMEOUT)
        return None


# ----------------------------------------------------------------- the run


async def warm_up(gateway: GatewayProcess) -> None:
    """One short exchange per path, so lazily opened files and caches are in the baseline."""
    for cid, path in enumerate(PATHS, start=1):
        async with connect(f"ws://127.0.0.1:{gateway.ports['soak']}/{path}", compression=None) as ws:
            for seq in range(3):
                await ws.send(f"{-cid}:{seq}:warm")
                if _ids(await ws.recv()) != (-cid, seq):
                    raise RuntimeError(f"{path}: the warm-up echo does not match")


async def wait_open(gateway: GatewayProcess, path: Path) -> None:
    """Until the gateway holds ``path`` open: the log-invocation writer opens it in its thread, a moment
    after the first record, and the baseline must include it."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while str(path) not in gateway.fd_targets():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not open {path}")
        await asyncio.sleep(0.05)


async def wait_idle(gateway: GatewayProcess, fds_target: int | None) -> int:
    """Until the gateway holds no connection (and, given a target, at most that many fds); live count left."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        total = (await gateway.admin("/connections"))["total"]
        if total == 0 and (fds_target is None or gateway.fds() <= fds_target):
            return 0
        if time.monotonic() > deadline:
            return total
        await asyncio.sleep(0.1)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="wsgate-soak-"))
    root = work / "config"
    upstream = Upstream()
    await upstream.start()
    write_config(root, upstream.port)
    gateway = GatewayProcess(root, work / "gateway.log")
    tasks: list[asyncio.Task[Any]] = []
    try:
        await gateway.start()
        log.info("gateway started", pid=gateway.pid, port=gateway.ports["soak"], work=str(work))
        await warm_up(gateway)
        upstream.stats.clear()  # count the soak's messages only
        await wait_idle(gateway, None)
        await wait_open(gateway, root / "logs" / "invocations.jsonl")
        sampler = Sampler(gateway)
        sampler.rss_start, sampler.fds_start = sampler.sample()
        fds_before = gateway.fd_targets()
        run = Soak(args, gateway)
        faults = Faults(run, upstream, root, args)
        slots = [asyncio.create_task(run.slot(PATHS[i % len(PATHS)])) for i in range(args.conns)]
        tasks = [asyncio.create_task(sampler.run(0.5)), asyncio.create_task(faults.run())]
        started = time.monotonic()
        sampler.half_time = started + args.duration / 2
        while (elapsed := time.monotonic() - started) < args.duration:
            await asyncio.sleep(min(args.progress, args.duration - elapsed))
            total = run.totals()
            rss, fds = sampler.sample()
            log.info("progress", elapsed=round(time.monotonic() - started), live=len(run.live),
                     opened=total["opened"], sent=total["sent"], received=total["received"],
                     faults=dict(faults.counts), rss_mib=round(rss / 1024, 1), fds=fds)
        tasks[1].cancel()  # no fault after this point (a running one is finished by the cancel)
        await asyncio.gather(tasks[1], return_exceptions=True)
        # Let the last drain bite before the clients leave, or its closes would never be seen.
        await asyncio.sleep(max(0.0, faults.last_drain + DRAIN_GRACE + 0.5 - time.monotonic()))
        if upstream.service is None:
            await upstream.start()
        run.stopping.set()
        log.info("stopping clients", live=len(run.live))
        await asyncio.wait_for(asyncio.gather(*slots), 60)
        left = await wait_idle(gateway, sampler.fds_start)
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        sampler.rss_end, sampler.fds_end = sampler.sample()
        fds_after = gateway.fd_targets()
        log.info("clients gone", gateway_connections=left, rss_mib=round(sampler.rss_end / 1024, 1),
                 fds=sampler.fds_end)
    finally:
        for task in tasks:
            task.cancel()
        code = await gateway.stop()
        await upstream.stop()
    per_path = {path: _figures(stats) for path, stats in run.stats.items()}
    per_path["all"] = run.totals()
    rss_growth_mib = (sampler.rss_end - sampler.rss_start) / 1024
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "paths": per_path,
        "upstream": {via: asdict(stats) for via, stats in upstream.stats.items()},
        "faults": {"counts": {kind: faults.counts[kind] for kind in FAULTS}, "clients_killed": faults.killed,
                   "connections_drained": faults.drained, "unrelated_reload_closes": faults.unrelated_closes,
                   "reloads_not_applied": faults.not_applied,
                   "reload_apply_seconds_max": round(max(faults.apply_seconds, default=0.0), 3)},
        "gateway": {"rss_kib": {"start": sampler.rss_start, "peak": sampler.rss_peak, "end": sampler.rss_end,
                                "first_half_peak": sampler.rss_first_half_peak},
                    "fds": {"start": sampler.fds_start, "peak": sampler.fds_peak, "end": sampler.fds_end},
                    "fd_targets": {"start": dict(fds_before), "end": dict(fds_after)},
                    "fds_opened": sorted((fds_after - fds_before).elements()),
                    "fds_closed": sorted((fds_before - fds_after).elements()),
                    "connections_left": left, "exit_code": code, "log": str(gateway.log_file)},
    }
    result["problems"] = problems(result, rss_growth_mib, args.rss_tolerance_mib)
    if not result["problems"] and not args.keep:
        shutil.rmtree(work, ignore_errors=True)  # a failed run keeps its config tree and gateway log
        result["gateway"]["log"] = None
    return result


def problems(result: dict[str, Any], rss_growth_mib: float, tolerance_mib: float) -> list[str]:
    found: list[str] = []
    for path, stats in result["paths"].items():
        if path == "all":
            continue
        for name in ("lost", "duplicated", "out_of_order", "misrouted"):
            if stats[name]:
                found.append(f"{path}: {stats[name]} {name.replace('_', ' ')}")
    for via, stats in result["upstream"].items():
        for name in ("duplicated", "gaps"):
            if stats[name]:
                found.append(f"upstream ({via}): {stats[name]} {name}")
    faults = result["faults"]
    if faults["unrelated_reload_closes"]:
        found.append(f"unrelated reloads closed {faults['unrelated_reload_closes']} connections")
    if faults["reloads_not_applied"]:
        found.append(f"{faults['reloads_not_applied']} reloads were not applied within {APPLY_TIMEOUT:.0f} s")
    gateway = result["gateway"]
    if gateway["connections_left"]:
        found.append(f"the gateway still holds {gateway['connections_left']} connections after every client left")
    fds = gateway["fds"]
    if fds["end"] > fds["start"]:
        found.append(f"open fds did not return to baseline: {fds['start']} → {fds['end']}")
    if rss_growth_mib > tolerance_mib:
        found.append(f"RSS grew {rss_growth_mib:.1f} MiB (tolerance {tolerance_mib:g} MiB)")
    return found


def machine() -> str:
    cpu = cpu_model(platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def render_table(result: dict[str, Any]) -> str:
    gateway = result["gateway"]
    rss, fds = gateway["rss_kib"], gateway["fds"]
    mib = " / ".join(f"{rss[k] / 1024:.1f}" for k in ("start", "peak", "end"))
    fd = " / ".join(str(fds[k]) for k in ("start", "peak", "end"))
    settings = result["settings"]
    lines = [
        f"soak: {settings['duration']:g} s, {settings['conns']} client slots, a message every "
        f"~{settings['interval']:g} s per connection (≤ {settings['window']} in flight), a fault every "
        f"{settings['fault_every']:g} s; {result['date']}; {result['machine']}",
        "",
        "| path | connections | sent / received | lost at close | abandoned (killed) | lost (unexplained) "
        "| duplicated | out of order | closes by code | RSS MiB start / peak / end | fds start / peak / end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for path, s in result["paths"].items():
        closes = ", ".join(f"{code}: {n}" for code, n in sorted(s["closes"].items()))
        if s["killed"]:
            closes += f", killed: {s['killed']}"
        last = (mib, fd) if path == "all" else ("", "")
        lines.append(
            f"| {path} | {s['opened']} | {s['sent']} / {s['received']} | {s['lost_at_close']} | "
            f"{s['abandoned_at_kill']} | {s['lost'] + s['misrouted']} | {s['duplicated']} | {s['out_of_order']} | "
            f"{closes} | {last[0]} | {last[1]} |"
        )
    f = result["faults"]
    counts = ", ".join(f"{kind} ×{n}" for kind, n in f["counts"].items())
    refused = Counter[str]()
    refused.update(result["paths"]["all"]["refused"])
    upstream = sum(s["received"] for s in result["upstream"].values())
    lines += [
        "",
        f"faults: {counts}; {f['clients_killed']} clients killed, {f['connections_drained']} connections "
        f"drained, {f['unrelated_reload_closes']} closed by unrelated reloads; reload applied within "
        f"{f['reload_apply_seconds_max']} s (max)",
        f"RSS peak in the first half {rss['first_half_peak'] / 1024:.1f} MiB, over the whole run "
        f"{rss['peak'] / 1024:.1f} MiB",
        f"upstream received {upstream} messages; refused upgrades while the upstream was down: "
        + (", ".join(f"{k}: {n}" for k, n in sorted(refused.items())) or "none"),
    ]
    lines.append("result: " + ("OK" if not result["problems"] else "FAILED: " + "; ".join(result["problems"])))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of traffic and faults (default 180)")
    parser.add_argument("--short", action="store_true",
                        help="CI mode: 12 s, 40 connections, a fault every 2.4 s (each kind at least once)")
    parser.add_argument("--conns", type=int, default=200, help="client slots, half per relay path (default 200)")
    parser.add_argument("--interval", type=float, default=0.25, help="mean seconds between a client's messages")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per connection at most")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes (at least the numbering)")
    parser.add_argument("--fault-every", type=float, default=8.0, help="seconds between faults (default 8)")
    parser.add_argument("--downtime", type=float, default=1.0, help="seconds the upstream stays down per restart")
    parser.add_argument("--kill-share", type=float, default=0.1, help="share of live clients killed per client_kill")
    parser.add_argument("--rss-tolerance-mib", type=float, default=32.0,
                        help="RSS may stay this much above its start (CPython keeps freed memory; default 32)")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kills, jitter)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (config, gateway log) on success")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.short:
        args.duration, args.conns, args.fault_every = 12.0, 40, 2.4
        args.progress = min(args.progress, 3.0)
    if args.seed is not None:
        random.seed(args.seed)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = asyncio.run(soak(args))
    print(render_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
