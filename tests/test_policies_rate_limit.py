"""The rate-limit policy: token buckets with plain values, then every scope and action on a live gateway."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

from structlog.testing import capture_logs
from support import (
    PORT,
    TIMEOUT,
    api_yaml,
    echo_backend,
    eventually,
    gw_url,
    run,
    running_gateway,
    scrape,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.config.models import RateLimitPolicy
from gateway.policies.rate_limit import Bucket, Limit

KEY_A = "rate-alpha-key-1"
KEY_B = "rate-beta-key-1"
SLOW = 0.001  # tokens per second: nothing comes back within a test, so counts are exact
ERROR = '{"type":"error","reason":"rate limit"}'


def limit(**spec: object) -> Limit:
    result = Limit()
    result.update(RateLimitPolicy.model_validate({"type": "rate-limit", **spec}), 1024)
    return result


# ------------------------------------------------------------------ buckets


def test_bucket_grants_the_burst_then_says_how_long_to_wait():
    """A full bucket grants exactly `burst` messages at once, then asks to wait 1/rate for the next."""
    bucket = Bucket(limit(messages_per_second=10, burst_messages=3), now=100.0)
    assert [bucket.take(1, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert abs(bucket.take(1, 100.0) - 0.1) < 1e-9
    assert bucket.take(1, 100.1) == 0.0


def test_bucket_counts_bytes_and_lets_an_oversized_message_through_into_debt():
    """Bytes are a second budget; a message larger than the burst waits for a full bucket, then leaves a debt."""
    bucket = Bucket(limit(bytes_per_second=100, burst_bytes=100), now=0.0)
    assert bucket.take(60, 0.0) == 0.0
    assert abs(bucket.take(60, 0.0) - 0.2) < 1e-9
    assert bucket.take(40, 0.0) == 0.0
    assert abs(bucket.take(500, 0.0) - 1.0) < 1e-9  # waits for the full 100, not for 500
    assert bucket.take(500, 1.0) == 0.0
    assert bucket.bytes == -400


def test_tightened_limit_clamps_a_full_bucket_at_the_next_message():
    """Updating a limit in place (a reload) caps the tokens its buckets hold at the new burst."""
    shared = limit(messages_per_second=SLOW, burst_messages=100)
    bucket = Bucket(shared, now=0.0)
    shared.update(RateLimitPolicy(type="rate-limit", messages_per_second=SLOW, burst_messages=2), 1024)
    assert [bucket.take(1, 0.0) == 0.0 for _ in range(3)] == [True, True, False]


def test_model_defaults_and_refusals():
    """`delay` is the default client action and `drop` the server one; a limit of nothing is refused."""
    assert RateLimitPolicy(type="rate-limit", messages_per_second=1).action == "delay"
    assert RateLimitPolicy(type="rate-limit", direction="server", messages_per_second=1).action == "drop"
    for bad in ({}, {"messages_per_second": 1, "burst_bytes": 10},
                {"messages_per_second": 1, "error_message": "x"}):
        try:
            RateLimitPolicy.model_validate({"type": "rate-limit", **bad})
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


# ------------------------------------------------------------- live gateway


def applications() -> tuple[str, str]:
    return tuple(  # type: ignore[return-value]
        f"kind: Application\nname: {name}\nidentifiers:\n  api_keys: [{key}]\napis: [Echo]\n"
        for name, key in (("alpha", KEY_A), ("beta", KEY_B))
    )


def rate_api(url: str, *limits: str, identify: bool = False) -> str:
    """The Echo API with these rate-limit policy bodies (YAML mappings without the `type`)."""
    policies = "policies:\n"
    if identify:
        policies += "  - type: identify\n"
    for body in limits:
        policies += "  - type: rate-limit\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    return api_yaml("Echo", "/echo", url, extra=policies)


async def receive_all(ws, count: int) -> list[str]:
    return [await ws.recv() for _ in range(count)]


def exceeded(gw, direction: str = "client", action: str = "drop") -> int:
    return gw.state.rate_limits.exceeded[("Echo", direction, action)]


async def test_drop_per_connection_passes_the_burst_and_answers_the_rest(tmp_path: Path):
    """A burst at the limit passes whole; past it each message is dropped, counted and answered with the error."""
    async with echo_backend() as backend:
        body = f"messages_per_second: {SLOW}\nburst_messages: 3\non_exceed: drop\nerror_message: '{ERROR}'"
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"), body))
        async with running_gateway(config) as gw:
            with capture_logs() as logs:
                async with connect(gw_url(gw, "/echo")) as ws:
                    for i in range(5):
                        await ws.send(f"m{i}")
                    got = await receive_all(ws, 5)
                    assert [m for m in got if m != ERROR] == ["m0", "m1", "m2"]
                    assert got.count(ERROR) == 2
                    assert exceeded(gw) == 2
                    # A second connection has its own bucket.
                    async with connect(gw_url(gw, "/echo")) as other:
                        await other.send("fresh")
                        assert await other.recv() == "fresh"
            metrics = await scrape(gw)
            assert metrics.value("wsgate_rate_limited_total", api="Echo", direction="client", action="drop") == 2
            warnings = [e for e in logs if e["event"] == "rate_limit_exceeded"]
            assert len(warnings) == 1 and warnings[0]["action"] == "drop"


async def test_close_action_ends_the_connection_with_1008(tmp_path: Path):
    """With `on_exceed: close` the first message past the burst closes the connection with 1008 "rate limit"."""
    async with echo_backend() as backend:
        body = f"messages_per_second: {SLOW}\nburst_messages: 2\non_exceed: close"
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"), body))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            for i in range(2):
                await ws.send(f"m{i}")
            assert await receive_all(ws, 2) == ["m0", "m1"]
            await ws.send("one too many")
            try:
                await ws.recv()
            except ConnectionClosed as closed:
                assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "rate limit")
            else:
                raise AssertionError("the connection stayed open")


async def test_delay_loses_nothing_and_holds_the_sender_back(tmp_path: Path):
    """`delay` (the client default) relays every message in order, no sooner than the bucket allows."""
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"),
                                                       "messages_per_second: 40\nburst_messages: 1"))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            loop = asyncio.get_running_loop()
            start = loop.time()
            sent = [f"m{i}" for i in range(20)] + ["x" * 70_000]
            for message in sent:
                await ws.send(message)
            assert await receive_all(ws, len(sent)) == sent
            # A lower bound only: a slow machine can make it longer, never shorter.
            assert loop.time() - start >= (len(sent) - 1) / 40 * 0.95
            assert exceeded(gw, action="delay") == 0  # delays are not refusals


async def test_bytes_per_second_drops_what_the_byte_budget_cannot_hold(tmp_path: Path):
    """A byte budget of 100 passes two 40-byte messages at once and drops the third."""
    async with echo_backend() as backend:
        body = f"bytes_per_second: {SLOW}\nburst_bytes: 100\non_exceed: drop"
        api = rate_api(backend.url("/echo/"), body)
        api = api.replace("policies:", "limits:\n  max_message_size: 100\npolicies:")
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            for c in "abc":
                await ws.send(c * 40)
            await eventually(lambda: exceeded(gw) == 1)
            await ws.send("")  # an empty message costs no bytes: it passes and marks the end
            assert await receive_all(ws, 3) == ["a" * 40, "b" * 40, ""]


async def test_per_application_and_per_api_buckets_are_shared(tmp_path: Path):
    """Stacked limits: one application's connections share its bucket, and every connection shares the API's."""
    async with echo_backend() as backend:
        per_app = f"per: application\nmessages_per_second: {SLOW}\nburst_messages: 2\non_exceed: drop"
        per_api = f"per: api\nmessages_per_second: {SLOW}\nburst_messages: 3\non_exceed: drop"
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"), per_app, per_api, identify=True),
                              *applications())
        async with running_gateway(config) as gw:
            a1 = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_A}"))
            a2 = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_A}"))
            b = await connect(gw_url(gw, f"/echo?x-Gateway-APIKey={KEY_B}"))
            await a1.send("a1")
            assert await a1.recv() == "a1"
            await a2.send("a2")
            assert await a2.recv() == "a2"
            await a2.send("a2 again")  # alpha's bucket is empty: dropped by the per-application limit
            await eventually(lambda: exceeded(gw) == 1)
            await b.send("b")  # beta has its own bucket; the API's third token
            assert await b.recv() == "b"
            await b.send("b again")  # beta's bucket has room, the API's does not
            await eventually(lambda: exceeded(gw) == 2)
            await b.send("b last")
            await eventually(lambda: exceeded(gw) == 3)
            for ws in (a1, a2, b):
                await ws.close()


async def test_server_direction_drops_what_the_backend_sends_too_fast(tmp_path: Path):
    """A `server` limit (default action drop) passes the burst of backend messages and drops the rest."""
    async with echo_backend() as backend:
        body = f"direction: server\nmessages_per_second: {SLOW}\nburst_messages: 2"
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"), body))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            for i in range(4):
                await ws.send(f"m{i}")
            assert await receive_all(ws, 2) == ["m0", "m1"]
            await eventually(lambda: exceeded(gw, direction="server") == 2)


def test_tightened_limit_applies_to_a_live_connection_without_closing_it(tmp_path: Path):
    """A reload that lowers the burst keeps the connection open and limits its next messages."""

    async def scenario():
        async with echo_backend() as backend:
            url = backend.url("/echo/")
            body = "messages_per_second: {}\nburst_messages: {}\non_exceed: drop"
            config = write_config(tmp_path, PORT, rate_api(url, body.format(SLOW, 100)))
            root = tmp_path / "config"
            async with running_gateway(config, paths=[root]) as gw, connect(gw_url(gw, "/echo")) as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                save(root, PORT, rate_api(url, body.format(SLOW, 2)))
                outcome = await gw.reload("test")
                assert outcome.ok and (outcome.drained, outcome.revoked) == (0, 0)
                for i in range(3):
                    await ws.send(f"m{i}")
                assert await receive_all(ws, 2) == ["m0", "m1"]
                await eventually(lambda: exceeded(gw) == 1)
                await ws.send("still open")
                await eventually(lambda: exceeded(gw) == 2)
                assert json.loads(json.dumps(outcome.to_dict()))["ok"]

    run(scenario(), timeout=3 * TIMEOUT)


async def test_a_failed_reload_leaves_live_limits_alone(tmp_path: Path):
    """A reload that compiles but cannot listen on a new port changes no limit; the next good one does."""
    async with echo_backend() as backend:
        url = backend.url("/echo/")
        body = "messages_per_second: {}\nburst_messages: {}\non_exceed: drop"
        config = write_config(tmp_path, PORT, rate_api(url, body.format(SLOW, 100)))
        root = tmp_path / "config"
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"kind: Port\nname: busy\nport: {taken.getsockname()[1]}\nhost: 127.0.0.1\n"
        try:
            async with running_gateway(config, paths=[root]) as gw, connect(gw_url(gw, "/echo")) as ws:
                save(root, PORT, busy, rate_api(url, body.format(SLOW, 2)).replace("[default]", "[default, busy]"))
                outcome = await gw.reload("test")
                assert not outcome.ok and "cannot listen" in outcome.error
                for i in range(4):
                    await ws.send(f"m{i}")
                assert await receive_all(ws, 4) == ["m0", "m1", "m2", "m3"]
                save(root, PORT, rate_api(url, body.format(SLOW, 2)))
                assert (await gw.reload("test")).ok
                for i in range(3):
                    await ws.send(f"n{i}")
                assert await receive_all(ws, 2) == ["n0", "n1"]
                await eventually(lambda: exceeded(gw) == 1)
        finally:
            taken.close()


def save(root: Path, *documents: str) -> None:
    """Write the config file the way an editor's atomic save does."""
    (root / ".tmp").write_text("".join(doc if doc.startswith("---") else "---\n" + doc for doc in documents))
    os.replace(root / ".tmp", root / "gateway.yaml")


# ------------------------------------------------------------ validate, plan


def test_validate_refuses_a_byte_burst_below_the_largest_message(tmp_path: Path):
    """WSG140 points at `burst_bytes` when it is smaller than `limits.max_message_size`."""
    from gateway.config import check

    root = tmp_path / "config"
    root.mkdir()
    api = rate_api("ws://127.0.0.1:9/echo/", "bytes_per_second: 1000\nburst_bytes: 500")
    api = api.replace("policies:", "limits:\n  max_message_size: 1000\npolicies:")
    (root / "gateway.yaml").write_text("---\n" + PORT + api)
    result = check([root])
    errors = [(d.code, d.location.line, d.location.col) for d in result.diagnostics if d.severity == "error"]
    line = 1 + ("---\n" + PORT + api).splitlines().index("    burst_bytes: 500")
    assert errors == [("WSG140", line, 18)]
    assert "1000" in next(d.hint for d in result.diagnostics if d.code == "WSG140")


def test_plan_shows_a_changed_limit_as_a_non_disruptive_update(tmp_path: Path):
    """`plan` lists the changed burst as `old → new` and disturbs no live connection."""
    from gateway.changes.plan import diff, render_text
    from gateway.config import check

    configs = []
    for burst in (10, 2):
        root = tmp_path / f"c{burst}"
        root.mkdir()
        api = rate_api("ws://127.0.0.1:9/echo/", f"messages_per_second: 5\nburst_messages: {burst}")
        (root / "gateway.yaml").write_text("---\n" + PORT + api)
        configs.append(check([root]).config)
    text = render_text(diff(configs[0], configs[1]))
    assert "~ policies[rate-limit client per connection].burst_messages : 10 → 2" in text
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in text
    assert "drain" not in text and "close" not in text


# ------------------------------------------------------------- cluster-wide


class AsyncMemoryBudget:
    """The shared state's budget as a remote backend presents it (answers are awaitables), kept in this process.

    Two gateways given the same object share their per-application and per-API buckets as two instances
    sharing Redis would; the token bucket itself is the same arithmetic as the gateway's own.
    """

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.asked: list[tuple[str, int]] = []

    async def take_budget(self, key: str, want: int, rate_per_s: float, burst: int) -> int:
        await asyncio.sleep(0)  # an answer comes later, as from a socket
        self.asked.append((key, want))
        bucket = self.buckets.get(key)
        if bucket is None:
            spec = {"messages_per_second": rate_per_s, "burst_messages": burst}
            bucket = self.buckets[key] = Bucket(limit(**spec), asyncio.get_running_loop().time())
        granted = 0
        while granted < want and bucket.take(1, asyncio.get_running_loop().time()) == 0.0:
            granted += 1
        return granted


class SyncMemoryBudget(AsyncMemoryBudget):
    def take_budget(self, key: str, want: int, rate_per_s: float, burst: int) -> int:  # type: ignore[override]
        bucket = self.buckets.setdefault(key, Bucket(limit(messages_per_second=rate_per_s, burst_messages=burst), 0.0))
        granted = 0
        while granted < want and bucket.take(1, 0.0) == 0.0:
            granted += 1
        return granted


def test_shared_bucket_takes_only_what_the_shared_budget_grants():
    """Two instances' buckets on one budget admit the burst between them, then answer "exceeded" from memory."""
    from gateway.policies.rate_limit import REFILL_SECONDS, SharedBucket

    budget = SyncMemoryBudget()
    settings = limit(messages_per_second=SLOW, burst_messages=5)
    one, two = SharedBucket(settings, budget, "k"), SharedBucket(settings, budget, "k")
    granted = [one.take(1, 0.0) == 0.0 for _ in range(3)] + [two.take(1, 0.0) == 0.0 for _ in range(3)]
    assert granted == [True, True, True, True, True, False]
    assert two.take(1, 0.0) == REFILL_SECONDS  # asked and came back short: no new ask until then
    asks = len(budget.asked)
    assert two.take(1, 0.01) > 0 and len(budget.asked) == asks


async def test_cluster_wide_api_bucket_across_two_gateways(tmp_path: Path):
    """Two gateways sharing a budget admit one API burst between them; the rest is dropped on either."""
    async with echo_backend() as backend:
        body = f"per: api\nmessages_per_second: {SLOW}\nburst_messages: 4\non_exceed: drop"
        config = write_config(tmp_path, PORT, rate_api(backend.url("/echo/"), body))
        budget = AsyncMemoryBudget()
        async with running_gateway(config) as one, running_gateway(config) as two:
            for gw in (one, two):
                gw.state.rate_limits.backend = budget
            received: list[str] = []

            async def read(ws) -> None:
                async for message in ws:
                    received.append(message)

            async with connect(gw_url(one, "/echo")) as a, connect(gw_url(two, "/echo")) as b:
                readers = [asyncio.create_task(read(ws)) for ws in (a, b)]
                for ws, name in ((a, "a"), (b, "b")):
                    for i in range(3):
                        await ws.send(f"{name}{i}")
                await eventually(lambda: exceeded(one) + exceeded(two) == 2 and len(received) == 4)
                for task in readers:
                    task.cancel()
            assert len(set(received)) == 4 and set(received) <= {"a0", "a1", "a2", "b0", "b1", "b2"}
            assert {key for key, _ in budget.asked} == {"rate|Echo|client|api|0:messages"}
