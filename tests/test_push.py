"""The push API on a live gateway: send, close, describe, groups and publish, scoped credentials."""

from __future__ import annotations

import asyncio
import json

import pytest
from push_support import (
    KEY,
    OTHER_KEY,
    PUSH_GATEWAY,
    connection_id,
    id_backend,
    push_api,
    push_client,
)
from support import PORT, TIMEOUT, gw_url, http_request, running_gateway, scrape, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.relay.message import MessageRelay


async def test_send_get_and_close_one_connection(tmp_path) -> None:
    """A backend sends text and binary to one connection, reads its counts, then closes it with its code."""
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend))
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            async with connect(gw_url(gw, "/track")) as ws:
                conn = await connection_id(ws)
                assert await push.send("Track", conn, "hello") == (200, {"connection": conn, "result": "delivered"})
                assert await ws.recv() == "hello"
                status, _ = await push.send("Track", conn, b"\x00\x01", content_type="application/octet-stream")
                assert status == 200 and await ws.recv() == b"\x00\x01"
                status, info = await push.get("Track", conn)
                assert status == 200
                assert info["api"] == "Track" and info["id"] == conn and info["groups"] == []
                assert info["messages_out"] == 3 and info["pushed"] == 2  # the id announcement and two pushes
                assert info["bytes_out"] >= 7 and info["connected_since"] > 0
                assert await push.close("Track", conn, 4001, "moved") == (200, {"connection": conn,
                                                                                 "result": "closing"})
                try:
                    async with asyncio.timeout(TIMEOUT):
                        await ws.recv()
                except ConnectionClosed:
                    pass
                assert ws.close_code == 4001 and ws.close_reason == "moved"
            status, body = await push.get("Track", conn)
            assert status == 404 and body["error"] == "not_found"


async def test_unknown_and_gone_connections(tmp_path) -> None:
    """No such id here is 404; an id whose instance is not this one (no cluster to reach it) is 410."""
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend))
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            async with connect(gw_url(gw, "/track")) as ws:
                conn = await connection_id(ws)
                instance, worker, _ = conn.split(".")
                assert (await push.send("Track", f"{instance}.{worker}.999999", "x"))[0] == 404
                assert (await push.send("Track", "not-an-id", "x"))[0] == 404
                status, body = await push.send("Track", f"0dead0.{worker}.1", "x")
                assert status == 410 and body["error"] == "gone"


async def test_credentials_are_scoped_to_their_api(tmp_path) -> None:
    """API X's key is refused on API Y (403), and X's path does not reach Y's connection (404)."""
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("X", "/x", backend),
                              push_api("Y", "/y", backend, key=OTHER_KEY))
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            async with connect(gw_url(gw, "/y")) as ws:
                conn = await connection_id(ws)
                status, body = await push.send("Y", conn, "x", key=KEY)
                assert status == 403 and body["error"] == "forbidden"
                assert (await push.send("X", conn, "x", key=KEY))[0] == 404
                status, body = await push.send("Y", conn, "x", key="")
                assert status == 401 and body["error"] == "unauthorized"
                assert (await push.send("Y", conn, "ok", key=OTHER_KEY))[0] == 200
                assert await ws.recv() == "ok"


async def test_groups_by_query_parameter_and_by_the_api(tmp_path) -> None:
    """A shipment query parameter joins shipment:<value>; a publish reaches its members and no one else."""
    groups = "- from: query\n  name: shipment\n"
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend, groups=groups))
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            async with connect(gw_url(gw, "/track?shipment=A1")) as a, \
                    connect(gw_url(gw, "/track?shipment=A1")) as b, \
                    connect(gw_url(gw, "/track?shipment=B2")) as c, \
                    connect(gw_url(gw, "/track")) as d:
                ids = [await connection_id(ws) for ws in (a, b, c, d)]
                assert (await push.get("Track", ids[0]))[1]["groups"] == ["shipment:A1"]
                status, body = await push.publish("Track", "shipment:A1", "moved")
                assert status == 200 and body["delivered"] == 2 and body["cluster"] == "none"
                assert await a.recv() == "moved" and await b.recv() == "moved"
                # The backend adds d to the group, takes b out; the next publish reaches a and d only.
                assert await push.join("Track", "shipment:A1", ids[3]) == (200, {"connection": ids[3],
                                                                                 "groups": ["shipment:A1"]})
                assert (await push.join("Track", "shipment:A1", ids[1], leave=True))[0] == 200
                status, body = await push.publish("Track", "shipment:A1", "arrived")
                assert body["delivered"] == 2
                assert await a.recv() == "arrived" and await d.recv() == "arrived"
                # A broadcast reaches every connection of the API; b and c see it as their next message.
                assert (await push.publish("Track", None, "all"))[1]["delivered"] == 4
                for ws in (a, b, c, d):
                    assert await ws.recv() == "all"


async def test_group_value_is_validated_at_the_upgrade(tmp_path) -> None:
    """A value that breaks the rule's pattern, or a missing required one, refuses the upgrade with 400."""
    groups = "- from: query\n  name: shipment\n  pattern: '^[A-Z][0-9]+$'\n  required: true\n"
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend, groups=groups))
        async with running_gateway(config) as gw:
            for query in ("?shipment=../etc", "", "?shipment="):
                try:
                    async with connect(gw_url(gw, "/track" + query)):
                        raise AssertionError("upgrade accepted")
                except InvalidStatus as exc:
                    assert exc.response.status_code == 400
                    assert b"group" in exc.response.body
            async with connect(gw_url(gw, "/track?shipment=A1")) as ws:
                assert await connection_id(ws)


async def test_push_runs_through_the_server_stage(tmp_path) -> None:
    """A pushed message is transformed by the API's server-stage transform, as an upstream message is; an API
    with push is relayed message by message even without message-stage policies."""
    root = tmp_path / "config"
    root.mkdir()
    (root / "shout.py").write_text("def up(message):\n    return message.payload.upper()\n")
    async with id_backend() as backend:
        plain = push_api("Plain", "/plain", backend)
        shouting = push_api("Shout", "/shout", backend, extra="""
            policies:
              - type: transform
                stage: server
                callable: shout:up
                messages: text
            """)
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, plain, shouting)
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            async with connect(gw_url(gw, "/shout")) as ws:
                conn = json.loads((await ws.recv()).lower())["id"]
                assert (await push.send("Shout", conn, "quiet please"))[0] == 200
                assert await ws.recv() == "QUIET PLEASE"
            async with connect(gw_url(gw, "/plain")) as ws:
                await connection_id(ws)
                relays = [r.relay for r in gw.registry.live if r.relay is not None]
                assert relays and all(isinstance(relay, MessageRelay) for relay in relays)


async def test_admin_lists_ids_and_groups(tmp_path) -> None:
    """The admin's /connections names each connection's id and push groups."""
    groups = "- from: query\n  name: shipment\n"
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend, groups=groups))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/track?shipment=Z9")) as ws:
                conn = await connection_id(ws)
                host, port = "127.0.0.1", gw.admin.port if gw.admin else 0
                listed = (await http_request(f"http://{host}:{port}", path="/connections")).json()["connections"]
                assert [(c["id"], c["groups"]) for c in listed] == [(conn, ["shipment:Z9"])]


def _post(port: int, path: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n".encode()


async def test_admin_closes_one_connection_by_id(tmp_path) -> None:
    """``POST /connections/close?id=`` closes that connection with 1008 and no other; an unknown id is 404, none 400."""
    async with id_backend() as backend:
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, push_api("Track", "/track", backend))
        async with running_gateway(config) as gw:
            assert gw.admin is not None
            admin = f"http://127.0.0.1:{gw.admin.port}"
            async with connect(gw_url(gw, "/track")) as ws, connect(gw_url(gw, "/track")) as other:
                conn = await connection_id(ws)
                await connection_id(other)
                answer = await http_request(admin, _post(gw.admin.port, f"/connections/close?id={conn}"))
                assert answer.status == 200 and answer.json() == {"connection": conn, "result": "closing"}
                async with asyncio.timeout(TIMEOUT):
                    await ws.wait_closed()
                assert ws.close_code == 1008 and ws.close_reason == "closed by an operator"
                await other.ping()  # the other connection is untouched
                unknown = await http_request(admin, _post(gw.admin.port, f"/connections/close?id={conn}x"))
                assert unknown.status == 404 and unknown.json()["error"] == "not_found"
                missing = await http_request(admin, _post(gw.admin.port, "/connections/close"))
                assert missing.status == 400
                assert (await http_request(admin, path="/connections/close")).status == 405


@pytest.mark.parametrize("action", ["drop", "close"])
async def test_slow_consumer_is_bounded(tmp_path, action) -> None:
    """A client that stops reading: pushes queue up to `push.queue`, then the next is dropped (429, counted) or the
    connection closed with 1013 (its queue discarded: at most once); what arrives is what was accepted, in order."""
    async with id_backend() as backend:
        api = push_api("Track", "/track", backend, push_extra=f"queue: 4\non_overflow: {action}\n")
        config = write_config(tmp_path, PORT, PUSH_GATEWAY, api)
        async with running_gateway(config) as gw, push_client(gw.push.port) as push:
            # max_queue=1: the client stops reading its socket once one message waits unread.
            async with connect(gw_url(gw, "/track"), max_queue=1, max_size=None) as ws:
                conn = await connection_id(ws)
                chunk = "x" * 65536
                accepted: list[int] = []
                queued: list[int] = []
                overflow = None
                for n in range(2000):  # the socket buffers fill after a few MB at most
                    status, body = await push.send("Track", conn, f"{n:06d}{chunk}")
                    if status == 429:
                        overflow = body
                        break
                    assert status in (200, 202)
                    accepted.append(n)
                    if status == 202:
                        queued.append(n)
                assert overflow is not None and overflow["result"] == ("dropped" if action == "drop" else "closed")
                if action == "drop":
                    status, info = await push.get("Track", conn)
                    assert status == 200 and info["queued"] == 4  # bounded: the queue never grows past it
                    assert (await push.send("Track", conn, "late"))[0] == 429
                if action == "close":  # what waited in the queue went with the connection
                    assert len(queued) == 4
                    accepted = [n for n in accepted if n not in queued]
                received = []
                try:
                    async with asyncio.timeout(TIMEOUT):
                        while len(received) < len(accepted):
                            received.append(int((await ws.recv())[:6]))
                        if action == "close":
                            await ws.recv()
                except ConnectionClosed:
                    pass
                assert received == accepted
                if action == "close":
                    assert ws.close_code == 1013
            text = (await scrape(gw)).text
            assert f'wsgate_push_overflows_total{{action="{action}",api="Track"}}' in text
