"""The one reload sequence, shared by a gateway and by the supervisor of ``wsgate run --workers N``.

build (check and compile, transforms imported) → refused while stopping →
the last good config kept on errors (each logged with its hint) → an
identical config skipped → ``apply`` → the outcome recorded (``GET /reload``,
its history, the reload metrics) → waiters notified.

What differs between the two callers is passed in, never copied:

- ``apply``: a gateway decides what the change does to its live connections
  and swaps its route table; the supervisor hands the config to every worker
  as the next generation (each worker's gateway then applies it with
  ``checked``: no second build, no second decision about reloading);
- ``serving``: the digest and generation serving now;
- ``describe``: fields every outcome carries besides (the supervisor's
  per-worker generations);
- ``metrics``: whoever decides reloads counts them (a gateway on its own,
  or the supervisor); a worker applying its supervisor's decision counts
  nothing, so with N workers a reload is counted once, not N times.

One reload at a time; requests that arrive while one runs are served by a
single further reload (it re-reads the tree, so it sees them all).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from ..config.cache import CheckCache
from ..config.diagnostics import Diagnostic
from .provenance import tree_commit
from .view import ConfigStatus, LastReload, ReloadOutcome, WorkerState

if TYPE_CHECKING:
    from ..build.pipeline import Built
    from ..config.tree import Config

log = structlog.get_logger("wsgate.reload")

class ReloadCounter(Protocol):
    """Where reloads are counted (``gateway.operations.metrics.ReloadMetrics``; this layer does not import it)."""

    def reloaded(self, outcome: str, seconds: float) -> None: ...


RELOAD_HISTORY = 20  # reload outcomes GET /reload (and the dashboard) shows
# (the build to apply, the trigger, the generation a supervisor chose or None) -> the outcome's fields that apply
# knows (``ok``, ``error``, ``problems``, ``plan``...); the sequence fills in the rest.
Apply = Callable[["Built", str, "int | None"], Awaitable[ReloadOutcome]]


class Reloader:
    """Runs reloads one at a time through ``apply`` and keeps their outcomes."""

    def __init__(self, paths: Sequence[str | Path], apply: Apply, serving: Callable[[], tuple[str, int]], *,
                 stopping: Callable[[], bool], env: Mapping[str, str] | None = None,
                 cache: CheckCache | None = None,
                 describe: Callable[[], tuple[bool, tuple[WorkerState, ...]]] | None = None,
                 metrics: ReloadCounter | None = None, values: Sequence[str | Path] = ()) -> None:
        self.paths = [Path(p) for p in paths]
        self.env = env
        self.values = [Path(v) for v in values]  # `--values` files: re-read on every reload, as the tree is
        self.commit = tree_commit(self.paths)  # the git commit the serving config was read at (None: no checkout)
        # Only the files changed since the last check are parsed again; handed the cache of the check that
        # produced the serving config, even the first reload is.
        self.cache = cache if cache is not None else CheckCache()
        self.metrics = metrics
        self._apply = apply
        self._serving = serving
        self._stopping = stopping
        self._describe = describe
        self.last: ReloadOutcome | None = None
        self.history: deque[ReloadOutcome] = deque(maxlen=RELOAD_HISTORY)  # newest last
        self.count = 0  # finished reload attempts (applied, skipped or failed)
        self.finished = asyncio.Condition()  # notified after every outcome
        self._lock = asyncio.Lock()
        self._requested = 0
        self._served = 0
        self.started = 0.0  # when the reload in progress began reading the tree (monotonic), for apply's log

    async def reload(self, trigger: str = "manual", checked: Config | None = None,
                     generation: int | None = None) -> ReloadOutcome:
        """Build → check → apply; a failure changes nothing. Returns the outcome.

        ``checked``: a config the caller already built and decided to apply (a worker's supervisor did), applied
        as ``generation``; it is never coalesced with another request.
        """
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if checked is None and self._served >= ticket and self.last is not None:
                return self.last  # a reload that started after this request already read the tree
            self._served = self._requested
            self.started = started = time.monotonic()
            try:
                fields = await self._run(trigger, checked, generation)
            except Exception as exc:  # a bug, not a bad config: keep serving and say so
                log.exception("reload_crashed", trigger=trigger)
                fields = ReloadOutcome(ok=False, error=f"internal error: {exc.__class__.__name__}")
            if fields.ok:
                self.commit = tree_commit(self.paths)  # the tree now serving (applied, or the same as before)
            digest, serving_generation = self._serving()
            outcome = dataclasses.replace(fields, trigger=trigger, at=time.time(), generation=serving_generation,
                                          digest=digest)
            if self._describe is not None:
                split, workers = self._describe()
                outcome = dataclasses.replace(outcome, split=split, workers=workers)
            self.last = outcome
            self.history.append(outcome)
            self.count += 1
            if self.metrics is not None:
                self.metrics.reloaded("failed" if not outcome.ok else "unchanged" if outcome.noop else "applied",
                                      time.monotonic() - started)
            async with self.finished:
                self.finished.notify_all()
            return outcome

    def status(self) -> ConfigStatus:
        """The config serving now and whether the last reload failed, and why: what ``/readyz``, ``/reload`` and
        ``wsgate_config_info`` report, so a rollout can see a replica stuck on an old config."""
        digest, generation = self._serving()
        last = self.last
        summary: LastReload | None = None
        if last is not None:
            why: str | None = None
            if not last.ok:
                errors = [d for d in last.diagnostics if d.is_error]
                why = (_headline(errors[0]) + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
                       if errors else last.error or "failed")
            summary = LastReload(last.ok, last.at, last.trigger, why)
        return ConfigStatus(digest, generation, self.commit, tuple(str(v) for v in self.values), summary)

    async def wait(self, count: int, timeout: float | None = None) -> ReloadOutcome:
        """Wait until ``count`` reloads have finished; the last outcome."""
        async with asyncio.timeout(timeout):
            async with self.finished:
                await self.finished.wait_for(lambda: self.count >= count)
        assert self.last is not None
        return self.last

    async def _run(self, trigger: str, checked: Config | None, generation: int | None) -> ReloadOutcome:
        from ..build.pipeline import Built, build

        if checked is None:
            # The same build as validate, but transforms are imported: the new chain runs them anyway.
            result = await asyncio.to_thread(build, self.paths, env=self.env, cache=self.cache,
                                             import_transforms=True, values=self.values)
        else:
            result = Built(checked)
        if self._stopping():
            return ReloadOutcome(ok=False, error="gateway is stopping")
        digest, serving_generation = self._serving()
        if result.config is None:
            for d in result.diagnostics:
                if d.is_error:
                    # The same hint GET /reload shows: whoever reads the log can fix the tree from it.
                    log.error("reload_failed", trigger=trigger, location=str(d.location) if d.location else None,
                              code=d.code, summary=d.summary, hint=d.hint or None, diagnostic=d.headline())
            log.error("reload_failed", trigger=trigger, errors=len(result.errors),
                      kept_generation=serving_generation, kept_digest=digest)
            return ReloadOutcome(ok=False, diagnostics=tuple(result.diagnostics))
        if result.config.digest() == digest:
            log.info("reload_skipped", trigger=trigger, digest=digest, generation=serving_generation)
            return ReloadOutcome(ok=True, noop=True)
        return await self._apply(result, trigger, generation)


def _headline(d: Diagnostic) -> str:
    """``file:line:col: CODE: summary`` (the diagnostic's headline without its severity: it is an error)."""
    loc = d.location
    where = f"{loc.file}:{loc.line}:{loc.col}: " if loc is not None else ""
    return f"{where}{d.code}: {d.summary}"


class ReloadStatus:
    """What the admin and the watcher read about reloads, from the ``reloader`` of whoever decides them (a
    ``Gateway``, or the supervisor of ``--workers N``)."""

    reloader: Reloader

    @property
    def check_cache(self) -> CheckCache:
        """Reloads re-read only the files changed since the last check."""
        return self.reloader.cache

    @property
    def last_reload(self) -> ReloadOutcome | None:
        return self.reloader.last

    @property
    def reload_history(self) -> deque[ReloadOutcome]:
        return self.reloader.history

    @property
    def config_status(self) -> ConfigStatus:
        """The served config (digest, generation, git commit, values files) and the last reload's failure."""
        return self.reloader.status()

    @property
    def reload_failing(self) -> bool:
        """Whether the last reload attempt failed (the previous config keeps serving)."""
        return self.reloader.last is not None and not self.reloader.last.ok

    @property
    def reload_count(self) -> int:
        """Finished reload attempts (applied, skipped or failed)."""
        return self.reloader.count
