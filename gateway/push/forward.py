"""Push between the workers of one supervisor without Redis: through the supervisor's control channel.

A worker that takes a request for a sibling's connection forwards it
(``push_forward``); the supervisor hands it to the worker the id names
(``push_handle``, answered like any control request) and returns the answer
(``push_answer``). A publish is handed to every other worker (``push_fan_out``
→ ``push_publish``, no answer awaited). The messages are these typed ones, as
JSON lines on the channel the supervisor and its workers already share;
``workers/`` only routes them here.

With ``state: redis`` the workers use Redis instead (cluster.py), so a
request reaching any instance or worker takes the same path.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ..common.connection_ids import Owner
from .dispatch import GONE, Unreachable
from .hub import PushHub
from .messages import Publish, Reply, Request, decode, encode

log = structlog.get_logger("wsgate.push.forward")

REPLY_TIMEOUT = 5.0
OPS = frozenset({"push_forward", "push_fan_out"})  # worker -> supervisor
Send = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Forward:
    """Worker → supervisor: deliver ``request`` to the worker ``to`` (an owner key) names."""

    number: int
    to: str
    request: Request

    def to_message(self) -> dict[str, Any]:
        return {"op": "push_forward", "number": self.number, "to": self.to, "request": encode(self.request)}


@dataclass(frozen=True, slots=True)
class FanOut:
    """Worker → supervisor: hand ``message`` to every other worker."""

    number: int
    message: Publish

    def to_message(self) -> dict[str, Any]:
        return {"op": "push_fan_out", "number": self.number, "message": encode(self.message)}


@dataclass(frozen=True, slots=True)
class Answer:
    """Supervisor → worker: the answer to the forward or fan-out ``number``."""

    number: int
    reply: Reply

    def to_message(self) -> dict[str, Any]:
        return {"op": "push_answer", "number": self.number, "reply": self.reply.to_dict()}


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
        return await self._ask(lambda number: Forward(number, owner.key, request).to_message())

    async def publish(self, message: Publish) -> int:
        reply = await self._ask(lambda number: FanOut(number, message).to_message())
        return int(reply.body.get("processes", 0))

    async def _ask(self, build: Callable[[int], dict[str, Any]]) -> Reply:
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

    def takes(self, message: dict[str, Any]) -> bool:
        """Handle a push message from the supervisor (True), or leave it to the worker's command loop."""
        op = message.get("op")
        if op == "push_answer":
            future = self._waiting.get(message["number"])
            if future is not None and not future.done():
                future.set_result(Reply.from_dict(message["reply"]))
            return True
        if self.hub is None or op not in ("push_handle", "push_publish"):
            return False
        try:
            decoded = decode(message["request"] if op == "push_handle" else message["message"])
        except (KeyError, TypeError, ValueError):
            log.warning("push_bad_control_message", op=op)
            return True
        if op == "push_handle" and not isinstance(decoded, Publish):
            self.send({"id": message.get("id"), "reply": self.hub.handle(decoded).to_dict()})
        elif isinstance(decoded, Publish):
            self.hub.publish(decoded)
        return True


class WorkerSlot(Protocol):
    """What the supervisor's worker slots show this module."""

    index: int
    pid: int | None
    ready: bool

    async def request(self, message: dict[str, Any], timeout: float = ...) -> dict[str, Any]: ...


async def supervise(message: dict[str, Any], origin: WorkerSlot, workers: Sequence[WorkerSlot], instance: str,
                    send: Callable[[WorkerSlot, dict[str, Any]], None]) -> None:
    """The supervisor's part: carry one worker's ``push_forward`` or ``push_fan_out`` and answer it."""
    number = message.get("number", 0)
    if message.get("op") == "push_fan_out":
        reached = 0
        for worker in workers:
            if worker is not origin and worker.ready:
                send(worker, {"op": "push_publish", "message": message["message"]})
                reached += 1
        send(origin, Answer(number, Reply(200, {"processes": reached})).to_message())
        return
    owner_instance, _, worker_key = str(message.get("to", "")).partition(".")
    owner = Owner(owner_instance, worker_key)
    target = next((w for w in workers if owner.instance == instance and w.index == owner.index
                   and w.pid == owner.pid and w.ready), None)
    reply = GONE
    if target is not None:
        answer = await target.request({"op": "push_handle", "request": message["request"]}, timeout=REPLY_TIMEOUT)
        if "reply" in answer:
            reply = Reply.from_dict(answer["reply"])
        else:
            reply = Reply.error(503, "cluster_unavailable", f"the worker did not answer: {answer.get('error')}")
    send(origin, Answer(number, reply).to_message())
