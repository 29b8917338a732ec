"""A `wsgate run` subprocess for sync tests: hypothesis properties and a child with its own file limit.

``process_support.start_wsgate`` is the async way to run one; this is its sync counterpart, for tests that
cannot await (hypothesis calls a sync function per example) or need ``preexec_fn`` (``RLIMIT_NOFILE``). The
gateway logs JSON lines to stderr, which goes to a file; the ports come from its ``listening`` events. A sync
websockets echo server in a thread is the backend, so a test needs no event loop of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import TIMEOUT, stop_process
from websockets.sync.server import ServerConnection, serve


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    stderr_path: Path
    ports: dict[str, int]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far."""
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line still being written
                    out.append(json.loads(line))
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Poll ``predicate`` until it holds; fail (with the log) after ``timeout`` or if the process ended."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process.poll() is None, f"gateway exited {self.process.returncode}:\n{self.stderr()[-4000:]}"
            assert time.monotonic() < deadline, f"timed out; log tail:\n{self.stderr()[-4000:]}"
            time.sleep(0.02)


@contextmanager
def gateway_process(config_dir: Path, log_path: Path, *, preexec_fn: Callable[[], None] | None = None,
                    env: dict[str, str] | None = None, expect: tuple[str, ...] = ("default", "admin")
                    ) -> Iterator[GatewayProcess]:
    """Run ``wsgate run config_dir`` (admin on a free port) until the block ends, then SIGTERM it."""
    with log_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(config_dir), "--admin", "127.0.0.1:0", "--log-format",
             "json"],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    gateway = GatewayProcess(process, log_path, {})
    try:
        def listening() -> bool:
            for record in gateway.records():
                if record.get("event") == "listening":
                    gateway.ports[record["name"]] = record["port"]
            return all(name in gateway.ports for name in expect)

        gateway.wait_for(listening)
        yield gateway
    finally:
        stop_process(process)


@contextmanager
def echo_thread() -> Iterator[str]:
    """A websockets echo server on 127.0.0.1 port 0 in a thread; yields its ``ws://`` base URL."""

    def echo(connection: ServerConnection) -> None:
        for message in connection:
            connection.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
