"""`wsgate import`: AsyncAPI descriptions become API resources that validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML
from support import TIMEOUT

from gateway.cli import main
from gateway.config import check

DATA = Path(__file__).parent / "data"
PORT = "kind: Port\nname: default\nport: 8082\n"

ASYNCAPI_2 = """\
asyncapi: '2.6.0'
info: {title: Ticker, version: '1.0'}
servers:
  feed: {url: 'feed.internal:9000', protocol: wss}
channels:
  /quotes:
    publish:
      message:
        name: subscribe
        payload: {type: object, properties: {symbol: {type: string}}}
        examples: [{payload: {symbol: ACME}}]
    subscribe:
      message:
        oneOf:
          - {name: quote, contentType: application/json, payload: {type: object}}
          - {name: snapshot, contentType: application/octet-stream}
"""


def imported(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "config" / "apis" / "imported.yaml"
    assert main(["import", *args, "-o", str(out)]) == 0
    (tmp_path / "config" / "ports.yaml").write_text(PORT)
    result = check([tmp_path / "config"])
    assert result.ok, result.diagnostics  # what import writes is a valid resource in a tree with its port
    assert out.read_text().startswith("# yaml-language-server: $schema=")
    return YAML(typ="safe").load(out.read_text())


def test_asyncapi_3_operations_become_message_definitions(tmp_path):
    """3.x: `receive` operations are what clients send, `send` what the server pushes; the server and the
    channel address make the native endpoint; $refs are followed."""
    api = imported(tmp_path, str(DATA / "chat.asyncapi.yaml"))
    assert (api["name"], api["version"], api["path"]) == ("Chat-Room", "2.1.0", "/websocket/Chat-Room/2.1.0")
    assert api["upstream"]["endpoints"] == [{"url": "ws://chat.internal:8765/api/demo/"}]
    assert [(m["name"], m["origin"], m.get("sample")) for m in api["messages"]] == [
        ("say", "client", "hello"), ("broadcast", "server", None)]
    assert api["messages"][0]["schema"] == {"type": "string", "maxLength": 1000}


def test_asyncapi_2_publish_subscribe_oneof_and_options(tmp_path):
    """2.x: publish is what clients send, subscribe (each oneOf) what they receive; binary content types stay
    binary; --name, --path and --upstream override the description."""
    source = tmp_path / "ticker.yaml"
    source.write_text(ASYNCAPI_2)
    api = imported(tmp_path, str(source))
    assert api["upstream"]["endpoints"] == [{"url": "wss://feed.internal:9000/quotes"}]
    assert [(m["name"], m["origin"], m.get("type", "text")) for m in api["messages"]] == [
        ("subscribe", "client", "text"), ("quote", "server", "text"), ("snapshot", "server", "binary")]
    assert api["messages"][0]["sample"] == '{"symbol": "ACME"}'
    api = imported(tmp_path, str(source), "--name", "Quotes", "--path", "/q", "--upstream", "ws://10.0.0.5:9000/q")
    assert (api["name"], api["path"], api["upstream"]["endpoints"][0]["url"]) == ("Quotes", "/q", "ws://10.0.0.5:9000/q")


def test_what_cannot_be_imported_is_said_plainly(tmp_path, capsys):
    """Not AsyncAPI, or no ws/wss server without --upstream: exit 1 and a message naming the fix."""
    other = tmp_path / "openapi.yaml"
    other.write_text("openapi: 3.1.0\ninfo: {title: x, version: '1'}\n")
    assert main(["import", str(other)]) == 1
    assert "not an AsyncAPI document" in capsys.readouterr().err
    mqtt = tmp_path / "mqtt.yaml"
    mqtt.write_text(ASYNCAPI_2.replace("protocol: wss", "protocol: mqtt"))
    assert main(["import", str(mqtt)]) == 1
    assert "--upstream" in capsys.readouterr().err


# ----------------------------------------------- definitions that stand alone

REAL_WORLD = ("market-feed", "exchange-rpc", "team-chat")  # tests/data/*.asyncapi.yaml, written for these tests


def test_imported_schemas_stand_alone_and_validate_without_dangling_refs(tmp_path):
    """Every `$ref` of every imported message points into its own `$defs`; validate finds none dangling."""
    from gateway.config.message_schemas import unresolved_refs

    for name in REAL_WORLD:
        api = imported(tmp_path / name, str(DATA / f"{name}.asyncapi.yaml"))
        refs = 0
        for message in api["messages"]:
            schema = message.get("schema")
            if schema is None:
                continue
            assert unresolved_refs(schema) == [], (name, message["name"])
            refs += json.dumps(schema).count('"$ref"')
            assert "#/components" not in json.dumps(schema)
        assert refs >= 10, name  # the documents lean on shared schemas; all of them came along


def test_nested_oneof_allof_and_recursive_refs_are_bundled_and_enforceable(tmp_path):
    """The market feed's recursive filter and oneOf/allOf envelope survive import and still accept and refuse."""
    from gateway.config.models import MessageDefinition
    from gateway.policies.message_matcher import Matcher

    api = imported(tmp_path, str(DATA / "market-feed.asyncapi.yaml"))
    assert api["upstream"]["endpoints"] == [{"url": "wss://stream.exchange.test/ws/v2/markets/btcusd"}]  # {symbol}
    by_name = {m["name"]: m for m in api["messages"]}
    assert [(m["name"], m["origin"], m.get("type", "text")) for m in api["messages"]] == [
        ("subscribe", "client", "text"), ("unsubscribe", "client", "text"), ("marketData", "server", "text"),
        ("snapshot", "server", "binary")]
    subscribe = by_name["subscribe"]["schema"]
    assert set(subscribe["$defs"]) == {"eventTypes", "eventType", "filter", "condition"}
    assert subscribe["$defs"]["filter"]["oneOf"][1]["properties"]["all"]["items"] == {"$ref": "#/$defs/filter"}
    assert set(by_name["marketData"]["schema"]["$defs"]) == {"heartbeat", "update", "envelope", "event", "eventType"}
    client = Matcher([MessageDefinition.model_validate(m) for m in api["messages"] if m["origin"] == "client"])
    assert client.check(True, by_name["subscribe"]["sample"]) is None
    deep = {"type": "subscribe", "events": ["trade"], "filter": {"any": [{"all": [{"field": "colour"}]}]}}
    assert client.check(True, json.dumps(deep)).kind == "schema"
    server = Matcher([MessageDefinition.model_validate(m) for m in api["messages"] if m["origin"] == "server"])
    assert server.check(True, '{"type": "heartbeat", "socket_sequence": 3}') is None
    assert server.check(True, '{"type": "update", "socket_sequence": 3, "eventId": 1, "events": [{}]}') \
        .kind == "schema"


def test_replies_and_shared_messages_are_imported_once_in_their_direction(tmp_path):
    """A reply's messages go the other way; a message used by two replies is declared once."""
    api = imported(tmp_path, str(DATA / "exchange-rpc.asyncapi.yaml"))
    assert [(m["name"], m["origin"]) for m in api["messages"]] == [
        ("ping", "client"), ("pong", "server"), ("heartbeat", "server"), ("subscribe", "client"),
        ("subscriptionStatus", "server"), ("unsubscribe", "client"), ("systemStatus", "server")]
    status = next(m for m in api["messages"] if m["name"] == "subscriptionStatus")["schema"]
    assert set(status["$defs"]) >= {"subscriptionStatusError", "subscriptionStatusSuccess", "subscriptionStatusCommon",
                                    "reqid", "pair", "status", "subscription", "depth", "interval", "name", "token"}


def test_validate_locates_a_reference_left_outside_the_schema(tmp_path):
    """An imported file edited to point back at `#/components/...` fails validate with WSG142 at the `$ref`."""
    out = tmp_path / "config" / "apis" / "imported.yaml"
    assert main(["import", str(DATA / "team-chat.asyncapi.yaml"), "-o", str(out)]) == 0
    (tmp_path / "config" / "ports.yaml").write_text(PORT)
    text = out.read_text()
    assert "$ref: '#/$defs/channelId'" in text
    out.write_text(text.replace("$ref: '#/$defs/channelId'", "$ref: '#/components/schemas/channelId'", 1))
    line = 1 + out.read_text().splitlines().index(
        next(x for x in out.read_text().splitlines() if "#/components/schemas/channelId" in x))
    result = check([tmp_path / "config"])
    assert [(d.code, d.location.line) for d in result.diagnostics if d.severity == "error"] == [("WSG142", line)]


def _import_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess: before the guard, the bomb grew to gigabytes and the deep document crashed the interpreter.
    return subprocess.run([sys.executable, "-m", "gateway", "import", *args], capture_output=True, text=True,
                          timeout=TIMEOUT * 6, stdin=subprocess.DEVNULL)


ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_import_refuses_an_alias_bomb_with_a_located_diagnostic(tmp_path):
    """An alias bomb (9^9 nodes from ~600 bytes) is refused by the loader validate uses (WSG005), nothing written."""
    source = tmp_path / "bomb.yaml"
    source.write_text("asyncapi: 3.0.0\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + ALIAS_BOMB)
    out = tmp_path / "out.yaml"
    done = _import_subprocess(str(source), "-o", str(out))
    assert done.returncode == 1, done.stderr
    assert f"{source}:" in done.stderr and "WSG005" in done.stderr and "aliases expand" in done.stderr
    assert not out.exists()


def test_import_refuses_a_100000_deep_document_with_a_located_diagnostic(tmp_path):
    """A 100,000-deep flow document is refused before parsing (WSG007) instead of crashing the process."""
    source = tmp_path / "deep.json"
    source.write_text('{"asyncapi": "3.0.0", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    done = _import_subprocess(str(source))
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{source}:1:" in done.stderr and "WSG007" in done.stderr and "nesting deeper than 100" in done.stderr


def test_import_refuses_a_special_file(tmp_path):
    """A description that is /proc/self/environ (through a link) is refused unread (WSG012)."""
    link = tmp_path / "api.yaml"
    link.symlink_to("/proc/self/environ")
    done = _import_subprocess(str(link))
    assert done.returncode == 1 and "WSG012" in done.stderr
    assert "PATH=" not in done.stderr


REFS = """\
asyncapi: 3.0.0
info: {title: Refs, version: '1.0'}
servers:
  s: {host: 'h:1', protocol: ws}
channels:
  c:
    address: /x
    messages:
      a: {$ref: 'other.yaml#/components/messages/A'}
      b: {$ref: '#/components/messages/Missing'}
      l: {$ref: '#/components/messages/Loop1'}
      ok: {$ref: '#/components/messages/Ok'}
      u: {$ref: 'https://example.com/asyncapi.yaml#/components/messages/U'}
operations:
  r: {action: receive, channel: {$ref: '#/channels/c'}}
components:
  messages:
    Loop1: {$ref: '#/components/messages/Loop2'}
    Loop2: {$ref: '#/components/messages/Loop1'}
    Ok: {name: ok, payload: {type: string}}
"""


def test_import_reports_every_ref_it_cannot_follow_where_it_is_written(tmp_path, capsys):
    """References to another file or a URL (WSG260), to nothing (WSG261) and cycles (WSG262) are located
    warnings on stderr; the message that resolves is still imported."""
    source = tmp_path / "refs.yaml"
    source.write_text(REFS)
    api = imported(tmp_path, str(source))
    assert "ok" in [m["name"] for m in api["messages"]]
    warnings = [line for line in capsys.readouterr().err.splitlines() if ": warning WSG" in line]
    located = [(line.split(": warning ")[0].removeprefix(f"{source}:"), line.split(" ")[2].rstrip(":"))
               for line in warnings]
    assert located == [("9:17", "WSG260"), ("10:17", "WSG261"), ("11:17", "WSG262"), ("13:17", "WSG260"),
                       ("18:19", "WSG262"), ("19:19", "WSG262")]
