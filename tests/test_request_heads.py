"""Hostile request heads against a live `wsgate run` process: every answer is a 101 or a JSON 4xx/5xx.

Duplicated single-valued headers, bare-LF line endings and a hypothesis fuzz of whole heads. After the
traffic the process's stderr (structlog JSON and anything asyncio or Python print) holds no traceback and
no line that is not a JSON record.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from gateway_process import GatewayProcess, echo_thread, gateway_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PORT, TIMEOUT, api_yaml, write_config

VALID = [
    ("Host", "gw"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
SINGLE_VALUED = ["Host", "User-Agent", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
                 "Content-Length"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("heads")
    with echo_thread() as echo:
        write_config(tmp, PORT + "limits:\n  handshake_timeout: 600\n",
                     "kind: Gateway\nname: heads\nlog_format: json\nshutdown_timeout: 1\n",
                     api_yaml("Echo", "/echo", echo + "/"))
        with gateway_process(tmp / "config", tmp / "stderr.log") as process:
            yield process
            no_traceback(process)


def no_traceback(process: GatewayProcess) -> None:
    text = process.stderr()
    assert "Traceback" not in text and "Fatal error" not in text, text[-4000:]
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("{"))  # before it: `validate`'s report
    for line in lines[first:]:
        record = json.loads(line)  # every line is a structlog record
        assert "exception" not in record, record


def exchange(gateway: GatewayProcess, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head``; the status, headers and body of the answer (the body only of a refusal)."""
    with socket.create_connection(("127.0.0.1", gateway.ports["default"]), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer to {head!r}: {data!r}"
            data += chunk
        answer, _, rest = data.partition(b"\r\n\r\n")
        lines = answer.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if status == 101:
            return status, headers, b""
        while len(rest) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest


def head_of(lines: list[tuple[str, str]], *, request_line: str = "GET /echo HTTP/1.1", eol: str = "\r\n") -> bytes:
    return (request_line + eol + "".join(f"{n}: {v}{eol}" for n, v in lines) + eol).encode("latin-1")


def assert_proper(status: int, headers: dict[str, str], body: bytes) -> None:
    """A 101, or a refusal with the gateway's JSON body."""
    if status == 101:
        return
    assert 400 <= status < 600, status
    assert headers.get("content-type") == "application/json"
    document = json.loads(body)
    assert set(document) == {"error", "reason"}, document


def test_a_valid_head_is_upgraded(gateway: GatewayProcess) -> None:
    """The baseline: the head every other case distorts gets a 101."""
    assert exchange(gateway, head_of(VALID))[0] == 101


@pytest.mark.parametrize("name", SINGLE_VALUED)
def test_a_duplicated_single_valued_header_is_400(gateway: GatewayProcess, name: str) -> None:
    """A second Host, User-Agent, Upgrade, key, version... is a 400 with the JSON body, not a 500 or a drop."""
    value = dict(VALID).get(name, "x")
    status, headers, body = exchange(gateway, head_of([*VALID, (name, value), (name, value)]))
    assert status == 400, body
    assert_proper(status, headers, body)
    if name != "Content-Length":  # refused by the HTTP parser already (a GET with a body)
        assert name.lower() in json.loads(body)["reason"].lower()


def test_a_bare_lf_head_is_refused_at_once(gateway: GatewayProcess) -> None:
    """Lines ending in LF alone get a 400 at once, not after the handshake timeout (the port's is 600 s)."""
    status, headers, body = exchange(gateway, head_of(VALID, eol="\n"))  # fails after TIMEOUT without an answer
    assert status == 400 and b"bare LF" in body
    assert_proper(status, headers, body)


def test_a_bare_lf_in_one_line_is_refused(gateway: GatewayProcess) -> None:
    """One header line ending in LF alone among CRLF lines is malformed too."""
    head = head_of(VALID).replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n")
    status, headers, body = exchange(gateway, head)
    assert status == 400
    assert_proper(status, headers, body)


OTHER_HEADERS = ["Authorization", "x-Gateway-APIKey", "Connection", "Sec-WebSocket-Protocol",
                 "Sec-WebSocket-Extensions",
                 "X-Forwarded-For", "Cookie", "X"]
HEADER_NAMES = st.sampled_from(SINGLE_VALUED + OTHER_HEADERS) | st.from_regex(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}\Z")
HEADER_VALUES = st.text(st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"), max_size=40)
TEXT_LINES = st.text(st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n"), max_size=60)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A valid upgrade head, distorted: headers added, duplicated, dropped or mangled, odd request lines."""
    lines = list(VALID)
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["add", "duplicate", "drop", "raw"]))
        if action == "add":
            lines.insert(draw(st.integers(0, len(lines))), (draw(HEADER_NAMES), draw(HEADER_VALUES)))
        elif action == "duplicate" and lines:
            lines.append(lines[draw(st.integers(0, len(lines) - 1))])
        elif action == "drop" and lines:
            lines.pop(draw(st.integers(0, len(lines) - 1)))
        elif action == "raw":
            raw = draw(TEXT_LINES)
            name, _, value = raw.partition(":")
            lines.append((name, value))
    request_line = draw(st.sampled_from(["GET /echo HTTP/1.1", "GET /echo HTTP/1.0", "POST /echo HTTP/1.1",
                                         "GET /nowhere HTTP/1.1", "GET /echo?x=%zz&y HTTP/1.1", "GET  /echo HTTP/1.1",
                                         "GET /echo", "/echo HTTP/1.1"]) | TEXT_LINES)
    eol = draw(st.sampled_from(["\r\n"] * 4 + ["\n"]))
    return head_of(lines, request_line=request_line, eol=eol)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=heads())
def test_fuzzed_heads_get_a_101_or_a_json_refusal(gateway: GatewayProcess, head: bytes) -> None:
    """Whatever the head, the answer is a 101 or a JSON 4xx/5xx (the module fixture then checks the log)."""
    assert_proper(*exchange(gateway, head))


def test_the_log_holds_no_traceback_after_all_that(gateway: GatewayProcess) -> None:
    """After the cases above, stderr is only structlog JSON records, none with an exception."""
    gateway.wait_for(lambda: any(r.get("status") == 400 for r in gateway.records()))
    no_traceback(gateway)


