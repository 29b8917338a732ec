"""Stop signals for the long-running commands (`wsgate run`, `wsgate echo`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest(asyncio.Event):
    """Set by the first SIGINT or SIGTERM (stop gracefully); ``hurry`` is set by the next one (stop at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.hurry = asyncio.Event()

    def signalled(self) -> None:
        if self.is_set():
            self.hurry.set()
        else:
            self.set()


@contextlib.asynccontextmanager
async def stop_requested() -> AsyncIterator[StopRequest]:
    """A :class:`StopRequest` the stop signals set while the block runs; the handlers are removed on the way out."""
    loop = asyncio.get_running_loop()
    stopping = StopRequest()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopping.signalled)
    try:
        yield stopping
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
