"""Shared state: slots and budgets in memory and in a real Redis, shared by several gateway instances."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest
from process_support import start_wsgate
from redis_support import RedisServer
from structlog.testing import capture_logs
from support import PORT, TIMEOUT, api_yaml, eventually, gw_url, recording_backend, running_gateway, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.config.models import RedisState
from gateway.state import open_state
from gateway.state.memory import MemoryStore
from gateway.state.redis import RedisStore


def redis_store(server: RedisServer, heartbeat: float = 0.5, give_back_delay: float | None = None,
                **kwargs) -> RedisStore:
    settings = RedisState(backend="redis", url=server.url, heartbeat=heartbeat, timeout=0.3)
    store = open_state(settings, {}, **kwargs)
    assert isinstance(store, RedisStore)
    if give_back_delay is not None:
        store.give_back_delay = give_back_delay
    return store


def slot_counts(server: RedisServer, key: str) -> dict[str, int]:
    """What Redis holds for one slot key, per owner (read with a plain client)."""
    import redis

    client = redis.Redis(port=server.port)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall("{wsgate}:slots:" + key).items()}
    finally:
        client.close()


def gateway_doc(server: RedisServer, heartbeat: float = 0.5, timeout: float = 0.3) -> str:
    return (f"kind: Gateway\nname: g\nstate:\n  backend: redis\n  url: {server.url}\n"
            f"  heartbeat: {heartbeat}\n  timeout: {timeout}\n")


def throttled_api(url: str, limit: int, on_error: str = "allow") -> str:
    return api_yaml("A", "/a", url + "/", extra=f"policies:\n  - type: throttle\n    max_connections: {limit}\n"
                    f"    on_state_error: {on_error}\n")


async def try_upgrade(url: str):
    """Open a connection; the client, or the refusal's HTTP status."""
    try:
        return await connect(url, open_timeout=TIMEOUT)
    except InvalidStatus as exc:
        return exc.response.status_code


# ------------------------------------------------------------------ memory


def test_memory_slots_are_all_or_nothing():
    """The memory backend takes slots up to the limit, refuses past it and frees on release."""
    store = MemoryStore()
    assert [store.acquire("k", 2) for _ in range(3)] == [True, True, False]
    store.release("k")
    assert store.acquire("k", 2) is True
    assert store.health() == {"backend": "memory", "healthy": True}


def test_memory_budget_grants_up_to_the_burst():
    """A fresh bucket grants its burst, then only what the rate has refilled (here: nothing, the rate is tiny)."""
    store = MemoryStore()
    assert store.take_budget("m", 7, 1e-9, 10) == 7
    assert store.take_budget("m", 7, 1e-9, 10) == 3
    assert store.take_budget("m", 1, 1e-9, 10) == 0


# ------------------------------------------------------------------- redis


def test_a_slot_batch_names_each_hash_once_and_keeps_the_takes_in_order():
    """A batch's script arguments: each slot hash once (give-backs first), its give-back count, then one
    (hash index, limit) pair per take in issue order."""
    from gateway.state.redis_batch import SlotBatch, Take

    loop = asyncio.new_event_loop()
    try:
        batch = SlotBatch()
        assert not batch
        batch.gives["b"] = 2
        batch.takes = [Take(key, limit, "allow", loop.create_future()) for key, limit in (("a", 5), ("b", 3), ("a", 7))]
        keys, args = batch.encode("owners", "me.1", lambda key: "slots:" + key)
        assert keys == ["owners", "slots:b", "slots:a"]
        assert args == ["me.1", 2, 0, 2, 5, 1, 3, 2, 7]
    finally:
        loop.close()


async def test_redis_stores_share_one_limit(redis_server):
    """Two stores (two instances) on one Redis count against one limit, and a release frees a slot for the other."""
    a, b = redis_store(redis_server), redis_store(redis_server)
    await a.start()
    await b.start()
    try:
        assert a.health()["healthy"] and b.health()["healthy"]
        assert await a.acquire("A/<api>", 3) and await b.acquire("A/<api>", 3) and await a.acquire("A/<api>", 3)
        assert not await b.acquire("A/<api>", 3)
        assert sorted(slot_counts(redis_server, "A/<api>").values()) == [1, 2]
        a.release("A/<api>")
        await eventually(lambda: sum(slot_counts(redis_server, "A/<api>").values()) == 2)
        assert await b.acquire("A/<api>", 3)
    finally:
        await a.close()
        await b.close()
    assert slot_counts(redis_server, "A/<api>") == {}  # a clean stop gives every slot back


async def test_a_take_cancelled_in_flight_leaves_no_slot(redis_server):
    """Upgrades cancelled while their take is in flight (the client left) leave no slot counted in Redis,
    whichever point of the round trip the cancellation hits."""
    store = redis_store(redis_server)
    await store.start()
    try:
        for turns in [*range(12), *range(12)]:
            task = asyncio.ensure_future(store.acquire("C/<api>", 100))  # a coroutine when healthy: a task
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                if await task:
                    store.release("C/<api>")  # finished before the cancel: an ordinary give-back
        await eventually(lambda: slot_counts(redis_server, "C/<api>") == {})
        assert await store.acquire("C/<api>", 1)  # and the limit still counts from zero
    finally:
        await store.close()


async def test_redis_budget_is_shared(redis_server):
    """The token bucket in Redis grants its burst once across two stores, then refuses."""
    a, b = redis_store(redis_server), redis_store(redis_server)
    await a.start()
    await b.start()
    try:
        assert await a.take_budget("msg", 6, 1e-6, 10) == 6
        assert await b.take_budget("msg", 6, 1e-6, 10) == 4
        assert await a.take_budget("msg", 1, 1e-6, 10) == 0
    finally:
        await a.close()
        await b.close()


async def test_three_instances_share_a_limit(tmp_path, redis_server):
    """Three gateways on one Redis admit a limit of 2 once in total; a close frees the slot for any instance."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 2))
        async with running_gateway(config) as g1, running_gateway(config) as g2, running_gateway(config) as g3:
            first = await try_upgrade(gw_url(g1, "/a"))
            second = await try_upgrade(gw_url(g2, "/a"))
            assert not isinstance(first, int) and not isinstance(second, int)
            assert await try_upgrade(gw_url(g3, "/a")) == 503
            assert await try_upgrade(gw_url(g1, "/a")) == 503
            await first.close()
            await eventually(lambda: sum(slot_counts(redis_server, "A/<api>").values()) == 1)
            third = await try_upgrade(gw_url(g3, "/a"))
            assert not isinstance(third, int)
            await second.close()
            await third.close()


async def test_fifty_simultaneous_upgrades_over_three_instances_admit_exactly_ten(tmp_path, redis_server):
    """50 upgrades at once, spread over 3 `wsgate run` processes on one Redis, against a limit of 10: exactly 10
    are admitted, 40 get 503, and Redis counts 10."""
    async with recording_backend() as backend:
        # A Redis call timing out under CPU contention would count locally (on_state_error: allow, by design) and
        # could admit past the limit: this test is about the race between instances, so Redis gets time to answer.
        write_config(tmp_path, PORT, gateway_doc(redis_server, timeout=3.0), throttled_api(backend.url, 10))
        instances = await asyncio.gather(*(start_wsgate(tmp_path / "config") for _ in range(3)))
        try:
            urls = [f"ws://127.0.0.1:{i.ports['default']}/a" for i in instances]
            results = await asyncio.gather(*(try_upgrade(urls[i % 3]) for i in range(50)))
            opened = [r for r in results if not isinstance(r, int)]
            assert len(opened) == 10
            assert [r for r in results if isinstance(r, int)] == [503] * 40
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 10
            await asyncio.gather(*(ws.close() for ws in opened))
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})
        finally:
            for instance in instances:
                await instance.kill()


async def test_sigkilled_instance_frees_its_slots_within_the_bound(tmp_path, redis_server):
    """An instance killed with SIGKILL while holding every slot: its slots come free by lease expiry (2 × heartbeat),
    and the surviving instance admits again."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server, heartbeat=0.5),
                              throttled_api(backend.url, 2))
        instance = await start_wsgate(tmp_path / "config")
        process, port = instance.process, instance.ports["default"]
        try:
            held = [await connect(f"ws://127.0.0.1:{port}/a") for _ in range(2)]
            async with running_gateway(config) as survivor:
                assert await try_upgrade(gw_url(survivor, "/a")) == 503
                process.send_signal(signal.SIGKILL)
                await process.wait()
                owners = slot_counts(redis_server, "A/<api>")
                assert list(owners.values()) == [2]  # nobody gave them back: only expiry can free them
                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                async with asyncio.timeout(survivor.state.shared.expiry_bound + TIMEOUT):
                    while isinstance(ws := await try_upgrade(gw_url(survivor, "/a")), int):
                        assert ws == 503
                        await asyncio.sleep(0.05)
                print(f"slots free {loop.time() - killed_at:.2f} s after SIGKILL")
                await ws.close()
            for ws in held:
                ws.transport.abort()
        finally:
            await instance.kill()


async def test_redis_restart_reasserts_live_leases(tmp_path, redis_server):
    """Redis restarts empty: the gateway re-asserts the slots its live connections hold, the limit holds across
    instances again, and once everything closes no slot is left."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 3))
        async with running_gateway(config) as g1, running_gateway(config) as g2:
            held = [await connect(gw_url(g1, "/a")) for _ in range(2)]
            redis_server.restart()
            assert slot_counts(redis_server, "A/<api>") == {}
            # The next take through the other instance finds its owner unknown, re-asserts, and counts.
            third = await try_upgrade(gw_url(g2, "/a"))
            assert not isinstance(third, int)
            await eventually(lambda: g1.state.shared.healthy and sum(
                slot_counts(redis_server, "A/<api>").values()) == 3, timeout=TIMEOUT)
            assert await try_upgrade(gw_url(g2, "/a")) == 503
            for ws in (*held, third):
                await ws.close()
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})


@pytest.mark.parametrize(("how", "on_error"), [("stopped", "allow"), ("stopped", "refuse"), ("paused", "allow")])
async def test_redis_outage_keeps_serving_and_recovers(tmp_path, redis_server, how, on_error):
    """Redis stopped (connections refused) or paused with SIGSTOP (unreachable: commands time out) mid-run: `allow`
    keeps admitting up to the limit counted in memory, `refuse` answers 503; the outage is logged per retry, not per
    upgrade; the health metric says 0; after Redis returns the counts are re-asserted and nothing stays stuck (a
    paused Redis runs the commands that timed out when it resumes: they belong to a replaced owner)."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 3, on_error))
        async with running_gateway(config) as gw:
            shared = gw.state.shared
            admin = f"http://127.0.0.1:{gw.admin.port}"
            first = await connect(gw_url(gw, "/a"))
            port = redis_server.port
            with capture_logs() as logs:
                if how == "stopped":
                    redis_server.stop()
                else:
                    redis_server.signal(signal.SIGSTOP)
                results = [await try_upgrade(gw_url(gw, "/a")) for _ in range(20)]
                assert not shared.healthy
                from support import http_request

                metrics = (await http_request(admin, path="/metrics")).body.decode()
                assert 'wsgate_state_backend_up{backend="redis"} 0' in metrics
                ready = await http_request(admin, path="/readyz")
                assert ready.status == 200 and ready.json()["state"]["healthy"] is False
            warnings = [e for e in logs if e["event"] == "state_backend_unreachable"]
            assert 1 <= len(warnings) < 20  # per retry, not per upgrade
            opened = [r for r in results if not isinstance(r, int)]
            if on_error == "allow":
                assert len(opened) == 2 and results.count(503) == 18  # the limit, counted in memory
            else:
                assert opened == [] and results.count(503) == 20
            if how == "stopped":
                redis_server.start(port)
            else:
                redis_server.signal(signal.SIGCONT)
            await eventually(lambda: shared.healthy, timeout=TIMEOUT)
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 1 + len(opened)
            for ws in (first, *opened):
                await ws.close()
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})
            assert 'wsgate_state_backend_up{backend="redis"} 1' in (
                await http_request(admin, path="/metrics")).body.decode()


async def test_reload_switches_the_state_backend_and_a_failed_reload_keeps_the_old_one(tmp_path, redis_server):
    """memory → redis on reload: a reload that fails later (a port it cannot listen on) keeps counting in memory;
    the next one switches, new upgrades count in Redis, and a connection from before gives its slot back to
    memory (plan calls this disruptive: it is not counted in Redis)."""
    import socket
    async with recording_backend() as backend:
        api = throttled_api(backend.url, 1)
        config = write_config(tmp_path, PORT, "kind: Gateway\nname: g\n", api)
        async with running_gateway(config) as gw:
            before = await connect(gw_url(gw, "/a"))
            memory = gw.state.shared
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                busy = f"---\nkind: Port\nname: busy\nport: {taken.getsockname()[1]}\nhost: 127.0.0.1\n"
                write_config(tmp_path, PORT, gateway_doc(redis_server), api + busy)
                outcome = await gw.reload("test")
                assert not outcome.ok and "cannot listen" in outcome.error
                assert gw.state.shared is memory
            write_config(tmp_path, PORT, gateway_doc(redis_server), api)
            assert (await gw.reload("test")).ok
            assert gw.state.shared.backend == "redis"
            after = await try_upgrade(gw_url(gw, "/a"))
            assert not isinstance(after, int)
            assert await try_upgrade(gw_url(gw, "/a")) == 503
            await before.close()
            await eventually(lambda: not memory.slots.active)
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 1
            await after.close()
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})


def redis_client_names(server: RedisServer) -> list[str]:
    """The names of the clients connected to the Redis now (CLIENT LIST, read with a plain client)."""
    import redis

    client = redis.Redis(port=server.port)
    try:
        return [entry["name"] for entry in client.client_list()]
    finally:
        client.close()


async def test_a_retired_redis_backend_closes_when_its_last_connection_ends(tmp_path, redis_server):
    """redis → memory on reload: the Redis client stays while a connection from before holds its slot there
    (given back there when it ends); once that connection ends the old backend is closed, its client gone from
    CLIENT LIST and its slot count gone from Redis."""
    async with recording_backend() as backend:
        api = throttled_api(backend.url, 1)
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), api)
        async with running_gateway(config, paths=[tmp_path / "config"]) as gw:
            old = gw.state.shared
            assert isinstance(old, RedisStore)
            before = await connect(gw_url(gw, "/a"))
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 1
            write_config(tmp_path, PORT, "kind: Gateway\nname: g\n", api)
            assert (await gw.reload("test")).ok
            assert gw.state.shared.backend == "memory"
            assert not old.closed and old.instance in redis_client_names(redis_server)
            await before.close()
            await eventually(lambda: old.closed)
            await eventually(lambda: old.instance not in redis_client_names(redis_server))
            assert slot_counts(redis_server, "A/<api>") == {}
            after = await try_upgrade(gw_url(gw, "/a"))  # counted in memory now, the limit as before
            assert not isinstance(after, int)
            assert await try_upgrade(gw_url(gw, "/a")) == 503
            await after.close()


async def test_cluster_wide_rate_limit_through_redis(tmp_path, redis_server):
    """Two gateways on one Redis share a per-API message budget (take_budget's Lua bucket): a burst of 4 passes
    once between them, the other 2 of 6 messages are dropped on whichever instance ran out."""
    async with recording_backend() as backend:
        policies = ("policies:\n  - type: rate-limit\n    per: api\n    messages_per_second: 0.001\n"
                    "    burst_messages: 4\n    on_exceed: drop\n")
        config = write_config(tmp_path, PORT, gateway_doc(redis_server),
                              api_yaml("A", "/a", backend.url + "/", extra=policies))
        async with running_gateway(config) as one, running_gateway(config) as two:
            assert one.state.rate_limits.backend is one.state.shared  # Redis: budgets are cluster-wide
            received: list[str] = []

            async def read(ws) -> None:
                async for message in ws:
                    received.append(message)

            def dropped() -> int:
                return sum(gw.state.rate_limits.exceeded[("A", "client", "drop")] for gw in (one, two))

            async with connect(gw_url(one, "/a")) as a, connect(gw_url(two, "/a")) as b:
                readers = [asyncio.create_task(read(ws)) for ws in (a, b)]
                for ws, name in ((a, "a"), (b, "b")):
                    for i in range(3):
                        await ws.send(f"{name}{i}")
                await eventually(lambda: dropped() == 2 and len(received) == 4)
                for task in readers:
                    task.cancel()
            assert len(set(received)) == 4


async def test_a_revert_restores_the_backend_with_its_own_settings(redis_server):
    """A revert restores the previous backend together with the settings that built it, so the config's backend
    afterwards switches again instead of passing for the one in use; a switch left pending by a reload that crashed
    after the swap is kept by the next switch, whose revert then goes back to it, not further."""
    from gateway.policies.state import PolicyState

    def settings(prefix: str) -> RedisState:
        return RedisState(backend="redis", url=redis_server.url, key_prefix=prefix, heartbeat=0.5, timeout=0.3)

    state = PolicyState()
    memory = state.shared
    try:
        assert await state.use_shared(settings("first"), {})
        await state.revert_shared()
        assert state.shared is memory and state.shared_settings is None
        assert await state.use_shared(settings("first"), {})  # back to Redis A: a switch, not "already in use"
        first = state.shared
        assert first.backend == "redis" and state.shared_settings == settings("first")
        assert await state.use_shared(settings("second"), {})  # the switch to A was never committed nor reverted
        await state.revert_shared()
        assert state.shared is first and state.shared_settings == settings("first")
    finally:
        await state.aclose()


# ------------------------------------------------------- batched slot changes


async def test_takes_of_one_loop_turn_share_one_call_and_hold_the_limit(redis_server):
    """30 takes issued in one loop turn go to Redis in one script call, and exactly the limit's 10 are granted."""
    store = redis_store(redis_server)
    await store.start()
    try:
        before = store.batches_sent
        answers = await asyncio.gather(*(store.acquire("T/<api>", 10) for _ in range(30)))
        assert answers.count(True) == 10 and answers.count(False) == 20
        assert store.batches_sent == before + 1
        assert sum(slot_counts(redis_server, "T/<api>").values()) == 10
    finally:
        await store.close()


async def test_coalesced_takes_of_two_stores_never_exceed_the_limit(redis_server):
    """25 takes at once on each of two stores (two instances, each batching its own) against a limit of 10: exactly 10
    are granted in total, and Redis counts 10."""
    a, b = redis_store(redis_server), redis_store(redis_server)
    await a.start()
    await b.start()
    try:
        answers = await asyncio.gather(*(store.acquire("R/<api>", 10) for _ in range(25) for store in (a, b)))
        assert answers.count(True) == 10
        assert sum(slot_counts(redis_server, "R/<api>").values()) == 10
        assert a.local.active["R/<api>"] + b.local.active["R/<api>"] == 10
    finally:
        await a.close()
        await b.close()


async def test_give_backs_wait_for_a_take_to_carry_them(redis_server):
    """A give-back is queued, not sent: it still counts until the next take's call carries it (here the lone-call
    delay is far away), and that take sees the slot free."""
    a = redis_store(redis_server, give_back_delay=3600)
    await a.start()
    try:
        assert await a.acquire("G/<api>", 1)
        a.release("G/<api>")
        assert sum(slot_counts(redis_server, "G/<api>").values()) == 1  # queued at this instance
        assert await a.acquire("G/<api>", 1)  # give-back first, then the take: admitted at the limit
        assert sum(slot_counts(redis_server, "G/<api>").values()) == 1
    finally:
        await a.close()


async def test_many_give_backs_at_once_are_one_call(redis_server):
    """20 slots given back in one loop turn reach Redis in one script call (after the give-back delay), and the count
    returns to 0."""
    store = redis_store(redis_server)
    await store.start()
    try:
        assert all(await asyncio.gather(*(store.acquire("M/<api>", 100) for _ in range(20))))
        before = store.batches_sent
        for _ in range(20):
            store.release("M/<api>")
        await eventually(lambda: slot_counts(redis_server, "M/<api>") == {})
        assert store.batches_sent == before + 1
    finally:
        await store.close()


async def test_a_give_back_queued_at_close_is_sent_before_leaving(redis_server):
    """close() sends the queued give-backs in one last call before it leaves, and Redis keeps no count of ours."""
    store = redis_store(redis_server, give_back_delay=3600)
    await store.start()
    assert await store.acquire("Q/<api>", 5)
    store.release("Q/<api>")
    before = store.batches_sent
    await store.close()
    assert store.batches_sent == before + 1
    assert slot_counts(redis_server, "Q/<api>") == {}


async def test_many_connections_closing_at_once_all_give_back(tmp_path, redis_server):
    """40 connections through two gateways on one Redis close together: every slot is given back (Redis counts 0)
    and the full limit is admitted again."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 40))
        async with running_gateway(config) as g1, running_gateway(config) as g2:
            clients = await asyncio.gather(*(connect(gw_url((g1, g2)[i % 2], "/a")) for i in range(40)))
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 40
            assert await try_upgrade(gw_url(g1, "/a")) == 503
            await asyncio.gather(*(ws.close() for ws in clients))
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})
            again = await asyncio.gather(*(try_upgrade(gw_url((g1, g2)[i % 2], "/a")) for i in range(40)))
            assert not any(isinstance(ws, int) for ws in again)
            await asyncio.gather(*(ws.close() for ws in again))


async def test_fifty_simultaneous_upgrades_over_two_gateways_admit_exactly_ten(tmp_path, redis_server):
    """50 upgrades at once over two in-process gateways (each coalescing its takes) against a shared limit of 10:
    exactly 10 admitted, 40 refused with 503, Redis counts 10."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 10))
        async with running_gateway(config) as g1, running_gateway(config) as g2:
            results = await asyncio.gather(*(try_upgrade(gw_url((g1, g2)[i % 2], "/a")) for i in range(50)))
            opened = [r for r in results if not isinstance(r, int)]
            assert len(opened) == 10
            assert [r for r in results if isinstance(r, int)] == [503] * 40
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 10
            print(f"script calls: {g1.state.shared.batches_sent + g2.state.shared.batches_sent} for 50 takes")
            await asyncio.gather(*(ws.close() for ws in opened))
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})


async def test_sigterm_gives_back_every_slot_before_the_process_exits(tmp_path, redis_server):
    """A `wsgate run` holding slots is stopped with SIGTERM (grace 0: its clients get 1001): when it has exited Redis
    counts none of its slots and another instance admits at once, long before the lease (2 × 30 s) could expire."""
    async with recording_backend() as backend:
        gateway = gateway_doc(redis_server, heartbeat=30) + "shutdown_grace: 0\n"
        config = write_config(tmp_path, PORT, gateway, throttled_api(backend.url, 3))
        instance = await start_wsgate(tmp_path / "config")
        try:
            held = [await connect(f"ws://127.0.0.1:{instance.ports['default']}/a") for _ in range(3)]
            async with running_gateway(config) as survivor:
                assert await try_upgrade(gw_url(survivor, "/a")) == 503
                instance.process.send_signal(signal.SIGTERM)
                assert await instance.exit_code() == 0
                for ws in held:
                    await ws.wait_closed()
                    assert ws.close_code == 1001
                assert slot_counts(redis_server, "A/<api>") == {}
                admitted = await try_upgrade(gw_url(survivor, "/a"))
                assert not isinstance(admitted, int)
                await admitted.close()
        finally:
            await instance.kill()


async def test_a_redis_that_lost_the_script_gets_it_again(redis_server):
    """After SCRIPT FLUSH (what a restarted Redis looks like to EVALSHA) takes are still answered by Redis: the store
    sends the script again and stays healthy."""
    import redis

    store = redis_store(redis_server)
    await store.start()
    try:
        assert await store.acquire("F/<api>", 1)
        client = redis.Redis(port=redis_server.port)
        try:
            client.script_flush()
        finally:
            client.close()
        assert not await store.acquire("F/<api>", 1)  # Redis's answer: the limit is reached
        assert store.healthy
        assert sum(slot_counts(redis_server, "F/<api>").values()) == 1
    finally:
        await store.close()


async def refusal(url: str) -> tuple[int, dict]:
    """Open a connection expected to be refused: its HTTP status and JSON body (an opened one fails the test)."""
    import json

    try:
        ws = await connect(url, open_timeout=TIMEOUT)
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")
    await ws.close()
    raise AssertionError(f"{url} was admitted")


def kill(server: RedisServer) -> None:
    """SIGKILL the redis-server (no goodbye to its clients); ``server.start(server.port)`` brings an empty one."""
    assert server.process is not None
    server.signal(signal.SIGKILL)
    server.process.wait()
    server.stop()


async def test_the_first_upgrade_after_a_redis_restart_is_decided_by_redis(tmp_path, redis_server):
    """Three instances (`on_state_error: refuse`, limit 4) each hold one connection that keeps relaying while
    Redis is killed (until every instance has seen it gone) and started empty on the same port; once each has
    logged `state_backend_recovered`, the
    first upgrade of every instance is Redis's decision (the 4th slot admitted, then two 503 `throttled` naming
    the limit), never a fall-back to `on_state_error` on a connection kept from before the restart."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 4, "refuse"))
        async with running_gateway(config) as g1, running_gateway(config) as g2, running_gateway(config) as g3:
            gateways = (g1, g2, g3)
            held = [await connect(gw_url(g, "/a")) for g in gateways]  # each instance's slot line is connected
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 3
            with capture_logs() as logs:
                kill(redis_server)
                await eventually(lambda: not any(g.state.shared.healthy for g in gateways), timeout=TIMEOUT)
                for i, ws in enumerate(held):  # traffic goes on meanwhile
                    await ws.send(f"during {i}")
                    assert await ws.recv() == f"during {i}"
                redis_server.start(redis_server.port)
                # Every instance saw the outage and is back: its live slot re-asserted under a fresh owner.
                await eventually(lambda: sum(e["event"] == "state_backend_recovered" for e in logs) == 3
                                 and all(g.state.shared.healthy for g in gateways), timeout=2 * TIMEOUT)
            assert sum(slot_counts(redis_server, "A/<api>").values()) == 3
            admitted = await connect(gw_url(g1, "/a"), open_timeout=TIMEOUT)  # refuse mode: only Redis admits
            for g in (g2, g3):
                status, body = await refusal(gw_url(g, "/a"))
                assert (status, body["error"]) == (503, "throttled"), body
                assert "4 active connections, the limit" in body["reason"]
            assert all(g.state.shared.healthy for g in gateways)  # no take failed on a dead connection
            for ws in (*held, admitted):
                await ws.close()
            await eventually(lambda: slot_counts(redis_server, "A/<api>") == {})


async def test_a_refusal_during_a_redis_outage_says_the_backend_is_unavailable(tmp_path, redis_server):
    """While Redis is down, `on_state_error: refuse` answers 503 saying `state backend unavailable` (error
    `state_unavailable`) in the body, the log and the refusals metric, not "has N active connections, the limit"
    on an instance that holds none; a full limit still says `throttled`."""
    from support import http_request

    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, gateway_doc(redis_server), throttled_api(backend.url, 2, "refuse"))
        async with running_gateway(config) as gw:
            admin = f"http://127.0.0.1:{gw.admin.port}"
            redis_server.stop()
            await eventually(lambda: not gw.state.shared.healthy, timeout=TIMEOUT)
            with capture_logs() as logs:
                status, body = await refusal(gw_url(gw, "/a"))
            assert (status, body["error"]) == (503, "state_unavailable")
            assert "state backend unavailable" in body["reason"] and "the limit" not in body["reason"]
            refused = [e for e in logs if e["event"] == "upgrade_refused"]
            assert [e["error"] for e in refused] == ["state_unavailable"]
            assert "state backend unavailable" in refused[0]["reason"]
            metrics = (await http_request(admin, path="/metrics")).body.decode()
            assert 'reason="state_unavailable"' in metrics and 'reason="throttled"' not in metrics
            redis_server.start(redis_server.port)
            await eventually(lambda: gw.state.shared.healthy, timeout=2 * TIMEOUT)
            held = [await connect(gw_url(gw, "/a")) for _ in range(2)]
            status, body = await refusal(gw_url(gw, "/a"))
            assert (status, body["error"]) == (503, "throttled") and "the limit" in body["reason"]
            for ws in held:
                await ws.close()
