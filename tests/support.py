"""Helpers for proxy tests: a gateway and backends on 127.0.0.1 port 0, from YAML text.

Typical use, as an ``async def`` test (conftest.py runs it in a fresh event loop with a deadline)::

    async def test_echo_through_the_gateway(tmp_path):
        async with echo_backend() as backend:
            config = write_config(tmp_path, PORT + api_yaml("Echo", "/echo", backend.url("/echo/")))
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/echo")) as ws:
                    ...

``run(coro)`` is kept for scenarios a sync test or fixture must drive itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request

from echo.server import EchoService
from gateway.config import check
from gateway.config.models import EchoContext, EchoServer
from gateway.config.tree import Config
from gateway.operations.admin import admin_server
from gateway.relay.fast import ByteRelay
from gateway.relay.message import MessageRelay
from gateway.serving.runtime import Gateway

T = TypeVar("T")

# One timeout unit for every wait in proxy tests; scale it on slow machines.
TIMEOUT = float(os.environ.get("WSGATE_TEST_TIMEOUT", "10"))

PORT = """\
kind: Port
name: default
port: 0
host: 127.0.0.1
"""


def run(coro: Awaitable[T], timeout: float = 3 * TIMEOUT) -> T:
    """Run one test scenario in a fresh event loop, with a deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def api_yaml(name: str, path: str, *urls: str, extra: str = "", ports: str = "[default]") -> str:
    """An API document; ``extra`` is YAML appended at the top level (policies, limits, ...)."""
    endpoints = "\n".join(f"    - url: {url}" for url in urls)
    text = f"---\nkind: API\nname: {name}\npath: {path}\nports: {ports}\nupstream:\n  endpoints:\n{endpoints}\n"
    if extra:
        text += textwrap.dedent(extra).strip("\n") + "\n"
    return text


def app_yaml(key: str, name: str = "acme", apis: str = "[Echo]") -> str:
    """An Application document identified by the SHA-256 of API key ``key``."""
    return (f"kind: Application\nname: {name}\nidentifiers:\n  api_keys:\n"
            f"    - sha256:{hashlib.sha256(key.encode()).hexdigest()}\napis: {apis}\n")


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM ``process`` and reap it; SIGKILL it if it is still running after TIMEOUT."""
    process.terminate()
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def write_config(tmp_path: Path, *documents: str, name: str = "gateway.yaml") -> Config:
    """Write YAML documents to one file under ``tmp_path/config`` and check it; fail loudly on diagnostics."""
    root = tmp_path / "config"
    root.mkdir(exist_ok=True)
    text = "".join(doc if doc.startswith("---") else "---\n" + doc for doc in documents)
    (root / name).write_text(text)
    result = check([root])
    assert result.config is not None, f"config does not check: {result.diagnostics}"
    return result.config


@asynccontextmanager
async def running_gateway(config: Config, **kwargs: Any) -> AsyncIterator[Gateway]:
    """A started gateway (admin on a free loopback port, no echo servers unless asked); stopped after."""
    kwargs.setdefault("admin", ("127.0.0.1", 0))
    kwargs.setdefault("admin_server", admin_server)
    kwargs.setdefault("echo", False)
    gateway = Gateway(config, **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


# The two relays a test API can go through (``path_api``): conftest's ``path_kind`` fixture runs a test on each.
PATHS = ["fast", "message"]
RELAY = {"fast": ByteRelay, "message": MessageRelay}

@asynccontextmanager
async def echo_gateway(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Gateway]:
    """The smallest working setup: a gateway whose one API, ``Echo`` at ``/echo``, fronts an echo backend."""
    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("Echo", "/echo", backend.url("/echo/")))
        async with running_gateway(config, **kwargs) as gw:
            yield gw


@asynccontextmanager
async def reloadable_gateway(tmp_path: Path, *documents: str, **kwargs: Any) -> AsyncIterator[tuple[Gateway, Path]]:
    """A gateway serving ``documents`` (written as by ``write_config``) that reloads from their directory.

    Yields the gateway and that directory (``tmp_path/config``): rewrite files there, then ``gw.reload()``.
    """
    config = write_config(tmp_path, *documents)
    root = tmp_path / "config"
    async with running_gateway(config, paths=[root], **kwargs) as gw:
        yield gw, root


PASSTHROUGH = "def same(message):\n    return message.payload\n"


def passthrough_module(config_dir: Path) -> None:
    """The identity transform message-path test APIs use (importable from the config directory)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "h2_passthrough.py").write_text(PASSTHROUGH)


def path_api(tmp_path: Path, path_kind: str, url: str, *, policies: str = "", extra: str = "",
             name: str = "F", path: str = "/f") -> str:
    """An API at ``path``; for ``path_kind == "message"`` a pass-through transform puts it on the message relay."""
    if path_kind == "message":
        passthrough_module(tmp_path / "config")
        policies += "  - type: transform\n    stage: client\n    callable: h2_passthrough:same\n"
    text = extra
    if policies:
        text += "\npolicies:\n" + policies
    return api_yaml(name, path, url, extra=text)


def relay_of(gw: Gateway) -> object:
    """The relay of the gateway's one relayed connection."""
    (record,) = [r for r in gw.registry.live if r.relay is not None]
    return record.relay


def gw_url(gateway: Gateway, path: str, port: str = "default", scheme: str = "ws") -> str:
    host, number = gateway.addresses[port]
    return f"{scheme}://{host}:{number}{path}"


@asynccontextmanager
async def echo_backend(*paths: str) -> AsyncIterator[EchoService]:
    """The project's echo server on a free port; contexts in ``echo`` mode (default: ``/echo/``)."""
    contexts = [EchoContext(path=p, mode="echo") for p in (paths or ("/echo/",))]
    async with running_echo(EchoServer(kind="EchoServer", name="test-echo", port=1, contexts=contexts)) as service:
        yield service


@asynccontextmanager
async def running_echo(model: EchoServer) -> AsyncIterator[EchoService]:
    """The echo server ``model`` describes, started on a free port (its own ``port`` is ignored); stopped after."""
    service = EchoService(model, port=0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@dataclass
class Recorder:
    """What a recording backend saw: request paths and headers, and closes of its connections."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    connections: list[ServerConnection] = field(default_factory=list)

    @property
    def headers(self) -> Headers:
        return self.requests[-1].headers


@asynccontextmanager
async def recording_backend(
    handler: Callable[[ServerConnection], Awaitable[None]] | None = None,
    subprotocols: list[str] | None = None,
    ssl: Any = None,
) -> AsyncIterator[Recorder]:
    """A websockets server that records each handshake request; echoes unless given a handler."""
    recorder = Recorder()

    def process_request(connection: ServerConnection, request: Request) -> None:
        recorder.requests.append(request)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def handle(ws: ServerConnection) -> None:
        recorder.connections.append(ws)
        recorder.connected.set()
        try:
            await (handler or echo)(ws)
        except Exception:
            pass
        finally:
            await ws.wait_closed()
            recorder.closes.append((ws.close_code, ws.close_reason))
            recorder.closed.set()

    async with serve(handle, "127.0.0.1", 0, process_request=process_request, subprotocols=subprotocols,
                     compression=None, ssl=ssl) as server:
        port = server.sockets[0].getsockname()[1]
        recorder.url = f"{'wss' if ssl else 'ws'}://{'localhost' if ssl else '127.0.0.1'}:{port}"
        yield recorder


@asynccontextmanager
async def raw_backend(respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                      ) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server running ``respond`` per connection; yields (ws:// base URL, every byte chunk it received)."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await respond(_Recording(reader, received), writer)  # type: ignore[arg-type]
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}", received
    finally:
        server.close()


class _Recording:
    """A StreamReader wrapper that keeps every chunk read (to assert what reached the backend)."""

    def __init__(self, reader: asyncio.StreamReader, received: list[bytes]) -> None:
        self._reader = reader
        self._received = received

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        self._received.append(data)
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        data = await self._reader.readuntil(separator)
        self._received.append(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self._received.append(data)
        return data


@dataclass
class HTTPResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(url: str, request: bytes | None = None, path: str = "/", ssl: Any = None) -> HTTPResponse:
    """Send one raw HTTP request (default: a plain GET of ``path``) and read one response."""
    scheme, _, rest = url.partition("://")
    hostport = rest.split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ssl)
    if request is None:
        request = f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode()
    writer.write(request)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:  # closed early: what it sent, if anything (fails to parse below)
        head = exc.partial
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(lines[0].split(" ")[1])
    # A keep-alive server (the admin) leaves the connection open: read what Content-Length says, else until close.
    length = headers.get("content-length")
    body = await reader.readexactly(int(length)) if length is not None else await reader.read()
    writer.close()
    return HTTPResponse(status, headers, body)


class Scrape:
    """A parsed ``/metrics`` answer: ``value(name, **labels)`` of a sample, None when the series is absent."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample named ``name``."""
        return [dict(s.labels) for s in self.samples if s.name == name]


async def scrape(gateway: Gateway) -> Scrape:
    """GET the gateway's admin ``/metrics`` and parse it."""
    response = await http_request(f"http://127.0.0.1:{gateway.admin.port}", path="/metrics")  # type: ignore[union-attr]
    assert response.status == 200, response.body
    return Scrape(response.body.decode())


def upgrade_request(path: str, host: str = "gw", extra: str = "") -> bytes:
    """A valid WebSocket upgrade request head, with optional extra header lines."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` holds (the gateway observes closes asynchronously); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class LogEvents:
    """Log events captured by ``logged()``, which a test can await instead of polling the list."""

    def __init__(self) -> None:
        self.entries: list[MutableMapping[str, Any]] = []
        self._waiters: list[tuple[str, asyncio.Future[MutableMapping[str, Any]]]] = []

    def __call__(self, logger: object, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # A structlog processor: wakes whoever waits for this event, then hands the event on to the capture.
        for waiter in [w for w in self._waiters if w[0] == event_dict.get("event")]:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(event_dict)
        return event_dict

    async def first(self, event: str, timeout: float = TIMEOUT) -> MutableMapping[str, Any]:
        """The first captured event named ``event``, waiting for it if it has not been logged yet."""
        for entry in self.entries:
            if entry.get("event") == event:
                return entry
        future: asyncio.Future[MutableMapping[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, future))
        async with asyncio.timeout(timeout):
            return await future


@contextmanager
def logged() -> Iterator[LogEvents]:
    """Like structlog's ``capture_logs()``, with events a test can await (``await events.first("listening")``)."""
    events = LogEvents()
    with capture_logs(processors=[events]) as entries:
        events.entries = entries
        yield events


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def tutorial_tree(tmp_path: Path, echo_port: int) -> Path:
    """A copy of examples/ with the listener on a free port and the APIs pointed at a test echo server."""
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES, root)
    (root / "gateway" / "echo.yaml").unlink()  # the test runs its own echo server on a free port
    ports = root / "gateway" / "ports.yaml"
    ports.write_text(ports.read_text().replace("default: 8082", "default: 0")
                     .replace("host: 0.0.0.0", "host: 127.0.0.1"))
    gateway = root / "gateway" / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("port: 9910", "port: 0"))  # the push listener
    for api in (root / "apis").glob("*.yaml"):
        # `{value: "ws://localhost:{echo_port}/..."}` (docs/environments.md) becomes the test server's plain URL.
        api.write_text(re.sub(r'\{value: "ws://localhost:\{echo_port\}(/[^"]*)"\}', rf"ws://127.0.0.1:{echo_port}\1",
                              api.read_text()))
    return root
