"""`wsgate export asyncapi`: AsyncAPI 3.0 documents the AsyncAPI project's own parser accepts, stable under import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gateway.asyncapi.exporter import asyncapi_document
from gateway.asyncapi.importer import api_from_asyncapi, load_description
from gateway.cli import main
from gateway.config import check

HERE = Path(__file__).parent
REPO = HERE.parent
DATA = HERE / "data"
IMPORTED = ("chat", "market-feed", "exchange-rpc", "team-chat")  # tests/data/*.asyncapi.yaml
PORT = "kind: Port\nname: default\nport: 8082\n"
PARSER_PACKAGE = "@asyncapi/parser@^3"


@pytest.fixture(scope="session")
def asyncapi_parser() -> Path:
    """A directory holding @asyncapi/parser from npm (installed once into a cache); skips when it cannot be had."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the AsyncAPI parser (apt-get install nodejs npm)")
    directory = Path(os.environ.get("WSGATE_ASYNCAPI_PARSER_DIR")
                     or Path.home() / ".cache" / "wsgate-tests" / "asyncapi-parser")
    if not (directory / "node_modules" / "@asyncapi" / "parser").is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run([npm, "install", "--prefix", str(directory), "--no-audit", "--no-fund", "--silent",
                                   PARSER_PACKAGE], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install {PARSER_PACKAGE} took over 10 minutes (registry unreachable?)")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            pytest.skip(f"npm could not install {PARSER_PACKAGE} (registry unreachable?): {' '.join(tail)}")
    return directory


def parse(parser_dir: Path, *files: Path) -> dict[str, dict]:
    """The parser's verdict on each file: errors (severity 0), warnings and the messages it found."""
    done = subprocess.run(["node", str(HERE / "asyncapi" / "parse.mjs"), *map(str, files)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ASYNCAPI_PARSER_DIR": str(parser_dir)})
    assert done.returncode == 0, done.stderr
    return {Path(r["file"]).name: r for r in map(json.loads, done.stdout.splitlines())}


def config_with_imports(tmp_path: Path) -> Path:
    """A config tree: the repository's example APIs plus every test description imported."""
    root = tmp_path / "config"
    shutil.copytree(REPO / "examples", root)
    for name in IMPORTED:
        assert main(["import", str(DATA / f"{name}.asyncapi.yaml"), "--port", "default",
                     "-o", str(root / "apis" / f"{name}.yaml")]) == 0
    return root


@pytest.mark.slow
def test_the_asyncapi_parser_accepts_the_export_of_every_example_api(tmp_path, asyncapi_parser):
    """Each example API and each imported description, exported, parses with no error and all its messages."""
    root = config_with_imports(tmp_path)
    result = check([root])
    assert result.ok and result.config is not None, result.diagnostics
    files = []
    for name, api in result.config.apis.items():
        out = tmp_path / "out" / f"{name}.yaml"
        assert main(["export", "asyncapi", name, "--config", str(root), "-o", str(out)]) == 0
        files.append((out, len(api.model.messages)))
    assert len(files) == len(list((REPO / "examples" / "apis").glob("*.yaml"))) + len(IMPORTED)
    broken = tmp_path / "out" / "broken.yaml"  # the control: the parser does find errors
    broken.write_text(files[0][0].read_text().replace("action: receive", "action: listen"))
    verdicts = parse(asyncapi_parser, broken, *(f for f, _ in files))
    assert verdicts.pop("broken.yaml")["errors"]
    for out, messages in files:
        verdict = verdicts[out.name]
        assert verdict["errors"] == [] and verdict["parsed"], (out.name, verdict)
        assert verdict["messages"] == messages, out.name


def test_import_export_import_is_stable(tmp_path):
    """Importing the export of an imported API gives back the same name, version, description and messages."""
    root = config_with_imports(tmp_path)
    config = check([root]).config
    assert config is not None
    for name in IMPORTED:
        first = api_from_asyncapi(load_description(DATA / f"{name}.asyncapi.yaml"), port="default")
        exported = tmp_path / f"{name}.json"
        exported.write_text(json.dumps(asyncapi_document(config, first.name)))
        second = api_from_asyncapi(load_description(exported), port="default",
                                   upstream=first.upstream.endpoints[0].url)
        assert second == first, name


def test_export_describes_the_gateway_server_security_and_operations(tmp_path, capsys):
    """The tutorial API: servers are the gateway's Ports, API keys are its security, the path its channel."""
    root = tmp_path / "config"
    shutil.copytree(REPO / "examples", root)
    assert main(["export", "asyncapi", "EchoWS", "--config", str(root), "--version", "7.1", "--host",
                 "gw.example.com"]) == 0
    document = YAML(typ="safe").load(capsys.readouterr().out)
    assert document["asyncapi"] == "3.0.0" and document["info"]["version"] == "7.1"
    (server,) = document["servers"].values()
    assert server["host"].startswith("gw.example.com:") and server["protocol"] == "ws"
    assert server["security"] == [{"$ref": "#/components/securitySchemes/apiKeyQuery"},
                                  {"$ref": "#/components/securitySchemes/apiKeyHeader"}]
    assert document["components"]["securitySchemes"]["apiKeyQuery"] == {
        "type": "httpApiKey", "name": "x-Gateway-APIKey", "in": "query",
        "description": "The application's API key as a query parameter."}
    (channel,) = document["channels"].values()
    assert channel["address"] == check([root]).config.apis["EchoWS"].model.path
    assert [(key, op["action"]) for key, op in document["operations"].items()] == [
        ("receiveChat", "receive"), ("sendEchoed", "send")]
    assert main(["export", "asyncapi", "Nope", "--config", str(root)]) == 1
    assert "no API named 'Nope'" in capsys.readouterr().err


ROUTED = """\
kind: API
name: Chat
path: /chat
ports: [default]
policies:
  - type: validate-messages
    discriminator: action
messages:
  - name: join
    origin: client
    schema: {type: object, properties: {action: {const: join}, room: {type: string}}}
  - name: say
    origin: client
    schema: {type: object, properties: {action: {const: say}, text: {type: string}}}
  - name: ping
    origin: client
    schema: {type: object, properties: {action: {const: ping}}}
  - name: said
    origin: server
routes:
  - key: join
    integration: {websocket: {url: "ws://rooms.internal:9000/"}}
  - key: say
    integration: {http: {url: "https://chat.internal/say"}}
  - key: $default
    integration: {http: {url: "https://chat.internal/other"}}
  - key: $connect
    integration: {http: {url: "https://chat.internal/connect"}}
"""


def routed_config(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    root.mkdir()
    (root / "gateway.yaml").write_text("---\n" + PORT + "---\n" + ROUTED)
    return root


def test_export_shows_message_routes_as_operations(tmp_path):
    """Each message route is a receive operation listing the messages that select it ($default the rest), with
    its key and kind of backend; no backend URL appears; import reads the messages back once each."""
    root = routed_config(tmp_path)
    config = check([root]).config
    assert config is not None
    document = asyncapi_document(config, "Chat")
    routes = {key: op for key, op in document["operations"].items() if "x-wsgate-route" in op}
    assert list(routes) == ["routeJoin", "routeSay", "routeDefault"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in routes["routeJoin"]["messages"]] == ["join"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in routes["routeSay"]["messages"]] == ["say"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in routes["routeDefault"]["messages"]] == ["ping"]
    assert routes["routeSay"]["x-wsgate-route"] == {"key": "say", "selection": "action", "integration": "http"}
    assert routes["routeJoin"]["x-wsgate-route"]["integration"] == "websocket"
    assert all(op["action"] == "receive" for op in routes.values())
    assert "internal" not in json.dumps(document)
    exported = tmp_path / "chat.json"
    exported.write_text(json.dumps(document))
    imported = api_from_asyncapi(load_description(exported), port="default", upstream="ws://127.0.0.1:1/")
    assert [(m.name, m.origin) for m in imported.messages] == [
        ("join", "client"), ("say", "client"), ("ping", "client"), ("said", "server")]


def test_the_asyncapi_parser_accepts_an_export_with_routes(tmp_path, asyncapi_parser):
    """A routed API's export, route operations included, parses with no error and all its messages."""
    root = routed_config(tmp_path)
    out = tmp_path / "out" / "chat.yaml"
    assert main(["export", "asyncapi", "Chat", "--config", str(root), "-o", str(out)]) == 0
    verdict = parse(asyncapi_parser, out)["chat.yaml"]
    assert verdict["errors"] == [] and verdict["parsed"], verdict
    assert verdict["messages"] == 4
