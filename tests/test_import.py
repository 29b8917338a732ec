"""`wsgate import`: AsyncAPI descriptions become API resources that validate."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

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
