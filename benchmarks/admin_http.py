"""Requests/s of ``GET /healthz`` on the admin listener's HTTP server, and on the candidates for it.

    python benchmarks/admin_http.py [--seconds 3] [--connections 8] [--servers admin,aiohttp,h11]

Each server runs alone in a child process on 127.0.0.1:0; the client (this
process) keeps ``connections`` connections open and sends one request at a
time on each (keep-alive), counting complete answers for ``seconds`` after a
one-second warm-up. A server that closes after every answer (the admin before
issue 22 did: ``Connection: close``) is measured the same way, the client
reconnecting after each answer, which is what its callers paid.

- ``admin``: ``gateway.operations.admin.AdminServer`` as it is in this tree;
- ``aiohttp``: aiohttp's low-level ``web.Server`` on asyncio's own listener;
- ``h11``: a minimal h11 driver over asyncio streams (skipped unless h11 is installed).

Written for issue 22, which moved the admin onto aiohttp: the numbers are in that commit's message.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO, cpu_model  # noqa: E402

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"


# ------------------------------------------------------------------ servers


async def _admin_server() -> tuple[int, object]:
    sys.path.insert(0, str(REPO))
    from gateway.operations import admin

    class View:  # /healthz reads nothing of the gateway; the accept loop counts its errors here
        def accept_error(self, listener: str) -> None:
            pass

    server = admin.AdminServer(View(), "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    return server.port, server


async def _aiohttp_server() -> tuple[int, object]:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    server = web.Server(handle, access_log=None)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    return listener.sockets[0].getsockname()[1], (server, listener)


async def _h11_server() -> tuple[int, object]:
    import h11

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(event, h11.Request):
                continue
            if isinstance(event, h11.EndOfMessage):
                body = b'{"status": "ok"}'
                writer.write(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(body)))])))
                writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
                continue
            break
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    return listener.sockets[0].getsockname()[1], listener


SERVERS = {"admin": _admin_server, "aiohttp": _aiohttp_server, "h11": _h11_server}


def _serve(kind: str, pipe: Connection) -> None:
    async def main() -> None:
        port, keep = await SERVERS[kind]()
        pipe.send(port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until the parent says stop
        del keep

    asyncio.run(main())


# ------------------------------------------------------------------- client


async def _read_answer(reader: asyncio.StreamReader) -> bool:
    """One response; True when the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    await reader.readexactly(length)
    return keep


async def _loop(port: int, until: float, counts: list[int], measuring: list[bool]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < until:
        writer.write(REQUEST)
        keep = await _read_answer(reader)
        if measuring[0]:
            counts[0] += 1
        if not keep:
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


async def measure(port: int, seconds: float, connections: int) -> float:
    counts, measuring = [0], [False]
    start = time.monotonic()
    until = start + 1.0 + seconds
    tasks = [asyncio.create_task(_loop(port, until, counts, measuring)) for _ in range(connections)]
    await asyncio.sleep(1.0)
    measuring[0] = True
    began = time.monotonic()
    await asyncio.gather(*tasks)
    return counts[0] / (time.monotonic() - began)


def run_one(kind: str, seconds: float, connections: int) -> float | None:
    if kind == "h11":
        try:
            import h11  # noqa: F401
        except ImportError:
            return None
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(kind, child), daemon=True)
    process.start()
    port = parent.recv()
    try:
        return asyncio.run(measure(port, seconds, connections))
    finally:
        parent.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--servers", default="admin,aiohttp,h11")
    args = parser.parse_args()
    print(f"GET /healthz, {args.connections} keep-alive client connections, {args.seconds:g} s; {cpu_model()}")
    for kind in args.servers.split(","):
        rate = run_one(kind, args.seconds, args.connections)
        print(f"{kind:8} " + ("skipped (not installed)" if rate is None else f"{rate:9,.0f} requests/s"))


if __name__ == "__main__":
    main()
