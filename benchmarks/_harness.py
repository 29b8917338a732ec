"""What the benchmarks share: one raw echo backend, one load leg, and the config documents, the tutorial's
EchoWS chain among them.

A benchmark should differ from another only in what it measures, so the pieces that merely set the
stage live here once: a change to the tutorial chain or to how the backend answers reaches every
figure that depends on it. Imported by path (the benchmarks are scripts, ``benchmarks/`` is on
``sys.path`` when one runs), so keep it free of imports from ``gateway``: a child process that only
echoes should not pay for pydantic.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path

from websockets.frames import apply_mask
from websockets.utils import accept_key

HEAD_END = b"\r\n\r\n"
REPO = Path(__file__).resolve().parent.parent
TUTORIAL_MARKER = " Client Transformation complete"  # what the tutorial's client transform appends


# ------------------------------------------------------------------ process


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (a proxied connection holds two files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def cpu_model(default: str = "unknown CPU") -> str:
    """The CPU's model name from /proc/cpuinfo, for the report's machine line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


# ------------------------------------------------------------------ wire


def handshake_key(head: bytes) -> str:
    """The Sec-WebSocket-Key of an upgrade request head."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return value.strip().decode()
    raise ValueError("no Sec-WebSocket-Key")


def switching_protocols(key: str) -> bytes:
    """The 101 response head accepting ``key``."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode()


def frame_head(opcode: int, size: int, mask: bool, fin: bool = True) -> bytes:
    """A frame header for a ``size``-byte payload (the mask key, when masked, follows it)."""
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if size < 126:
        return bytes([first, bit | size])
    if size < 65536:
        return bytes([first, bit | 126]) + size.to_bytes(2, "big")
    return bytes([first, bit | 127]) + size.to_bytes(8, "big")


# ------------------------------------------------------------------ the echo backend


class EchoBackend(asyncio.Protocol):
    """101 to any upgrade, then every complete frame back, unmasked, same opcode and FIN; pings get pongs,
    a close is answered and ends the connection."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(HEAD_END)
            if end < 0:
                return
            key = handshake_key(bytes(buffer[:end]))
            del buffer[: end + 4]
            self.transport.write(switching_protocols(key))  # type: ignore[attr-defined]
            self.open = True
        out = []
        pos, n = 0, len(buffer)
        while n - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            length, at = b1 & 0x7F, pos + 2
            if length == 126:
                if n - at < 2:
                    break
                length, at = int.from_bytes(buffer[at : at + 2], "big"), at + 2
            elif length == 127:
                if n - at < 8:
                    break
                length, at = int.from_bytes(buffer[at : at + 8], "big"), at + 8
            masked = b1 & 0x80
            if n - at < (4 if masked else 0) + length:
                break
            if masked:
                payload = apply_mask(bytes(buffer[at + 4 : at + 4 + length]), bytes(buffer[at : at + 4]))
                at += 4
            else:
                payload = bytes(buffer[at : at + length])
            pos = at + length
            opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
            if opcode == 0x8:
                self.transport.write(b"".join(out) + frame_head(0x8, len(payload), False) + payload)  # type: ignore[attr-defined]
                self.transport.close()  # type: ignore[attr-defined]
                return
            if opcode == 0x9:
                opcode = 0xA
            elif opcode == 0xA:
                continue
            out.append(frame_head(opcode, len(payload), False, fin) + payload)
        del buffer[:pos]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the load leg


class LoadLeg(asyncio.Protocol):
    """One client connection of a closed-loop load: upgrade with ``request``, keep ``inflight`` copies of
    ``frame`` in flight, send one more for each ``echo_size`` bytes that come back, count them in
    ``stats[0]``. With ``inflight`` 0 it only holds the connection open (an idle client)."""

    def __init__(self, stats: list[int], request: bytes, frame: bytes, echo_size: int, inflight: int) -> None:
        self.stats = stats
        self.request = request
        self.frame = frame
        self.echo_size = echo_size
        self.inflight = inflight
        self.pending = 0
        self.open = False
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buffer += data
            if HEAD_END not in self.buffer:
                return
            head, _, rest = self.buffer.partition(HEAD_END)
            if not head.startswith(b"HTTP/1.1 101"):
                print(f"refused: {head.splitlines()[0]!r}", file=sys.stderr, flush=True)
                self.transport.close()  # type: ignore[attr-defined]
                return
            self.open = True
            self.buffer = b""
            if self.inflight:
                self.transport.write(self.frame * self.inflight)  # type: ignore[attr-defined]
            data = rest
        self.pending += len(data)
        count, self.pending = divmod(self.pending, self.echo_size)
        if count:
            self.stats[0] += count
            self.transport.write(self.frame * count)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ config documents


def gateway_doc(name: str, extra: str = "") -> str:
    """The Gateway settings of a benchmark: no admin listener, plus ``extra`` YAML lines."""
    return f"kind: Gateway\nname: {name}\nadmin:\n  enabled: false\n{extra}"


def port_doc(name: str, description: str = "") -> str:
    """A listener on a free loopback port the system picks."""
    about = f"description: {description}\n" if description else ""
    return f"kind: Port\nname: {name}\n{about}host: 127.0.0.1\nport: 0\n"


def api_doc(name: str, path: str, port: str, upstream: str, *, description: str = "", policies: str = "",
            extra: str = "") -> str:
    """An API on listener ``port`` in front of ``upstream``; ``policies`` is the YAML list, if any; ``extra``,
    more top-level YAML (message definitions, limits)."""
    about = f"description: {description}\n" if description else ""
    text = (f"kind: API\nname: {name}\n{about}path: {path}\nports: [{port}]\n"
            f"upstream:\n  endpoints:\n    - url: {upstream}\n{extra}")
    return text + (f"policies:\n{policies}" if policies else "")


def identify_and_throttle(max_connections: int = 20000) -> str:
    """The upgrade-stage policies: identify by API key, then a connection cap."""
    return f"  - type: identify\n    by: [api_key]\n  - type: throttle\n    max_connections: {max_connections}\n"


def tutorial_policies(max_connections: int = 20000, log_limits: str = "", before_transform: str = "") -> str:
    """The tutorial's EchoWS chain: identify by API key, (``before_transform``: more policies, as YAML list
    items), the client-stage transform, log-invocation storing both directions (``log_limits``: extra YAML
    lines for it), throttle."""
    return (
        "  - type: identify\n    by: [api_key]\n"
        f"{before_transform}"
        "  - type: transform\n    stage: client\n    messages: text\n"
        "    callable: transforms.tutorial:client_transformation\n"
        "  - type: log-invocation\n    store_client_messages: true\n    store_server_messages: true\n"
        f"    file: logs/tutorial.jsonl\n{log_limits}"
        f"  - type: throttle\n    max_connections: {max_connections}\n"
    )


def application_doc(name: str, key: str, apis: str) -> str:
    """An application identified by ``key``, registered to ``apis`` (a YAML list's items)."""
    return f"kind: Application\nname: {name}\nidentifiers:\n  api_keys: [{key}]\napis: [{apis}]\n"


def write_gateway_config(directory: Path, *documents: str, tutorial: bool = False) -> Path:
    """Write ``documents`` to ``directory/gateway.yaml``; with ``tutorial``, also the tutorial's transforms
    and a ``logs/`` directory for its log-invocation."""
    directory.mkdir(parents=True, exist_ok=True)
    if tutorial:
        import shutil

        shutil.copytree(REPO / "examples" / "transforms", directory / "transforms", dirs_exist_ok=True)
        os.makedirs(directory / "logs", exist_ok=True)
    (directory / "gateway.yaml").write_text("---\n".join(documents))
    return directory
