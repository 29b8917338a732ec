"""Client CPU per Redis script call through redis-py, three ways, in one run (what `state: redis` pays per call).

    python benchmarks/redis_calls_micro.py [--calls 3000] [--rounds 3]

Starts a redis-server on a free port (the tests' starter) and, in this process, calls the slot script
(``gateway.state.redis_batch.SYNC``, one take and one give-back per call) one call at a time:

* ``Script object``: ``register_script(...)(keys=..., args=...)``, what the store used per take and give-back;
* ``execute_command``: ``EVALSHA`` through the client (pool lookup, retry wrapper, observability hooks);
* ``ScriptLine``: the store's own connection of redis-py's (what it uses now: no pool, no hooks per call).

Figures: this process's CPU (user+system, the event loop's polling included) per call, best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from redis_support import RedisServer  # noqa: E402 - the tests' redis-server starter: one copy of it

from gateway.state.redis_batch import SYNC, SYNC_SHA, ScriptLine  # noqa: E402


async def measure(args: argparse.Namespace, url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_timeout=0.5)
    owner = "bench.1"
    await client.zadd("{wsgate}:owners", {owner: 2**50})  # an owner that never expires
    keys = ["{wsgate}:owners", "{wsgate}:slots:bench"]
    call_args = [owner, 1, 1, 1_000_000]  # one give-back, then one take (index 1, limit)
    script = client.register_script(SYNC)
    line = ScriptLine(client)
    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "Script object": lambda: script(keys=keys, args=call_args),
        "execute_command": lambda: client.execute_command("EVALSHA", SYNC_SHA, len(keys), *keys, *call_args),
        "ScriptLine": lambda: line.run(keys, call_args),
    }
    await script(keys=keys, args=[owner, 0, 1, 1_000_000])  # loads the script; one slot held from here on
    for name, call in ways.items():
        best = float("inf")
        for _ in range(args.rounds):
            start = time.process_time()
            for _ in range(args.calls):
                assert await call() == [1]
            best = min(best, (time.process_time() - start) / args.calls * 1e6)
        print(f"{name:16} {best:6.1f} µs client CPU per call", flush=True)
    await line.close()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsgate-redis-calls-") as name:
        server = RedisServer(Path(name))
        server.start()
        try:
            asyncio.run(measure(args, server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
