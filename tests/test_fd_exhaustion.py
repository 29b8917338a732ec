"""Running out of file descriptors: the listener pauses, the log stays short, the admin answers, and clients
are served again once descriptors are free.

A `wsgate run` process limited to 128 open files (soft and hard, so the gateway cannot raise it) gets 250
clients that each send an upgrade and wait: each proxied one holds two descriptors, so most of them wait in
the listen backlog while the listener is paused.
"""

from __future__ import annotations

import json
import resource
import socket
import sys

import pytest
from gateway_process import GatewayProcess, echo_thread, gateway_process
from support import PORT, TIMEOUT, Scrape, api_yaml, upgrade_request, write_config
from websockets.sync.client import connect

LIMIT = 128
CLIENTS = 250

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and EMFILE as on Linux")


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def admin_get(gateway: GatewayProcess, path: str) -> tuple[int, str]:
    """Status and body of a GET on the admin listener (the whole answer, read until it closes)."""
    with socket.create_connection(("127.0.0.1", gateway.ports["admin"]), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def accept_errors(gateway: GatewayProcess) -> int:
    status, body = admin_get(gateway, "/metrics")
    assert status == 200
    value = Scrape(body).value("wsgate_accept_errors_total", listener="default")
    return int(value) if value is not None else 0


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path):
    """Past the file limit: no traceback, a few `accept_paused` lines (one per second at most) standing for
    every failed accept, `/healthz` answers, the failures are counted, and once the clients leave a new client
    is relayed."""
    with echo_thread() as echo:
        write_config(tmp_path, PORT, "kind: Gateway\nname: fd\nlog_format: json\nshutdown_timeout: 1\n",
                     api_yaml("Echo", "/echo", echo + "/"))
        with gateway_process(tmp_path / "config", tmp_path / "stderr.log", preexec_fn=low_file_limit) as gateway:
            clients = []
            try:
                for _ in range(CLIENTS):
                    sock = socket.create_connection(("127.0.0.1", gateway.ports["default"]), timeout=TIMEOUT)
                    sock.sendall(upgrade_request("/echo"))
                    clients.append(sock)
                gateway.wait_for(lambda: any(r.get("event") == "accept_paused" for r in gateway.records()))
                # Paused, not dead: the admin answers through its reserved descriptor, and counts the failures.
                assert admin_get(gateway, "/healthz") == (200, '{"status": "ok"}')
                first = accept_errors(gateway)
                assert first >= 1
                # Several backoff rounds pass while the clients stay (each round fails again and is counted).
                gateway.wait_for(lambda: accept_errors(gateway) >= first + 3)
                assert admin_get(gateway, "/healthz")[0] == 200
            finally:
                for sock in clients:
                    sock.close()
            # Descriptors come back: a new client is relayed end to end.
            url = f"ws://127.0.0.1:{gateway.ports['default']}/echo"

            def served() -> bool:
                try:
                    with connect(url, open_timeout=TIMEOUT) as ws:
                        ws.send("after the flood")
                        return ws.recv(timeout=TIMEOUT) == "after the flood"
                except Exception:
                    return False

            gateway.wait_for(served)
            text = gateway.stderr()
    lines = text.splitlines()
    assert "Traceback" not in text and "out of system resource" not in text
    records = [json.loads(line) for line in lines if line.startswith("{")]
    paused = [r for r in records if r["event"] == "accept_paused"]
    assert paused and all(record["error"] in ("EMFILE", "ENFILE") for record in paused)
    # One line per second at most about the descriptors, whatever the number of failed accepts behind it.
    assert sum(r["failed_accepts"] for r in paused) >= len(paused)
    # Besides each client's own upgrade lines (accepted, refused, upstream attempt, closed), a few lines only.
    per_client = {"upgrade_accepted", "upgrade_refused", "upstream_attempt_failed", "connection_closed"}
    other = [r for r in records if r["event"] not in per_client]
    assert len(other) < 30, [r["event"] for r in other]
    assert len(lines) < 4 * CLIENTS, f"{len(lines)} log lines"


def flood(port: int, request: bytes | None = None) -> list[socket.socket]:
    """``CLIENTS`` connections to ``port`` that stay open (each sends ``request`` first, if given)."""
    clients = []
    for _ in range(CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if request is not None:
            sock.sendall(request)
        clients.append(sock)
    return clients


def assert_short_log(text: str, listener: str) -> None:
    """No traceback, and a few ``accept_paused`` lines of ``listener`` standing for all its failed accepts."""
    assert "Traceback" not in text and "out of system resource" not in text, text[-3000:]
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    paused = [r for r in records if r["event"] == "accept_paused"]
    assert listener in {r["listener"] for r in paused}, paused  # (the admin's too, once its reserve is used)
    assert sum(r["failed_accepts"] for r in paused) >= len(paused)  # one line stands for many failures
    assert len(text.splitlines()) < 60, f"{len(text.splitlines())} log lines"


def test_the_embedded_echo_server_pauses_accepting_without_a_traceback(tmp_path):
    """The echo server `wsgate run` embeds, flooded past the file limit, goes through the bounded accept loop:
    no traceback (asyncio's own loop printed one per failed accept), a few `accept_paused` lines naming its
    listener, and it serves a client again once the flood has left."""
    # An EchoServer's port is fixed (>= 1): a number the kernel just handed out and nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        number = probe.getsockname()[1]
    echo = f"kind: EchoServer\nname: backend\nhost: 127.0.0.1\nport: {number}\ncontexts:\n  - path: /demo/\n"
    write_config(tmp_path, PORT, "kind: Gateway\nname: fd\nlog_format: json\nshutdown_timeout: 1\n", echo,
                 api_yaml("Echo", "/echo", "ws://127.0.0.1:9/"))
    with gateway_process(tmp_path / "config", tmp_path / "stderr.log", preexec_fn=low_file_limit) as gateway:
        port = number
        clients = flood(port)
        try:
            gateway.wait_for(lambda: any(r.get("event") == "accept_paused" for r in gateway.records()))
            assert admin_get(gateway, "/healthz")[0] == 200
        finally:
            for sock in clients:
                sock.close()

        def served() -> bool:
            try:
                with connect(f"ws://127.0.0.1:{port}/demo/", open_timeout=TIMEOUT):
                    return True
            except Exception:
                return False

        gateway.wait_for(served)
        text = gateway.stderr()
    assert_short_log(text, "echo:backend")


def test_the_admin_listener_pauses_accepting_without_a_traceback(tmp_path):
    """The admin listener, flooded past the file limit by idle connections, pauses on the bounded accept loop
    (no traceback, a few `accept_paused` lines naming it) and answers `/healthz` once they have left."""
    write_config(tmp_path, PORT, "kind: Gateway\nname: fd\nlog_format: json\nshutdown_timeout: 1\n",
                 api_yaml("Echo", "/echo", "ws://127.0.0.1:9/"))
    with gateway_process(tmp_path / "config", tmp_path / "stderr.log", preexec_fn=low_file_limit) as gateway:
        clients = flood(gateway.ports["admin"])
        try:
            gateway.wait_for(lambda: any(r.get("event") == "accept_paused" for r in gateway.records()))
        finally:
            for sock in clients:
                sock.close()

        def answers() -> bool:
            try:
                return admin_get(gateway, "/healthz")[0] == 200
            except OSError:
                return False

        gateway.wait_for(answers)
        text = gateway.stderr()
    assert_short_log(text, "admin")
