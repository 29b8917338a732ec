"""Hot reload: time from a config file write to the new config serving, and messages lost/delayed under load.

    python benchmarks/reload.py [--reloads N] [--conns N] [--json out.json]

Runs ``python -m gateway run DIR`` (the real watcher: watchfiles + debounce)
against an in-process echo backend. ``--conns`` clients exchange numbered
messages (one in flight each) the whole time; each reload is an atomic-rename
save that adds an API, and the time until an upgrade on that API's path
succeeds is the write-to-serving time. Reports lost/duplicated/out-of-order
messages and round-trip latency overall and while reloads were in progress.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import api_doc, port_doc  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from echo.server import EchoService  # noqa: E402
from gateway.config.models import EchoContext, EchoServer  # noqa: E402

PORT = "---\n" + port_doc("default")


def _api(name: str, path: str, url: str) -> str:
    return "---\n" + api_doc(name, path, "default", url)


def _save(root: Path, text: str) -> None:
    tmp = root / ".gateway.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / "gateway.yaml")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _client(index: int, url: str, stop: asyncio.Event, samples: list[tuple[float, float]],
                  errors: list[str]) -> int:
    """One message in flight; every echo must be the number just sent."""
    sent = 0
    try:
        async with connect(url, compression=None) as ws:
            while not stop.is_set():
                started = time.perf_counter()
                await ws.send(f"{index}:{sent}")
                reply = await ws.recv()
                if reply != f"{index}:{sent}":
                    errors.append(f"client {index}: expected {index}:{sent}, got {reply}")
                    return sent
                samples.append((started, time.perf_counter() - started))
                sent += 1
    except Exception as exc:  # a closed connection is exactly what this measures
        errors.append(f"client {index}: {exc!r}")
    return sent


async def _serving(url: str, deadline: float) -> bool:
    while time.perf_counter() < deadline:
        try:
            async with connect(url, compression=None, open_timeout=2):
                return True
        except (InvalidStatus, OSError):
            await asyncio.sleep(0.002)
    return False


async def bench(args: argparse.Namespace) -> dict:
    contexts = [EchoContext(path="/echo/", mode="echo")]
    backend = EchoService(EchoServer(kind="EchoServer", name="bench-echo", port=1, contexts=contexts), port=0)
    await backend.start()
    work = Path(tempfile.mkdtemp(prefix="wsgate-reload-bench-"))
    root = work / "config"
    root.mkdir()
    upstream = backend.url("/echo/")
    base = PORT + _api("Echo", "/echo", upstream)
    _save(root, base)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", str(root), "--admin", "127.0.0.1:0", "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(REPO),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    port: int | None = None
    warmup_applied = 0
    watching = asyncio.Event()
    admin_up = asyncio.Event()
    applied: list[dict] = []

    async def read_logs() -> None:
        nonlocal port
        while line := (await process.stdout.readline()).decode():  # type: ignore[union-attr]
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("event") == "listening" and event.get("name") == "default":
                port = event["port"]
            if event.get("event") == "listening" and event.get("name") == "admin":
                admin_up.set()
            if port is not None and admin_up.is_set():  # the admin may log its line before the ports do
                watching.set()
            if event.get("event") == "reload_applied":
                applied.append(event)

    reader = asyncio.create_task(read_logs())
    try:
        await asyncio.wait_for(watching.wait(), 30)
        assert port is not None
        gw = f"ws://127.0.0.1:{port}"
        # The watch is started right after the admin listener; make sure it is in place before measuring.
        warm = 0
        while True:
            warm += 1
            _save(root, base + f"# warm {warm}\n" + _api("Warm", "/warm", upstream))
            if await _serving(gw + "/warm", time.perf_counter() + 1.0):
                break
        _save(root, base)
        deadline = time.perf_counter() + 30
        while await _serving(gw + "/warm", time.perf_counter() + 0.05) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)  # until the warm-up API is gone again: the base config is applied

        warmup_applied = len(applied)
        stop = asyncio.Event()
        samples: list[tuple[float, float]] = []
        errors: list[str] = []
        clients = [asyncio.create_task(_client(i, gw + "/echo", stop, samples, errors)) for i in range(args.conns)]
        await asyncio.sleep(args.settle)
        windows: list[tuple[float, float]] = []
        write_to_serving: list[float] = []
        text = base
        for i in range(args.reloads):
            text += _api(f"R{i}", f"/r{i}", upstream)
            written = time.perf_counter()
            _save(root, text)
            ok = await _serving(f"{gw}/r{i}", written + 30)
            served = time.perf_counter()
            if ok:
                write_to_serving.append(served - written)
            windows.append((written, served))
            print(f"reload {i + 1}/{args.reloads}: {1000 * (served - written):.1f} ms", file=sys.stderr)
            await asyncio.sleep(args.settle)
        stop.set()
        sent = await asyncio.gather(*clients)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await reader
        await backend.stop()

    during = [rtt for started, rtt in samples if any(a <= started <= b for a, b in windows)]
    overall = [rtt for _, rtt in samples]
    return {
        "reloads": args.reloads,
        "connections": args.conns,
        "reloads_applied": len(applied) - warmup_applied,
        "write_to_serving_ms": {
            "p50": 1000 * statistics.median(write_to_serving) if write_to_serving else None,
            "max": 1000 * max(write_to_serving) if write_to_serving else None,
        },
        "messages": sum(sent),
        "lost_or_misordered_or_closed": len(errors),
        "errors": errors[:10],
        "rtt_ms_overall": {"p50": 1000 * _pct(overall, 0.5), "p99": 1000 * _pct(overall, 0.99),
                           "max": 1000 * max(overall, default=float("nan"))},
        "rtt_ms_during_reload": {"p50": 1000 * _pct(during, 0.5), "p99": 1000 * _pct(during, 0.99),
                                 "max": 1000 * max(during, default=float("nan")), "samples": len(during)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--settle", type=float, default=0.3, help="seconds of plain load between reloads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    w, o, d = result["write_to_serving_ms"], result["rtt_ms_overall"], result["rtt_ms_during_reload"]
    print("| metric | value |\n|---|---|")
    print(f"| reloads applied | {result['reloads_applied']} of {result['reloads']} |")
    print(f"| write → serving p50 / max (ms) | {w['p50']:.1f} / {w['max']:.1f} |")
    print(f"| connections / messages | {result['connections']} / {result['messages']} |")
    print(f"| lost, duplicated, misordered or closed | {result['lost_or_misordered_or_closed']} |")
    print(f"| RTT overall p50 / p99 / max (ms) | {o['p50']:.2f} / {o['p99']:.2f} / {o['max']:.2f} |")
    print(f"| RTT during reloads p50 / p99 / max (ms) | {d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
