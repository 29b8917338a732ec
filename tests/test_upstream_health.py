"""Health-checked upstreams: active and passive checks, failover, strategies, circuit breaking, 503 when none is up."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from health_support import Backend, backends, health_api
from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    eventually,
    gw_url,
    http_request,
    running_gateway,
    scrape,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.build.balance import SmoothWeightedRoundRobin, least_connections_order, rendezvous_order
from gateway.config.tree import Config
from gateway.serving.runtime import Gateway

EAGER_PASSIVE = "  passive:\n    failures: 1\n"
FAST_CHECKS = """\
  health_check:
    interval: 0.05
    timeout: 1
    healthy_threshold: 1
    unhealthy_threshold: 1
"""


def state(gw: Gateway, url: str) -> bool:
    return gw.health.endpoints[("H", url)].healthy


async def talk(gw: Gateway, client: str = "c", path: str = "/h") -> str:
    """One client: connect, send one message, return the backend's answer (names the backend)."""
    async with connect(gw_url(gw, path), additional_headers={"X-Client": client}) as ws:
        await ws.send("hi")
        return str(await ws.recv())


# ------------------------------------------------------------- plain values


def test_rendezvous_hashing_moves_about_one_in_n_keys():
    """Removing one of N endpoints moves only the keys it held (≈1/N); adding one takes ≈1/N, all to itself."""
    names = [f"ws://10.0.0.{i}:80/ws" for i in range(10)]
    keys = [f"client-{i}" for i in range(20000)]

    def owners(endpoints: list[str]) -> dict[str, str]:
        return {k: endpoints[rendezvous_order(k, endpoints, [1] * len(endpoints))[0]] for k in keys}

    before = owners(names)
    removed = owners(names[:3] + names[4:])
    moved = [k for k in keys if before[k] != removed[k]]
    assert all(before[k] == names[3] for k in moved)
    assert moved == [k for k in keys if before[k] == names[3]]
    assert len(keys) / 10 / 2 < len(moved) < len(keys) / 10 * 2

    added = owners([*names, "ws://10.0.0.99:80/ws"])
    taken = [k for k in keys if before[k] != added[k]]
    assert all(added[k] == "ws://10.0.0.99:80/ws" for k in taken)
    assert len(keys) / 11 / 2 < len(taken) < len(keys) / 11 * 2
    # The spread is even enough that no endpoint holds twice its share.
    assert max(Counter(before.values()).values()) < 2 * len(keys) / 10


def test_weighted_hashing_and_round_robin_follow_weights():
    """A weight-3 endpoint holds about three times the keys of a weight-1 one; smooth round-robin interleaves."""
    keys = [f"k{i}" for i in range(6000)]
    counts = Counter(rendezvous_order(k, ["a", "b"], [3, 1])[0] for k in keys)
    assert 2 < counts[0] / counts[1] < 4
    wrr = SmoothWeightedRoundRobin(3)
    picks = [wrr.order([0, 1, 2], [5, 1, 1])[0] for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]
    # Unhealthy endpoints are simply left out of the eligible list.
    assert [wrr.order([1, 2], [5, 1, 1])[0] for _ in range(4)] == [1, 2, 1, 2]
    assert least_connections_order([0, 1, 2], [4, 1, 2], [2, 1, 1]) == [1, 0, 2]


# -------------------------------------------------------- real processes


async def test_failover_moves_on_before_502_and_passive_check_skips_the_failed_endpoint(tmp_path):
    """A refusing endpoint costs the client nothing: the upgrade fails over, and later ones skip it while it cools."""
    async with backends("a", "b") as (a, b):
        a.refuse = True
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, strategy="straight-through",
                                                         upstream=EAGER_PASSIVE))
        async with running_gateway(config) as gw:
            assert await talk(gw) == "b:hi"
            assert len(a.requests) == 1 and a.upgrades == 0  # tried once, handshake only
            assert not state(gw, a.url)
            for _ in range(3):
                assert await talk(gw) == "b:hi"
            assert len(a.requests) == 1  # in its cool-down: never tried again
            admin = f"http://127.0.0.1:{gw.admin.port}"
            body = (await http_request(admin, path="/upstreams")).json()
            by_url = {e["url"]: e for e in body["apis"]["H"]}
            assert by_url[a.url]["healthy"] is False and "503" in by_url[a.url]["reason"]
            assert by_url[b.url]["healthy"] is True and by_url[b.url]["open"] == 0
            metrics = await scrape(gw)
            assert metrics.value("wsgate_upstream_healthy", api="H", endpoint=a.url) == 0
            assert metrics.value("wsgate_upstream_transitions_total", api="H", endpoint=a.url, state="unhealthy") == 1


async def test_all_endpoints_down_is_503_with_retry_after_never_a_hang(tmp_path):
    """When the active checks find every endpoint down, upgrades get 503 with Retry-After at once, and no
    endpoint sees them."""
    async with backends("a", "b") as (a, b):
        a.refuse = b.refuse = True
        upstream = FAST_CHECKS + "  retry_after: 7\n"
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, upstream=upstream))
        async with running_gateway(config) as gw:
            await gw.health.wait_for(lambda: not state(gw, a.url) and not state(gw, b.url), TIMEOUT)
            response = await http_request(gw_url(gw, "/h"), upgrade_request("/h", extra="X-Client: raw\r\n"))
            assert response.status == 503
            assert response.headers["retry-after"] == "7"
            assert response.json()["reason"] == "no healthy upstream endpoint"
            assert "raw" not in a.requests + b.requests  # only probes reached them


async def test_passive_checks_never_take_out_the_last_healthy_endpoint(tmp_path):
    """Failed upgrades alone do not turn a single-endpoint API into a 503: each client gets the real 502."""
    async with backends("a") as (a,):
        a.refuse = True
        config = write_config(tmp_path, PORT, health_api(a.url, upstream=EAGER_PASSIVE))
        async with running_gateway(config) as gw:
            for _ in range(3):
                assert (await http_request(gw_url(gw, "/h"), upgrade_request("/h"))).status == 502
            assert len(a.requests) == 3 and state(gw, a.url)


async def test_a_4xx_answer_is_the_requests_fault_not_the_endpoints(tmp_path):
    """An endpoint answering 404 gives the client 502 at once: no failover, and the endpoint stays healthy."""
    async with backends("b") as (b,):
        async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(not_found, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        try:
            config = write_config(tmp_path, PORT, health_api(url, b.url, strategy="straight-through",
                                                             upstream=EAGER_PASSIVE))
            async with running_gateway(config) as gw:
                response = await http_request(gw_url(gw, "/h"), upgrade_request("/h"))
                assert response.status == 502
                assert "404" in response.json()["reason"]
                assert b.requests == [] and state(gw, url)
        finally:
            server.close()


async def test_retries_zero_gives_the_first_error(tmp_path):
    """With `failover.retries: 0` a failed endpoint's error reaches the client and no other endpoint is tried."""
    async with backends("a", "b") as (a, b):
        a.refuse = True
        upstream = "  failover:\n    retries: 0\n"
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, strategy="straight-through",
                                                         upstream=upstream))
        async with running_gateway(config) as gw:
            assert (await http_request(gw_url(gw, "/h"), upgrade_request("/h"))).status == 502
            assert b.requests == []


async def test_consistent_hash_by_header_keeps_each_client_on_one_backend(tmp_path):
    """consistent-hash on a header sends every connection of one key to the same backend, and keys spread."""
    async with backends("a", "b", "c") as trio:
        routing = "    hash_on: header\n    hash_key: X-Client\n"
        config = write_config(tmp_path, PORT, health_api(*(b.url for b in trio), strategy="consistent-hash",
                                                         routing=routing))
        async with running_gateway(config) as gw:
            seen: dict[str, set[str]] = {}
            for round_ in range(3):
                for client in (f"user{i}" for i in range(12)):
                    seen.setdefault(client, set()).add((await talk(gw, client)).split(":")[0])
                assert round_ >= 0
            assert all(len(where) == 1 for where in seen.values())
            assert len({next(iter(where)) for where in seen.values()}) > 1


async def test_least_connections_prefers_the_idle_endpoint(tmp_path):
    """least-connections sends a new connection to the endpoint with fewer open ones."""
    async with backends("a", "b") as (a, b):
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, strategy="least-connections"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/h")) as held:
                await held.send("x")
                first = str(await held.recv()).split(":")[0]
                for _ in range(3):
                    assert (await talk(gw)).split(":")[0] != first


async def test_circuit_breaker_caps_pending_upgrades_per_endpoint(tmp_path):
    """An endpoint at `max_pending` handshakes is skipped; with none left the upgrade waits for a slot and gets
    503 when the failover budget runs out first."""
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        stalled.set()
        await release.wait()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        upstream = "  max_pending: 1\n  failover:\n    budget: 0.3\n"
        config = write_config(tmp_path, PORT, health_api(f"ws://127.0.0.1:{port}/ws", upstream=upstream))
        async with running_gateway(config) as gw:
            first = asyncio.create_task(http_request(gw_url(gw, "/h"), upgrade_request("/h")))
            await asyncio.wait_for(stalled.wait(), TIMEOUT)
            second = await http_request(gw_url(gw, "/h"), upgrade_request("/h"))
            assert second.status == 503
            assert "pending" in second.json()["reason"]
            assert "retry-after" in second.headers
            release.set()
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await first
    finally:
        server.close()


async def test_upgrades_past_the_pending_cap_queue_for_a_slot(tmp_path):
    """With the endpoint at `max_pending`, a further upgrade waits for the handshake in flight to end and is then
    served (a reconnect storm queues behind the cap instead of getting 503s)."""
    release = asyncio.Event()
    arrived = asyncio.Event()
    seen = 0

    async def process_request(connection, request):
        nonlocal seen
        seen += 1
        if seen == 1:  # the first handshake stalls until released
            arrived.set()
            await release.wait()

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        config = write_config(tmp_path, PORT, health_api(f"ws://127.0.0.1:{port}/ws", upstream="  max_pending: 1\n"))
        async with running_gateway(config) as gw:
            first = asyncio.create_task(connect(gw_url(gw, "/h")).__aenter__())
            await asyncio.wait_for(arrived.wait(), TIMEOUT)
            second = asyncio.create_task(connect(gw_url(gw, "/h")).__aenter__())
            route = gw.table.lookup("default", "/h")
            assert route is not None
            await eventually(lambda: bool(route.slot_waiters), TIMEOUT)
            assert not second.done()  # queued behind the cap, not refused
            release.set()
            async with asyncio.timeout(TIMEOUT):
                for ws in (await first, await second):
                    await ws.send("q")
                    assert await ws.recv() == "q"
                    await ws.close()
    assert seen == 2


async def test_endpoint_killed_and_restarted_under_load(tmp_path):
    """Under load, a killed endpoint is detected; after that no client sees a 502; restarted, it gets traffic again;
    connections on the surviving endpoint are never moved."""
    async with backends("a", "b") as (a, b):
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, upstream=FAST_CHECKS))
        async with running_gateway(config) as gw:
            outcomes: list[tuple[str, str]] = []  # (phase, backend name or status)
            phase = "before"
            stop = asyncio.Event()

            async def client_loop(n: int) -> None:
                while not stop.is_set():
                    started = phase  # an outcome belongs to the phase its upgrade started in
                    try:
                        outcomes.append((started, (await talk(gw, f"load{n}")).split(":")[0]))
                    except InvalidStatus as exc:
                        outcomes.append((started, str(exc.response.status_code)))
                    except ConnectionClosed:  # was on the endpoint when it was killed: live, not moved
                        outcomes.append((started, "closed"))

            async with connect(gw_url(gw, "/h")) as survivor:
                await survivor.send("who")
                home = str(await survivor.recv()).split(":")[0]
                victim = a if home == "b" else b  # kill the endpoint the long-lived client is not on
                loops = [asyncio.create_task(client_loop(n)) for n in range(4)]
                await gw.health.wait_for(lambda: len(outcomes) >= 8, TIMEOUT)
                await victim.kill()
                phase = "killed"
                await gw.health.wait_for(lambda: not state(gw, victim.url), TIMEOUT)
                phase = "detected"
                mark = len(outcomes)
                await gw.health.wait_for(lambda: len(outcomes) >= mark + 20, TIMEOUT)
                phase = "restarting"
                await victim.start()  # same port
                await gw.health.wait_for(lambda: state(gw, victim.url), TIMEOUT)
                mark = len(outcomes)
                await gw.health.wait_for(
                    lambda: sum(1 for p, o in outcomes[mark:] if o == victim.name) >= 3, TIMEOUT)
                stop.set()
                await asyncio.gather(*loops)
                # The long-lived connection on the surviving endpoint was never touched.
                await survivor.send("still")
                assert await survivor.recv() == f"{home}:still"
            detected = [o for p, o in outcomes if p == "detected"]
            assert detected and set(detected) == {home}
            # Failover hides even the failures before detection: no upgrade was refused at all. Only
            # connections already on the victim when it died were closed.
            assert {o for _, o in outcomes} <= {"a", "b", "closed"}, Counter(outcomes)
            assert {o for p, o in outcomes if p not in ("before", "killed")} <= {"a", "b"}, Counter(outcomes)


async def test_flapping_endpoint_logs_transitions_only_and_clients_never_see_502(tmp_path):
    """An endpoint flapping up and down is taken out and put back each time, logged once per transition, and
    clients keep getting through the healthy endpoint."""
    async with backends("steady", "flappy") as (steady, flappy):
        config = write_config(tmp_path, PORT, health_api(steady.url, flappy.url, upstream=FAST_CHECKS))
        with capture_logs() as events:
            async with running_gateway(config) as gw:
                statuses: list[str] = []
                stop = asyncio.Event()

                async def client_loop() -> None:
                    while not stop.is_set():
                        try:
                            statuses.append((await talk(gw)).split(":")[0])
                        except InvalidStatus as exc:
                            statuses.append(str(exc.response.status_code))

                loop = asyncio.create_task(client_loop())
                for _ in range(3):
                    flappy.refuse = True
                    await gw.health.wait_for(lambda: not state(gw, flappy.url), TIMEOUT)
                    flappy.refuse = False
                    await gw.health.wait_for(lambda: state(gw, flappy.url), TIMEOUT)
                probes = gw.health.probes
                stop.set()
                await loop
                transitions = dict(gw.health.transitions)
        logged = [e["event"] for e in events if e.get("endpoint") == flappy.url
                  and e["event"] in ("endpoint_healthy", "endpoint_unhealthy")]
        assert logged == ["endpoint_unhealthy", "endpoint_healthy"] * 3
        assert transitions == {("H", flappy.url, "unhealthy"): 3, ("H", flappy.url, "healthy"): 3}
        assert probes > len(logged)  # probes that changed nothing were not logged
        assert statuses and set(statuses) <= {"steady", "flappy"}
        assert not any(e.get("endpoint") == steady.url for e in events if e["event"].startswith("endpoint_"))


async def test_health_state_survives_a_reload_for_unchanged_endpoints(tmp_path):
    """A reload that keeps an endpoint keeps its verdict; a new endpoint starts healthy and a removed one is gone."""
    async with backends("a", "b", "c") as (a, b, c):
        a.refuse = True
        config = write_config(tmp_path, PORT, health_api(a.url, b.url, strategy="straight-through",
                                                         upstream=EAGER_PASSIVE))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            assert await talk(gw) == "b:hi"
            assert not state(gw, a.url)
            before = gw.health.endpoints[("H", a.url)]
            write_config(tmp_path, PORT, health_api(a.url, c.url, strategy="straight-through",
                                                    upstream=EAGER_PASSIVE))
            outcome = await gw.reload()
            assert outcome.ok and not outcome.noop
            assert gw.health.endpoints[("H", a.url)] is before and not state(gw, a.url)
            assert ("H", b.url) not in gw.health.endpoints
            assert await talk(gw) == "c:hi"
            assert len(a.requests) == 1


async def test_changing_health_checks_and_weights_does_not_drain_live_connections(tmp_path):
    """Traffic settings steer new connections only: a reload that changes them leaves live ones open."""
    async with backends("a", "b") as (a, b):
        config = write_config(tmp_path, PORT, health_api(a.url, b.url))
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            async with connect(gw_url(gw, "/h")) as live:
                changed = health_api(a.url, b.url, strategy="least-connections", upstream=FAST_CHECKS)
                changed = changed.replace(f"- url: {b.url}", f"- url: {b.url}\n      weight: 3")
                write_config(tmp_path, PORT, changed)
                outcome = await gw.reload()
                assert outcome.ok and not outcome.noop
                assert outcome.drained == 0
                await live.send("still")
                assert str(await live.recv()).endswith(":still")


async def test_the_examples_health_checked_api_spreads_over_its_two_endpoints(tmp_path):
    """examples/apis/echoha.yaml: both endpoints on the example echo server are healthy in /upstreams and share
    the connections by weight (1:2)."""
    from support import EXAMPLES, tutorial_tree

    from echo.server import EchoService
    from gateway.config import check

    echo_model = check([EXAMPLES / "gateway" / "echo.yaml"]).config.echo_servers["demo-backend"].model
    backend = EchoService(echo_model, port=0)
    await backend.start()
    try:
        result = check([tutorial_tree(tmp_path, backend.port)])
        assert result.config is not None, result.diagnostics
        with capture_logs() as events:
            async with running_gateway(result.config) as gw:
                url = gw_url(gw, "/websocket/EchoHA/1.0") + "?x-Gateway-APIKey=tutorial-key"
                for _ in range(6):
                    async with connect(url) as ws:
                        await ws.send("ha")
                        assert await ws.recv() == "ha"
                admin = f"http://127.0.0.1:{gw.admin.port}"
                endpoints = (await http_request(admin, path="/upstreams")).json()["apis"]["EchoHA"]
                assert [e["healthy"] for e in endpoints] == [True, True]
        used = Counter(e["upstream"].rsplit("/", 2)[-2] for e in events if e["event"] == "connection_closed")
        assert used == {"echo": 2, "echo-replica": 4}
    finally:
        await backend.stop()


async def test_health_probes_carry_the_urls_credentials_and_reports_do_not(tmp_path):
    """An endpoint URL with user:password is probed with Basic credentials, and neither /upstreams nor the
    logs nor a --probe report show the password."""
    from support import recording_backend

    from gateway.edge.probe import shown

    assert shown("ws://user:s3cret@host:80/ws") == "ws://host:80/ws"

    async with recording_backend() as backend:
        url = backend.url.replace("ws://", "ws://user:s3cret@") + "/ws"
        with capture_logs() as events:
            config = write_config(tmp_path, PORT, health_api(url, upstream=FAST_CHECKS))
            async with running_gateway(config) as gw:
                await gw.health.wait_for(lambda: gw.health.probes >= 2, TIMEOUT)
                admin = f"http://127.0.0.1:{gw.admin.port}"
                body = (await http_request(admin, path="/upstreams")).body
        assert backend.requests[0].headers["Authorization"].startswith("Basic ")
        assert b"s3cret" not in body
        assert "s3cret" not in repr(events)


async def test_consistent_hash_keeps_keys_in_place_when_an_endpoint_is_removed_on_reload(tmp_path):
    """Sticky by query parameter across a reload that removes one of three endpoints: keys on the two that stay
    do not move; only the removed endpoint's keys go elsewhere."""
    async with backends("a", "b", "c") as trio:
        routing = "    hash_on: query\n    hash_key: room\n"

        def config_for(*chosen: Backend) -> Config:
            return write_config(tmp_path, PORT, health_api(*(b.url for b in chosen), strategy="consistent-hash",
                                                           routing=routing))

        config = config_for(*trio)
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            async def owners() -> dict[str, str]:
                out = {}
                for i in range(24):
                    async with connect(gw_url(gw, f"/h?room=r{i}")) as ws:
                        await ws.send("x")
                        out[f"r{i}"] = str(await ws.recv()).split(":")[0]
                return out

            before = await owners()
            assert set(before.values()) == {"a", "b", "c"}
            config_for(trio[0], trio[1])
            assert (await gw.reload()).ok
            after = await owners()
            moved = {k for k in before if before[k] != after[k]}
            assert moved == {k for k in before if before[k] == "c"}
            assert set(after.values()) <= {"a", "b"}


async def test_tcp_health_checks_see_a_dead_port_but_not_a_refused_upgrade(tmp_path):
    """`type: tcp` only connects: a killed endpoint goes unhealthy, one answering 503 to upgrades stays healthy."""
    async with backends("up", "dead") as (up, dead):
        up.refuse = True
        checks = FAST_CHECKS.replace("  health_check:\n", "  health_check:\n    type: tcp\n")
        config = write_config(tmp_path, PORT, health_api(up.url, dead.url, upstream=checks))
        async with running_gateway(config) as gw:
            await dead.kill()
            await gw.health.wait_for(lambda: not state(gw, dead.url), TIMEOUT)
            probes = gw.health.probes
            await gw.health.wait_for(lambda: gw.health.probes >= probes + 4, TIMEOUT)
            assert state(gw, up.url) and up.requests == []


async def test_health_probes_send_the_apis_upstream_headers(tmp_path):
    """Active probes carry `upstream.headers` (an upstream that requires its Authorization would otherwise be
    marked down), and /upstreams does not show the value."""
    from support import recording_backend

    async with recording_backend() as backend:
        checks = FAST_CHECKS + "  headers:\n    Authorization: {env: PROBE_AUTH}\n"
        config = write_config(tmp_path, PORT, health_api(backend.url + "/ws", upstream=checks))
        async with running_gateway(config, env={"PROBE_AUTH": "Bearer probe0marker"}) as gw:
            await gw.health.wait_for(lambda: gw.health.probes >= 1, TIMEOUT)
            body = (await http_request(f"http://127.0.0.1:{gw.admin.port}", path="/upstreams")).body
    assert backend.requests[0].headers["Authorization"] == "Bearer probe0marker"
    assert b"probe0marker" not in body
