"""Draining after a reload: the event-loop time the connection registry spends as N connections end while
the route table they were accepted with waits to be released.

    python benchmarks/drain_untrack.py [--conns N] [--apis N] [--json out.json]

Tracks N connection records spread over the routes of one table, retires that table (as a reload does after
its swap), then untracks every record and times that. Before the per-route counts, each untrack rescanned
every live connection (O(N²) for the drain); now it is O(1) per connection. No sockets: this measures the
registry alone (the per-connection cost the real drain adds to closing the sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.edge.listener import Connection, PortListener  # noqa: E402
from gateway.serving.connections import ConnectionRegistry  # noqa: E402


class _Route:
    """Stands for a CompiledAPI: the registry only needs its identity."""


class _Table:
    """Stands for a RouteTable: its routes, its generation and whether it was released."""

    def __init__(self, apis: int, registry: ConnectionRegistry) -> None:
        self.apis = {f"api{i}": _Route() for i in range(apis)}
        self.generation = 1
        self.registry = registry
        self.released_with = -1  # connections still live when close() came (0: exactly at the last one)

    def close(self) -> None:
        self.released_with = len(self.registry.live)


async def bench(conns: int, apis: int) -> dict[str, float | int]:
    registry = ConnectionRegistry()
    listener = PortListener("default", False, 10.0, None, services=None)  # type: ignore[arg-type]
    table = _Table(apis, registry)
    routes = list(table.apis.values())
    records = []
    for i in range(conns):
        record = Connection(listener, client=None)  # type: ignore[arg-type]
        registry.track(record)
        registry.routed(record, routes[i % len(routes)])  # type: ignore[arg-type]
        records.append(record)
    began = time.perf_counter()
    registry.retire(table)  # type: ignore[arg-type]
    retired = time.perf_counter()
    for record in records:
        registry.untrack(record)
    ended = time.perf_counter()
    return {"connections": conns, "apis": apis, "retire_ms": 1000 * (retired - began),
            "untrack_all_ms": 1000 * (ended - retired), "untrack_us_each": 1e6 * (ended - retired) / conns,
            "released_with_live": table.released_with}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--apis", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(bench(args.conns, args.apis))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print("| metric | value |\n|---|---|")
    print(f"| connections / routes | {result['connections']} / {result['apis']} |")
    print(f"| retire (ms) | {result['retire_ms']:.3f} |")
    print(f"| untrack all (ms) | {result['untrack_all_ms']:.1f} |")
    print(f"| per untrack (µs) | {result['untrack_us_each']:.2f} |")
    print(f"| live connections when the table was released | {result['released_with_live']} |")
    return 0 if result["released_with_live"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
