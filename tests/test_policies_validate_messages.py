"""The validate-messages policy: matching with plain values, then each mode and violation kind on a live gateway."""

from __future__ import annotations

import json
from pathlib import Path

from support import (
    PORT,
    api_yaml,
    echo_backend,
    eventually,
    gw_url,
    running_gateway,
    scrape,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.config import check
from gateway.config.models import MessageDefinition
from gateway.policies.message_matcher import Matcher

SUBSCRIBE = {
    "type": "object",
    "properties": {"type": {"const": "subscribe"}, "channel": {"$ref": "#/$defs/channel"}},
    "required": ["type", "channel"],
    "$defs": {"channel": {"type": "string", "minLength": 1}},
}
PING = {"type": "object", "properties": {"type": {"enum": ["ping"]}, "id": {"type": "integer"}},
        "required": ["type", "id"]}


def definition(name: str, origin: str = "client", **fields: object) -> MessageDefinition:
    return MessageDefinition.model_validate({"name": name, "origin": origin, **fields})


# ------------------------------------------------------------------ matcher


def test_matcher_kinds_type_size_and_schema():
    """Wrong type, over max_size, not JSON and schema mismatches are each named; a match is None."""
    matcher = Matcher([definition("subscribe", schema=SUBSCRIBE, max_size=64), definition("ping", schema=PING)])
    assert matcher.check(True, json.dumps({"type": "subscribe", "channel": "btc"})) is None
    assert matcher.check(True, json.dumps({"type": "ping", "id": 3})) is None
    assert matcher.check(False, b"\x00").kind == "type"
    assert matcher.check(True, "not json").kind == "schema"
    mismatch = matcher.check(True, json.dumps({"type": "subscribe", "channel": ""}))
    assert mismatch.kind == "schema" and "/channel" in mismatch.detail
    sized = Matcher([definition("small", max_size=4)])
    assert sized.check(True, "four") is None
    assert sized.check(True, "fiver").kind == "size"
    assert sized.check(True, "éé") is None  # 4 bytes in UTF-8
    assert sized.check(True, "ééé").kind == "size"  # 6 bytes


def test_matcher_discriminator_picks_by_value_and_names_an_unknown_one():
    """With a discriminator, the message's value selects the definition; an undeclared value is its own violation."""
    matcher = Matcher([definition("subscribe", schema=SUBSCRIBE), definition("ping", schema=PING)], "type")
    assert set(matcher.by_value) == {"subscribe", "ping"} and matcher.unkeyed == []
    assert matcher.check(True, '{"type": "ping", "id": 1}') is None
    wrong = matcher.check(True, '{"type": "ping", "id": "x"}')
    assert wrong.kind == "schema" and "'ping'" in wrong.detail
    unknown = matcher.check(True, '{"type": "unsubscribe"}')
    assert unknown.kind == "schema" and "type = \"unsubscribe\"" in unknown.detail


def test_matcher_without_definitions_or_with_a_free_text_one():
    """No definition of a type refuses it; a text definition with no schema or size accepts any text."""
    assert Matcher([]).check(True, "x").kind == "type"
    free = Matcher([definition("anything")])
    assert free.check(True, "whatever") is None
    assert free.check(False, b"bin").kind == "type"


# ------------------------------------------------------------- live gateway


def messages_yaml(*definitions: dict) -> str:
    return "messages: " + json.dumps(list(definitions)) + "\n"


def validated_api(url: str, policy: str, *definitions: dict, extra_policies: str = "") -> str:
    text = messages_yaml(*definitions) + "policies:\n  - type: validate-messages\n"
    text += "".join(f"    {line}\n" for line in policy.strip().splitlines()) + extra_policies
    return api_yaml("Echo", "/echo", url, extra=text)


def violations(gw, direction: str = "client") -> dict[tuple[str, str], int]:
    return {(kind, action): n for (api, d, kind, action), n in gw.state.violations.items() if d == direction}


CLIENT_DEFS = (
    {"name": "subscribe", "origin": "client", "schema": SUBSCRIBE, "max_size": 200},
    {"name": "ping", "origin": "client", "schema": PING},
)


async def closed_with(ws) -> tuple[int, str]:
    try:
        await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("the connection stayed open")


async def test_enforce_close_uses_the_code_of_each_violation_kind(tmp_path: Path):
    """Under enforce/close a binary frame closes with 1007, an oversized one 1009, a schema mismatch 1008."""
    async with echo_backend() as backend:
        api = validated_api(backend.url("/echo/"), "discriminator: type", *CLIENT_DEFS)
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            valid = json.dumps({"type": "subscribe", "channel": "btc"})
            oversized = json.dumps({"type": "subscribe", "channel": "x" * 300})
            for bad, code in ((b"\x01\x02", 1007), (oversized, 1009), (json.dumps({"type": "subscribe"}), 1008),
                              ("plain text", 1008)):
                async with connect(gw_url(gw, "/echo")) as ws:
                    await ws.send(valid)
                    assert await ws.recv() == valid
                    await ws.send(bad)
                    got = await closed_with(ws)
                    assert got[0] == code, (bad, got)
            assert violations(gw) == {("type", "close"): 1, ("size", "close"): 1, ("schema", "close"): 2}


async def test_enforce_drop_answers_the_sender_and_keeps_the_connection(tmp_path: Path):
    """Under enforce/drop a violating message goes nowhere, its sender gets the error message, valid ones pass."""
    async with echo_backend() as backend:
        policy = "on_violation: drop\nerror_message: '{\"type\":\"error\",\"reason\":\"invalid message\"}'"
        config = write_config(tmp_path, PORT, validated_api(backend.url("/echo/"), policy, *CLIENT_DEFS))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            await ws.send('{"type": "ping", "id": "seven"}')
            assert json.loads(await ws.recv()) == {"type": "error", "reason": "invalid message"}
            await ws.send('{"type": "ping", "id": 7}')
            assert await ws.recv() == '{"type": "ping", "id": 7}'
            metrics = await scrape(gw)
            assert metrics.value("wsgate_message_violations_total", api="Echo", direction="client", kind="schema",
                                 action="drop") == 1


async def test_log_mode_passes_the_message_and_records_it_in_the_invocation_log(tmp_path: Path):
    """Under log a violating message is relayed and a `violation` record lands in the log-invocation file."""
    async with echo_backend() as backend:
        logger = "  - type: log-invocation\n    file: logs/echo.jsonl\n"
        api = validated_api(backend.url("/echo/"), "client: log", *CLIENT_DEFS, extra_policies=logger)
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/echo")) as ws:
                await ws.send("not json")
                assert await ws.recv() == "not json"
            assert violations(gw) == {("schema", "log"): 1}
            gw.state.log_writers.flush()
            records = [json.loads(line) for line in (tmp_path / "config/logs/echo.jsonl").read_text().splitlines()]
            (violation,) = [r for r in records if r["record"] == "violation"]
            assert (violation["direction"], violation["kind"], violation["action"]) == ("client", "schema", "log")
            assert "not json" not in json.dumps(violation)  # the payload stays out of the record


async def test_server_direction_is_checked_against_the_servers_definitions(tmp_path: Path):
    """A server `enforce` with drop swallows what the backend sends outside its definitions."""
    async with echo_backend() as backend:
        defs = ({"name": "anything", "origin": "client"},
                {"name": "event", "origin": "server", "schema": {"type": "object", "required": ["event"]}})
        api = validated_api(backend.url("/echo/"), "client: enforce\nserver: enforce\non_violation: drop", *defs)
        config = write_config(tmp_path, PORT, api)
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            await ws.send("free text")  # the client may send it; its echo is not a server event
            await eventually(lambda: violations(gw, "server") == {("schema", "drop"): 1})
            await ws.send('{"event": "tick"}')
            assert await ws.recv() == '{"event": "tick"}'


# ---------------------------------------------------------------- validate


def diagnostics(tmp_path: Path, api: str) -> list[tuple[str, int, int]]:
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    text = "---\n" + PORT + api
    (root / "gateway.yaml").write_text(text)
    return [(d.code, d.location.line, d.location.col) for d in check([root]).diagnostics if d.code != "WSG201"]


def line_of(text: str, needle: str) -> int:
    return 1 + ("---\n" + PORT + text).splitlines().index(needle)


def test_validate_locates_an_invalid_schema_and_a_dangling_ref(tmp_path: Path):
    """WSG141 points into the schema at the bad keyword; WSG142 at the `$ref` that leaves the schema."""
    api = api_yaml("Echo", "/echo", "ws://127.0.0.1:9/", extra="""
        messages:
          - name: bad
            origin: client
            schema:
              type: object
              required: yes
          - name: dangling
            origin: client
            schema:
              properties:
                price:
                  $ref: '#/components/schemas/Price'
                ok:
                  $ref: '#/$defs/ok'
              $defs:
                ok: {type: string}
        """)
    assert diagnostics(tmp_path, api) == [
        ("WSG141", line_of(api, "      required: yes"), 17),
        ("WSG142", line_of(api, "          $ref: '#/components/schemas/Price'"), 17),
    ]


def test_validate_warns_when_a_checked_direction_declares_nothing(tmp_path: Path):
    """WSG240: `server: enforce` on an API without server messages would refuse every one of them."""
    api = validated_api("ws://127.0.0.1:9/", "server: enforce", {"name": "m", "origin": "client"})
    assert diagnostics(tmp_path, api) == [("WSG240", line_of(api, "    server: enforce"), 13)]


def test_both_validators_agree_on_a_recursive_schema():
    """jsonschema-rs (when installed) and jsonschema accept and refuse the same documents of a cyclic `$defs` schema."""
    from gateway.config.message_schemas import CompiledSchema, unresolved_refs

    tree = {"$ref": "#/$defs/node", "$defs": {"node": {
        "type": "object", "required": ["value"],
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
    }}}
    assert unresolved_refs(tree) == []
    good = {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}
    bad = {"value": 1, "children": [{"value": 2, "children": [{"value": "three"}]}]}
    for compiled in (True, False):
        schema = CompiledSchema(tree, compiled=compiled)
        assert schema.is_valid(good) and not schema.is_valid(bad)
        assert "/children/0/children/0/value" in schema.explain(bad)


# ------------------------------------------------------- unreadable JSON, duplicate keys, big messages

DEEP = '{"type": "ping", "id": ' + "[" * 1000 + "]" * 1000 + "}"  # ~2 KB, deeper than Python's parser goes


def test_matcher_calls_deep_nesting_and_duplicate_keys_schema_violations():
    """JSON nested past the parser's limit and an object naming a key twice (at any depth) are schema violations."""
    for discriminator in (None, "type"):
        matcher = Matcher([definition("subscribe", schema=SUBSCRIBE), definition("ping", schema=PING)], discriminator)
        deep = matcher.check(True, DEEP)
        assert deep is not None and (deep.kind, deep.detail) == ("schema", "JSON nested too deep to check")
        for text, key in (('{"type": "ping", "id": 1, "id": "x"}', '"id"'),
                          ('{"type": "ping", "type": "subscribe", "id": 1}', '"type"'),
                          ('{"type": "subscribe", "channel": "a", "x": {"k": 1, "k": 2}}', '"k"')):
            duplicate = matcher.check(True, text)
            assert duplicate is not None and duplicate.kind == "schema", text
            assert duplicate.detail == f"JSON object with a duplicate key {key}"
        assert matcher.check(True, '{"type": "ping", "id": 1, "x": {"id": 2}}') is None  # same key, other object


async def test_deep_nesting_is_a_counted_violation_in_every_mode(tmp_path: Path):
    """A 1,000-deep JSON message closes with 1008 under enforce/close, is answered and dropped under drop, and is
    forwarded under log; never a 1011, and each is counted as a schema violation."""
    modes = (
        ("on_violation: close", ("schema", "close")),
        ("on_violation: drop\nerror_message: refused", ("schema", "drop")),
        ("client: log", ("schema", "log")),
    )
    async with echo_backend() as backend:
        for policy, counted in modes:
            api = validated_api(backend.url("/echo/"), "discriminator: type\n" + policy, *CLIENT_DEFS)
            (tmp_path / counted[1]).mkdir()
            config = write_config(tmp_path / counted[1], PORT, api)
            async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
                await ws.send(DEEP)
                if counted[1] == "close":
                    assert await closed_with(ws) == (1008, "message violates its definition (schema)")
                else:
                    assert await ws.recv() == ("refused" if counted[1] == "drop" else DEEP)
                    await ws.send('{"type": "ping", "id": 7}')  # the connection goes on
                    assert await ws.recv() == '{"type": "ping", "id": 7}'
                assert violations(gw) == {counted: 1}


async def test_duplicate_keys_close_under_enforce(tmp_path: Path):
    """A message whose object names `id` twice (valid by its last value) closes with 1008 and is counted."""
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, validated_api(backend.url("/echo/"), "client: enforce", *CLIENT_DEFS))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            await ws.send('{"type": "ping", "id": "admin", "id": 1}')
            assert (await closed_with(ws))[0] == 1008
            assert violations(gw) == {("schema", "close"): 1}


async def test_messages_over_offload_above_are_checked_in_a_thread_in_order(tmp_path: Path):
    """With `offload_above: 100`, long and short messages sent back to back are echoed in the order sent, and a long
    violating one among them is still refused (dropped, the error message answered at once)."""
    async with echo_backend() as backend:
        policy = "offload_above: 100\non_violation: drop\nerror_message: refused"
        config = write_config(tmp_path, PORT, validated_api(backend.url("/echo/"), policy, *CLIENT_DEFS))
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            (route,) = [api for api in gw.table.apis.values()]
            (validator,) = [p for p in route.client_policies if p.type == "validate-messages"]
            assert validator.sync_messages is False  # the relay awaits its long-message answers
            long_ok = json.dumps({"type": "subscribe", "channel": "c" * 150})
            long_bad = json.dumps({"type": "subscribe", "channel": 5, "pad": "p" * 150})
            sent = [long_ok, '{"type": "ping", "id": 1}', long_bad, '{"type": "ping", "id": 2}', DEEP, long_ok]
            for text in sent:
                await ws.send(text)
            got = [await ws.recv() for _ in sent]
            assert got.count("refused") == 2  # the answers skip the backend: they may overtake echoes
            assert [text for text in got if text != "refused"] == [
                long_ok, '{"type": "ping", "id": 1}', '{"type": "ping", "id": 2}', long_ok]
            assert violations(gw) == {("schema", "drop"): 2}


async def test_a_dead_validation_worker_is_replaced_and_the_message_still_checked(tmp_path: Path):
    """With the worker process killed, the next long message is checked on the loop (a violation still refused),
    `validation_worker_failed` is logged, and a new worker checks the one after."""
    import os
    import signal

    from support import logged

    from gateway.policies import validation_worker

    async with echo_backend() as backend:
        policy = "offload_above: 100\non_violation: drop\nerror_message: refused"
        config = write_config(tmp_path, PORT, validated_api(backend.url("/echo/"), policy, *CLIENT_DEFS))
        long_ok = json.dumps({"type": "subscribe", "channel": "c" * 150})
        long_bad = json.dumps({"type": "subscribe", "channel": 5, "pad": "p" * 150})
        async with running_gateway(config) as gw, connect(gw_url(gw, "/echo")) as ws:
            await ws.send(long_ok)
            assert await ws.recv() == long_ok  # the worker is up
            pool = validation_worker._worker
            assert pool is not None
            for pid in list(pool._processes):
                os.kill(pid, signal.SIGKILL)
            with logged() as events:
                await ws.send(long_bad)
                assert await ws.recv() == "refused"
                await events.first("validation_worker_failed")
            await ws.send(long_ok)
            assert await ws.recv() == long_ok
            assert validation_worker._worker is not None and validation_worker._worker is not pool
