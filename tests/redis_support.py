"""A real ``redis-server`` for the shared-state tests: started on a free port, stopped by its PID.

Redis cannot be asked for port 0, so :class:`RedisServer` picks a random
port and tries again if that one is taken (never bind-release-hand-out).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")


class RedisServer:
    """One redis-server process; ``restart`` keeps its port (nothing persisted: a restart starts empty)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        assert REDIS_SERVER is not None
        for _ in range(20):
            candidate = port or random.randint(20000, 59999)
            process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(candidate), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "notice"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            seen = []
            for raw in process.stdout:  # blocks on the next log line: the readiness event, not a sleep
                line = raw.decode(errors="replace")
                seen.append(line)
                if "Ready to accept connections" in line:
                    self.port, self.process = candidate, process
                    process.stdout.close()
                    return
            process.wait()
            if port is not None or "Address already in use" not in "".join(seen):
                raise RuntimeError("redis-server did not start:\n" + "".join(seen))
        raise RuntimeError("no free port for redis-server after 20 tries")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a paused server must be able to act on the SIGTERM
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start(self.port)
