"""Hostile input, end to end through a real gateway: bad upgrades, slowloris, bad frames, bombs, origins.

Frame-level cases run on both relay paths: "fast" (no message-stage policy: the byte relay) and
"message" (a pass-through transform: the message relay). The compression bomb needs permessage-deflate,
which only the message relay speaks. Covered elsewhere and not repeated: 400 for a handshake without a
key, a plain GET is 426 (test_gateway_routing.py), headers named in Connection with a websocket upgrade
and the hop-by-hop list (test_gateway_upgrade.py), the frame scanner on its own (test_frames.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
import zlib

import pytest
from support import (
    PORT,
    RELAY,
    TIMEOUT,
    api_yaml,
    eventually,
    gw_url,
    http_request,
    path_api,
    raw_backend,
    recording_backend,
    relay_of,
    run,
    running_gateway,
    upgrade_request,
    write_config,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.relay.message import MessageRelay

MEMORY_MARGIN = 64 * 2**20  # far below every announced or inflated size used here (512 MiB and more)


def peak_rss(reset: bool = False) -> int:
    """This process's peak resident set size in bytes (the gateway runs in it); ``reset`` starts a new peak
    at the current RSS, so a transient allocation freed before the measurement still counts."""
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
                 masked: bool = True, length: int | None = None) -> bytes:
    """A client frame built by hand; ``length`` overrides the announced length, the key is zero."""
    announced = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if masked else 0
    if announced < 126:
        head.append(bit | announced)
    elif announced < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", announced)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", announced)
    if masked:
        head += b"\0\0\0\0"  # a zero key leaves the payload as is
    return bytes(head) + payload


async def close_code_seen_by(ws) -> int | None:
    """The close code the client received (None if its connection just dropped)."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv()
    return info.value.rcvd.code if info.value.rcvd else None


# ------------------------------------------------------------------ upgrades that are not websocket

@pytest.mark.parametrize("upgrade", ["h2c", "TLS/1.0", "websocket2", "h2c, http/1.1"])
async def test_upgrade_to_anything_but_websocket_is_refused_and_never_tunnelled(tmp_path, upgrade):
    """An Upgrade to another protocol is answered 426 and closed; nothing (not even the h2 preface sent
    after it) reaches the upstream."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            request = upgrade_request("/a", extra="HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
            request = request.replace(b"Upgrade: websocket", f"Upgrade: {upgrade}".encode())
            request = request.replace(b"Connection: Upgrade", b"Connection: Upgrade, HTTP2-Settings")
            response = await http_request(gw_url(gw, "/a"), request + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert response.status == 426
            assert response.headers["connection"] == "close"
            assert response.json()["error"] == "upgrade_required"
            await eventually(lambda: not gw.registry.live)
            assert backend.requests == []


async def test_header_named_in_connection_is_not_forwarded(tmp_path):
    """`Connection: Upgrade, X-Secret` makes X-Secret hop-by-hop: the upstream never sees it."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            headers = {"Connection": "Upgrade, X-Secret", "X-Secret": "1", "X-Public": "2"}
            async with connect(gw_url(gw, "/a"), additional_headers=headers) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
            seen = backend.requests[0].headers
            assert "X-Secret" not in seen
            assert seen["X-Public"] == "2"


# ------------------------------------------------------------------ oversized and abundant heads

@pytest.mark.parametrize(
    "what, request_bytes",
    [
        ("request line", b"GET /a?" + b"q" * 12_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("one huge header", upgrade_request("/a", extra="X-Big: " + "b" * 12_000 + "\r\n")),
        ("500 headers", upgrade_request("/a", extra="".join(f"X-H{i}: v\r\n" for i in range(500)))),
        ("endless head", b"GET /a HTTP/1.1\r\n" + b"X-Pad: " + b"p" * (1 << 20)),
    ],
)
async def test_oversized_or_too_many_headers_are_refused(tmp_path, what, request_bytes):
    """An oversized request line, an oversized header, 500 headers or a head that never ends is refused
    with 431 (never read past the limit, never sent upstream), and the listener keeps serving."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            try:
                response = await http_request(gw_url(gw, "/a"), request_bytes)
            except ConnectionResetError:
                pytest.fail(f"{what}: connection reset instead of a 431")
            assert response.status == 431, what
            assert response.json()["error"] == "request_too_large"
            await eventually(lambda: not gw.registry.live)
            assert backend.requests == []
            async with connect(gw_url(gw, "/a")) as ws:
                await ws.send("still serving")
                assert await ws.recv() == "still serving"


@pytest.mark.parametrize("extra", ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"])
async def test_upgrade_with_a_body_is_refused(tmp_path, extra):
    """An upgrade request announcing a body (a smuggling vector) is refused with 400 and never reaches the
    upstream."""
    async with recording_backend() as backend:
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url + "/"))
        async with running_gateway(config) as gw:
            body = b"hello" if "Length" in extra else b"5\r\nhello\r\n0\r\n\r\n"
            response = await http_request(gw_url(gw, "/a"), upgrade_request("/a", extra=extra) + body)
            assert response.status == 400
            await eventually(lambda: not gw.registry.live)
            assert backend.requests == []


# ------------------------------------------------------------------ slowloris

def test_slowloris_is_closed_after_the_handshake_timeout_while_others_are_served(tmp_path):
    """50 clients sending their handshake one byte at a time (half of them stopping midway) are all
    disconnected after handshake_timeout without an answer, and a normal client is served meanwhile."""

    request = upgrade_request("/a")

    async def loris(index: int) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        opened.append(writer)
        stop_at = 10 if index % 2 else len(request) - 3  # never the whole head
        received = b""
        try:
            for i in range(stop_at):
                writer.write(request[i:i + 1])
                await writer.drain()
                try:
                    received += await asyncio.wait_for(reader.read(65536), 0.02)
                except TimeoutError:
                    continue
                if reader.at_eof():
                    return received
            received += await reader.read()  # stopped midway: wait for the gateway to drop it
        except ConnectionError:
            pass
        finally:
            writer.close()
        return received

    async def scenario():
        nonlocal address
        async with recording_backend() as backend:
            port = PORT + "limits:\n  handshake_timeout: 1.5\n"
            config = write_config(tmp_path, port, api_yaml("A", "/a", backend.url + "/"))
            async with running_gateway(config) as gw:
                address = gw.addresses["default"]
                tasks = [asyncio.create_task(loris(i)) for i in range(50)]
                await eventually(lambda: gw.registry.counts()["upgrading"] == 50)
                async with connect(gw_url(gw, "/a")) as ws:
                    await ws.send("meanwhile")
                    assert await ws.recv() == "meanwhile"
                    assert gw.registry.counts()["total"] == 1
                async with asyncio.timeout(3 * TIMEOUT):
                    answers = await asyncio.gather(*tasks)
                assert answers == [b""] * 50  # dropped without a response, let alone a 101
                await eventually(lambda: not gw.registry.live)
                assert len(backend.requests) == 1  # only the normal client's upgrade went upstream

    address: tuple[str, int] = ("", 0)
    opened: list[asyncio.StreamWriter] = []
    run(scenario())


# ------------------------------------------------------------------ bad frames, both paths

def frame_scenario(tmp_path, path_kind, act, *, extra: str = "", compression: str | None = None):
    """Run ``act(ws, gw, backend)`` with a client connected through the API at /h on ``path_kind``."""

    messages: list[str | bytes] = []

    async def echo(ws) -> None:
        async for message in ws:
            messages.append(message)
            await ws.send(message)

    async def scenario():
        async with recording_backend(echo) as backend:
            backend.messages = messages  # what the upstream received, for act to check
            api = path_api(tmp_path, path_kind, backend.url + "/", extra=extra, name="H", path="/h")
            config = write_config(tmp_path, PORT, api)
            async with running_gateway(config) as gw:
                async with connect(gw_url(gw, "/h"), compression=compression, ping_interval=None,
                                   max_size=None) as ws:
                    await ws.send("warm-up")
                    assert await ws.recv() == "warm-up"
                    assert type(relay_of(gw)) is RELAY[path_kind]
                    await act(ws, gw, backend)
                await eventually(lambda: not gw.registry.live)

    run(scenario())


def test_invalid_utf8_text_gets_1007(tmp_path, path_kind):
    """A text message that is not UTF-8 closes the client with 1007 on both paths: the message relay checks
    it; the byte relay leaves it to the upstream, whose 1007 close comes back through it."""

    async def act(ws, gw, backend):
        ws.transport.write(client_frame(0x1, b"ok \xff\xfe not utf-8"))
        assert await close_code_seen_by(ws) == 1007
        async with asyncio.timeout(TIMEOUT):
            await backend.closed.wait()
        upstream = backend.connections[0].protocol
        if path_kind == "message":  # the gateway noticed: the upstream is told 1001, going away
            assert upstream.close_rcvd.code == 1001
        else:  # the upstream noticed and failed the connection with 1007, which the gateway relayed
            assert upstream.close_sent.code == 1007

    frame_scenario(tmp_path, path_kind, act)


VIOLATIONS = {
    "unmasked": client_frame(0x1, b"naked", masked=False),
    "reserved opcode": client_frame(0x3, b"?"),
    "rsv1 unnegotiated": client_frame(0x1, b"x", rsv1=True),
    "fragmented ping": client_frame(0x9, b"p", fin=False),
    "126-byte ping": client_frame(0x9, b"p" * 126),
    "orphan continuation": client_frame(0x0, b"x"),
    "close code 1005": client_frame(0x8, struct.pack("!H", 1005)),
    "one-byte close": client_frame(0x8, b"\x03"),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_protocol_violation_by_the_client_gets_1002(tmp_path, path_kind, violation):
    """An unmasked frame, a reserved opcode or RSV bit, a bad control frame, an orphan continuation or a bad
    close frame closes the client with 1002 and the upstream with 1001; the upstream gets no message of it."""

    async def act(ws, gw, backend):
        ws.transport.write(VIOLATIONS[violation])
        assert await close_code_seen_by(ws) == 1002
        async with asyncio.timeout(TIMEOUT):
            await backend.closed.wait()
        assert backend.closes[0][0] == 1001
        assert backend.messages == ["warm-up"]

    frame_scenario(tmp_path, path_kind, act)


@pytest.mark.parametrize("announced", [2**62, 512 * 2**20], ids=["2^62", "512MiB"])
def test_huge_announced_length_gets_1009_without_allocating_it(tmp_path, path_kind, announced):
    """A frame announcing 2^62 or 512 MiB (then actually streaming payload) gets 1009 from its head alone:
    the upstream gets 1001 and the process's peak RSS grows by far less than the announcement."""

    async def act(ws, gw, backend):
        before = peak_rss(reset=True)
        ws.transport.write(client_frame(0x2, b"\0" * 65536, length=announced))
        chunk = bytes(2**20)
        for _ in range(8):  # keep streaming payload after the head, as an attacker would
            if ws.transport.is_closing():
                break
            ws.transport.write(chunk)
        assert await close_code_seen_by(ws) == 1009
        async with asyncio.timeout(TIMEOUT):
            await backend.closed.wait()
        assert backend.closes[0][0] == 1001
        grown = peak_rss() - before
        assert grown < MEMORY_MARGIN, f"peak RSS grew by {grown} bytes"

    frame_scenario(tmp_path, path_kind, act)


def test_thousands_of_tiny_fragments(tmp_path, path_kind):
    """3,000 one-byte fragments arrive as one 3,000-byte message under the limit."""

    async def act(ws, gw, backend):
        await ws.send(["f"] * 3000)
        assert await ws.recv() == "f" * 3000

    frame_scenario(tmp_path, path_kind, act)


@pytest.mark.slow
def test_tiny_fragments_cost_no_more_memory_than_their_message(tmp_path):
    """On the message relay, 400,000 one-byte fragments (2.8 MB on the wire, a 400 kB message) grow peak RSS
    by a few MiB, not by the ~40 bytes per fragment a list of fragments held (~55 MiB here, 135 MiB for a
    1 MiB message). The byte relay holds no fragment at all (and a websockets upstream refuses this many)."""
    count = 400_000
    stream = client_frame(0x2, b"f", fin=False) + client_frame(0x0, b"f", fin=False) * (count - 2) \
        + client_frame(0x0, b"f")

    async def act(ws, gw, backend):
        before = peak_rss(reset=True)
        ws.transport.write(stream)
        assert await ws.recv() == b"f" * count
        grown = peak_rss() - before
        assert grown < 24 * 2**20, f"peak RSS grew by {grown} bytes"

    frame_scenario(tmp_path, "message", act, extra="limits:\n  max_fragments: 400000\n")


def test_more_fragments_than_a_websockets_upstream_takes(tmp_path, path_kind):
    """5,000 fragments: the message relay reassembles them and sends one frame upstream; the byte relay passes
    them as they are, so a websockets upstream applies its own limit (MAX_FRAGMENTS, 4,096) and its 1009
    reaches the client through the gateway."""

    async def act(ws, gw, backend):
        await ws.send(["f"] * 5000)
        if path_kind == "message":
            assert await ws.recv() == "f" * 5000
        else:
            assert await close_code_seen_by(ws) == 1009
            # The gateway closed its upstream leg, but that websockets server stopped reading (its message
            # queue is full) and would notice only at its close_timeout: end it now.
            backend.connections[0].transport.abort()

    frame_scenario(tmp_path, path_kind, act, extra="limits:\n  max_fragments: 10000\n")


def test_thousands_of_tiny_fragments_over_the_limit_get_1009(tmp_path, path_kind):
    """One-byte fragments that add up past max_message_size (4,000) get 1009; the upstream never gets
    the message and is closed with 1001."""

    async def act(ws, gw, backend):
        await ws.send(["f"] * 5000)
        assert await close_code_seen_by(ws) == 1009
        async with asyncio.timeout(TIMEOUT):
            await backend.closed.wait()
        assert backend.closes[0][0] == 1001
        assert backend.messages == ["warm-up"]

    frame_scenario(tmp_path, path_kind, act, extra="limits:\n  max_message_size: 4000\n")


@functools.cache
def deflate_bomb(size: int) -> bytes:
    """``size`` zero bytes, raw-deflated as permessage-deflate sends them (sync flush, tail stripped)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(2**20)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


async def test_compression_bomb_gets_1009_before_inflating_past_the_limit(tmp_path):
    """A permessage-deflate message of ~0.5 MiB on the wire that would inflate to 512 MiB (limit 1 MiB)
    gets 1009; the upstream gets 1001 and no message, and peak RSS grows by far less than the inflated size."""
    bomb = deflate_bomb(512 * 2**20)
    assert len(bomb) < 2**20  # the frame itself is under the limit: only inflating finds it too big
    received = []

    async def handler(ws):
        async for message in ws:
            received.append(len(message))
            await ws.send(message)

    async with recording_backend(handler) as backend:
        config = write_config(tmp_path, PORT, api_yaml("Z", "/z", backend.url + "/", extra="compression: true\n"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/z"), compression="deflate", ping_interval=None) as ws:
                assert ws.protocol.extensions, "the client did not negotiate permessage-deflate"
                await ws.send("warm-up")
                assert await ws.recv() == "warm-up"
                assert type(relay_of(gw)) is MessageRelay
                before = peak_rss(reset=True)
                ws.transport.write(client_frame(0x2, bomb, rsv1=True))
                assert await close_code_seen_by(ws) == 1009
                grown = peak_rss() - before
            async with asyncio.timeout(TIMEOUT):
                await backend.closed.wait()
            assert backend.closes[0][0] == 1001
            assert received == [len("warm-up")]
            assert grown < MEMORY_MARGIN, f"peak RSS grew by {grown} bytes"
            await eventually(lambda: not gw.registry.live)


# ------------------------------------------------------------------ origin policy, end to end

ORIGIN_POLICY = """\
policies:
  - type: origin
    allow: ["https://app.example.com", "https://*.example.org"]
"""


@pytest.mark.parametrize(
    "path, origin, allowed",
    [
        ("/o", "https://app.example.com", True),
        ("/o", "https://chat.eu.example.org", True),
        ("/o", "https://evil.example", False),
        ("/o", "https://example.org.evil.net", False),
        ("/o", "http://app.example.com", False),
        ("/o", None, False),
        ("/o-open", None, True),
        ("/o-open", "https://evil.example", False),
    ],
)
async def test_origin_policy_end_to_end(tmp_path, path, origin, allowed):
    """A disallowed (or, unless allow_missing, absent) Origin is refused with 403 at the upgrade and never
    reaches the upstream; an allowed one is relayed."""
    async with recording_backend() as backend:
        config = write_config(
            tmp_path, PORT,
            api_yaml("O", "/o", backend.url + "/", extra=ORIGIN_POLICY),
            api_yaml("Open", "/o-open", backend.url + "/", extra=ORIGIN_POLICY + "    allow_missing: true\n"),
        )
        async with running_gateway(config) as gw:
            if allowed:
                async with connect(gw_url(gw, path), origin=origin) as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                assert backend.requests[0].headers.get("Origin") == origin
            else:
                with pytest.raises(InvalidStatus) as info:
                    async with connect(gw_url(gw, path), origin=origin):
                        pass
                assert info.value.response.status_code == 403
                assert b'"forbidden"' in info.value.response.body
                assert backend.requests == []
            await eventually(lambda: not gw.registry.live)


# ------------------------------------------------------------------ a hostile upstream handshake

@pytest.mark.parametrize("status_line", [b"HTTP/1.1 1\xb21 Switching Protocols", b"HTTP/1.1 \xb9\xb2\xb3 Odd"])
async def test_upstream_status_with_non_ascii_digits_is_502(tmp_path, status_line):
    """An upstream answering with a status made of Latin-1 superscript digits (``str.isdigit`` accepts them,
    ``int`` does not) gets the client a 502 and a closed connection, never a hang; the upstream connection
    is dropped too."""
    upstream_dropped = asyncio.Event()

    async def respond(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        upstream_dropped.set()

    async with raw_backend(respond) as (url, _):
        config = write_config(tmp_path, PORT, api_yaml("A", "/a", url + "/"))
        async with running_gateway(config) as gw:
            response = await http_request(gw_url(gw, "/a"), upgrade_request("/a"))
            assert response.status == 502
            assert response.json()["error"] == "bad_gateway"
            await eventually(lambda: not gw.registry.live)
            async with asyncio.timeout(TIMEOUT):
                await upstream_dropped.wait()


# ------------------------------------------------------------------ a hostile upstream after the 101

def server_frame(opcode: int, payload: bytes = b"", *, masked: bool = False, length: int | None = None) -> bytes:
    """An upstream frame built by hand (upstream frames must not be masked)."""
    return client_frame(opcode, payload, masked=masked, length=length)


UPSTREAM_VIOLATIONS = {
    "masked frame": (server_frame(0x1, b"masked", masked=True), 1002),
    "2^62 length": (server_frame(0x2, b"\0" * 1024, length=2**62), 1009),
    "invalid utf-8": (server_frame(0x1, b"bad \xff"), 1007),
}


@pytest.mark.parametrize("violation", list(UPSTREAM_VIOLATIONS))
async def test_protocol_violation_by_the_upstream(tmp_path, path_kind, violation):
    """A masked frame, a 2^62-byte announcement or invalid UTF-8 from the upstream: the upstream gets 1002,
    1009 or 1007 and the client's connection is closed (1014 from the gateway: its upstream broke; on the byte
    relay invalid UTF-8 passes through, the client itself fails it with 1007, and that close reaches the
    upstream)."""
    from relay_harness import RawServer

    frame, expected = UPSTREAM_VIOLATIONS[violation]

    async with RawServer() as server:
        url = f"ws://127.0.0.1:{server.port}/"
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, url, name="H", path="/h"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/h"), ping_interval=None) as ws:
                peer = await server.peer()
                assert type(relay_of(gw)) is RELAY[path_kind]
                peer.send(frame)
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                code, _ = await peer.close_frame()
                assert code == expected
                if path_kind == "fast" and violation == "invalid utf-8":
                    assert info.value.sent.code == 1007
                else:
                    assert info.value.rcvd.code == 1014
            await eventually(lambda: not gw.registry.live)


async def test_garbage_right_after_a_valid_101_closes_the_client_with_1014(tmp_path, path_kind):
    """An upstream that answers a valid 101 and then bytes that are no frame (in the same write): the client
    is closed with 1014 (bad gateway), not 1001, and the upstream gets 1002."""
    from relay_harness import RawServer

    async with RawServer(greeting=b"HTTP/1.1 200 OK\r\n\r\nnot a frame") as server:
        url = f"ws://127.0.0.1:{server.port}/"
        config = write_config(tmp_path, PORT, path_api(tmp_path, path_kind, url, name="H", path="/h"))
        async with running_gateway(config) as gw:
            async with connect(gw_url(gw, "/h"), ping_interval=None) as ws:
                peer = await server.peer()
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 1014
                code, _ = await peer.close_frame()
                assert code == 1002
            await eventually(lambda: not gw.registry.live)


# ------------------------------------------------------------------ fragment floods

def fragment_flood(count: int, payload: bytes = b"") -> bytes:
    """One binary message in ``count`` frames: a first frame and ``count - 1`` continuations, all but the
    last empty unless ``payload`` says otherwise."""
    return (client_frame(0x2, payload, fin=False) + client_frame(0x0, payload, fin=False) * (count - 2)
            + client_frame(0x0, payload))


def test_a_flood_of_empty_continuation_frames_gets_1009_by_default(tmp_path, path_kind):
    """100,000 empty continuation frames (no size at all) pass the default fragment limit (4,096) on neither
    relay: the client gets 1009, the upstream 1001 and no message."""

    async def act(ws, gw, backend):
        ws.transport.write(fragment_flood(100_000))
        assert await close_code_seen_by(ws) == 1009
        async with asyncio.timeout(TIMEOUT):
            await backend.closed.wait()
        assert backend.closes[0][0] == 1001
        assert backend.messages == ["warm-up"]

    frame_scenario(tmp_path, path_kind, act)


@pytest.mark.parametrize("frames, allowed", [(10, True), (11, False)])
def test_the_fragment_limit_is_configurable(tmp_path, path_kind, frames, allowed):
    """With `max_fragments: 10`, a message in 10 frames is relayed and one in 11 frames closes with 1009."""

    async def act(ws, gw, backend):
        ws.transport.write(fragment_flood(frames, b"f"))
        if allowed:
            assert await ws.recv() == b"f" * frames
        else:
            assert await close_code_seen_by(ws) == 1009

    frame_scenario(tmp_path, path_kind, act, extra="limits:\n  max_fragments: 10\n")
