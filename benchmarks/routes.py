"""A message routed to an HTTP backend, next to a WebSocket upstream: gateway CPU per message and round trip p99.

    python benchmarks/routes.py [--conns 20] [--seconds 5] [--latency 2000]

Children: the echo backend (``_servers.py echo``), an HTTP backend answering each POST with its body
(``_servers.py http``) and one gateway with three APIs on one port:

* ``upstream``: an API with a WebSocket upstream (the echo backend) and no message-stage policy (byte relay);
* ``ws-route``: routes, the message's ``action`` selecting a route whose integration is the echo backend
  (a WebSocket upstream per client connection, the routed message relay);
* ``http-route``: routes, the message's ``action`` selecting an HTTP integration (a POST per message, the
  answer's body back to the client).

For each row: ``--conns`` connections each doing round trips (send, wait for the answer) for ``--seconds``;
gateway CPU µs per message is the gateway process's user+system CPU over that window divided by the round
trips (a message is one round trip: client → backend → client); then the p50/p99 of ``--latency`` round trips
on one connection. The load generator runs in this process (websockets' asyncio client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from _harness import cpu_model, gateway_doc, port_doc, write_gateway_config
from _servers import Child
from websockets.asyncio.client import connect

MESSAGE = json.dumps({"action": "go", "text": "x" * 30})  # 64 bytes of JSON


def routed_doc(name: str, path: str, integration: str) -> str:
    return (f"kind: API\nname: {name}\npath: {path}\nports: [bench]\nroute_selection: {{expression: action}}\n"
            f"limits: {{max_http_requests: 256}}\nroutes:\n  - key: go\n    integration: {integration}\n")


async def _load(url: str, conns: int, seconds: float) -> int:
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with connect(url, compression=None, max_size=None) as ws:
            while time.monotonic() < stop:
                await ws.send(MESSAGE)
                await ws.recv()
                done += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


async def _latency(url: str, count: int) -> tuple[float, float]:
    samples = []
    async with connect(url, compression=None) as ws:
        for _ in range(50):
            await ws.send(MESSAGE)
            await ws.recv()
        for _ in range(count):
            began = time.perf_counter()
            await ws.send(MESSAGE)
            await ws.recv()
            samples.append(time.perf_counter() - began)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99) - 1] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--latency", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        children = []
        try:
            echo = Child("echo", [], directory / "echo.log")
            children.append(echo)
            http = Child("http", [], directory / "http.log")
            children.append(http)
            ws_url = f"ws://127.0.0.1:{echo.wait_report(30)['port']}/echo/"
            http_url = f"http://127.0.0.1:{http.wait_report(30)['port']}/say"
            config = write_gateway_config(
                directory / "config", gateway_doc("bench"), port_doc("bench"),
                f"kind: API\nname: upstream\npath: /upstream\nports: [bench]\nupstream:\n"
                f"  endpoints:\n    - url: {ws_url}\n",
                routed_doc("ws-route", "/ws-route", f'{{websocket: {{url: "{ws_url}"}}}}'),
                routed_doc("http-route", "/http-route", f'{{http: {{url: "{http_url}"}}}}'),
            )
            gateway = Child("gateway", ["--config", str(config)], directory / "gateway.log")
            children.append(gateway)
            port = gateway.wait_report(60)["ports"]["bench"]
            print(f"| row | messages/s | gateway CPU µs/message | round trip p50 ms | p99 ms |  ({cpu_model()}, "
                  f"{args.conns} connections × 1 in flight, 64 B)")
            print("| --- | --- | --- | --- | --- |")
            for label, path in (("WebSocket upstream (byte relay)", "/upstream"),
                                ("message routed to a WebSocket upstream", "/ws-route"),
                                ("message routed to an HTTP backend", "/http-route")):
                url = f"ws://127.0.0.1:{port}{path}"
                asyncio.run(_load(url, args.conns, 0.5))  # warm up: pools, upstream connections
                cpu = gateway.cpu_seconds()
                began = time.perf_counter()
                messages = asyncio.run(_load(url, args.conns, args.seconds))
                wall = time.perf_counter() - began
                per_message = (gateway.cpu_seconds() - cpu) / messages * 1e6
                p50, p99 = asyncio.run(_latency(url, args.latency))
                print(f"| {label} | {messages / wall:,.0f} | {per_message:.0f} | {p50:.2f} | {p99:.2f} |", flush=True)
        finally:
            for child in reversed(children):
                child.stop()


if __name__ == "__main__":
    main()
