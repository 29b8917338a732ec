"""Route tables retired by a reload: released exactly when the last live connection using their routes ends."""

from __future__ import annotations

from structlog.testing import capture_logs
from support import PORT, TIMEOUT, api_yaml, echo_backend, eventually, gw_url, reloadable_gateway, write_config
from websockets.asyncio.client import connect

SETTINGS = "kind: Gateway\nname: g\ndrain_grace: 0.2\nshutdown_timeout: 2\n"


def events(logs: list[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


async def roundtrip(ws, text: str) -> None:
    await ws.send(text)
    assert await ws.recv() == text


async def test_retired_table_is_released_when_its_last_connection_ends(tmp_path):
    """Two connections keep generation 1's table through a reload; it is released when the second of them
    ends, not at the first, and a connection on the new table does not hold it."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(tmp_path, PORT, SETTINGS, api_yaml("Echo", "/echo", url)) as (gw, _):
            first = await connect(gw_url(gw, "/echo"))
            second = await connect(gw_url(gw, "/echo"))
            with capture_logs() as logs:
                write_config(tmp_path, PORT, SETTINGS, api_yaml("Echo", "/echo", url), api_yaml("Other", "/o", url))
                outcome = await gw.reload("test")
                assert outcome.ok and (outcome.drained, outcome.revoked) == (0, 0)
                retired = events(logs, "route_table_retired")
                assert [(e["generation"], e["connections"]) for e in retired] == [(1, 2)]
                async with connect(gw_url(gw, "/echo")) as third:  # accepted with generation 2's table
                    await first.close()
                    await eventually(lambda: len(gw.registry.live) == 2, TIMEOUT)
                    assert events(logs, "route_table_released") == []
                    await roundtrip(second, "old table still serving")
                    await second.close()
                    await eventually(lambda: len(gw.registry.live) == 1, TIMEOUT)
                    assert [e["generation"] for e in events(logs, "route_table_released")] == [1]
                    await roundtrip(third, "new table untouched")
            assert [e["generation"] for e in events(logs, "route_table_released")] == [1]


async def test_retired_table_without_connections_is_released_at_once_and_a_drain_releases_the_other(tmp_path):
    """A reload that removes an API drains its connection with 1001: generation 1's table is released as that
    connection ends; generation 2's, which nobody used, is released at the next reload."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        async with reloadable_gateway(
            tmp_path, PORT, SETTINGS, api_yaml("Echo", "/echo", url), api_yaml("Gone", "/gone", url)
        ) as (gw, _):
            gone = await connect(gw_url(gw, "/gone"))
            with capture_logs() as logs:
                write_config(tmp_path, PORT, SETTINGS, api_yaml("Echo", "/echo", url))
                assert (await gw.reload("test")).drained == 1
                assert [e["connections"] for e in events(logs, "route_table_retired")] == [1]
                await gone.wait_closed()
                assert gone.close_code == 1001
                await eventually(lambda: not gw.registry.live, TIMEOUT)
                assert [e["generation"] for e in events(logs, "route_table_released")] == [1]
                write_config(tmp_path, PORT, SETTINGS, api_yaml("Echo", "/echo", url), api_yaml("New", "/new", url))
                assert (await gw.reload("test")).ok
                assert [e["generation"] for e in events(logs, "route_table_released")] == [1, 2]
