"""Push across instances and workers through a real redis-server: sends reach the owner, publishes reach every
member, in order; Redis down answers 503 without hanging and recovers without a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from process_support import RunningProcess, start_wsgate
from push_support import PUSH_GATEWAY, connection_id, id_backend, push_api, push_client
from support import PORT, TIMEOUT, http_request
from websockets.asyncio.client import ClientConnection, connect

READY = ("default", "admin", "push")
GROUPS = "- from: query\n  name: shipment\n"

pytestmark = pytest.mark.slow


def cluster_config(tmp_path: Path, redis_url: str, backend: str, name: str = "config") -> Path:
    root = tmp_path / name
    root.mkdir()
    gateway = PUSH_GATEWAY + f"state:\n  backend: redis\n  url: {redis_url}\n"
    documents = (PORT, gateway, push_api("Track", "/track", backend, groups=GROUPS))
    (root / "gateway.yaml").write_text("".join(d if d.startswith("---") else "---\n" + d for d in documents))
    return root


@contextlib.asynccontextmanager
async def instances(root: Path, *extra: tuple[str, ...]) -> AsyncIterator[list[RunningProcess]]:
    """One ``wsgate run`` per entry of ``extra`` (its extra arguments), all on ``root``; killed after."""
    running: list[RunningProcess] = []
    try:
        for args in extra:
            running.append(await start_wsgate(root, *args, ready=READY))
        yield running
    finally:
        for process in running:
            await process.kill()


@contextlib.asynccontextmanager
async def client(process: RunningProcess, query: str = "") -> AsyncIterator[tuple[ClientConnection, str]]:
    async with connect(f"ws://127.0.0.1:{process.ports['default']}/track{query}") as ws:
        yield ws, await connection_id(ws)


async def test_three_instances_send_publish_and_order(tmp_path, redis_server) -> None:
    """A send through C reaches a client on A; a publish through B reaches members on A, B and C (C with two
    workers) and no one else; 1,000 pushes arrive in order; once A is gone its ids answer 410."""
    async with id_backend() as backend:
        root = cluster_config(tmp_path, redis_server.url, backend)
        async with instances(root, (), (), ("--workers", "2")) as (a, b, c):
            async with client(a, "?shipment=S1") as (on_a, id_a), client(b, "?shipment=S1") as (on_b, _), \
                    client(c, "?shipment=S1") as (on_c, _), client(c, "?shipment=S2") as (other, _), \
                    push_client(c.ports["push"]) as via_c, push_client(b.ports["push"]) as via_b:
                assert await via_c.send("Track", id_a, "from C") == (200, {"connection": id_a,
                                                                           "result": "delivered"})
                assert await on_a.recv() == "from C"
                status, info = await via_b.get("Track", id_a)
                assert status == 200 and info["groups"] == ["shipment:S1"]
                status, body = await via_b.publish("Track", "shipment:S1", "moved")
                assert status == 200 and body["delivered"] == 1 and body["cluster"] == "handed"
                assert body["processes"] == 3  # A and C's two workers
                for ws in (on_a, on_b, on_c):
                    assert await ws.recv() == "moved"
                # The S2 member got nothing: the next thing it sees is a message sent to it alone.
                await other.send("ping")
                assert await other.recv() == "ping"
                # In order per connection: 1,000 pushes through C to the client on A.
                for n in range(1000):
                    assert (await via_c.send("Track", id_a, str(n)))[0] == 200
                received = [await on_a.recv() for _ in range(1000)]
                assert received == [str(n) for n in range(1000)]
                await a.kill()
                status, body = await via_b.send("Track", id_a, "anyone?")
                assert status == 410 and body["error"] == "gone"


async def test_redis_down_answers_503_and_recovers(tmp_path, redis_server) -> None:
    """Redis killed during publishes: no crash, local deliveries go on, remote ones answer 503, and once Redis is
    back the cluster delivers again without a restart."""
    async with id_backend() as backend:
        root = cluster_config(tmp_path, redis_server.url, backend)
        async with instances(root, (), ()) as (a, b):
            async with client(a, "?shipment=S1") as (on_a, _), client(b, "?shipment=S1") as (on_b, id_b), \
                    push_client(a.ports["push"]) as via_a:
                assert (await via_a.publish("Track", "shipment:S1", "before"))[1]["processes"] == 1
                assert await on_a.recv() == "before" and await on_b.recv() == "before"
                redis_server.stop()
                for n in range(5):
                    status, body = await via_a.publish("Track", "shipment:S1", f"down {n}")
                    assert status == 503 and body["error"] == "cluster_unavailable" and body["delivered"] == 1
                    assert await on_a.recv() == f"down {n}"  # the local member still gets it
                status, body = await via_a.send("Track", id_b, "to B")
                assert status == 503 and body["error"] == "cluster_unavailable"
                assert a.process.returncode is None and b.process.returncode is None
                redis_server.start(redis_server.port)
                async with asyncio.timeout(3 * TIMEOUT):
                    while True:  # both instances subscribe again on their own; wait until B is subscribed
                        status, body = await via_a.publish("Track", "shipment:S1", "after")
                        assert await on_a.recv() == "after"
                        if status == 200 and body["processes"] == 1:
                            break
                        await asyncio.sleep(0.1)
                assert await on_b.recv() == "after"
                assert await via_a.send("Track", id_b, "to B again") == (200, {"connection": id_b,
                                                                              "result": "delivered"})
                assert await on_b.recv() == "to B again"
                metrics = await _metrics(a)
                assert 'wsgate_push_cluster_errors_total{operation="publish"} 5.0' in metrics


async def _metrics(process: RunningProcess) -> str:
    response = await http_request(f"http://127.0.0.1:{process.ports['admin']}", path="/metrics")
    return response.body.decode()
