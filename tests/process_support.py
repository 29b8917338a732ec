"""`wsgate run` as a real child process, for the tests that send it signals or kill it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import TIMEOUT, http_request


@dataclass
class RunningProcess:
    """A child ``wsgate run``: its JSON log lines as they come, and the ports it said it listens on."""

    process: asyncio.subprocess.Process
    records: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    async def next_record(self) -> dict[str, Any]:
        """The next JSON log record (fails on EOF, showing everything it printed)."""
        assert self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode()
            assert line, "process ended:\n" + "".join(self.output)
            self.output.append(line)
            if line.startswith("{"):
                record = json.loads(line)
                self.records.append(record)
                if record.get("event") == "listening":
                    self.ports[record["name"]] = record["port"]
                return record

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """Read log records until one has this event (and these fields)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                record = await self.next_record()
                if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                    return record

    async def exit_code(self) -> int:
        """Drain the output and wait for the exit."""
        assert self.process.stdout is not None
        rest = (await self.process.stdout.read()).decode()
        self.output.append(rest)
        self.records.extend(json.loads(line) for line in rest.splitlines() if line.startswith("{"))
        return await self.process.wait()

    async def kill(self) -> None:
        """Stop it at once but cleanly (SIGTERM, then SIGINT to skip the grace; SIGKILL if that hangs), so a
        supervisor stops its workers too."""
        if self.process.returncode is None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await self.exit_code()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_wsgate(config_dir: Path, *args: str, ready: tuple[str, ...] = ("default", "admin")) -> RunningProcess:
    """Start ``wsgate run CONFIG --admin 127.0.0.1:0 --log-format json ARGS``; return once it listens on ``ready``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", str(config_dir), "--admin", "127.0.0.1:0", "--log-format", "json",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    running = RunningProcess(process)
    try:
        # Starting is not what a test measures: several interpreters importing at once on a busy machine take long.
        async with asyncio.timeout(3 * TIMEOUT):
            while not all(name in running.ports for name in ready):
                await running.next_record()
    except BaseException:
        await running.kill()
        raise
    return running


async def admin_json(admin: str, path: str):
    return (await http_request(admin, path=path)).json()


@asynccontextmanager
async def two_workers(config_dir: Path) -> AsyncIterator[tuple[RunningProcess, str]]:
    """``wsgate run --workers 2`` on ``config_dir``: yields it and its admin base URL, and kills it on exit."""
    gateway = await start_wsgate(config_dir, "--workers", "2")
    try:
        yield gateway, f"http://127.0.0.1:{gateway.ports['admin']}"
    finally:
        await gateway.kill()
