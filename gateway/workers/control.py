"""The control channel between a supervisor and one of its workers: JSON lines over a private socketpair.

Supervisor → worker: ``start`` (the checked config, its generation, the
port numbers, whether it probes, the current active verdicts), ``apply`` (a
new config and generation), ``status``, ``probe`` (take over the active
health checks), ``verdict`` (the prober changed an endpoint's active
verdict; no reply). Worker → supervisor: ``started`` (with the prober's
verdicts) or ``failed`` once, then one reply per request, carrying the
request's ``id``, and the prober's ``verdict`` on each transition. The config travels pickled: both ends are
this program, over a socketpair nobody else holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.tree import Config

LIMIT = 64 * 1024 * 1024  # one line holds a whole pickled config and the metrics text


def pack_config(config: Config) -> str:
    return base64.b64encode(pickle.dumps(config)).decode("ascii")


def unpack_config(text: str) -> Config:
    return pickle.loads(base64.b64decode(text))  # noqa: S301 - from our own supervisor, over a private socketpair


def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n")


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message; None when the other end is gone."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        return None
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    return message
