"""Connection ids: unique across the cluster, naming their owner, sent upstream and logged."""

from __future__ import annotations

from support import PORT, api_yaml, gw_url, logged, recording_backend, running_gateway, write_config
from websockets.asyncio.client import connect

from gateway.common.connection_ids import INSTANCE_ENV, ConnectionIds, Owner, ids, instance_from_environment, parse


def test_id_names_instance_worker_and_counter() -> None:
    """An id parses back to the owner that gave it; anything else is no id."""
    source = ConnectionIds()
    source.configure(Owner("abc123", "2-4711"))
    first, second = source.next(), source.next()
    assert (first, second) == ("abc123.2-4711.1", "abc123.2-4711.2")
    owner = parse(first)
    assert owner == Owner("abc123", "2-4711") and owner.index == 2 and owner.pid == 4711
    assert parse("abc123.0.7") == Owner("abc123", "0")
    for bad in ("c1", "abc.0", "ABC.0.1", "abc.x.1", "abc.0.1.2", "abc.0.x"):
        assert parse(bad) is None


def test_configured_instance_id_from_the_environment() -> None:
    """WSGATE_INSTANCE_ID names the instance when valid; otherwise a random one is drawn."""
    assert instance_from_environment({INSTANCE_ENV: "Edge-1"}) == "edge-1"
    drawn = instance_from_environment({INSTANCE_ENV: "not valid!"})
    assert len(drawn) == 8 and drawn != "not valid!"


async def test_upstream_receives_the_connection_id_and_the_log_names_it(tmp_path) -> None:
    """The upstream gets X-Gateway-Connection-Id (the client cannot set it) and connection_closed carries it."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url + "/e"))
        async with running_gateway(config) as gw:
            with logged() as events:
                async with connect(gw_url(gw, "/echo"),
                                   additional_headers={"X-Gateway-Connection-Id": "spoofed.0.1"}) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
                    (record,) = [r for r in gw.registry.live if r.relay is not None]
                    assert record.conn is not None
                    given = record.conn.id
                closed = await events.first("connection_closed")
    assert backend.headers.get_all("X-Gateway-Connection-Id") == [given]
    assert parse(given) == ids.owner
    assert closed["connection"] == given
