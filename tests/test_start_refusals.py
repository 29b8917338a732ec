"""Refusing to start: `wsgate run` says why in one `start_failed` line before anything listens, and exits 1.

Each case runs a real `wsgate run` child (with and without workers) and reads its whole output: one
`start_failed` record, no traceback, no `listening` line, exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest
from support import PORT, TIMEOUT, api_yaml, write_config

WORKERS = [pytest.param((), id="single"), pytest.param(("--workers", "2"), id="workers")]


async def refused_run(config_dir: Path, *args: str) -> tuple[int, str, list[dict]]:
    """Run `wsgate run CONFIG --log-format json ARGS` to its end: exit code, stderr and stdout as text, and the
    JSON records of both."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", str(config_dir), "--log-format", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        async with asyncio.timeout(3 * TIMEOUT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = err.decode() + out.decode()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert process.returncode is not None
    return process.returncode, text, records


def assert_refused(code: int, text: str, records: list[dict], *phrases: str) -> dict:
    """Exit 1, one start_failed record holding ``phrases``, nothing listening, no traceback; the record."""
    assert code == 1, text
    assert "Traceback" not in text, text
    failed = [r for r in records if r.get("event") == "start_failed"]
    assert len(failed) == 1, text
    for phrase in phrases:
        assert phrase in failed[0]["error"] + " " + failed[0]["hint"], failed[0]
    assert not [r for r in records if r.get("event") in ("listening", "worker_started", "echo_server_listening")]
    return failed[0]


@pytest.mark.parametrize("workers", WORKERS)
async def test_a_public_admin_without_a_token_is_refused_in_one_line_before_anything_listens(tmp_path, workers):
    """`wsgate run --admin 0.0.0.0:P` with no admin token configured: one start_failed line naming the address
    and `admin.token`, no traceback, no `listening` line, exit 1."""
    write_config(tmp_path, PORT, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    code, text, records = await refused_run(tmp_path / "config", "--admin", "0.0.0.0:0", *workers)
    assert_refused(code, text, records, "0.0.0.0:0", "needs a token", "admin.token")


@pytest.mark.parametrize("workers", WORKERS)
async def test_an_unreadable_admin_token_file_is_refused_in_one_line(tmp_path, workers):
    """An admin `token_file` that is not UTF-8 text (it cannot be read as a token) refuses the start in one
    start_failed line that quotes none of its bytes, before any port listens."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "token").write_bytes(b"MARKER\xff\xfe")
    gateway = "kind: Gateway\nname: g\nadmin:\n  token_file: token\n"
    write_config(tmp_path, PORT, gateway, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    code, text, records = await refused_run(tmp_path / "config", "--admin", "127.0.0.1:0", *workers)
    assert_refused(code, text, records, "cannot be loaded", "token_file")
    assert "MARKER" not in text and "xff" not in text


@pytest.mark.parametrize("workers", WORKERS)
async def test_a_taken_echo_server_port_is_refused_in_one_line(tmp_path, workers):
    """An EchoServer on a port another process holds: one start_failed line naming the echo server and the
    address, no traceback, nothing listening, exit 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        echo = f"kind: EchoServer\nname: backend\nhost: 127.0.0.1\nport: {taken}\ncontexts:\n  - path: /demo/\n"
        write_config(tmp_path, PORT, echo, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
        code, text, records = await refused_run(tmp_path / "config", "--admin", "127.0.0.1:0", *workers)
    assert_refused(code, text, records, "echo server 'backend'", f"127.0.0.1:{taken}")
