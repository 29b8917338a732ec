"""Shared test scaffolding: ``async def`` tests and the relay-path parameter.

An ``async def test_…`` runs in a fresh event loop under one deadline (``ASYNC_DEADLINE``, a multiple of
the suite's timeout unit), so a test is its scenario, without a nested ``async def scenario()`` and a
``run(scenario())`` wrapper. No plugin needed: the hook below is the whole runner. Tests marked for
anyio's own plugin (``@pytest.mark.anyio``) are left to it.

Helpers that build things (YAML documents, configs, gateways, backends) stay in ``support.py`` as
async context managers, because a test usually nests them in an order that matters.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from redis_support import REDIS_SERVER, RedisServer
from support import PATHS, TIMEOUT

# Long enough for the slowest scenario (conformance, 100 connections through 20 reloads) on a busy machine;
# a hang still ends with the scenario's own traceback instead of pytest-timeout's thread dump.
ASYNC_DEADLINE = 6 * TIMEOUT


async def _bounded(test: Any, kwargs: dict[str, Any]) -> None:
    async with asyncio.timeout(ASYNC_DEADLINE):
        await test(**kwargs)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test in its own event loop, with the suite's deadline."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test) or pyfuncitem.get_closest_marker("anyio"):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(_bounded(test, kwargs))
    return True


@pytest.fixture(params=PATHS)
def path_kind(request: pytest.FixtureRequest) -> str:
    """Which relay a test API goes through: the byte relay ("fast") or the message relay ("message")."""
    return str(request.param)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, stopped by PID after the test (skips when the binary is missing)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=[(), ("--workers", "2")], ids=["one-process", "two-workers"])
def process_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The extra ``wsgate run`` arguments of a test that must hold for one process and for a supervisor with two
    workers alike (``process_support.start_wsgate(config_dir, *process_args)``): one gateway view, one admin."""
    return tuple(request.param)
