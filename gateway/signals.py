"""Stop signals for the long-running commands (`wsgate run`, `wsgate echo`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.asynccontextmanager
async def stop_requested() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs; the handlers are removed on the way out."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping.set)
    try:
        yield stopping
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
