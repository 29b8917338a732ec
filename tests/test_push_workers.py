"""Push with ``--workers 2`` and no Redis: a request reaching either worker is delivered by the worker holding
the connection, through the supervisor; a dead worker's ids answer 410."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import pytest
from process_support import start_wsgate
from push_support import PUSH_GATEWAY, PushClient, connection_id, id_backend, push_api
from support import PORT, TIMEOUT, http_request
from websockets.asyncio.client import connect

from gateway.common.connection_ids import parse

pytestmark = pytest.mark.slow


async def test_any_worker_delivers_through_the_supervisor(tmp_path) -> None:
    """Sends through either worker reach clients on both; a publish reaches every member on both workers."""
    async with id_backend() as backend:
        root = tmp_path / "config"
        root.mkdir()
        groups = "- from: query\n  name: shipment\n"
        (root / "gateway.yaml").write_text("---\n" + PORT + "---\n" + PUSH_GATEWAY
                                           + push_api("Track", "/track", backend, groups=groups))
        gateway = await start_wsgate(root, "--workers", "2", ready=("default", "admin", "push"))
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = []
                for _ in range(16):
                    ws = await stack.enter_async_context(
                        connect(f"ws://127.0.0.1:{gateway.ports['default']}/track?shipment=S1"))
                    clients.append((ws, await connection_id(ws)))
                owners = {parse(conn) for _, conn in clients}
                assert len(owners) == 2  # the kernel spread 16 connections over both workers
                # A fresh TCP connection per request: the kernel picks the worker that answers each time.
                connector = aiohttp.TCPConnector(force_close=True)
                session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
                push = PushClient(session, f"http://127.0.0.1:{gateway.ports['push']}")
                for round_ in range(2):
                    for ws, conn in clients:
                        assert await push.send("Track", conn, f"{round_}:{conn}") == (
                            200, {"connection": conn, "result": "delivered"})
                        assert await ws.recv() == f"{round_}:{conn}"
                status, body = await push.publish("Track", "shipment:S1", "all of you")
                assert status == 200 and body["processes"] == 1
                for ws, _ in clients:
                    assert await ws.recv() == "all of you"
                # A worker dies: its connections' ids answer 410 through the other one.
                victim = next(iter(owners))
                assert victim is not None and victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                await gateway.wait_for("worker_died")
                doomed = next(conn for _, conn in clients if parse(conn) == victim)
                for _ in range(4):
                    status, body = await push.send("Track", doomed, "still there?")
                    assert status == 410 and body["error"] == "gone"
        finally:
            await gateway.kill()


async def test_the_admin_lists_and_closes_connections_of_either_worker(tmp_path) -> None:
    """With workers, ``/connections`` lists every connection's id and groups, and ``POST /connections/close`` closes
    one held by either worker with 1008 (the supervisor asks the worker its id names)."""
    async with id_backend() as backend:
        root = tmp_path / "config"
        root.mkdir()
        groups = "- from: query\n  name: shipment\n"
        (root / "gateway.yaml").write_text("---\n" + PORT + "---\n" + PUSH_GATEWAY
                                           + push_api("Track", "/track", backend, groups=groups))
        gateway = await start_wsgate(root, "--workers", "2", ready=("default", "admin", "push"))
        try:
            async with contextlib.AsyncExitStack() as stack:
                clients = []
                for _ in range(16):
                    ws = await stack.enter_async_context(
                        connect(f"ws://127.0.0.1:{gateway.ports['default']}/track?shipment=S2"))
                    clients.append((ws, await connection_id(ws)))
                owners = {parse(conn) for _, conn in clients}
                assert len(owners) == 2  # the kernel spread 16 connections over both workers
                admin_port = gateway.ports["admin"]
                admin = f"http://127.0.0.1:{admin_port}"
                listed = (await http_request(admin, path="/connections")).json()["connections"]
                assert sorted((c["id"], c["groups"]) for c in listed) == sorted(
                    (conn, ["shipment:S2"]) for _, conn in clients)
                for owner in owners:
                    ws, conn = next((ws, conn) for ws, conn in clients if parse(conn) == owner)
                    post = (f"POST /connections/close?id={conn} HTTP/1.1\r\nHost: 127.0.0.1:{admin_port}\r\n"
                            "Content-Length: 0\r\n\r\n").encode()
                    answer = await http_request(admin, post)
                    assert answer.status == 200 and answer.json() == {"connection": conn, "result": "closing"}
                    async with asyncio.timeout(TIMEOUT):
                        await ws.wait_closed()
                    assert ws.close_code == 1008
                    again = await http_request(admin, post)
                    assert again.status == 404
        finally:
            await gateway.kill()
