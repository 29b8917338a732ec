"""Push across workers and instances through Redis pub/sub (``redis.asyncio``), no protocol of our own.

Every process subscribes to two channels: its own, ``<prefix>:push:<owner>``
(``<instance>.<worker>``, the prefix of its connection ids), and
``<prefix>:push:all``. A request for one connection is published on its
owner's channel; the owner answers on the requester's channel. ``PUBLISH``
returns how many subscribers got the message, so 0 on an owner's channel
means no process holds those ids any more: 410. A publish to a group goes to
``all`` and every other process delivers to its own members.

Delivery guarantee: at most once (pub/sub keeps nothing for a process that is
not subscribed at that moment), and in order per connection for the pushes of
one caller that waits for each answer (one Redis connection delivers a
channel's messages in order, and the owner hands them to the relay in the
order they arrive).

Redis down: requests to other processes answer 503 at once (every command
runs under the state's ``timeout``), local deliveries go on, and the
subscription is re-established in the background, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ..common.connection_ids import Owner
from .dispatch import GONE, Unreachable
from .hub import PushHub
from .messages import Publish, Reply, Request, decode, dumps, encode

log = structlog.get_logger("wsgate.push.cluster")

REPLY_TIMEOUT = 5.0  # seconds an owner has to answer a request: the 504 past it never leaves a backend hanging
BACKOFF = (0.1, 0.2, 0.5, 1.0)  # seconds between attempts to subscribe again while Redis is down


class RedisCluster:
    """The ``Remote`` of a process with ``state: redis``."""

    def __init__(self, options: Mapping[str, Any], hub: PushHub, me: Callable[[], Owner], *, prefix: str,
                 timeout: float, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.options = dict(options)
        self.hub = hub
        self.me = me
        self.prefix = f"{prefix}:push"
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        self.redis: Any = None
        self.subscribed = asyncio.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._task: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._closed = False

    def channel(self, owner_key: str) -> str:
        return f"{self.prefix}:{owner_key}"

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        url = self.options.get("url")
        if url is None:
            log.error("push_cluster_unconfigured", reason=f"{self.options.get('missing')} is unset")
            return
        kwargs: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                  "retry": Retry(NoBackoff(), 0), "client_name": f"wsgate-push-{self.me().key}"}
        if self.options.get("password"):
            kwargs["password"] = self.options["password"]
        if self.options.get("ssl_ca_certs") and str(url).startswith("rediss://"):
            kwargs["ssl_ca_certs"] = self.options["ssl_ca_certs"]
        self.redis = aioredis.Redis.from_url(url, **kwargs)
        self._task = asyncio.create_task(self._listen(), name="wsgate-push-cluster")
        # A first subscription within the timeout if Redis is up; if not, the task keeps trying (no start failure).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout * 4):
                await self.subscribed.wait()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._replies):
            task.cancel()
        for future in self._waiting.values():
            future.cancel()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    # ------------------------------------------------------------ Remote
    def reaches(self, owner: Owner) -> bool:
        return True  # any process subscribed to its channel; PUBLISH says whether one is

    async def call(self, owner: Owner, request: Request) -> Reply:
        me = self.me()
        number = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            receivers = await self._publish(self.channel(owner.key), {"kind": "request", "id": number,
                                                                      "reply_to": me.key, "request": encode(request)})
            if receivers == 0:
                return GONE
            try:
                async with asyncio.timeout(self.reply_timeout):
                    return await future
            except TimeoutError:
                return Reply.error(504, "timeout", "the process holding the connection did not answer in time")
        finally:
            self._waiting.pop(number, None)

    async def publish(self, message: Publish) -> int:
        receivers = await self._publish(self.channel("all"), {"kind": "publish", "message": encode(message)})
        return max(0, receivers - (1 if self.subscribed.is_set() else 0))  # not counting ourselves

    async def _publish(self, channel: str, payload: dict[str, Any]) -> int:
        if self.redis is None:
            raise Unreachable("Redis is not configured (its URL's variable is unset)")
        try:
            async with asyncio.timeout(self.timeout):
                receivers: int = await self.redis.publish(channel, dumps(payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis' ConnectionError/TimeoutError, OSError, our timeout: all mean down
            raise Unreachable(f"Redis: {type(exc).__name__}") from None
        return receivers

    # ------------------------------------------------------------ listening
    async def _listen(self) -> None:
        attempt = 0
        while not self._closed:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.timeout * 4):
                    await pubsub.subscribe(self.channel(self.me().key), self.channel("all"))
                if attempt:
                    log.info("push_cluster_recovered", attempts=attempt)
                attempt = 0
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._received(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                if attempt == 0:
                    log.warning("push_cluster_down", error=type(exc).__name__,
                                effect="pushes to other processes answer 503; local ones go on")
                await asyncio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _received(self, data: bytes | str) -> None:
        try:
            payload = json.loads(data)
            kind = payload["kind"]
            if kind == "reply":
                future = self._waiting.get(payload["id"])
                if future is not None and not future.done():
                    future.set_result(Reply.from_dict(payload["reply"]))
            elif kind == "request":
                request = decode(payload["request"])
                assert not isinstance(request, Publish)
                reply = self.hub.handle(request)
                self._answer(payload["reply_to"], payload["id"], reply)
            elif kind == "publish":
                message = decode(payload["message"])
                if isinstance(message, Publish) and message.origin != self.me().key:
                    self.hub.publish(message)
        except Exception:
            log.warning("push_cluster_bad_message", exc_info=True)

    def _answer(self, reply_to: str, number: int, reply: Reply) -> None:
        async def send() -> None:
            with contextlib.suppress(Unreachable):
                await self._publish(self.channel(reply_to), {"kind": "reply", "id": number, "reply": reply.to_dict()})

        task = asyncio.get_running_loop().create_task(send())
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)
