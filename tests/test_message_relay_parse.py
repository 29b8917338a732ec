"""The message relay's own frame parser: any split of the byte stream relays the same frames, in order."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from relay_harness import FramePeer, make_frame
from support import PORT, TIMEOUT, api_yaml, echo_backend, gw_url, recording_backend, running_gateway, write_config
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri


def passthrough_api(tmp_path: Path, url: str) -> str:
    """An API with a pass-through client transform: the message relay, no extension on either leg."""
    root = tmp_path / "config"
    root.mkdir(parents=True, exist_ok=True)
    (root / "h5_same.py").write_text("def same(message):\n    return message.payload\n")
    return api_yaml("P", "/p", url, extra="policies:\n  - type: transform\n    stage: client\n"
                                          "    callable: h5_same:same\n")


async def client(url: str) -> FramePeer:
    loop = asyncio.get_running_loop()
    protocol = ClientProtocol(parse_uri(url), max_size=None)
    uri = parse_uri(url)
    transport, peer = await loop.create_connection(lambda: FramePeer(protocol), uri.host, uri.port)
    protocol.send_request(protocol.connect())
    transport.write(b"".join(protocol.data_to_send()))
    await asyncio.wait_for(peer.opened, TIMEOUT)
    return peer


def burst() -> tuple[bytes, list[tuple[Opcode, bytes]]]:
    """Client frames of every shape the parser meets, and the data messages they make, in order."""
    big = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
    frames = [
        make_frame(0x1, b"one", masked=True),
        make_frame(0x2, b"\x00two", masked=True),
        make_frame(0x9, b"ping-1", masked=True),
        make_frame(0x1, "dré".encode(), fin=False, masked=True),  # a fragmented text with a ping inside
        make_frame(0x9, b"ping-2", masked=True),
        make_frame(0x0, b"i", fin=False, masked=True),
        make_frame(0x0, "é!".encode()[:1], fin=False, masked=True),  # UTF-8 split across fragments
        make_frame(0x0, "é!".encode()[1:], masked=True),
        make_frame(0x2, b"x" * 200, masked=True),  # a 16-bit length
        make_frame(0x2, big, masked=True),
        make_frame(0x1, b"", masked=True),
        make_frame(0x1, b"last", masked=True),
    ]
    messages = [(Opcode.TEXT, b"one"), (Opcode.BINARY, b"\x00two"), (Opcode.TEXT, "dréié!".encode()),
                (Opcode.BINARY, b"x" * 200), (Opcode.BINARY, big), (Opcode.TEXT, b""), (Opcode.TEXT, b"last")]
    return b"".join(frames), messages


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
async def test_any_split_relays_the_same_messages_and_answers_pings(tmp_path, split):
    """Whole, byte by byte or cut at random: every message comes back once, in order, and both pings get pongs."""
    data, expected = burst()

    async with echo_backend() as backend:
        config = write_config(tmp_path, PORT, passthrough_api(tmp_path, f"ws://127.0.0.1:{backend.port}/echo/"))
        async with running_gateway(config) as gw:
            peer = await client(gw_url(gw, "/p"))
            assert peer.transport is not None
            if split == "whole":
                peer.send(data)
            else:
                rng = random.Random(7)
                at = 0
                while at < len(data):
                    step = 1 if split == "bytes" and at < 400 else rng.randint(1, 9000)
                    peer.send(data[at:at + step])
                    at += step
                    await asyncio.sleep(0)  # give the gateway a read between writes
            await peer.wait_frame(lambda f: f.opcode is Opcode.TEXT and f.data == b"last", "the last echo")
            echoed = [(f.opcode, f.data) for f in peer.frames if f.opcode in (Opcode.TEXT, Opcode.BINARY)]
            assert echoed == expected
            pongs = [f.data for f in peer.frames if f.opcode is Opcode.PONG]
            assert pongs == [b"ping-1", b"ping-2"]
            peer.transport.close()


async def test_close_after_data_in_one_read_passes_both(tmp_path):
    """Messages and a close frame in one read: the upstream gets the messages, then the close code both ways."""
    received: list[str] = []

    async def record(ws) -> None:
        async for message in ws:
            received.append(message)

    async with recording_backend(record) as backend:
        config = write_config(tmp_path, PORT, passthrough_api(tmp_path, backend.url + "/"))
        async with running_gateway(config) as gw:
            peer = await client(gw_url(gw, "/p"))
            peer.send(make_frame(0x1, b"a", masked=True) + make_frame(0x1, b"b", masked=True)
                      + make_frame(0x8, (4001).to_bytes(2, "big") + b"bye", masked=True))
            assert await peer.close_frame() == (4001, "bye")
            async with asyncio.timeout(TIMEOUT):
                await backend.closed.wait()
            assert received == ["a", "b"]
            assert backend.closes == [(4001, "bye")]
