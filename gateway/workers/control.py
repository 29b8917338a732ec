"""The control channel between a supervisor and one of its workers: typed messages over a private socketpair.

Each message is one of the frozen dataclasses below, pickled, behind a 4-byte length. Both ends are this
program (the supervisor starts ``python -m gateway.workers.worker`` with its end of a socketpair nobody else
holds), so pickle carries the checked ``Config`` and the typed answers (``ReloadOutcome``, the connection and
upstream snapshots) as they are, with no second encoding to keep in step; ``receive`` accepts only the types
listed in ``MESSAGES`` and ``Start`` carries ``VERSION``, which a worker of another version refuses.

Supervisor → worker: ``Start`` once (the checked config, its generation, the port numbers, whether it probes, the
current active verdicts), then requests: ``Apply`` (a new config as the next generation), ``StatusRequest``,
``TakeProbing`` (the prober died: probe from now on), ``Close`` (the admin closes one connection); and, with no
reply, ``Verdict`` (the prober changed an endpoint's active verdict) and ``Served`` (a reload's outcome, for
``wsgate_config_info``).
Worker → supervisor: ``Started`` or ``Failed`` once; one reply per request carrying its ``id`` (``Applied``,
``Status``, ``ProbingTaken``, ``Closed``, or ``RequestFailed``); unasked, ``Verdict`` on each of its probes'
transitions and ``Report`` every ``REPORT_INTERVAL`` (what ``/readyz`` answers from without asking).
The push API's forwarding messages (``gateway.push.forward``: ``Forward``, ``FanOut`` up; ``Answer``, ``Handle``
(a request answered by ``Handled``) and ``Deliver`` down) are listed in ``MESSAGES`` too.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..common.log import LogFormat
from ..config.tree import Config
from ..push import forward as push
from ..serving.view import ConnectionsSnapshot, ReloadOutcome, UpstreamsSnapshot

VERSION = 1  # of these messages: a worker started from another installation refuses a Start it cannot read
LIMIT = 64 * 1024 * 1024  # one message holds a whole config, or every connection record of a worker
REPORT_INTERVAL = 1.0  # seconds between a worker's reports
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class Verdict:
    """The prober's active verdict on one endpoint."""

    api: str
    url: str
    active_ok: bool
    reason: str


# --------------------------------------------------------------- supervisor → worker


@dataclass(frozen=True)
class Start:
    config: Config
    paths: tuple[str, ...]
    generation: int
    ports: Mapping[str, int]
    log_format: LogFormat
    probe: bool
    verdicts: tuple[Verdict, ...] = ()
    version: int = VERSION


@dataclass(frozen=True)
class Apply:
    config: Config
    generation: int
    ports: Mapping[str, int]
    id: int = 0


@dataclass(frozen=True)
class StatusRequest:
    id: int = 0


@dataclass(frozen=True)
class TakeProbing:
    id: int = 0


@dataclass(frozen=True)
class Served:
    """The supervisor's reload outcome, for the worker's ``wsgate_config_info`` (no reply): a failed reload never
    reaches the workers otherwise."""

    digest: str
    commit: str | None
    failed: bool


@dataclass(frozen=True)
class Close:
    """Close the relayed connection ``connection`` (the admin's ``POST /connections/close``), answered by
    ``Closed``."""

    connection: str
    code: int
    reason: str
    id: int = 0


Request = Apply | StatusRequest | TakeProbing | Close | push.Handle


# --------------------------------------------------------------- worker → supervisor


@dataclass(frozen=True)
class Started:
    pid: int
    generation: int
    verdicts: tuple[Verdict, ...] | None  # the prober's, else None


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Report:
    """What a worker tells its supervisor every REPORT_INTERVAL, unasked: enough for ``/readyz``."""

    generation: int
    ready: bool
    connections: int
    state: Mapping[str, Any] | None  # its shared-state backend's health


@dataclass(frozen=True)
class Applied:
    id: int
    generation: int
    outcome: ReloadOutcome
    verdicts: tuple[Verdict, ...] | None


@dataclass(frozen=True)
class Status:
    id: int
    pid: int
    generation: int
    digest: str
    ready: bool
    probing: bool
    reloads: int
    connections: ConnectionsSnapshot
    upstreams: UpstreamsSnapshot
    state: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ProbingTaken:
    id: int
    verdicts: tuple[Verdict, ...]


@dataclass(frozen=True)
class RequestFailed:
    """No answer to a request: the worker is gone, silent, or failed it (a bug, logged on its side)."""

    id: int
    error: str
    generation: int = 0


@dataclass(frozen=True)
class Closed:
    id: int
    found: bool  # whether this worker held the connection


Reply = Applied | Status | ProbingTaken | Closed | RequestFailed | push.Handled

# The push API's messages between workers (gateway/push/forward.py) ride on the same channel.
MESSAGES = (Start, Apply, StatusRequest, TakeProbing, Close, Served, Verdict, Started, Failed, Report, Applied, Status,
            ProbingTaken, Closed, RequestFailed, *push.MESSAGES)
Message = (Start | Apply | StatusRequest | TakeProbing | Close | Served | Verdict | Started | Failed | Report | Applied
           | Status | ProbingTaken | Closed | RequestFailed | push.Message)


def send(writer: asyncio.StreamWriter, message: Message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The next message; None when the other end is gone (or sent something that is not one of ours)."""
    try:
        size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
        if size > LIMIT:
            return None
        data = await reader.readexactly(size)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    message = pickle.loads(data)  # noqa: S301 - from our own supervisor or worker, over a private socketpair
    return message if isinstance(message, MESSAGES) else None
