"""How evenly N asyncio worker processes share accepted connections: one inherited socket vs SO_REUSEPORT.

    python benchmarks/accept_balance.py [--workers 2] [--connections 2000] [--burst 50]

Each worker is a plain asyncio server that answers every connection with its
index and keeps it open until the client closes; the client opens
``connections`` connections in bursts of ``burst`` concurrent ones and counts
who answered. This is what `wsgate run --workers N` chose its listening
sockets by (docs/deploying.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
from collections import Counter


def _worker(index: int, mode: str, port: int, fd: int | None, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"{index}\n".encode())
            await reader.read()  # until the client closes
            writer.close()

        if mode == "inherited":
            assert fd is not None
            server = await asyncio.start_server(answer, sock=socket.socket(fileno=fd), backlog=1024)
        else:
            server = await asyncio.start_server(answer, "127.0.0.1", port, reuse_port=True, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _client(port: int, connections: int, burst: int) -> Counter[str]:
    counts: Counter[str] = Counter()

    async def one() -> tuple[str, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return (await reader.readline()).decode().strip(), writer

    for _ in range(connections // burst):
        results = await asyncio.gather(*(one() for _ in range(burst)))
        for who, writer in results:
            counts[who] += 1
            writer.close()
    return counts


def measure(mode: str, workers: int, connections: int, burst: int) -> Counter[str]:
    context = multiprocessing.get_context("fork")
    listener: socket.socket | None = None
    if mode == "inherited":
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        port, fd = listener.getsockname()[1], listener.fileno()
    else:
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))  # reserves the number; a socket that does not listen gets no connections
        port, fd = holder.getsockname()[1], None
        listener = holder
    readies = [context.Event() for _ in range(workers)]
    procs = [context.Process(target=_worker, args=(i, mode, port, fd, readies[i]), daemon=True)
             for i in range(workers)]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(10)
    try:
        return asyncio.run(_client(port, connections, burst))
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=50)
    args = parser.parse_args()
    print(f"{args.workers} workers, {args.connections} connections in bursts of {args.burst}, cpus={os.cpu_count()}")
    for mode in ("inherited", "reuseport"):
        counts = measure(mode, args.workers, args.connections, args.burst)
        shares = [counts.get(str(i), 0) for i in range(args.workers)]
        print(f"  {mode:10} per worker {shares}  max/ideal {max(shares) / (args.connections / args.workers):.2f}")


if __name__ == "__main__":
    main()
