"""Push between the workers of one supervisor without Redis: through the supervisor's control channel.

A worker that takes a request for a sibling's connection forwards it
(``Forward``); the supervisor hands it to the worker the id names
(``Handle``, a control request answered with ``Handled``) and returns the
answer (``Answer``). A publish is handed to every other worker (``FanOut`` →
``Deliver``, no answer awaited). The messages are the frozen dataclasses
below, carried on the channel the supervisor and its workers already share
(``gateway.workers.control`` lists ``MESSAGES`` among its own); ``workers/``
only routes them here by type. This module never imports ``workers/``.

With ``state: redis`` the workers use Redis instead (cluster.py), so a
request reaching any instance or worker takes the same path.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from ..common.connection_ids import Owner
from .dispatch import GONE, Unreachable
from .hub import PushHub
from .messages import Publish, Reply, Request

log = structlog.get_logger("wsgate.push.forward")

REPLY_TIMEOUT = 5.0


@dataclass(frozen=True)
class Forward:
    """Worker → supervisor: deliver ``request`` to the worker ``to`` (an owner key) names."""

    number: int
    to: str
    request: Request


@dataclass(frozen=True)
class FanOut:
    """Worker → supervisor: hand ``message`` to every other worker."""

    number: int
    message: Publish


@dataclass(frozen=True)
class Answer:
    """Supervisor → worker: the answer to the forward or fan-out ``number``."""

    number: int
    reply: Reply


@dataclass(frozen=True)
class Handle:
    """Supervisor → worker: a control request, ``request`` for one of its connections (answered by ``Handled``)."""

    request: Request
    id: int = 0


@dataclass(frozen=True)
class Handled:
    """Worker → supervisor: the reply to the ``Handle`` numbered ``id``."""

    id: int
    reply: Reply


@dataclass(frozen=True)
class Deliver:
    """Supervisor → worker: a publish from a sibling, for this worker's connections (no reply)."""

    message: Publish


ToSupervisor = Forward | FanOut  # unasked, from a worker: the supervisor runs ``supervise`` on it
ToWorker = Answer | Handle | Deliver  # what a worker's ``SupervisorRemote.takes``
MESSAGES = (Forward, FanOut, Answer, Handle, Handled, Deliver)  # control.MESSAGES includes these
Message = Forward | FanOut | Answer | Handle | Handled | Deliver
Send = Callable[[Message], None]


class SupervisorRemote:
    """A worker's ``Remote`` without Redis: its siblings, reached through the supervisor."""

    def __init__(self, send: Send, me: Callable[[], Owner]) -> None:
        self.send = send
        self.me = me
        self.hub: PushHub | None = None
        self._numbers = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}

    def bind(self, hub: PushHub) -> None:
        self.hub = hub

    def reaches(self, owner: Owner) -> bool:
        return owner.instance == self.me().instance  # another instance is beyond the supervisor's reach

    async def call(self, owner: Owner, request: Request) -> Reply:
        return await self._ask(lambda number: Forward(number, owner.key, request))

    async def publish(self, message: Publish) -> int:
        reply = await self._ask(lambda number: FanOut(number, message))
        return int(reply.body.get("processes", 0))

    async def _ask(self, build: Callable[[int], Forward | FanOut]) -> Reply:
        number = next(self._numbers)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            self.send(build(number))
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await future
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            raise Unreachable(f"the supervisor did not answer ({type(exc).__name__})") from None
        finally:
            self._waiting.pop(number, None)

    def takes(self, message: ToWorker) -> None:
        """Handle a push message from the supervisor: an answer to one of ours, a request or a publish for our
        connections."""
        if isinstance(message, Answer):
            future = self._waiting.get(message.number)
            if future is not None and not future.done():
                future.set_result(message.reply)
        elif self.hub is None:
            if isinstance(message, Handle):  # not serving yet: the supervisor must not wait for nothing
                self.send(Handled(message.id, GONE))
        elif isinstance(message, Handle):
            self.send(Handled(message.id, self.hub.handle(message.request)))
        else:
            self.hub.publish(message.message)


class WorkerSlot(Protocol):
    """What the supervisor's worker slots show this module."""

    index: int
    pid: int | None
    ready: bool

    async def request(self, message: Handle, timeout: float = ...) -> object: ...


async def supervise(message: ToSupervisor, origin: WorkerSlot, workers: Sequence[WorkerSlot], instance: str,
                    send: Callable[[WorkerSlot, Answer | Deliver], None]) -> None:
    """The supervisor's part: carry one worker's ``Forward`` or ``FanOut`` and answer it."""
    if isinstance(message, FanOut):
        reached = 0
        for worker in workers:
            if worker is not origin and worker.ready:
                send(worker, Deliver(message.message))
                reached += 1
        send(origin, Answer(message.number, Reply(200, {"processes": reached})))
        return
    owner_instance, _, worker_key = message.to.partition(".")
    owner = Owner(owner_instance, worker_key)
    target = next((w for w in workers if owner.instance == instance and w.index == owner.index
                   and w.pid == owner.pid and w.ready), None)
    reply = GONE
    if target is not None:
        answer = await target.request(Handle(message.request), timeout=REPLY_TIMEOUT)
        if isinstance(answer, Handled):
            reply = answer.reply
        else:
            reply = Reply.error(503, "cluster_unavailable",
                                f"the worker did not answer: {getattr(answer, 'error', type(answer).__name__)}")
    send(origin, Answer(message.number, reply))
