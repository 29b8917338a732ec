"""The echo broadcaster over real sockets: rooms, echo mode, time ticks, publishing, limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from support import logged, running_echo
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from echo.rooms import TOO_SLOW
from echo.server import EchoService, serve_echo_servers, serve_until_signal
from gateway.config.models import EchoServer
from gateway.config.tree import Config, Loaded, Location

# One timeout unit for every wait; raise it on slow machines.
TIMEOUT = float(os.environ.get("WSGATE_TEST_TIMEOUT", "5"))



def echo_model(*contexts: dict[str, Any], **fields: Any) -> EchoServer:
    contexts = contexts or ({"path": "/api/demo/"},)
    return EchoServer(kind="EchoServer", name="test-echo", port=8765, contexts=list(contexts), **fields)


running = running_echo  # the shorter name this module's tests use


async def recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    async with asyncio.timeout(TIMEOUT):
        await ws.wait_closed()
    return ws.close_code, ws.close_reason


async def http_get(service: EchoService, target: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET (no upgrade) over a fresh connection: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n\r\n".encode())
        async with asyncio.timeout(TIMEOUT):
            raw = await reader.read()  # the server sends Connection: close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def refused_status(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with asyncio.timeout(TIMEOUT):
            await connect(url)
    response: Response = refused.value.response
    return response.status_code


# ------------------------------------------------------------------ rooms


async def test_text_message_is_broadcast_with_the_sender_user() -> None:
    """A text message comes back to the sender as 'Message Received from {user}: {message}'."""
    async with running(echo_model()) as service:
        async with connect(service.url("/api/demo/?user=bob")) as bob:
            await bob.send("hello")
            assert await recv(bob) == "Message Received from bob: hello"


async def test_user_defaults_to_anonymous() -> None:
    """Without a user query parameter the sender is called 'anonymous'."""
    async with running(echo_model()) as service:
        async with connect(service.url("/api/demo/")) as ws:
            await ws.send("hi")
            assert await recv(ws) == "Message Received from anonymous: hi"


async def test_fan_out_reaches_every_client_of_the_context_and_no_other() -> None:
    """Every client of the sender's context gets the message; a client of another context does not."""
    model = echo_model({"path": "/api/demo/"}, {"path": "/websocket/demo/"})
    async with running(model) as service:
        async with (
            connect(service.url("/api/demo/?user=alice")) as alice,
            connect(service.url("/api/demo/?user=bob")) as bob,
            connect(service.url("/websocket/demo/?user=carol")) as carol,
        ):
            await alice.send("one")
            assert await recv(alice) == "Message Received from alice: one"
            assert await recv(bob) == "Message Received from alice: one"
            # Had carol been sent alice's message, it would be queued before her own probe.
            await carol.send("probe")
            assert await recv(carol) == "Message Received from carol: probe"


async def test_binary_messages_are_broadcast_unchanged() -> None:
    """A binary message reaches every client of the room as the same bytes, still binary."""
    async with running(echo_model()) as service:
        async with connect(service.url("/api/demo/?user=a")) as a, connect(service.url("/api/demo/")) as b:
            payload = bytes(range(256))
            await a.send(payload)
            assert await recv(a) == payload
            assert await recv(b) == payload


@pytest.mark.parametrize(
    "context",
    [
        {"path": "/websocket/demo/broadcast/", "interval": 0.05},
        {"path": "/ticks/", "broadcast_time": True, "interval": 0.05},
    ],
    ids=["path-contains-broadcast", "explicit-flag"],
)
async def test_broadcast_context_sends_the_server_time_every_interval(context: dict[str, Any]) -> None:
    """A broadcast context pushes the server time, ISO 8601 with a UTC offset, tick after tick."""
    async with running(echo_model(context)) as service:
        async with connect(service.url(context["path"])) as ws:
            ticks = [datetime.fromisoformat(str(await recv(ws))) for _ in range(2)]
            assert all(t.tzinfo is not None for t in ticks)
            assert ticks[0] < ticks[1]


async def test_broadcast_time_can_be_turned_off_on_a_broadcast_path() -> None:
    """broadcast_time: false silences a context even when its path contains 'broadcast'."""
    quiet = {"path": "/broadcast/quiet/", "broadcast_time": False, "interval": 0.05}
    loud = {"path": "/broadcast/loud/", "interval": 0.05}
    async with running(echo_model(quiet, loud)) as service:
        async with (
            connect(service.url("/broadcast/quiet/")) as ws,
            connect(service.url("/broadcast/loud/")) as clock,
        ):
            # Two ticks of a sibling context: the quiet one had time to tick at least once.
            for _ in range(2):
                datetime.fromisoformat(str(await recv(clock)))
            await ws.send("probe")
            assert await recv(ws) == "Message Received from anonymous: probe"


async def test_a_burst_from_a_fast_sender_does_not_trip_the_slow_client_bound() -> None:
    """A burst far larger than max_queue, from a client that reads, comes back whole and in order."""
    async with running(echo_model(max_queue=16)) as service:
        async with connect(service.url("/api/demo/?user=b")) as ws:
            burst = [f"m{i}" for i in range(1000)]
            # Sent without reading in between: the server receives it in a few large chunks.
            for text in burst:
                await ws.send(text)
            got = [await recv(ws) for _ in burst]
            assert got == [f"Message Received from b: {text}" for text in burst]


# --------------------------------------------------------------- echo mode


async def test_echo_mode_answers_only_the_sender_unchanged() -> None:
    """In echo mode text and binary go back unchanged to the sender and to nobody else."""
    async with running(echo_model({"path": "/echo/", "mode": "echo"})) as service:
        async with connect(service.url("/echo/?user=a")) as a, connect(service.url("/echo/")) as b:
            await a.send("plain text")
            await a.send(b"\x00\xff")
            assert await recv(a) == "plain text"
            assert await recv(a) == b"\x00\xff"
            await b.send("probe")
            assert await recv(b) == "probe"


# ------------------------------------------------------------ HTTP answers


async def test_unknown_path_is_refused_with_404() -> None:
    """An upgrade to a path that is no context fails with HTTP 404."""
    async with running(echo_model()) as service:
        assert await refused_status(service.url("/nowhere/")) == 404
        # The trailing slash is part of the context.
        assert await refused_status(service.url("/api/demo")) == 404


async def test_plain_get_on_a_context_answers_426() -> None:
    """A plain HTTP GET (no upgrade) on a context path answers 426 Upgrade Required."""
    async with running(echo_model()) as service:
        status, headers, _ = await http_get(service, "/api/demo/")
        assert status == 426
        assert headers["upgrade"].lower() == "websocket"


async def test_demo_page_is_served_with_the_live_contexts() -> None:
    """GET / serves the demo page with this server's contexts filled in, and its CSS and JS."""
    model = echo_model({"path": "/api/demo/"}, {"path": "/echo/", "mode": "echo"})
    async with running(model) as service:
        for target in ("/", "/demo.html"):
            status, headers, body = await http_get(service, target)
            assert status == 200
            assert headers["content-type"].startswith("text/html")
            assert "connect-src" in headers["content-security-policy"]
            assert b'"path": "/api/demo/", "mode": "room"' in body
            assert b'"path": "/echo/", "mode": "echo"' in body
        for target, kind in (("/demo.js", "text/javascript"), ("/demo.css", "text/css")):
            status, headers, body = await http_get(service, target)
            assert (status, headers["content-type"]) == (200, kind)
            assert body


async def test_message_larger_than_max_message_size_closes_with_1009() -> None:
    """max_message_size is the websockets max_size: a larger message closes the connection with 1009."""
    async with running(echo_model(max_message_size=1024)) as service:
        async with connect(service.url("/api/demo/")) as ws:
            await ws.send("x" * 1024)
            assert await recv(ws) == "Message Received from anonymous: " + "x" * 1024
            await ws.send("x" * 1025)
            assert (await closed(ws))[0] == 1009


# ------------------------------------------------------ publish / unpublish


async def test_http_control_unpublishes_and_republishes_a_context() -> None:
    """stopDemoAPI closes the context's clients with 1001 and refuses new ones with 404; startDemoAPI brings it back."""
    model = echo_model({"path": "/api/demo/"}, {"path": "/websocket/demo/"})
    async with running(model) as service:
        async with connect(service.url("/api/demo/")) as demo, connect(service.url("/websocket/demo/")) as other:
            status, headers, body = await http_get(service, "/stopDemoAPI?relativeURI=/api/demo/")
            assert (status, headers["content-type"]) == (200, "application/json")
            assert json.loads(body) == {
                "status": "stopped",
                "contexts": ["/api/demo/"],
                "published": ["/websocket/demo/"],
            }
            assert await closed(demo) == (1001, "context unpublished")
            assert await refused_status(service.url("/api/demo/")) == 404
            # The other context is untouched.
            await other.send("still here")
            assert await recv(other) == "Message Received from anonymous: still here"

        status, _, body = await http_get(service, "/startDemoAPI?relativeURI=/api/demo/")
        assert status == 200 and json.loads(body)["status"] == "started"
        async with connect(service.url("/api/demo/?user=back")) as demo:
            await demo.send("again")
            assert await recv(demo) == "Message Received from back: again"


async def test_http_control_without_relative_uri_acts_on_every_context() -> None:
    """stopDemoAPI alone unpublishes every context; startDemoAPI alone publishes them all."""
    model = echo_model({"path": "/a/"}, {"path": "/b/", "published": False})
    async with running(model) as service:
        _, _, body = await http_get(service, "/startDemoAPI")
        assert json.loads(body)["published"] == ["/a/", "/b/"]
        _, _, body = await http_get(service, "/stopDemoAPI")
        assert json.loads(body)["published"] == []
        assert await refused_status(service.url("/a/")) == 404


async def test_http_control_rejects_an_unknown_context_and_can_be_disabled() -> None:
    """An unknown relativeURI answers 404 JSON; with control: false the endpoints do not exist."""
    async with running(echo_model()) as service:
        status, _, body = await http_get(service, "/stopDemoAPI?relativeURI=/nope/")
        assert status == 404 and json.loads(body)["error"] == "unknown context"
    async with running(echo_model(control=False)) as service:
        status, _, _ = await http_get(service, "/stopDemoAPI?relativeURI=/api/demo/")
        assert status == 404
        async with connect(service.url("/api/demo/")) as ws:
            await ws.send("up")
            assert await recv(ws) == "Message Received from anonymous: up"


async def test_apply_unpublishes_republishes_adds_and_removes_contexts() -> None:
    """apply(model) changes contexts on the running listener: 1001 and 404 when unpublished, service when back."""
    base = {"path": "/api/demo/"}
    async with running(echo_model(base)) as service:
        port = service.port
        async with connect(service.url("/api/demo/")) as ws:
            service.apply(echo_model({**base, "published": False}))
            assert await closed(ws) == (1001, "context unpublished")
        assert await refused_status(service.url("/api/demo/")) == 404

        service.apply(echo_model(base, {"path": "/new/", "mode": "echo"}))
        assert service.port == port
        async with connect(service.url("/api/demo/")) as ws, connect(service.url("/new/")) as new:
            await ws.send("back")
            assert await recv(ws) == "Message Received from anonymous: back"
            await new.send("echoed")
            assert await recv(new) == "echoed"
            service.apply(echo_model(base))  # /new/ removed
            assert await closed(new) == (1001, "context unpublished")
            await ws.send("untouched")
            assert await recv(ws) == "Message Received from anonymous: untouched"
        assert await refused_status(service.url("/new/")) == 404


async def test_apply_changing_the_mode_closes_the_old_clients() -> None:
    """A context switched from room to echo closes its clients with 1001; new ones get echo behaviour."""
    async with running(echo_model({"path": "/x/"})) as service:
        async with connect(service.url("/x/")) as ws:
            service.apply(echo_model({"path": "/x/", "mode": "echo"}))
            assert await closed(ws) == (1001, "context changed")
        async with connect(service.url("/x/")) as ws:
            await ws.send("raw")
            assert await recv(ws) == "raw"


async def test_apply_keeps_an_http_stopped_context_stopped_across_unrelated_changes() -> None:
    """A context stopped over HTTP stays stopped when apply() only changes another context."""
    async with running(echo_model({"path": "/a/"}, {"path": "/b/"})) as service:
        await http_get(service, "/stopDemoAPI?relativeURI=/a/")
        service.apply(echo_model({"path": "/a/"}, {"path": "/b/", "interval": 2}))
        assert await refused_status(service.url("/a/")) == 404


async def test_apply_refuses_a_changed_host_or_port() -> None:
    """Host and port cannot change on a running listener: apply raises ValueError."""
    async with running(echo_model()) as service:
        moved = echo_model().model_copy(update={"port": 9999})
        with pytest.raises(ValueError, match="restart"):
            service.apply(moved)


async def test_stop_closes_clients_with_1001() -> None:
    """Stopping the service closes its clients with 1001 and stops listening."""
    service = EchoService(echo_model(), port=0)
    await service.start()
    url = service.url("/api/demo/")
    async with connect(url) as ws:
        await service.stop()
        assert (await closed(ws))[0] == 1001
    with pytest.raises(OSError):
        async with asyncio.timeout(TIMEOUT):
            await connect(url)


# ------------------------------------------------------------- slow client


class RawClient:
    """A WebSocket client on a bare socket with a tiny receive buffer, which reads only when told to."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small before connect, so the advertised window stays small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (uri.host, uri.port))
        client = cls(sock, ClientProtocol(uri))
        client.protocol.send_request(client.protocol.connect())
        await client._flush()
        async with asyncio.timeout(TIMEOUT):
            while client.protocol.handshake_exc is None and client.protocol.state.name == "CONNECTING":
                await client._read()
        assert client.protocol.state.name == "OPEN", client.protocol.handshake_exc
        return client

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _read(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self.frames.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
        await self._flush()  # answers the close frame, if one came
        return bool(data)

    async def read_until_closed(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.protocol.close_rcvd is None and await self._read():
                pass

    def close(self) -> None:
        self.sock.close()


async def test_slow_client_is_closed_and_the_room_keeps_flowing() -> None:
    """A client that never reads is closed with 1013 'too slow' while a fast client gets every message in order."""
    max_queue = 8
    async with running(echo_model(max_queue=max_queue)) as service:
        url = service.url("/api/demo/")
        slow = await RawClient.connect(url + "?user=slow")
        try:
            async with (
                connect(url + "?user=fast") as fast,
                connect(url + "?user=observer") as observer,
            ):
                seen: list[str | bytes] = []
                ended = asyncio.Event()

                async def watch() -> None:
                    async for message in observer:
                        seen.append(message)
                        if message == "Message Received from fast: end":
                            ended.set()

                watcher = asyncio.create_task(watch())
                payload = "x" * 4096
                sent = 0
                with structlog.testing.capture_logs() as events:
                    # Flood in lockstep until the server gives up on the slow client.
                    while not any(e["event"] == "echo_client_too_slow" for e in events):
                        assert sent < 20_000, "the slow client was never closed"
                        await fast.send(f"{sent}:{payload}")
                        assert await recv(fast) == f"Message Received from fast: {sent}:{payload}"
                        sent += 1
                await fast.send("end")
                assert await recv(fast) == "Message Received from fast: end"
                async with asyncio.timeout(TIMEOUT):
                    await ended.wait()
                watcher.cancel()
                expected = [f"Message Received from fast: {i}:{payload}" for i in range(sent)]
                assert seen == expected + ["Message Received from fast: end"]

            await slow.read_until_closed()
            close = slow.protocol.close_rcvd
            assert close is not None
            assert close.code == TOO_SLOW
            assert close.reason == f"too slow: {max_queue} messages queued"
            # What did arrive before the close frame is an in-order prefix of the room's messages.
            texts = [f.data.decode() for f in slow.frames if f.opcode is Opcode.TEXT]
            assert texts == expected[: len(texts)]
        finally:
            slow.close()


# ---------------------------------------------------------------- entry points


def _config(*models: EchoServer) -> Config:
    where = Location("echo.yaml", 1, 1)
    return Config(root=Path("."), echo_servers={m.name: Loaded(m, where, Path(".")) for m in models})


async def test_serve_echo_servers_starts_every_echo_server_of_a_config() -> None:
    """serve_echo_servers starts each EchoServer of a config; each serves its own contexts."""
    free = echo_model().model_copy(update={"port": 0})
    other = free.model_copy(update={"name": "other", "contexts": echo_model({"path": "/o/"}).contexts})
    services = await serve_echo_servers(_config(free, other))
    try:
        assert [s.model.name for s in services] == ["test-echo", "other"]
        async with connect(services[1].url("/o/?user=o")) as ws:
            await ws.send("hi")
            assert await recv(ws) == "Message Received from o: hi"
    finally:
        await asyncio.gather(*(s.stop() for s in services))


async def test_serve_until_signal_stops_cleanly_on_sigterm() -> None:
    """The `wsgate echo` loop serves until SIGTERM, then closes clients with 1001 and returns."""
    config = _config(echo_model().model_copy(update={"port": 0}))
    with logged() as events:
        task = asyncio.create_task(serve_until_signal(config))
        url = (await events.first("echo_server_listening"))["url"]
        async with connect(url.replace("http://", "ws://") + "api/demo/") as ws:
            os.kill(os.getpid(), signal.SIGTERM)
            assert (await closed(ws))[0] == 1001
        async with asyncio.timeout(TIMEOUT):
            assert await task is None
