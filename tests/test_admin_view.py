"""One gateway view: the admin answers with the same shapes from one process and from a supervisor with workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from process_support import admin_json, start_wsgate
from support import PORT, TIMEOUT, Scrape, api_yaml, echo_backend, http_request, running_gateway, write_config
from websockets.asyncio.client import connect

from gateway.serving.runtime import StartError
from gateway.workers import supervisor as supervisor_module
from gateway.workers.supervisor import Supervisor

GET = ("/healthz", "/readyz", "/config", "/connections", "/upstreams", "/reload")


def shape(value: Any) -> Any:
    """The structure of a JSON answer: a dict's keys (each with its value's shape), a list's element shape, and
    "value" for anything else (so ``null`` where one side has no workers matches a number on the other)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes = [shape(item) for item in value]
        return shapes[0] if shapes else "[]"
    return "value"


def differences(one: Any, other: Any, where: str = "") -> list[str]:
    """Where two shapes differ ("[]", an empty list, matches any list's element shape)."""
    if "[]" in (one, other):
        return []
    if isinstance(one, dict) and isinstance(other, dict):
        found = [f"{where}.{key}: only on one side" for key in one.keys() ^ other.keys()]
        for key in one.keys() & other.keys():
            found += differences(one[key], other[key], f"{where}.{key}")
        return found
    return [] if one == other else [f"{where}: {one!r} vs {other!r}"]


async def answers(tmp_path: Path, args: tuple[str, ...]) -> tuple[dict[str, Any], Scrape]:
    """Every JSON answer of the admin (with a relayed connection open, after one reload) and the scrape."""
    tmp_path.mkdir()
    async with echo_backend() as backend:
        write_config(tmp_path, PORT, api_yaml("A", "/a", backend.url("/echo/")))
        gateway = await start_wsgate(tmp_path / "config", *args)
        try:
            admin = f"http://127.0.0.1:{gateway.ports['admin']}"
            async with connect(f"ws://127.0.0.1:{gateway.ports['default']}/a") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                reloaded = await http_request(admin, b"POST /reload HTTP/1.1\r\nHost: a\r\n\r\n")
                assert reloaded.status == 200, reloaded.body
                found = {"POST /reload": reloaded.json()}
                for path in GET:
                    found[path] = await admin_json(admin, path)
                scrape = Scrape((await http_request(admin, path="/metrics")).body.decode())
        finally:
            await gateway.kill()
    return found, scrape


async def test_every_admin_answer_has_one_shape_with_and_without_workers(tmp_path):
    """The same config served by one process and by two workers: every admin answer has the same keys at every
    level, the relayed connection is listed in both, and both serve the process_* series (per worker, with
    workers)."""
    single, single_scrape = await answers(tmp_path / "single", ())
    workers, workers_scrape = await answers(tmp_path / "workers", ("--workers", "2"))
    for path in single:
        assert not differences(shape(single[path]), shape(workers[path])), (path, single[path], workers[path])
    for found in (single, workers):
        assert found["/readyz"]["status"] == "ready" and found["/readyz"]["state"]["backend"] == "memory"
        assert [c["api"] for c in found["/connections"]["connections"]] == ["A"]
        assert found["POST /reload"]["ok"] is True and found["/reload"]["reloads"] == 1
    assert [w["generation"] for w in workers["/readyz"]["workers"]] == [1, 1]
    assert single_scrape.value("process_open_fds") is not None
    assert {s["worker"] for s in workers_scrape.series("process_open_fds")} == {"supervisor", "0", "1"}
    assert {s["worker"] for s in workers_scrape.series("process_max_fds")} == {"supervisor", "0", "1"}


async def test_readyz_answers_503_while_the_workers_drain(tmp_path):
    """SIGTERM to a supervisor whose worker holds a connection through a long grace: /readyz answers 503
    ("stopping") while that connection is still open and relaying, from what the supervisor holds; /connections
    still counts it (the draining worker answers)."""
    async with echo_backend() as backend:
        write_config(tmp_path, PORT, "kind: Gateway\nname: g\nshutdown_grace: 60\n",
                     api_yaml("A", "/a", backend.url("/echo/")))
        gateway = await start_wsgate(tmp_path / "config", "--workers", "2")
        try:
            admin = f"http://127.0.0.1:{gateway.ports['admin']}"
            async with connect(f"ws://127.0.0.1:{gateway.ports['default']}/a") as ws:
                assert (await http_request(admin, path="/readyz")).status == 200
                gateway.process.send_signal(signal.SIGTERM)
                await gateway.wait_for("stopping")
                asked = time.monotonic()
                answer = await http_request(admin, path="/readyz")
                took = time.monotonic() - asked
                assert answer.status == 503 and answer.json()["status"] == "stopping", answer.body
                assert answer.json()["state"] is not None  # the workers' last report, not a question to them
                # The draining connection is still open and relayed: the answer did not wait for the drain.
                await ws.send("still here")
                assert await ws.recv() == "still here"
                # The draining worker still answers what the supervisor asks: /connections shows the drain.
                assert (await admin_json(admin, "/connections"))["total"] == 1
                print(f"/readyz answered 503 in {took * 1000:.1f} ms after the supervisor logged `stopping`")
        finally:
            await gateway.kill()


async def test_a_metrics_directory_that_is_not_writable_fails_the_start_with_one_line(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR naming no writable directory: one start_failed line, exit 1, no traceback."""
    write_config(tmp_path, PORT, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PROMETHEUS_MULTIPROC_DIR=str(blocker / "metrics"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", str(tmp_path / "config"), "--workers", "2", "--admin",
        "127.0.0.1:0", "--log-format", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env)
    async with asyncio.timeout(3 * TIMEOUT):
        output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 1, text
    assert "Traceback" not in text
    failed = [line for line in text.splitlines() if '"start_failed"' in line]
    assert len(failed) == 1 and "PROMETHEUS_MULTIPROC_DIR" in failed[0], text


def test_no_usable_temporary_directory_falls_back_to_dev_shm(tmp_path, monkeypatch):
    """Plain values: with no usable temporary directory (a read-only root filesystem), the workers' metrics go to
    /dev/shm; with that unusable too, the start fails with a StartError (one line), not a traceback."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("/dev/shm is not writable here")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # unset for the supervisor; restored after the test
    monkeypatch.setattr("tempfile.tempdir", str(blocker / "tmp"))
    supervisor = Supervisor.__new__(Supervisor)
    supervisor._own_metrics_dir = False
    supervisor._metrics_dir()
    try:
        assert supervisor.metrics_dir is not None and supervisor.metrics_dir.startswith("/dev/shm/")
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == supervisor.metrics_dir
    finally:
        os.rmdir(supervisor.metrics_dir)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.setattr(supervisor_module, "METRICS_DIR_FALLBACKS", (str(blocker / "shm"),))
    with pytest.raises(StartError, match="no writable directory"):
        supervisor._metrics_dir()


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the admin; the first answer's status, headers and body."""
    response = await http_request(f"http://127.0.0.1:{port}", data)
    return response.status, response.headers, response.body


async def test_every_admin_refusal_is_a_short_json_body(tmp_path, monkeypatch):
    """404, 405 (with Allow), a malformed request and an over-long header line (400), and a route that fails (500,
    logged): each a JSON body with an error word and a reason, never aiohttp's page or a plain-text error."""
    from structlog.testing import capture_logs

    config = write_config(tmp_path, PORT, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    async with running_gateway(config) as gw:
        port = gw.admin.port
        refusals = {
            "not_found": b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n",
            "method_not_allowed": b"DELETE /reload HTTP/1.1\r\nHost: a\r\n\r\n",
            "bad_request": b"NOT HTTP AT ALL\r\n\r\n",
            "bad_request ": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Long: " + b"x" * 9000 + b"\r\n\r\n",
        }
        for word, data in refusals.items():
            status, headers, body = await exchange(port, data)
            assert headers["content-type"].startswith("application/json"), (word, headers)
            assert json.loads(body)["error"] == word.strip() and json.loads(body)["reason"], (word, body)
            assert status in (400, 404, 405)
            if word == "method_not_allowed":
                assert headers["allow"] == "GET, POST"

        def broken() -> None:
            raise RuntimeError("a bug in the view")

        monkeypatch.setattr(gw, "config_snapshot", broken)
        with capture_logs() as logs:
            status, headers, body = await exchange(port, b"GET /config HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 500 and json.loads(body) == {"error": "internal_error", "reason": "see the gateway log"}
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["admin_handler_failed"]


async def test_the_admin_keeps_a_connection_alive_between_requests(tmp_path):
    """Two requests on one connection get two answers (aiohttp's keep-alive), the second after the first."""
    config = write_config(tmp_path, PORT, api_yaml("A", "/a", "ws://127.0.0.1:9/"))
    async with running_gateway(config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.admin.port)
        try:
            for path in ("/healthz", "/readyz"):
                writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                assert head.startswith(b"HTTP/1.1 200 OK") and json.loads(await reader.readexactly(length))
        finally:
            writer.close()
