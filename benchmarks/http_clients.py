"""Client CPU per HTTP request: aiohttp against httpx, as the HTTP integrations of message routes use them.

    python benchmarks/http_clients.py [--requests 20000] [--concurrency 1 16] [--repeat 3]

An HTTP backend runs in a child process (``_servers.py http``: aiohttp.web answering each POST with its
body), so this process's CPU time is the client's alone. Each client POSTs a 64-byte text body with the
headers an integration sends, over a keep-alive pool, ``--requests`` times with ``--concurrency`` requests
in flight; the figure is this process's user+system CPU per request (``time.process_time``), the median
of ``--repeat`` runs, and the requests per second for scale. httpx is measured only when it is
installed (it is not a dependency of wsgate: ``pip install httpx``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import cpu_model
from _servers import Child

BODY = b'{"action": "say", "text": "a sixty-four byte message body, give or take."}'[:64]
HEADERS = {"Content-Type": "text/plain; charset=utf-8", "X-Gateway-Connection-Id": "c1", "X-Gateway-API": "Chat",
           "X-Gateway-Route": "say"}


async def _drive(post: Callable[[], Awaitable[bytes]], requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``requests`` posts with ``concurrency`` in flight."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            body = await post()
            assert body == BODY

    for _ in range(min(200, requests)):  # warm the pool and the code paths
        await post()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def aiohttp_run(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     skip_auto_headers=("User-Agent",)) as session:
        async def post() -> bytes:
            async with session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as response:
                return await response.read()

        return await _drive(post, requests, concurrency)


async def httpx_run(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(concurrency, 10))
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        async def post() -> bytes:
            response = await client.post(url, content=BODY, headers=HEADERS)
            return response.content

        return await _drive(post, requests, concurrency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    clients: dict[str, Callable[[str, int, int], Awaitable[tuple[float, float]]]] = {"aiohttp": aiohttp_run}
    try:
        import httpx  # noqa: F401
    except ImportError:
        print("httpx is not installed: measuring aiohttp only", file=sys.stderr)
    else:
        clients["httpx"] = httpx_run
    with tempfile.TemporaryDirectory() as tmp:
        backend = Child("http", [], Path(tmp) / "http.log")
        try:
            port = backend.wait_report(30)["port"]
            url = f"http://127.0.0.1:{port}/say"
            print(f"| client | in flight | client CPU µs/request | requests/s |  ({cpu_model()}, "
                  f"{args.requests} requests, median of {args.repeat})")
            print("| --- | --- | --- | --- |")
            for concurrency in args.concurrency:
                for name, run in clients.items():
                    runs = [asyncio.run(run(url, args.requests, concurrency)) for _ in range(args.repeat)]
                    cpu = statistics.median(c for c, _ in runs)
                    wall = statistics.median(w for _, w in runs)
                    print(f"| {name} | {concurrency} | {cpu / args.requests * 1e6:.0f} | "
                          f"{args.requests / wall:,.0f} |", flush=True)
        finally:
            backend.stop()


if __name__ == "__main__":
    main()
