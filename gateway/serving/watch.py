"""Watch the config tree and ask for reloads: file changes (watchfiles) and SIGHUP.

The watcher only says *when* to reload; what a reload does (load → check →
compile → swap, or keep the last good config) belongs to the runtime. Every
trigger leads to a full re-read of the tree, so it does not matter which file
event we saw: an editor's write-then-rename, a Kubernetes ConfigMap's
``..data`` symlink swap and a plain write all end the same way. A config equal
to the running one is recognised by its digest and ignored by the runtime.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
from watchfiles import Change, DefaultFilter, awatch

log = structlog.get_logger("wsgate.watch")

CONFIG_SUFFIXES = (".yaml", ".yml")
# Files a config may point at (certificates, keys, CA bundles, JWKS, transform modules): changing one is a
# config change.
REFERENCED_SUFFIXES = (".pem", ".crt", ".cer", ".key", ".json", ".jwks", ".py")
# How long one watch round in watchfiles' thread may last without a change. The first round ending (by a
# timeout or by changes) proves the OS watch is in place, which sets ``ready``; later rounds cost one
# thread hop each.
ROUND_MS = 200


class ConfigFilter(DefaultFilter):
    """Pass YAML and key/certificate files and the ConfigMap ``..data`` link; ignore swap files and VCS dirs."""

    def __call__(self, change: Change, path: str) -> bool:
        name = Path(path).name
        if name.startswith(".."):
            # Kubernetes swaps the `..data` symlink atomically; timestamped `..2026_...` dirs come and go with it.
            return True
        return name.endswith(CONFIG_SUFFIXES + REFERENCED_SUFFIXES) and super().__call__(change, path)


class ConfigWatcher:
    """Calls ``reload`` (debounced) whenever the tree changes or SIGHUP arrives.

    ``ready`` is set once the OS watch is in place (or there is nothing to watch): a change made after
    ``await watcher.ready.wait()`` is seen, one made before may not be.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        reload: Callable[[str], Awaitable[object]],  # the outcome it returns is not used here
        *,
        debounce_ms: int = 200,
        force_polling: bool | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self._reload = reload
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._stop = asyncio.Event()
        self._sighup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._sighup.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            log.debug("sighup_unavailable")
        self._tasks = [
            asyncio.create_task(self._watch_files(), name="wsgate-watch-files"),
            asyncio.create_task(self._watch_sighup(), name="wsgate-watch-sighup"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._sighup.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _watch_files(self) -> None:
        watched = [str(p) for p in self.paths if p.exists()]
        if not watched:
            self.ready.set()
            return
        # watchfiles has no "watching" callback; its watcher is built (and the OS watch added) before its
        # first round, so the first yield, an empty set on timeout, means the watch is in place.
        async for changes in awatch(
            *watched,
            watch_filter=ConfigFilter(),
            debounce=self._debounce_ms,
            step=20,
            stop_event=self._stop,
            force_polling=self._force_polling,
            recursive=True,
            rust_timeout=ROUND_MS,
            yield_on_timeout=True,
        ):
            if not self.ready.is_set():
                self.ready.set()
                log.info("watching", paths=watched)
            if not changes:
                continue
            log.info("config_changed", files=sorted({Path(p).name for _, p in changes})[:10])
            await self._safe_reload("files")

    async def _watch_sighup(self) -> None:
        while not self._stop.is_set():
            await self._sighup.wait()
            self._sighup.clear()
            if self._stop.is_set():
                return
            log.info("sighup_received")
            await self._safe_reload("sighup")

    async def _safe_reload(self, trigger: str) -> None:
        # A reload that raises is a bug in the runtime; it must not end the watching.
        try:
            await self._reload(trigger)
        except Exception:
            log.exception("reload_crashed", trigger=trigger)
