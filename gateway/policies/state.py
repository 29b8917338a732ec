"""Policy state that outlives one config: throttle counts, rate-limit buckets, log writers, the hostname cache.

One ``PolicyState`` per gateway process. A reload builds new policy objects,
but they find their counters and open files here, so a swap neither resets a
throttle nor reopens a log file. Throttle counts live in ``shared`` (see
``gateway.state``): this process's memory, or Redis shared by every instance.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ..build.remote_keys import RemoteKeySet, jwks_ssl_context
from ..common.http_client import SharedHTTPClient
from ..common.reverse_dns import HostnameResolver
from ..state import open_state
from ..state.base import SharedState
from ..state.memory import MemoryStore
from .log_writer import LogWriters
from .rate_buckets import RateLimits

log = structlog.get_logger("wsgate.policies")


class PolicyState:
    """What policies keep across reloads, and the shared-state backend their throttles and budgets count in.

    A backend switched away from on reload (another ``state`` in the Gateway
    resource) stays open while a route table compiled against it is open:
    the connections accepted on those tables hold their slots there and give
    them back there. When the last such table is released (its last
    connection ended), the backend is closed: its leftover slots are given
    back (Redis: its owner leaves) and its client disconnects.
    """

    def __init__(self, shared: SharedState | None = None) -> None:
        if shared is None:
            shared = MemoryStore()
        self.shared: SharedState = shared
        self.shared_settings: Any = None  # the Gateway resource's `state` that built ``shared`` (None: the default)
        # (backend, its settings) switched away from by the reload in progress: revert_shared restores the pair.
        self._switched_from: tuple[SharedState, Any] | None = None
        self._holders: Counter[int] = Counter()  # id(backend) -> open route tables compiled against it
        self._retired: dict[int, SharedState] = {}  # switched away from: closed when their last table is released
        self._closing: set[asyncio.Task[None]] = set()
        self.rate_limits = RateLimits()
        # Messages that broke their API's definitions: (api, direction, kind, action) -> count.
        self.violations: Counter[tuple[str, str, str, str]] = Counter()
        self.log_writers = LogWriters()
        self.resolver = HostnameResolver()
        # The process's HTTP client (authorizer, remote JWKS): its keep-alive pool outlives reloads.
        self.http = SharedHTTPClient()
        self._jwks: dict[tuple[str, str | None], RemoteKeySet] = {}  # (url, CA file) -> its keys, across reloads

    def jwks(self, url: str, cafile: str | None, timeout: float, max_age: float, min_refresh_interval: float,
             parse: Callable[[str], list[Any]]) -> RemoteKeySet:
        """The process's key set of a JWKS URL: one per URL and CA, so a reload keeps the keys fetched so far."""
        found = self._jwks.get((url, cafile))
        if found is None:
            found = RemoteKeySet(url, self.http, jwks_ssl_context(url, cafile), timeout, max_age, min_refresh_interval,
                                 parse)
            self._jwks[(url, cafile)] = found
        return found

    async def use_shared(self, settings: Any, env: Mapping[str, str], ca_file: str | None = None) -> bool:
        """Count in the backend ``settings`` names from now on; False if it is the one in use.

        New upgrades count in the new one. ``revert_shared`` undoes the switch
        (a reload that failed later), ``commit_shared`` keeps it (the reload
        was applied: the previous backend is retired).
        """
        if settings == self.shared_settings or (self.shared_settings is None and settings.backend == "memory"):
            return False
        self.commit_shared()  # a switch neither reverted nor committed (its reload crashed after the swap) stays
        shared = open_state(settings, env, ca_file=ca_file)
        await shared.start()
        self._switched_from = (self.shared, self.shared_settings)
        self.shared, self.shared_settings = shared, settings
        self._budgets_from(shared)
        log.info("state_backend", backend=shared.backend, expiry_bound=shared.expiry_bound)
        return True

    async def revert_shared(self) -> None:
        """Back to the backend in use before the last ``use_shared`` that switched; the new one is closed."""
        assert self._switched_from is not None
        unused = self.shared
        self.shared, self.shared_settings = self._switched_from
        self._switched_from = None
        self._budgets_from(self.shared)
        await unused.close()

    def commit_shared(self) -> None:
        """The switch stays: the previous backend closes once no open route table was compiled against it."""
        if self._switched_from is None:
            return
        previous, _ = self._switched_from
        self._switched_from = None
        self._retired[id(previous)] = previous
        self._close_if_unused(previous)

    def hold_shared(self) -> Callable[[], None]:
        """The backend in use is held by one more route table, until the returned callable is called (once)."""
        shared = self.shared
        self._holders[id(shared)] += 1
        held = True

        def let_go() -> None:
            nonlocal held
            if not held:
                return
            held = False
            self._holders[id(shared)] -= 1
            if self._holders[id(shared)] <= 0:
                del self._holders[id(shared)]
                self._close_if_unused(shared)

        return let_go

    def _close_if_unused(self, shared: SharedState) -> None:
        if id(shared) not in self._retired or self._holders.get(id(shared)):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a table released at interpreter exit): aclose() closes it
        del self._retired[id(shared)]
        log.info("state_backend_retired", backend=shared.backend,
                 reason="no live connection holds a slot from it any more")
        task = loop.create_task(shared.close(), name="wsgate-state-retire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _budgets_from(self, shared: SharedState) -> None:
        """Rate limits per application and per API take their budgets from a remote backend (cluster-wide) or
        keep them in this process. Buckets made for the previous backend stay with the connections that hold
        them; new connections get buckets of the new one."""
        self.rate_limits.backend = None if shared.backend == "memory" else shared
        self.rate_limits.shared.clear()

    async def aclose(self) -> None:
        """Close the shared-state backends (giving their slots back) and the log writers."""
        previous = [self._switched_from[0]] if self._switched_from is not None else []
        for shared in (*self._retired.values(), *previous, self.shared):
            await shared.close()
        self._retired.clear()
        self._switched_from = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.http.aclose()
        self.close()

    def close(self) -> None:
        self.log_writers.close()
