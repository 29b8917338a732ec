"""Gateway CPU per message through the message relay with the tutorial's EchoWS chain.

    python benchmarks/message_relay_micro.py [--seconds 4] [--rounds 3] [--conns 50] [--inflight 16] [--size 64]
                                             [--log-level info] [--profile]
                                             [--with rate-limit,validate-messages] [--json]
    python benchmarks/message_relay_micro.py --big-neighbour [--seconds 4] [--big-size 1700000]

This process is the gateway: the real runtime (``gateway.serving.runtime.Gateway``) on a
generated config whose API has the tutorial's chain (identify by API key, the
tutorial's client-stage transform, log-invocation storing client and server
payloads to a file, throttle). Logging is configured as ``wsgate run`` does it
(JSON through structlog at ``--log-level``), rendered to ``/dev/null``.

Two child processes do the rest, so their CPU is not counted: a load generator
(pre-built masked text frames, ``--inflight`` per connection, counting echoes
by bytes) and a raw echo backend (answers each frame with the same payload and
opcode, unmasked).

Measured over a window after a warm-up: the gateway's CPU time (every thread,
``time.process_time``) divided by the echoed messages (each crossed the
gateway twice, as in ``benchmarks/relay.py``'s "gateway CPU µs/msg"). The event
loop thread's own share (``time.thread_time``) is shown beside it; the rest is
the transaction-log writer thread. CPU time, not wall time, so the figure holds
on a shared machine. ``--profile`` adds one cProfile'd window of the event loop
thread and prints its top entries, and those of the log writer thread.

``--with`` adds message policies to the chain, before the transform: a
``rate-limit`` per connection (client direction, far above the offered load,
so it costs its bucket arithmetic and never delays) and ``validate-messages``
(client messages enforced against two JSON Schema definitions selected by a
``type`` discriminator); ``--json`` makes the payload a JSON object of
``--size`` bytes that the schema accepts (implied by validate-messages). The
run also times each added policy's ``on_message`` on the compiled route, in
process, without the relay: the per-message cost of the policy alone.

``--big-neighbour`` measures something else: what one client sending big valid
JSON messages (``--big-size``, 1.7 MB by default) through a validate-messages
API does to another client's round trip on another API of the same gateway
(issue 21). The gateway has three APIs in front of the echo backend: ``/probe``
(no policies) and two with validate-messages and a schema the big messages
pass, one with ``offload_above: null`` (checked on the event loop) and one with
the default bound (checked in the validation thread). A probe child keeps one
64-byte message in flight on ``/probe`` (one every millisecond); in three
windows of ``--seconds``, no big sender, a big sender on the inline API, and
one on the offloaded API (one big message in flight, sent again when its echo
is back), plus one through a validate-messages API whose definition has no
schema (the message relay's own cost of such messages), it reports the probe's
round trip p50/p99/max and the big messages relayed per second. ``--rounds``
rounds, the phases taking turns in each, so a busy machine weighs on all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    TUTORIAL_MARKER,
    EchoBackend,
    LoadLeg,
    api_doc,
    application_doc,
    frame_head,
    gateway_doc,
    port_doc,
    tutorial_policies,
    write_gateway_config,
)
from websockets.utils import generate_key  # noqa: E402

API_KEY = "micro-bench-key"  # a throwaway key for the generated config
MARKER = TUTORIAL_MARKER


def _json_payload(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 40) that the validate-messages definitions accept."""
    head = b'{"type":"tick","seq":12345,"data":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


# ------------------------------------------------------------------ children


def _tutorial_leg(stats: list[int], size: int, inflight: int, json_payload: bool = False) -> LoadLeg:
    """A load leg through the tutorial API: text frames of ``size`` bytes, answered with the transform's mark."""
    payload = _json_payload(size) if json_payload else b"x" * size
    # A zero mask key: the gateway unmasks all the same, and the frames can be built once.
    frame = frame_head(0x1, size, True) + b"\x00\x00\x00\x00" + payload
    echoed = size + len(MARKER.encode())
    request = (
        f"GET /tutorial?x-Gateway-APIKey={API_KEY} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {generate_key()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return LoadLeg(stats, request, frame, len(frame_head(0x1, echoed, False)) + echoed, inflight)



async def _child(role: str, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stats = [0]
    if role == "backend":
        server = await loop.create_server(EchoBackend, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
    else:
        for _ in range(args.conns):
            await loop.create_connection(lambda: _tutorial_leg(stats, args.size, args.inflight, args.json), "127.0.0.1",
                                         args.port)
        print("ready", flush=True)
    # Each line on stdin asks for the echo count so far; EOF ends the child.
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(stats[0], flush=True)


def _spawn(role: str, args: argparse.Namespace, port: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--port", str(port), "--size", str(args.size),
         "--conns", str(args.conns), "--inflight", str(args.inflight), *(["--json"] if args.json else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- big neighbour

BIG_DEFINITIONS = """\
messages:
  - name: batch
    origin: client
    schema:
      type: object
      properties:
        type: {const: batch}
        items:
          type: array
          items:
            type: object
            properties:
              id: {type: integer, minimum: 0}
              name: {type: string}
              price: {type: number}
              tags: {type: array, items: {type: string}}
              ok: {type: boolean}
            required: [id, name, price]
      required: [type, items]
limits:
  max_message_size: 8388608
"""


def _big_payload(size: int) -> str:
    """A JSON batch of at least ``size`` bytes that BIG_DEFINITIONS accepts (~90 bytes per item)."""
    item = '{{"id":{0},"name":"item-{0}","price":{0}.5,"tags":["red","green","blue"],"ok":true}}'
    items = []
    total = 0
    i = 0
    while total < size:
        items.append(item.format(i))
        total += len(items[-1]) + 1
        i += 1
    return '{"type":"batch","items":[' + ",".join(items) + "]}"


async def _probe_child(port: int) -> None:
    """One 64-byte message in flight on /probe, one a millisecond; each stdin line gets the round trips (s) since
    the previous line, as JSON."""
    import json

    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    async with connect(f"ws://127.0.0.1:{port}/probe", compression=None) as ws:
        print("ready", flush=True)

        async def answer() -> None:
            while await loop.run_in_executor(None, sys.stdin.readline):
                taken = rtts[:]
                rtts.clear()
                print(json.dumps(taken), flush=True)

        asker = asyncio.create_task(answer())
        message = "p" * 64
        while not asker.done():
            start = time.perf_counter()
            await ws.send(message)
            await ws.recv()
            rtts.append(time.perf_counter() - start)
            await asyncio.sleep(0.001)


async def _big_child(port: int, path: str, size: int) -> None:
    """Big messages on ``path``, one in flight, until stdin ends; then prints how many came back."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    payload = _big_payload(size)
    echoed = 0
    async with connect(f"ws://127.0.0.1:{port}{path}", compression=None, max_size=None) as ws:
        print("ready", flush=True)
        stop = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
        while not stop.done():
            await ws.send(payload)
            if await ws.recv() != payload:
                raise RuntimeError("the big message came back changed")
            echoed += 1
    print(echoed, flush=True)


def _spawn_neighbour(role: str, port: int, path: str = "", size: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--port", str(port), "--path", path, "--big-size", str(size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


async def _big_neighbour(args: argparse.Namespace) -> None:
    import json

    from gateway.config import check
    from gateway.serving.runtime import Gateway

    _configure_logging(args.log_level)
    backend = _spawn("backend", args)
    tmp = Path(tempfile.mkdtemp(prefix="wsgate-big-"))
    gateway = probe = None
    loop = asyncio.get_running_loop()
    rows: dict[str, tuple[list[float], list[float], int]] = {}  # label: (round trips, p99 per round, big sent)
    try:
        assert backend.stdout is not None
        upstream = f"ws://127.0.0.1:{int(backend.stdout.readline())}/echo/"
        validate = "  - type: validate-messages\n"
        config = write_gateway_config(
            tmp, gateway_doc("big"), port_doc("micro"),
            api_doc("probe", "/probe", "micro", upstream),
            api_doc("big-inline", "/big-inline", "micro", upstream, extra=BIG_DEFINITIONS,
                    policies=validate + "    offload_above: null\n"),
            api_doc("big-offload", "/big-offload", "micro", upstream, extra=BIG_DEFINITIONS, policies=validate),
            api_doc("big-unchecked", "/big-unchecked", "micro", upstream, policies=validate,
                    extra="messages:\n  - {name: anything, origin: client}\nlimits:\n  max_message_size: 8388608\n"),
        )
        result = check([config])
        if result.config is None:
            raise RuntimeError(f"the generated config does not check: {result.diagnostics}")
        gateway = Gateway(result.config, admin=False, echo=False)
        await gateway.start()
        port = gateway.addresses["micro"][1]
        probe = _spawn_neighbour("probe", port)
        assert probe.stdin is not None and probe.stdout is not None
        if (await loop.run_in_executor(None, probe.stdout.readline)).strip() != "ready":
            raise RuntimeError("the probe did not connect")

        async def probe_window() -> list[float]:
            probe.stdin.write("\n")  # type: ignore[union-attr]
            probe.stdin.flush()  # type: ignore[union-attr]
            return json.loads(await loop.run_in_executor(None, probe.stdout.readline))  # type: ignore[union-attr]

        phases = (("no big sender", ""),
                  ("big sender, message relay without a schema (the relay's own share)", "/big-unchecked"),
                  ("big sender, checked on the loop (offload_above: null)", "/big-inline"),
                  ("big sender, checked in the worker process (offload_above: 65536)", "/big-offload"))
        for label, _ in phases:
            rows[label] = ([], [], 0)
        for _ in range(args.rounds):  # the phases take turns, so they share the machine's load alike
            for label, path in phases:
                big = _spawn_neighbour("big", port, path, args.big_size) if path else None
                if big is not None:
                    assert big.stdout is not None and big.stdin is not None
                    if (await loop.run_in_executor(None, big.stdout.readline)).strip() != "ready":
                        raise RuntimeError("the big sender did not connect")
                await asyncio.sleep(args.warmup)
                await probe_window()  # forget the warm-up
                await asyncio.sleep(args.seconds)
                rtts = await probe_window()
                sent = 0
                if big is not None:
                    big.stdin.close()  # type: ignore[union-attr]
                    sent = int(await loop.run_in_executor(None, big.stdout.readline))  # type: ignore[union-attr]
                    await loop.run_in_executor(None, big.wait, 10)  # its close handshake needs this loop
                pooled, p99s, total = rows[label]
                pooled += rtts
                p99s.append(_percentile(rtts, 0.99))
                rows[label] = (pooled, p99s, total + sent)
    finally:
        for child in (probe, backend):
            if child is not None and child.stdin is not None:
                child.stdin.close()
                await loop.run_in_executor(None, child.wait, 10)  # the probe's close handshake needs this loop
        if gateway is not None:
            await gateway.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"another API's round trip while one client sends {len(_big_payload(args.big_size)):,} B valid JSON "
          f"messages through validate-messages (one in flight), {args.rounds} rounds of {args.seconds:g} s "
          f"windows, the phases taking turns:")
    for label, (rtts, p99s, sent) in rows.items():
        rate = sent / (args.rounds * (args.seconds + args.warmup))
        print(f"  {label}: probe round trip p50 {_percentile(rtts, 0.5) * 1e3:.2f} ms, "
              f"p99 {_percentile(rtts, 0.99) * 1e3:.2f} ms, max {max(rtts) * 1e3:.2f} ms ({len(rtts)} samples; "
              f"p99 per round {', '.join(f'{v * 1e3:.0f}' for v in p99s)} ms)"
              + (f"; {rate:.1f} big messages/s" if rate else ""))


# ------------------------------------------------------------------- gateway


EXTRA_POLICIES = {
    "rate-limit": """\
  - type: rate-limit
    messages_per_second: 10000000
    bytes_per_second: 10000000000
""",
    "validate-messages": """\
  - type: validate-messages
    discriminator: type
""",
}
MESSAGE_DEFINITIONS = """\
messages:
  - name: tick
    origin: client
    max_size: 65536
    schema:
      type: object
      properties:
        type: {const: tick}
        seq: {type: integer, minimum: 0}
        data: {type: string}
      required: [type, seq]
  - name: subscribe
    origin: client
    schema:
      type: object
      properties:
        type: {const: subscribe}
        channels: {type: array, items: {type: string}}
      required: [type, channels]
"""


def _config(directory: Path, backend_port: int, extra: tuple[str, ...] = ()) -> Path:
    policies = tutorial_policies(5000, log_limits="    max_file_bytes: 67108864\n    backups: 1\n",
                                 before_transform="".join(EXTRA_POLICIES[name] for name in extra))
    return write_gateway_config(
        directory,
        gateway_doc("micro"),
        port_doc("micro"),
        api_doc("tutorial", "/tutorial", "micro", f"ws://127.0.0.1:{backend_port}/echo/", policies=policies,
                extra=MESSAGE_DEFINITIONS if "validate-messages" in extra else ""),
        application_doc("micro-app", API_KEY, "tutorial"),
        tutorial=True,
    )



def _configure_logging(level: str) -> None:
    import structlog

    from gateway.common.log import configure_logging

    configure_logging("json", level)
    sink = open(os.devnull, "w")  # noqa: SIM115 - the log sink stays open until the process exits
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))


class _Asker:
    """Asks the load child for its echo count."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    async def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline))


async def _window(asker: _Asker, seconds: float,
                  profiler: cProfile.Profile | None = None) -> tuple[float, float, float]:
    """(process CPU µs per echo, loop-thread CPU µs per echo, echoes/s) over one window."""
    echoes0 = await asker.count()
    cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    cpu1, thread1, wall1 = time.process_time(), time.thread_time(), time.perf_counter()
    echoes = await asker.count() - echoes0
    if echoes <= 0:
        raise RuntimeError("no echoes came back through the gateway")
    return (cpu1 - cpu0) / echoes * 1e6, (thread1 - thread0) / echoes * 1e6, echoes / (wall1 - wall0)


def _policy_costs(gateway: object, args: argparse.Namespace, n: int = 200_000) -> list[tuple[str, float]]:
    """µs per call of each added policy's on_message on the live route, with a connection of its own."""
    from gateway.policies.base import ConnectionContext, Message

    route = gateway.table.apis["tutorial"]  # type: ignore[attr-defined]
    payload = (_json_payload(args.size) if args.json else b"x" * args.size).decode()
    costs = []
    for policy in route.client_policies:
        if policy.type not in args.extra:
            continue
        conn = ConnectionContext(api="tutorial", api_version="1.0", port_name="micro", peer=("127.0.0.1", 1), path="/")
        message = Message("client", True, payload)
        on_message = policy.on_message
        start = time.thread_time()  # CPU time: on a busy machine wall time counts the other processes' turns
        for _ in range(n):
            on_message(message, conn)
        costs.append((policy.type, (time.thread_time() - start) / n * 1e6))
        conn.release()
    return costs


def _profile_log_writers() -> cProfile.Profile:
    """Run every LogWriter thread started from now on under one CPU-time profiler."""
    from gateway.policies import state

    profiler = cProfile.Profile(time.thread_time)
    run = state.LogWriter._run

    def profiled(self: state.LogWriter) -> None:
        profiler.runcall(run, self)

    state.LogWriter._run = profiled  # type: ignore[method-assign]
    return profiler


async def _main(args: argparse.Namespace) -> None:
    from gateway.config import check
    from gateway.serving.runtime import Gateway

    _configure_logging(args.log_level)
    writer_profiler = _profile_log_writers() if args.profile else None
    backend = _spawn("backend", args)
    tmp = Path(tempfile.mkdtemp(prefix="wsgate-micro-"))
    gateway = load = None
    try:
        assert backend.stdout is not None
        backend_port = int(backend.stdout.readline())
        result = check([_config(tmp, backend_port, args.extra)])
        if result.config is None:
            raise RuntimeError(f"the generated config does not check: {result.diagnostics}")
        gateway = Gateway(result.config, admin=False, echo=False)
        await gateway.start()
        port = gateway.addresses["micro"][1]
        load = _spawn("load", args, port)
        assert load.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, load.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"load generator: {line!r}")
        asker = _Asker(load)
        policy_costs = _policy_costs(gateway, args)
        await asyncio.sleep(args.warmup)
        runs = [await _window(asker, args.seconds) for _ in range(args.rounds)]
        profile_text = None
        if args.profile:
            profiler = cProfile.Profile(time.thread_time)  # CPU time: waits for the GIL or the kernel don't count
            await _window(asker, args.seconds, profiler)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile_top)
            profile_text = out.getvalue()
    finally:
        for child in (load, backend):
            if child is not None and child.stdin is not None:
                child.stdin.close()
                child.wait(10)
        if gateway is not None:
            await gateway.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    cpu = statistics.median(r[0] for r in runs)
    loop_cpu = statistics.median(r[1] for r in runs)
    rate = statistics.median(r[2] for r in runs)
    print(
        f"tutorial chain{''.join(' + ' + name for name in args.extra)} through the message relay: "
        f"{args.conns} connections x {args.inflight} in flight, {args.size} B {'JSON ' if args.json else ''}text, "
        f"log level {args.log_level}, median of {args.rounds} x {args.seconds:g} s"
    )
    print(f"  gateway CPU per echoed message: {cpu:.1f} µs (event loop thread {loop_cpu:.1f} µs, "
          f"other threads {cpu - loop_cpu:.1f} µs); {rate:,.0f} echoes/s")
    for name, cost in policy_costs:
        print(f"  {name} on_message alone, in process: {cost:.2f} µs per message")
    print("  every window (µs process, µs loop thread, echoes/s): "
          + "; ".join(f"{c:.1f} {t:.1f} {r:,.0f}" for c, t, r in runs))
    if profile_text:
        print("event loop thread, one window:")
        print(profile_text)
    if writer_profiler is not None:
        out = io.StringIO()
        pstats.Stats(writer_profiler, stream=out).sort_stats("tottime").print_stats(args.profile_top // 2)
        print("transaction-log writer thread, the whole run (warm-up and every window):")
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="measured windows; the median is reported")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--profile", action="store_true", help="one more window under cProfile (event loop thread)")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--with", dest="extra", default="",
                        help="comma-separated policies added to the chain: rate-limit, validate-messages")
    parser.add_argument("--json", action="store_true", help="JSON payloads (implied by validate-messages)")
    parser.add_argument("--big-neighbour", action="store_true",
                        help="measure another API's round trip while one client sends big JSON messages")
    parser.add_argument("--big-size", type=int, default=1_700_000, help="bytes of each big message")
    parser.add_argument("--role", choices=["backend", "load", "probe", "big"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.extra = tuple(name for name in args.extra.split(",") if name)
    unknown = set(args.extra) - set(EXTRA_POLICIES)
    if unknown:
        parser.error(f"--with: unknown policies {', '.join(sorted(unknown))}")
    args.json = args.json or "validate-messages" in args.extra
    if args.role == "probe":
        asyncio.run(_probe_child(args.port))
    elif args.role == "big":
        asyncio.run(_big_child(args.port, args.path, args.big_size))
    elif args.role:
        asyncio.run(_child(args.role, args))
    elif args.big_neighbour:
        asyncio.run(_big_neighbour(args))
    else:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
