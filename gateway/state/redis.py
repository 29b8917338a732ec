"""The Redis backend: slots and budgets shared by every worker and instance pointed at one Redis.

Slots are leases. Each process registers an **owner** (``<instance>.<epoch>``)
in a sorted set scored by its expiry, and renews it every ``heartbeat``
seconds; a slot hash per key holds one count per owner. Every change is a
Lua script, so a take is atomic against every other taker and the limit is
never exceeded under races: the script drops the counts of expired owners,
sums the rest and takes a slot only below the limit.

Takes and give-backs are not sent one by one: one flusher task sends them in
batches (``redis_batch``), one script call at a time. The takes of a loop
turn share a call; a give-back waits up to ``give_back_delay`` for a take to
carry it. Waiting only keeps a slot counted a little longer, so it can refuse
an upgrade early but never admit one past the limit; ``close`` sends what is
queued before it leaves, and a crash loses only what expiry frees anyway.

A process that dies stops renewing: its counts stop counting at most
``2 × heartbeat`` after its last renewal (``expiry_bound``). Expiry uses
Redis's clock, so the instances' clocks need not agree.

When Redis cannot be reached the store turns *degraded*: takes are decided
in this process (``on_error``: ``allow`` counts locally against the same
limit, ``refuse`` says no), one warning is logged per retry (the retries back
off up to ``heartbeat``), and on recovery this process re-asserts every slot
it holds under a fresh owner (a Redis that restarted empty, or one that
expired us during a partition, gets our live counts back; the old owner's
counts are dropped, so no slot stays stuck).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from .base import UNAVAILABLE, OnStateError, Taken
from .memory import LocalBuckets, LocalSlots
from .redis_batch import ScriptLine, SlotBatch, Take

if TYPE_CHECKING:
    from ..config.models import RedisState

log = structlog.get_logger("wsgate.state")

# KEYS[1] owners zset; ARGV owner, ttl ms. 1 renewed, 0 unknown or expired (the caller re-asserts).
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1)
if not expiry or tonumber(expiry) < now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS[1] owners zset, KEYS[2..] slot hashes; ARGV new owner, ttl ms, old owner ('' none), then one count per hash.
ASSERT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[1], ARGV[3]) end
for i = 2, #KEYS do
  if ARGV[3] ~= '' then redis.call('HDEL', KEYS[i], ARGV[3]) end
  local n = tonumber(ARGV[i + 2])
  if n > 0 then redis.call('HSET', KEYS[i], ARGV[1], n) else redis.call('HDEL', KEYS[i], ARGV[1]) end
end
return 1
"""

# KEYS[1] owners zset, KEYS[2..] slot hashes; ARGV owner. A clean stop gives every slot back at once.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS[1] bucket hash; ARGV want, rate per second, burst. Tokens granted (0..want).
BUDGET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 's')
local tokens, stamp = tonumber(b[1]), tonumber(b[2])
if not tokens then tokens, stamp = burst, now end
if rate > 0 then tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate) end
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 's', string.format('%.6f', now))
local idle = 60000
if rate > 0 then idle = math.ceil(burst / rate * 1000) + 1000 end
redis.call('PEXPIRE', KEYS[1], idle)
return granted
"""


def connection_options(settings: RedisState, env: Mapping[str, str], ca_file: str | None) -> dict[str, Any]:
    """What ``RedisStore`` connects with: the URL (None when its variable is unset) and client keywords."""
    from ..config.models import EnvKey

    url = env.get(settings.url.env) if isinstance(settings.url, EnvKey) else settings.url
    options: dict[str, Any] = {"url": url or None, "missing": settings.url.env if isinstance(settings.url, EnvKey)
                               else None}
    if settings.password is not None:
        options["password"] = env.get(settings.password.env) or None
    if ca_file is not None:
        options["ssl_ca_certs"] = ca_file
    return options


class StateUnavailable(Exception):
    """The backend cannot be reached now (never leaves this module: callers get their ``on_error`` answer)."""


class RedisStore:
    backend = "redis"

    def __init__(self, options: Mapping[str, Any], *, heartbeat: float = 2.0, timeout: float = 0.5,
                 prefix: str = "wsgate", instance: str | None = None, give_back_delay: float = 0.005) -> None:
        self.options = dict(options)
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.expiry_bound = 2 * heartbeat
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._tag = "{" + prefix + "}"  # one hash slot for every key: the scripts work on Redis Cluster too
        self._owners = f"{self._tag}:owners"
        self.epoch = 0
        self.owner = ""
        self.local = LocalSlots()  # every slot this process holds, granted by Redis or (degraded) locally
        self.fallback_buckets = LocalBuckets()
        self.healthy = False
        self.since = time.time()
        self.last_error: str | None = None
        self.redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._known: set[str] = set()  # every slot key this process ever touched (re-asserted, left)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reasserting: asyncio.Lock | None = None
        self.give_back_delay = give_back_delay
        self._batch = SlotBatch()  # takes and give-backs waiting for the next script call
        self._line: ScriptLine | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._due = asyncio.Event()  # the pending batch should go now
        self._give_back_timer: asyncio.TimerHandle | None = None
        self.batches_sent = 0  # SYNC calls made, and the takes they carried (the coalescing, seen by the tests
        self.takes_sent = 0  # and in the log line at close)
        self._connected = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` ran: the slots went back and the client is disconnected."""
        return self._closed

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._reasserting = asyncio.Lock()
        url = self.options.get("url")
        if url is not None:
            # Named after the instance: CLIENT LIST on the Redis shows which gateway process holds a connection.
            kwargs: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                      "retry_on_timeout": False, "client_name": self.instance}
            if self.options.get("password"):
                kwargs["password"] = self.options["password"]
            if self.options.get("ssl_ca_certs") and str(url).startswith("rediss://"):
                kwargs["ssl_ca_certs"] = self.options["ssl_ca_certs"]
                kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            self.redis = aioredis.Redis.from_url(url, **kwargs)
            for name, text in (("heartbeat", HEARTBEAT), ("assert", ASSERT), ("leave", LEAVE), ("budget", BUDGET)):
                self._scripts[name] = self.redis.register_script(text)
            self._line = ScriptLine(self.redis)
            self._flusher = asyncio.create_task(self._flush_batches(), name="wsgate-state-slots")
            with contextlib.suppress(StateUnavailable):  # the heartbeat task retries; on_state_error decides
                await self._reassert()
        else:
            self._fault(f"the URL's environment variable {self.options.get('missing')} is unset")
        self._task = asyncio.create_task(self._keep_alive(), name="wsgate-state-heartbeat")

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            # Give-backs still queued go out before we leave (the leave drops our counts anyway; a crash that
            # skips both loses nothing worse: our owner expires within expiry_bound).
            self._due.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), self.timeout * 2)
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.redis is not None:
            if self.healthy and self.owner:  # after the flusher: no take or give-back is in flight now
                keys = sorted(self._known)
                with contextlib.suppress(StateUnavailable):  # else our owner expires by itself
                    await self._call("leave", [self._owners, *map(self._slot_key, keys)], [self.owner])
            if self._line is not None:
                await self._line.close()
            await self.redis.aclose()
            log.info("state_backend_closed", backend=self.backend, owner=self.owner, script_calls=self.batches_sent,
                     takes=self.takes_sent)
        # Closed for good: a straggler (a connection of a retired table ending late) counts locally, never
        # through a client that would connect again.
        self.healthy = False
        self.local.active.clear()

    # -------------------------------------------------------------- slots
    def _slot_key(self, key: str) -> str:
        return f"{self._tag}:slots:{key}"

    def acquire(self, key: str, limit: int, on_error: OnStateError = "allow") -> Taken | Awaitable[Taken]:
        """Healthy: the answer of the next batch (every take of this loop turn shares one script call).
        Degraded: ``on_error``'s answer at once (``UNAVAILABLE`` for ``refuse``)."""
        self._known.add(key)
        if not self.healthy or self._flusher is None or self._closed:
            return self._degraded_take(key, limit, on_error)
        return self._take(key, limit, on_error)

    async def _take(self, key: str, limit: int, on_error: OnStateError) -> Taken:
        # Queued only once awaited: an upgrade cancelled before it awaits asks for nothing. Cancelled while
        # queued, its answer's future is cancelled too and the batch leaves it out (``_send_batch``); cancelled
        # in flight, a slot granted meanwhile goes back (``_answer``).
        answer: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        self._batch.takes.append(Take(key, limit, on_error, answer))
        self._due.set()
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled() and answer.result():
                self.release(key)  # answered yes, cancelled before it could read the answer
            raise

    def _degraded_take(self, key: str, limit: int, on_error: OnStateError) -> Taken:
        if on_error == "refuse":
            return UNAVAILABLE  # not False: the limit was not reached, Redis could not be asked
        return self.local.acquire(key, limit)

    def release(self, key: str) -> None:
        if not self.local.release(key):
            return
        if self.healthy and self._flusher is not None and not self._closed:
            # Queued, not sent: the next take's call carries it, or a lone call after give_back_delay. Late only
            # ever means a slot counted a few ms longer (never a limit exceeded); a re-assert meanwhile writes our
            # counts without it, and drops the queue.
            self._batch.gives[key] = self._batch.gives.get(key, 0) + 1
            if self._give_back_timer is None and not self._due.is_set():
                self._give_back_timer = asyncio.get_running_loop().call_later(self.give_back_delay, self._due.set)

    async def _flush_batches(self) -> None:
        """The one sender of slot changes: a batch at a time; what is queued meanwhile goes in the next."""
        try:
            while not (self._closed and not self._batch):
                await self._due.wait()
                self._due.clear()
                if self._give_back_timer is not None:
                    self._give_back_timer.cancel()
                    self._give_back_timer = None
                try:
                    await self._send_batch()
                except Exception:  # a bug must not stop the one sender: every later take would wait forever
                    log.exception("state_batch_failed", backend=self.backend)
        finally:  # cancelled at close: nobody may wait forever for an answer
            self._settle_degraded(self._batch.takes, closing=True)

    async def _send_batch(self) -> None:
        assert self._reasserting is not None
        async with self._reasserting:  # never in flight during a re-assert: the owner cannot change under it
            batch, self._batch = self._batch, SlotBatch()
            # A take cancelled while queued (its client left) is not sent: sent anyway, it would hold a slot in
            # Redis until its give-back, and refuse a take behind it in the same batch at the limit.
            batch.takes = [take for take in batch.takes if not take.answer.cancelled()]
            if not batch:
                return
            owner = self.owner
            if not self.healthy or self._line is None:
                self._settle_degraded(batch.takes)  # give-backs: the re-assert after recovery writes our counts
                return
            try:
                answers = await self._run(batch, owner)
            except StateUnavailable:
                self._settle_degraded(batch.takes)
                return
            except BaseException:
                self._batch.takes[:0] = batch.takes  # cancelled (close): answered by the flusher's last word
                raise
            if isinstance(answers, list) and len(answers) == len(batch.takes):
                self._settle(batch.takes, answers)
                return
            if answers != -1:  # not our script's answer (something else behind the URL?): decide here
                self._unreachable(RuntimeError(f"unexpected reply to the slot script: {answers!r:.80}"))
                self._settle_degraded(batch.takes)
                return
        # -1: Redis does not know our owner (it restarted empty, or expired us): re-assert, then try the takes
        # again once (the give-backs are in the re-asserted counts already).
        retry = [take for take in batch.takes if take.attempts == 0]
        self._settle_degraded([take for take in batch.takes if take.attempts > 0])
        try:
            await self._reassert(stale=owner)
        except StateUnavailable:
            self._settle_degraded(retry)
            return
        for take in retry:
            take.attempts += 1
        self._batch.takes[:0] = retry
        if self._batch:
            self._due.set()

    async def _run(self, batch: SlotBatch, owner: str) -> Any:
        from redis.exceptions import RedisError

        assert self._line is not None
        keys, args = batch.encode(self._owners, owner, self._slot_key)
        self.batches_sent += 1
        self.takes_sent += len(batch.takes)
        try:
            return await self._line.run(keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    def _settle(self, takes: list[Take], answers: list[int]) -> None:
        for take, taken in zip(takes, answers, strict=True):
            if taken == 1:
                self.local.active[take.key] += 1
            self._answer(take, taken == 1)

    def _settle_degraded(self, takes: list[Take], closing: bool = False) -> None:
        for take in takes:
            self._answer(take, False if closing else self._degraded_take(take.key, take.limit, take.on_error))

    def _answer(self, take: Take, taken: Taken) -> None:
        if not take.answer.cancelled():
            take.answer.set_result(taken)
        elif taken:
            self.release(take.key)  # the upgrade was cancelled meanwhile (client gone): the slot goes back

    # ------------------------------------------------------------- budgets
    async def take_budget(self, key: str, want: int, rate_per_s: float, burst: int,
                          on_error: OnStateError = "allow") -> int:
        if self.healthy:
            try:
                granted = await self._call("budget", [f"{self._tag}:budget:{key}"], [want, rate_per_s, burst])
                return int(granted)
            except StateUnavailable:
                pass
        if on_error == "refuse":
            return 0
        return self.fallback_buckets.take(key, want, rate_per_s, burst)

    # ------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "healthy": self.healthy, "since": self.since, "owner": self.owner,
                "expiry_bound": self.expiry_bound, "last_error": None if self.healthy else self.last_error}

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await self._scripts[name](keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> StateUnavailable:
        self._fault(f"{exc.__class__.__name__}: {exc}")
        return StateUnavailable(str(exc))

    def _fault(self, error: str) -> None:
        self.last_error = error
        if self.healthy:  # the transition only: the retry loop logs once per attempt after this
            log.warning("state_backend_unreachable", backend=self.backend, error=error,
                        retry="each throttle's on_state_error decides until it is back")
        if self.healthy:
            self.healthy = False
            self.since = time.time()
        self._wake.set()

    async def _reassert(self, stale: str | None = None) -> None:
        """Register a fresh owner holding exactly the slots this process holds (one at a time)."""
        assert self._reasserting is not None
        async with self._reasserting:
            if stale is not None and self.owner != stale and self.healthy:
                return  # another task re-asserted while this one waited
            if not self.healthy and self._connected:
                await self._renew_connections()
            old = self.owner
            self.epoch += 1
            owner = f"{self.instance}.{self.epoch}"
            ttl_ms = int(self.expiry_bound * 1000)
            for _ in range(5):  # bounded: a steady churn of upgrades must not keep us re-asserting
                snapshot = dict(self.local.active)
                keys = sorted(self._known | set(snapshot))
                await self._call("assert", [self._owners, *map(self._slot_key, keys)],
                                 [owner, ttl_ms, old, *(snapshot.get(k, 0) for k in keys)])
                old = owner  # a second round replaces our own fresh counts
                if dict(self.local.active) == snapshot:
                    break  # nothing was taken or given back meanwhile: Redis holds exactly our slots
            self.owner = owner
            self._batch.gives.clear()  # counted without them in the snapshot just written
            if not self.healthy:
                if self._connected:
                    log.info("state_backend_recovered", backend=self.backend, owner=owner,
                             reasserted=sum(snapshot.values()), down_seconds=round(time.time() - self.since, 3))
                else:
                    log.info("state_backend_connected", backend=self.backend, owner=owner,
                             expiry_bound=self.expiry_bound)
                self._connected = True
                self.healthy = True
                self.since = time.time()
                self.last_error = None

    async def _renew_connections(self) -> None:
        """Every connection this store holds starts afresh after an outage: the script line's (no batch is in
        flight: the caller holds the re-assert lock) and the pool's idle ones (one in use by a budget call
        fails or succeeds on its own; the pool checks every connection it hands out anyway)."""
        if self._line is not None:
            await self._line.renew()
        if self.redis is not None:
            await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def _keep_alive(self) -> None:
        backoff = min(0.1, self.heartbeat)
        while not self._closed:
            if self.healthy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.heartbeat)
                if not self.healthy:
                    continue
                try:
                    renewed = await self._call("heartbeat", [self._owners], [self.owner, int(self.expiry_bound * 1000)])
                    if renewed != 1:
                        await self._reassert(stale=self.owner)
                except StateUnavailable:
                    continue
                backoff = min(0.1, self.heartbeat)
            else:
                if self.redis is None:
                    return  # no URL: nothing to retry until a reload brings one
                try:
                    await self._reassert()
                    continue
                except StateUnavailable:
                    log.warning("state_backend_unreachable", backend=self.backend, error=self.last_error,
                                retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.heartbeat)
