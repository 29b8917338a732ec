"""Credentials never leak: an API key sent every way a client can send it is absent from every output.

One `wsgate run` subprocess, JSON logs, log-invocation to a file (one API) and through the structured
log (another). The key goes in the query (two spellings of the parameter name) and in the header; a
wrong key too; upgrades are accepted, refused (401, 503) and fail upstream (502). Then every output is
searched for both keys: the process's stdout and stderr (the gateway logs JSON to stderr; stdout stays
empty), every log-invocation file, every HTTP body the client received, every byte the upstreams
received, the admin endpoints' answers, and `wsgate validate` in each format (it warns about the
plain-text key, quoting its line).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import PORT, TIMEOUT, api_yaml, http_request, raw_backend, recording_backend, run, write_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

KEY = "leak-canary-" + secrets.token_hex(8)
WRONG = "wrong-canary-" + secrets.token_hex(8)


def answer_500():
    """A raw upstream that reads the upgrade request and answers 500 (the client gets 502)."""

    async def respond(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    return respond


def config_docs(ok_url: str, down_url: str) -> list[str]:
    identify = "  - type: identify\n    by: [api_key]\n"
    logged = (
        "  - type: log-invocation\n    store_client_messages: true\n    store_server_messages: true\n"
        "    file: logs/transactions.jsonl\n"
    )
    return [
        PORT,
        "kind: Gateway\nname: leaks\nlog_format: json\nshutdown_timeout: 1\n",
        f"kind: Application\nname: canary-app\nidentifiers:\n  api_keys: [{KEY}]\napis: [Ok, Down]\n",
        api_yaml("Ok", "/ok", ok_url, extra="policies:\n" + identify + logged
                 + "  - type: throttle\n    max_connections: 1\n"),
        # No file: its records go through the gateway's structured log.
        api_yaml("Down", "/down", down_url, extra="policies:\n" + identify
                 + "  - type: log-invocation\n    store_client_messages: true\n"),
    ]


async def follow_stderr(process: asyncio.subprocess.Process, path: Path, ports: dict[str, int],
                        listening: asyncio.Event) -> None:
    """Copy the gateway's stderr (its JSON log) to ``path``; set ``listening`` once the default listener and
    the admin announced their ports (filled into ``ports``)."""
    assert process.stderr is not None
    with path.open("wb") as file:
        while line := await process.stderr.readline():
            file.write(line)
            if line.startswith(b"{"):
                record = json.loads(line)
                if record.get("event") == "listening":
                    ports[record["name"]] = record["port"]
                    if len(ports) >= 2:
                        listening.set()


async def wait_listening(listening: asyncio.Event, follower: asyncio.Task[None], path: Path) -> None:
    """Wait until the gateway listens; fail with its log if it exits first."""
    started = asyncio.ensure_future(listening.wait())
    async with asyncio.timeout(TIMEOUT):
        await asyncio.wait({started, follower}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    assert listening.is_set(), path.read_text()


async def refused(url: str, **kwargs) -> tuple[int, bytes]:
    """Status and body of an upgrade the gateway refuses."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, response.body


@pytest.mark.slow
def test_api_key_never_appears_in_any_output(tmp_path):
    """Whatever happens to a connection, neither the right nor a wrong API key shows up in logs, transaction
    records, error bodies, upstream requests or admin answers, while all of those did record the traffic."""
    received_bodies: list[bytes] = []
    admin_answers: list[bytes] = []

    async def scenario():
        async with recording_backend() as ok, raw_backend(answer_500()) as (down_url, down_received):
            write_config(tmp_path, *config_docs(ok.url + "/native", down_url + "/native"))
            (tmp_path / "config" / "logs").mkdir()
            stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
            with stdout.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "run", str(tmp_path / "config"), "--admin", "127.0.0.1:0",
                    "--log-format", "json", stdout=out, stderr=asyncio.subprocess.PIPE,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            ports: dict[str, int] = {}
            listening = asyncio.Event()
            follower = asyncio.create_task(follow_stderr(process, stderr, ports, listening))
            try:
                await wait_listening(listening, follower, stderr)
                base = f"ws://127.0.0.1:{ports['default']}"
                admin = f"http://127.0.0.1:{ports['admin']}"
                # Accepted, key in the query; while it is open, the throttle (1) refuses the next one.
                async with connect(f"{base}/ok?a=1&x-Gateway-APIKey={KEY}&b=2") as first:
                    await first.send("hello over query")
                    assert await first.recv() == "hello over query"
                    status, body = await refused(f"{base}/ok", additional_headers={"x-Gateway-APIKey": KEY})
                    assert status == 503
                    received_bodies.append(body)
                    for path in ("/connections", "/config"):
                        answer = await http_request(admin, path=path)
                        assert answer.status == 200
                        admin_answers.append(answer.body)
                # Accepted, key in the header; then another spelling of the query parameter.
                async with connect(f"{base}/ok", additional_headers={"x-Gateway-APIKey": KEY}) as second:
                    await second.send("hello over header")
                    assert await second.recv() == "hello over header"
                async with connect(f"{base}/ok?X-GATEWAY-APIKEY={KEY}") as third:
                    await third.send("hello again")
                    assert await third.recv() == "hello again"
                # Wrong keys, both ways; no key.
                for kwargs in ({"uri": f"{base}/ok?x-Gateway-APIKey={WRONG}"},
                               {"uri": f"{base}/ok", "additional_headers": {"x-Gateway-APIKey": WRONG}},
                               {"uri": f"{base}/ok"}):
                    status, body = await refused(kwargs.pop("uri"), **kwargs)
                    assert status == 401
                    received_bodies.append(body)
                # The upstream fails (500 -> 502), with the key in the query and in the header.
                for uri, headers in ((f"{base}/down?x-Gateway-APIKey={KEY}", {}),
                                     (f"{base}/down", {"x-Gateway-APIKey": KEY})):
                    status, body = await refused(uri, additional_headers=headers)
                    assert status == 502
                    received_bodies.append(body)
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(TIMEOUT):
                    assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await follower  # the whole log is in the file

            upstream_saw = [request.path.encode() + b"\n" + str(request.headers).encode() for request in ok.requests]
            return stdout.read_bytes(), stderr.read_bytes(), upstream_saw, b"".join(down_received)

    out, err, upstream_saw, down_saw = run(scenario())
    validate = b""
    for fmt in ("text", "json", "github"):
        done = subprocess.run([sys.executable, "-m", "gateway", "validate", str(tmp_path / "config"), "--format", fmt],
                              capture_output=True, timeout=TIMEOUT)
        assert done.returncode == 0, done
        assert b"WSG200" in done.stdout + done.stderr  # the plain-text key is reported, without the key
        validate += done.stdout + done.stderr
    files = sorted((tmp_path / "config" / "logs").glob("transactions.jsonl*"))
    transactions = b"".join(f.read_bytes() for f in files)
    outputs = {
        "stdout": out,
        "stderr": err,
        "log-invocation files": transactions,
        "HTTP error bodies": b"\n".join(received_bodies),
        "requests the Ok upstream saw": b"\n".join(upstream_saw),
        "bytes the Down upstream received": down_saw,
        "admin answers": b"\n".join(admin_answers),
        "`wsgate validate` (text, json, github)": validate,
    }

    # Positive checks first: each output holds the records of this traffic, so an absent key means something.
    logs = [json.loads(line) for line in (out + err).splitlines() if line.startswith(b"{")]
    events = [record.get("event") for record in logs]
    # One info record per connection, at its end: the three accepted connections each name their upstream.
    closed = [r for r in logs if r.get("event") == "connection_closed" and r.get("upstream")]
    assert len(closed) == 3 and "upgrade_accepted" not in events, events
    refusals = {(r.get("connection"), r.get("status")) for r in logs if r.get("event") == "upgrade_refused"}
    assert sorted(status for _, status in refusals) == [401, 401, 401, 502, 502, 503], refusals
    down_records = [r for r in logs if r.get("record") == "upgrade" and r.get("api") == "Down"]
    assert [r["status"] for r in down_records] == [502, 502], "the Down API's transaction records are missing"
    records = [json.loads(line) for line in transactions.splitlines()]
    upgrades = [r for r in records if r.get("record") == "upgrade"]
    assert sorted(r["status"] for r in upgrades) == [101, 101, 101, 401, 401, 401, 503]
    assert upgrades[0]["query"] == "a=1&b=2"  # the query is recorded, minus the key
    assert {r.get("payload") for r in records} >= {"hello over query", "hello over header", "hello again"}
    assert all(b'"error"' in body for body in received_bodies) and len(received_bodies) == 6
    assert len(upstream_saw) == 3 and upstream_saw[0].startswith(b"/native?a=1&b=2\n")
    assert down_saw.count(b"GET /native") == 2
    assert b'"total": 1' in admin_answers[0] and b"canary-app" in admin_answers[1]

    for name, data in outputs.items():
        for secret in (KEY, WRONG):
            assert secret.encode() not in data, f"{secret[:12]}... found in {name}"
