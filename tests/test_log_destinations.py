"""Invocation records to OpenTelemetry logs (OTLP/HTTP) and to syslog, as configured: the same masking as the
file, and bounded when the destination is down. Real stand-ins: an OTLP/HTTP receiver and a unix syslog socket
started by the test."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs
from support import PORT, TIMEOUT, api_yaml, echo_backend, eventually, gw_url, running_gateway, write_config
from websockets.asyncio.client import connect

SECRET = "hunter2-never-logged"


class OTLPReceiver:
    """An OTLP/HTTP logs endpoint on 127.0.0.1:0 that keeps every export's JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append({"path": self.path, "type": self.headers.get("Content-Type"),
                                        "auth": self.headers.get("Authorization"),
                                        "json": json.loads(self.rfile.read(length))})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/logs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def records(self) -> list[dict[str, Any]]:
        return [r for b in self.bodies for rl in b["json"]["resourceLogs"] for sl in rl["scopeLogs"]
                for r in sl["logRecords"]]


@contextmanager
def otlp_receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@contextmanager
def syslog_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def log_policy(destination: str) -> str:
    return ("policies:\n  - type: log-invocation\n    store_client_messages: true\n"
            "    mask:\n      - json_field: password\n" + destination)


async def chat(gw: Any, count: int = 1) -> None:
    async with connect(gw_url(gw, "/echo")) as ws:
        for i in range(count):
            await ws.send(json.dumps({"user": "bob", "password": SECRET, "n": i}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["n"] == i


async def test_records_reach_an_otlp_receiver_masked(tmp_path, monkeypatch):
    """Each record is an OTLP log record whose body is the JSON record with the password masked, with the API
    as an attribute and the configured header (from the environment) on the export."""
    monkeypatch.setenv("OTLP_TOKEN", "Bearer t0ken")
    with otlp_receiver() as receiver:
        async with echo_backend() as backend:
            destination = (f"    otlp:\n      endpoint: {receiver.url}\n"
                           "      headers: {Authorization: {env: OTLP_TOKEN}}\n")
            config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/"),
                                                           extra=log_policy(destination)))
            async with running_gateway(config) as gw:
                await chat(gw)
                assert gw.state is not None
                await asyncio.to_thread(gw.state.log_writers.flush)
                await eventually(lambda: any("message" in r["body"]["stringValue"] for r in receiver.records()))
    bodies = [r["body"]["stringValue"] for r in receiver.records()]
    assert all(SECRET not in b for b in bodies)
    message = json.loads(next(b for b in bodies if '"record":"message"' in b or '"record": "message"' in b))
    assert json.loads(message["payload"])["password"] == "***"
    assert receiver.bodies[0]["path"] == "/v1/logs" and receiver.bodies[0]["type"] == "application/json"
    assert receiver.bodies[0]["auth"] == "Bearer t0ken"
    attributes = {a["key"]: a["value"]["stringValue"] for a in receiver.records()[0]["attributes"]}
    assert attributes["api"] == "Echo"


async def test_records_reach_a_syslog_socket_masked(tmp_path):
    """Each record is an RFC 5424 message (facility local0, severity info: <134>) whose text is the masked JSON."""
    path = tmp_path / "syslog.sock"
    with syslog_socket(path) as sock:
        async with echo_backend() as backend:
            destination = f"    syslog:\n      address: {path}\n      app_name: gw-test\n"
            config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/"),
                                                           extra=log_policy(destination)))
            async with running_gateway(config) as gw:
                await chat(gw)
                assert gw.state is not None
                await asyncio.to_thread(gw.state.log_writers.flush)
        messages = []
        while not any(b'"record":"message"' in m for m in messages):
            messages.append(await asyncio.to_thread(sock.recv, 65536))
    assert all(m.startswith(b"<134>1 ") and b" gw-test " in m for m in messages)
    text = next(m for m in messages if b'"record":"message"' in m)
    assert SECRET.encode() not in text
    record = json.loads(text.split(b" - - ", 1)[1])
    assert json.loads(record["payload"])["password"] == "***"


async def test_a_destination_that_is_down_drops_records_boundedly_and_the_relay_goes_on(tmp_path):
    """With the syslog socket missing and the collector refusing, messages still flow; the sinks drop (and count)
    what they could not send, warn once each, and hold no more than their bound."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    async with echo_backend() as backend:
        destination = (f"    syslog: {{address: {tmp_path / 'missing.sock'}}}\n"
                       f"    otlp: {{endpoint: 'http://127.0.0.1:{dead_port}/v1/logs', timeout: 1}}\n")
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/"),
                                                       extra=log_policy(destination)))
        with capture_logs() as events:
            async with running_gateway(config) as gw:
                await chat(gw, count=20)
                assert gw.state is not None
                await asyncio.to_thread(gw.state.log_writers.flush)
                writer = next(iter(gw.state.log_writers._writers.values()))
                assert len(writer.sinks) == 2
                for sink in writer.sinks:
                    assert sink.sent == 0 and sink.dropped >= 20  # upgrade, 20 messages, (close later)
                    assert len(sink._pending) <= sink.MAX_PENDING
    failures = [e for e in events if e["event"] == "transaction_sink_failed"]
    assert sorted(e["sink"].split()[0] for e in failures) == ["otlp", "syslog"]  # once each, not per record
